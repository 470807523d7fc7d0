"""Static decoding: a model's decoding state at fixed addresses and a one-token step without a Python branch on the
data, so that `torch.compile(fullgraph=True)` or `torch.export` turns the whole step into one graph: `CompiledStep`
compiles it ahead of time with AOTInductor (decoding="compiled"), and on CUDA `CudaGraphStep` captures it as a CUDA
graph.

Layout (`StaticState`): a sliding window is a ring of w slots where position p lives in slot p % w (B'MOJO's y history
likewise, R_y slots, and its fading keys/values, R_f slots); full attention has `capacity` preallocated slots, token i
of the cache in slot i; the SSM state, B'MOJO's fading, eidetic and pending slots are as in the reference; positions
(b,) and the token count are tensors. Every update is in place. The reference decoding (the mixers' recurrent forms over
`BMojoCache.states`) stays the twin the step is tested against; `to_static` / `to_dynamic` convert between the two
layouts, so prefill runs chunked through the reference form and the step continues from its state (and back, for a
later multi-token call).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import hashlib
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch

from ..layers.bmojo import BMojoState
from ..layers.documents import copy_into, state_tensors, with_tensors
from ..layers.mamba2 import SSMState
from ..ops.memory import EMPTY, KVSlots, roll_rows, rolled_index


@dataclass
class StaticState:
    """layers: each layer's state in the fixed-address layout; positions (b,): the next token's position in its
    document, per row; count (): the tokens read so far (full attention's next slot); capacity: full attention's
    slots."""

    layers: list
    positions: torch.Tensor
    count: torch.Tensor
    capacity: int


def to_static(kind: str, mixer, state, next_pos: torch.Tensor, capacity: int):
    """One layer's reference decoding state -> the fixed-address layout (new tensors). mixer: the layer's mixer (a
    B'MOJO layer's fading ring is projected from its y history); next_pos: (b,)."""
    if kind == "attn":
        b, hk, S, hd = state.k.shape
        if S > capacity:
            raise ValueError(f"the cache holds {S} tokens, more than the static capacity {capacity}")
        return state.cat(KVSlots.empty(b, hk, capacity - S, hd, state.k.device, state.k.dtype, False))
    if kind == "swa":
        return state.roll(next_pos)
    if kind == "ssm":
        return SSMState(state.conv.clone(), state.ssm.clone())
    ring = None
    if mixer.num_fading or mixer.fading_span:
        # slot j of the R_f-slot ring holds position next_pos + back[j], back in [-R_f, -1] (position p in slot
        # p % R_f), read from the time-ordered y history (R_y outputs, the newest at next_pos - 1); with R_f = R_y + 1
        # the oldest slot is not in it, and is left EMPTY: the next step writes it before reading the ring
        R_f, R_y = mixer.fading_ring_slots, state.y.shape[1]
        back = rolled_index(R_f, next_pos) - R_f  # (b, R_f)
        out = state.y.gather(1, (R_y + back).clamp(min=0)[..., None].expand(-1, -1, state.y.shape[2]))
        pos = next_pos[:, None] + back
        pos = pos.masked_fill((pos < 0) | (back < -R_y), EMPTY)
        ring = KVSlots(*mixer.fading_kv(out, pos.clamp(min=0)), pos)
    y = roll_rows(state.y, next_pos)
    return dataclasses.replace(
        state,
        ssm=to_static("ssm", mixer.ssm, state.ssm, next_pos, capacity),
        window=state.window.roll(next_pos),
        y=y,
        fading_ring=ring,
    )


def to_dynamic(kind: str, state, next_pos: torch.Tensor, count: int):
    """The inverse of `to_static`: the fixed-address layout -> the reference decoding state (new tensors)."""
    if kind == "attn":
        return state.slots(0, count)
    if kind == "swa":
        return state.roll(-next_pos)
    if kind == "ssm":
        return SSMState(state.conv.clone(), state.ssm.clone())
    assert isinstance(state, BMojoState)
    return dataclasses.replace(
        state,
        ssm=to_dynamic("ssm", state.ssm, next_pos, count),
        window=state.window.roll(-next_pos),
        y=roll_rows(state.y, -next_pos),
        fading_ring=None,
    )


def decode_step(model, state: StaticState, input_ids: torch.Tensor) -> torch.Tensor:
    """One token per row through `model` (a BMojoForCausalLM) from the fixed-address `state`, updated in place.
    input_ids: (b, 1). Returns the next-token logits (b, 1, V). No Python branch depends on the data: compile it with
    `torch.compile(decode_step, fullgraph=True)`."""
    h = model.model.embed_tokens(input_ids)
    for layer, layer_state in zip(model.model.layers, state.layers, strict=True):
        h = layer.step(h, layer_state, state.positions, state.count)
    logits = model.lm_head(model.model.norm(h))
    state.positions.add_(1)
    state.count.add_(1)
    return logits


class CudaGraphStep:
    """`decode_step` captured as one CUDA graph over the buffers of `state` (which keep their addresses: the cache
    converts into them in place). Calls copy the tokens into the graph's input buffer, replay, and return a copy of
    the logits. Capture runs two warm-up steps on a side stream and then restores the state it started from."""

    def __init__(self, model, state: StaticState):
        self.state = state
        self.ids = torch.zeros(state.positions.shape[0], 1, dtype=torch.long, device=state.positions.device)
        start = copy.deepcopy(state)
        stream = torch.cuda.Stream()
        stream.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(stream):
            for _ in range(2):
                decode_step(model, state, self.ids)
        torch.cuda.current_stream().wait_stream(stream)
        copy_into(state, start)
        self.graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(self.graph):
            self.logits = decode_step(model, state, self.ids)

    def __call__(self, model, state: StaticState, input_ids: torch.Tensor) -> torch.Tensor:
        self.ids.copy_(input_ids)
        self.graph.replay()
        return self.logits.clone()


class CompiledStep:
    """`decode_step` compiled ahead of time by AOTInductor (`torch.export`, then `aoti_compile_and_package`) for one
    model's code and configuration and one state layout: the token ids, the model's parameters and buffers and the
    state's tensors are the compiled program's inputs (no weight is copied into it; the state is updated in place).
    A call goes straight to the compiled C++ runner, with none of `torch.compile`'s per-call guard checks and runtime
    wrappers (docs/benchmarks.md, "AOTInductor"). One compilation per model class, configuration, batch size and
    capacity, dtype and device, kept in the process and on disk (`compiled_step_dir`; keyed also by torch's version
    and bmojo's source files, so an edit of the code compiles anew, but a function patched in memory is not seen: point
    $BMOJO_CACHE_DIR elsewhere then). The step computes no gradients."""

    def __init__(self, model, state: StaticState):
        self.state = state
        weights = {**dict(model.named_parameters()), **dict(model.named_buffers())}
        self.inputs = [*weights.values(), *state_tensors(state)]
        layout = [(tuple(t.shape), t.stride(), str(t.dtype), str(t.device)) for t in self.inputs]
        key = repr((type(model).__qualname__, model.config.to_json_string(), list(weights), layout))
        if key not in _RUNNERS:
            _RUNNERS[key] = _load_or_compile(model, state, weights, key)
        self.runner = _RUNNERS[key]

    def __call__(self, model, state: StaticState, input_ids: torch.Tensor) -> torch.Tensor:
        # the runner's flat entry (its __call__ flattens the arguments and unflattens the outputs with pytree on every
        # call), with the inputs in the order and strides they were compiled for (contiguous ids), in a new list, which
        # the boxed call consumes
        return self.runner.loader.boxed_run([input_ids.contiguous(), *self.inputs])[0]


_RUNNERS: dict = {}


def compiled_step_dir() -> Path:
    """Where compiled decode steps are kept across processes: $BMOJO_CACHE_DIR, else $XDG_CACHE_HOME/bmojo (by
    default ~/.cache/bmojo), then decode_steps/."""
    root = os.environ.get("BMOJO_CACHE_DIR")
    if not root:
        root = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "bmojo"
    return Path(root) / "decode_steps"


@functools.cache
def _source_digest() -> str:
    """sha256 of bmojo's Python sources (the code a compiled step was traced from)."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).resolve().parents[1].rglob("*.py")):
        digest.update(path.read_bytes())
    return digest.hexdigest()


def _load_or_compile(model, state: StaticState, weights: dict, key: str):
    """The runner for `key` from its package on disk, or compiled (and written there: to a temporary name, then
    renamed, so a reader never sees half a file). The package is native code for this machine's kind of processor
    (its vector instructions, or its GPU's compute capability), which the file's name includes."""
    device = state.positions.device
    target = (torch.cuda.get_device_capability(device) if device.type == "cuda"
              else torch.backends.cpu.get_cpu_capability())
    digest = hashlib.sha256(f"{torch.__version__}|{target}|{_source_digest()}|{key}".encode()).hexdigest()[:32]
    path = compiled_step_dir() / f"{digest}.pt2"
    if path.exists():
        return torch._inductor.aoti_load_package(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(f"{digest}.{os.getpid()}.partial.pt2")
    _compile_step(model, state, weights, partial)
    os.replace(partial, path)
    return torch._inductor.aoti_load_package(str(path))


def _compile_step(model, state: StaticState, weights: dict, path: Path) -> None:
    """`decode_step` over flat inputs (ids, the model's `weights` (name: tensor) in order, the tensors of `state`),
    compiled by AOTInductor into the package `path`. Exporting traces with fake tensors: no buffer changes."""
    names = list(weights)

    class Step(torch.nn.Module):  # the model as a submodule, whose weights functional_call swaps for the inputs
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, state_):
            return decode_step(self.model, state_, input_ids)

    step = Step()

    class FlatStep(torch.nn.Module):  # holds no weights (a closure over `step`), so none is copied into the program
        def forward(self, input_ids, *tensors):
            swapped = {f"model.{name}": t for name, t in zip(names, tensors, strict=False)}
            state_ = with_tensors(state, iter(tensors[len(names):]))
            return torch.func.functional_call(step, swapped, (input_ids, state_))

    ids = torch.zeros(state.positions.shape[0], 1, dtype=torch.long, device=state.positions.device)
    example = (ids, *weights.values(), *state_tensors(state))
    with torch.no_grad(), warnings.catch_warnings():  # torch 2.13 warns about its own pytree use while compiling
        warnings.filterwarnings("ignore", message=".*LeafSpec.* is deprecated", category=FutureWarning)
        program = torch.export.export(FlatStep(), example, strict=False)
        torch._inductor.aoti_compile_and_package(program, package_path=str(path))


# New tokens from which "auto" decoding compiles the step on a CPU: compiling takes tens of seconds to minutes per
# model and batch size on a 2-core CPU (35-39 s at ~5M parameters on an Intel Xeon), and the compiled step saves 5 ms
# (that Xeon) to 9 ms (an AMD EPYC, before AOTInductor) per token at ~5M parameters (docs/benchmarks.md, decode
# suite). On CUDA the eager step is captured as a CUDA graph instead: capturing costs two warm-up steps and no
# compilation, and replay removes the per-kernel launch cost that dominates small models.
COMPILE_MIN_NEW_TOKENS = 8192
CUDA_GRAPH_MIN_NEW_TOKENS = 16


def auto_decoding(max_new_tokens: int, device: torch.device, num_beams: int = 1, stores_tokens: bool = False) -> str:
    """The decoding `generate(decoding="auto")` uses for `max_new_tokens` on `device`: "cuda_graph" on CUDA and
    "compiled" on other devices when the generation is long enough to repay the set-up, else "reference". Beam
    search (which reorders the cache every step) and a model with a storage tier (`stores_tokens`: a state that
    grows, which the static layout does not hold) always take "reference"."""
    if num_beams != 1 or stores_tokens:
        return "reference"
    if device.type == "cuda":
        return "cuda_graph" if max_new_tokens >= CUDA_GRAPH_MIN_NEW_TOKENS else "reference"
    return "compiled" if max_new_tokens >= COMPILE_MIN_NEW_TOKENS else "reference"
