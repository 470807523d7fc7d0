"""`BMojoCache`: the decoding state of a whole model, one entry per layer.

Every layer kind except full attention ('attn') keeps a state whose size is fixed at creation, so
`nbytes` does not grow with the context length. The cache is what `generate()` threads through the
forward passes (HF's `cache` / `past_key_values` argument).
"""

from __future__ import annotations

import dataclasses

import torch

from ..layers.documents import copy_into, state_tensors
from .static import CompiledStep, CudaGraphStep, StaticState, decode_step, to_dynamic, to_static

DECODINGS = ("reference", "static", "compiled", "cuda_graph")


class BMojoCache:
    """Per-layer states (SSMState, KVSlots, BMojoState: whatever each mixer's `init_state` returns), the number
    of tokens seen, and where each row stands in its current document: `positions` (b,) the next token's position
    inside it, `seq_idx` (b,) its index. While every row has read the same unpadded tokens (`aligned`), rows
    share their positions and decoding takes the chunked fast path.

    `decoding` says how one-token calls run: "reference" (the mixers' recurrent forms), "static" (the fixed-address
    step of bmojo.models.static, eager), "compiled" (that step compiled ahead of time by AOTInductor, `CompiledStep`) or
    "cuda_graph" (that step captured as a CUDA graph, on CUDA). The states live in one layout at a time: `states` (the
    reference layout) converts back from the static one when that is current, `static_layout()` converts to it,
    reusing its buffers (their addresses stay fixed)."""

    is_compileable = False

    def __init__(self, states: list, layer_pattern: list[str], batch_size: int = 1, device=None,
                 dtype: torch.dtype = torch.float32, decoding: str = "reference", capacity: int | None = None):
        if decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of {', '.join(DECODINGS)}; got {decoding!r}")
        self._states = states
        if decoding != "reference" and any(getattr(s, "store", None) is not None for s in states):
            raise ValueError(f"decoding={decoding!r}: static decoding does not hold the storage tier "
                             "(num_retrieved_tokens > 0), whose store grows with the context; use 'reference'")
        if decoding == "cuda_graph" and torch.device(device or "cpu").type != "cuda":
            raise ValueError("decoding='cuda_graph' needs a model on a CUDA device; on the CPU use 'compiled'")
        self.static: StaticState | None = None  # the fixed-address layout, current while _static_current
        self._fixed_step: CompiledStep | CudaGraphStep | None = None  # "compiled" / "cuda_graph": over self.static
        self._static_current = False
        self.decoding = decoding
        self.capacity = capacity  # full attention's slots in the static layout (None: chosen when first needed)
        self.dtype = dtype  # of the states that follow the model's dtype
        self.layer_pattern = list(layer_pattern)
        self.seen_tokens = 0
        self.positions = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.seq_idx = torch.zeros(batch_size, dtype=torch.long, device=device)
        self.aligned = True

    @property
    def states(self) -> list:
        """Per-layer states in the reference layout (converted back from the static layout if that is current)."""
        if self._static_current:
            self._states = [to_dynamic(kind, s, self.positions, self.seen_tokens)
                            for kind, s in zip(self.layer_pattern, self.static.layers, strict=True)]
            self._static_current = False
        return self._states

    @states.setter
    def states(self, states: list) -> None:
        self._states = states
        self._static_current = False

    def static_layout(self, mixers: list) -> StaticState:
        """The states in the fixed-address layout (bmojo.models.static), converted from the reference layout unless
        current (`mixers`: the model's, one per layer). Full attention gets `capacity` slots (default: twice the tokens
        seen plus 1024); when the cache outgrows them, new buffers of twice the size are laid out."""
        attn = "attn" in self.layer_pattern  # the only kind whose slots can fill up
        if self._static_current and not (attn and self.seen_tokens >= self.capacity):
            return self.static
        states = self.states
        if self.capacity is None:
            self.capacity = 2 * self.seen_tokens + 1024
        while attn and self.seen_tokens >= self.capacity:
            self.capacity *= 2
        layers = [to_static(kind, mixer, s, self.positions, self.capacity)
                  for kind, mixer, s in zip(self.layer_pattern, mixers, states, strict=True)]
        st = self.static
        if st is not None and st.capacity == self.capacity:  # same shapes: convert into the same buffers
            copy_into(st.layers, layers)
            st.positions.copy_(self.positions)
            st.count.fill_(self.seen_tokens)
        else:
            count = torch.tensor(self.seen_tokens, device=self.positions.device)
            self.static = StaticState(layers, self.positions.clone(), count, self.capacity)
        self._static_current = True
        return self.static

    def static_step(self, model, input_ids: torch.Tensor) -> torch.Tensor:
        """One token per row (b, 1) through `model` (a BMojoForCausalLM) by the static step `decoding` names; returns
        the logits (b, 1, V) and advances the cache. Under autocast, "compiled" runs the eager step: its program was
        traced without autocast and would compute in the model's dtype."""
        st = self.static_layout([layer.mixer for layer in model.model.layers])
        autocast = self.decoding == "compiled" and torch.is_autocast_enabled(input_ids.device.type)
        if self.decoding in ("compiled", "cuda_graph") and not autocast:  # built once per layout (fixed buffers)
            if self._fixed_step is None or self._fixed_step.state is not st:
                fixed = CompiledStep if self.decoding == "compiled" else CudaGraphStep
                self._fixed_step = fixed(model, st)
            step = self._fixed_step
        else:
            step = decode_step
        logits = step(model, st, input_ids)
        self.advance(1)
        return logits

    def advance(self, num_tokens: int, docs=None) -> None:
        """Record that `num_tokens` more tokens were read (with their `Documents`, if any)."""
        self.seen_tokens += num_tokens
        if docs is None:
            self.positions = self.positions + num_tokens
        else:
            self.positions, self.seq_idx = docs.positions[:, -1] + 1, docs.seq_idx[:, -1]
            self.aligned = False

    def __len__(self) -> int:
        return len(self.layer_pattern)

    @property
    def nbytes(self) -> int:
        """Bytes of all tensors held: `working_nbytes` + `stored_nbytes`."""
        layers = self.static.layers if self._static_current else self._states
        return sum(t.numel() * t.element_size() for s in layers for t in state_tensors(s))

    @property
    def stored_nbytes(self) -> int:
        """Bytes of the storage tier (B'MOJO layers with num_retrieved_tokens > 0): linear in the context length."""
        stores = [s.store for s in self._states if getattr(s, "store", None) is not None]
        return sum(t.numel() * t.element_size() for t in state_tensors(stores))

    @property
    def working_nbytes(self) -> int:
        """Bytes of the working memory: SSM states, windows, fading and eidetic memories (constant in the context
        length), and the growing KV of 'attn' layers."""
        return self.nbytes - self.stored_nbytes

    # The small part of HF's Cache interface that `generate()` consults.
    def get_seq_length(self, layer_idx: int = 0) -> int:
        return self.seen_tokens

    @property
    def is_linear(self) -> list[bool]:
        return [False] * len(self.layer_pattern)

    def reorder_cache(self, beam_idx: torch.LongTensor) -> None:
        """Select batch rows (beam search)."""
        for i, s in enumerate(self.states):
            self.states[i] = _index_batch(s, beam_idx)
        self.positions, self.seq_idx = _index_batch(self.positions, beam_idx), _index_batch(self.seq_idx, beam_idx)


def _index_batch(obj, idx):
    if obj is None:
        return None
    if isinstance(obj, list):
        return [_index_batch(item, idx) for item in obj]
    if dataclasses.is_dataclass(obj):
        return type(obj)(**{f.name: _index_batch(getattr(obj, f.name), idx) for f in dataclasses.fields(obj)})
    return obj.index_select(0, idx.to(obj.device))  # every state tensor is batch-first
