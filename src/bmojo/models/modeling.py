"""`BMojoForCausalLM`: embeddings, a stack of pre-norm residual blocks with per-layer mixer kinds,
final norm, tied LM head. HF `PreTrainedModel` + `GenerationMixin`."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from ..layers.attention import Attention
from ..layers.bmojo import BMojoMixer
from ..layers.common import RMSNorm, RotaryEmbedding, SwiGLU, rope_inverse_frequencies
from ..layers.documents import Documents, documents_from_starts, restart_rows
from ..layers.mamba2 import Mamba2Mixer
from ..ops.loss import next_token_cross_entropy, token_cross_entropy
from .cache import DECODINGS, BMojoCache
from .cache_file import load_cache, save_cache
from .configuration import MIXER_KINDS, BMojoConfig
from .remote import AUTO_MAP, write_remote_code_shim
from .static import auto_decoding

logger = logging.getLogger("bmojo")

# The mixer of each kind. Every mixer has one contract: `forward(x (b, T, d), state=None, start=0) -> (out, state)`
# (no state: the parallel form; a state from `init_state(batch_size, device, dtype)`: decoding from position start).
MIXERS: dict[str, Callable[[BMojoConfig], nn.Module]] = {
    "attn": lambda config: Attention(config, window=None),
    "swa": lambda config: Attention(config, window=config.window_size),
    "ssm": Mamba2Mixer,
    "bmojo_f": lambda config: BMojoMixer(config, num_eidetic=0),
    "bmojo": lambda config: BMojoMixer(config, num_eidetic=config.num_eidetic_tokens),
}
assert tuple(MIXERS) == MIXER_KINDS


def _require(condition: torch.Tensor, message) -> None:
    """ValueError(message) unless the boolean tensor `condition` holds; on accelerators an asynchronous device
    assertion instead (no host sync). `message`: a string or a function returning one."""
    if condition.device.type == "cpu":
        if not bool(condition):
            raise ValueError(message() if callable(message) else message)
    else:
        torch._assert_async(condition, message if isinstance(message, str) else "invalid model input")


class BMojoBlock(nn.Module):
    """h = h + mixer(norm(h)); then, if config.use_mlp, h = h + mlp(norm(h))."""

    def __init__(self, config: BMojoConfig, layer_idx: int):
        super().__init__()
        self.kind = config.layer_pattern[layer_idx]
        self.input_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.mixer = MIXERS[self.kind](config)
        if config.use_mlp:
            self.mlp_norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
            self.mlp = SwiGLU(config.hidden_size, config.intermediate_size)
        else:
            self.mlp = None

    def forward(self, h: torch.Tensor, state=None, start: int = 0, docs: Documents | None = None):
        return self._residual(h, lambda x: self.mixer(x, state, start, docs))

    def step(self, h: torch.Tensor, state, positions: torch.Tensor, count: torch.Tensor) -> torch.Tensor:
        """The static decode step (bmojo.models.static): h (b, 1, d); `state` (fixed-address layout), in place."""
        return self._residual(h, lambda x: (self.mixer.static_step(x, state, positions, count), None))[0]

    def _residual(self, h: torch.Tensor, mix: Callable):
        out, state = mix(self.input_norm(h))
        h = h + out
        if self.mlp is not None:
            h = h + self.mlp(self.mlp_norm(h))
        return h, state


@dataclass
class BMojoCausalLMOutput(ModelOutput):
    """loss (scalar, with labels or targets); logits (b, T, V); cache (BMojoCache, with use_cache);
    hidden_states (with output_hidden_states): embeddings, each block's output, the last after the final norm."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: BMojoCache | None = None
    hidden_states: tuple[torch.Tensor, ...] | None = None

    @property
    def past_key_values(self) -> BMojoCache | None:  # the pre-5.x name
        return self.cache


class BMojoPreTrainedModel(PreTrainedModel):
    config_class = BMojoConfig
    base_model_prefix = "model"
    _no_split_modules = ["BMojoBlock"]
    _is_stateful = True  # recurrent state: no cache rollback (assisted decoding)
    supports_gradient_checkpointing = True

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model builds its own BMojoCache

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """HF's load; a folder that carries a manifest (a `bmojo train` run or checkpoint) is verified first, and a
        damaged file (truncated, corrupted) is reported in one ValueError line instead of a parser's traceback.
        (`bmojo.lm.load_run` also falls back to the newest valid checkpoint of a run.)"""
        folder = Path(str(pretrained_model_name_or_path))
        if folder.is_dir() and (folder / "manifest.json").is_file():
            from ..training.checkpoint import verify_manifest

            problem = verify_manifest(folder)
            if problem:
                raise ValueError(f"{folder} is damaged: {problem}; for a run folder, bmojo.lm.load_run(folder) "
                                 "falls back to its newest valid checkpoint")
        return super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)

    def save_pretrained(self, save_directory, *args, **kwargs):
        """HF's save (config.json with an `auto_map`, safetensors weights), plus `bmojo_auto.py`: the folder then
        loads in a Python that has not imported bmojo, with trust_remote_code=True (see `bmojo.models.remote`)."""
        self.config.auto_map = AUTO_MAP
        result = super().save_pretrained(save_directory, *args, **kwargs)
        write_remote_code_shim(save_directory)
        return result

    @torch.no_grad()
    def _init_weights(self, module):
        super()._init_weights(module)
        if isinstance(module, Mamba2Mixer):  # Mamba-2 defaults: A ~ U[1, 16], dt ~ logU[dt_min, dt_max]
            init.copy_(module.A_log, torch.log(torch.empty_like(module.A_log).uniform_(1, 16)))
            lo, hi = module.dt_range
            dt = torch.exp(torch.rand_like(module.dt_bias) * (math.log(hi) - math.log(lo)) + math.log(lo))
            init.copy_(module.dt_bias, dt + torch.log(-torch.expm1(-dt)))  # inverse softplus
            init.ones_(module.D)
            init.kaiming_uniform_(module.conv1d.weight, a=math.sqrt(5))
            init.zeros_(module.conv1d.bias)
        elif isinstance(module, RotaryEmbedding):
            init.copy_(module.inv_freq, rope_inverse_frequencies(module.inv_freq.shape[0] * 2, self.config.rope_theta))
        elif isinstance(module, BMojoMixer):
            init.copy_(module.innovation_weights, torch.tensor(self.config.innovation_weights))
            if module.residual_gate is not None:
                init.zeros_(module.residual_gate)


class BMojoModel(BMojoPreTrainedModel):
    def __init__(self, config: BMojoConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(BMojoBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.gradient_checkpointing = False
        self.post_init()

    def forward(self, inputs_embeds: torch.Tensor, cache: BMojoCache | None = None, docs: Documents | None = None
                ) -> list[torch.Tensor]:
        """inputs_embeds: (b, T, d). Returns the hidden states [input, after block 1, ..., after the final norm]
        ((b, T, d) each); advances `cache` in place if given. Decoding with documents (padding, packing) reads one
        token at a time, so that each row's document boundaries and chunk grid are its own."""
        if cache is not None and docs is not None and inputs_embeds.shape[1] > 1:
            steps = [self._blocks(inputs_embeds[:, t : t + 1], cache, docs.slice(t, t + 1))
                     for t in range(inputs_embeds.shape[1])]
            hidden = [torch.cat(parts, dim=1) for parts in zip(*steps, strict=True)]
        else:
            hidden = self._blocks(inputs_embeds, cache, docs)
        return hidden[:-1] + [self.norm(hidden[-1])]

    def _blocks(self, h: torch.Tensor, cache: BMojoCache | None, docs: Documents | None) -> list[torch.Tensor]:
        """Every block over h (b, T, d); returns [h, after block 1, ..., after the last block]."""
        start = cache.seen_tokens if cache is not None else 0
        hidden = [h]
        for i, layer in enumerate(self.layers):
            if cache is None:
                if self.gradient_checkpointing and self.training:
                    h, _ = self._gradient_checkpointing_func(layer.__call__, h, None, 0, docs)
                else:
                    h, _ = layer(h, None, 0, docs)
            else:
                state = cache.states[i]
                if docs is not None:  # rows whose first token starts a document forget the previous one
                    fresh = layer.mixer.init_state(h.shape[0], h.device, cache.dtype)
                    state = restart_rows(docs.starts[:, 0], state, fresh)
                h, cache.states[i] = layer(h, state, start, docs)
            hidden.append(h)
        if cache is not None:
            cache.advance(h.shape[1], docs)
        return hidden


class BMojoForCausalLM(BMojoPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: BMojoConfig):
        super().__init__(config)
        self.model = BMojoModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self._decoding = ("reference", None)  # (decoding, capacity) of the caches forward() starts (set by generate)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def generate(self, inputs=None, generation_config=None, *args, decoding: str = "auto", **kwargs):
        """HF `generate`, plus `decoding`: how the one-token steps run (see BMojoCache): "reference" (the mixers'
        recurrent forms), "static" (the fixed-address step of bmojo.models.static, eager), "compiled" (that step
        compiled ahead of time by AOTInductor; the first call for a model configuration and batch size compiles, up
        to minutes on a 2-core CPU), "cuda_graph" (the step captured as one CUDA graph), or "auto": `auto_decoding`
        decides (CUDA graph on CUDA, compiled on a CPU, when the generation is long enough to repay it). Prefill runs
        the chunked reference form either way. The choice is logged at INFO (logger "bmojo")."""
        config = generation_config if generation_config is not None else self.generation_config
        max_new = kwargs.get("max_new_tokens", config.max_new_tokens) or config.max_length
        ids = inputs if inputs is not None else kwargs.get("input_ids")
        prompt = ids.shape[-1] if ids is not None else 1
        beams = kwargs.get("num_beams", config.num_beams) or 1
        if decoding == "auto":
            decoding = auto_decoding(max_new, next(self.parameters()).device, beams, self.config.stores_tokens)
        if decoding not in DECODINGS:
            raise ValueError(f"decoding must be one of auto, {', '.join(DECODINGS)}; got {decoding!r}")
        logger.info("generate: %s decoding (%d new tokens, %d beams)", decoding, max_new, beams)
        self._decoding = (decoding, prompt + max_new)
        try:
            return super().generate(inputs, generation_config, *args, **kwargs)
        finally:
            self._decoding = ("reference", None)

    def new_cache(self, batch_size: int, decoding: str = "reference", capacity: int | None = None) -> BMojoCache:
        """An empty decoding cache for `batch_size` sequences, on the model's device and dtype. `decoding`: how
        one-token calls run ("reference", "static", "compiled", "cuda_graph": see BMojoCache); `capacity`: full
        attention's slots in the static layout (the longest context it will hold; default: grown as needed)."""
        p = next(self.parameters())
        states = [layer.mixer.init_state(batch_size, p.device, p.dtype) for layer in self.model.layers]
        return BMojoCache(states, self.config.layer_pattern, batch_size, p.device, p.dtype, decoding, capacity)

    def save_cache(self, cache: BMojoCache, path: str | Path) -> None:
        """Write a decoding cache this model built (every state, the storage tier included) to one safetensors file."""
        save_cache(cache, self, path)

    def load_cache(self, path: str | Path) -> BMojoCache:
        """A cache `save_cache` wrote with this model (same config and weights; anything else raises ValueError):
        decoding continues from it exactly."""
        return load_cache(self, path)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        targets: torch.LongTensor | None = None,
        cache: BMojoCache | None = None,
        past_key_values: BMojoCache | None = None,
        use_cache: bool | None = None,
        inputs_embeds: torch.Tensor | None = None,
        seq_idx: torch.LongTensor | None = None,
        position_ids: torch.LongTensor | None = None,
        output_hidden_states: bool | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BMojoCausalLMOutput:
        """input_ids: (b, T) (or inputs_embeds (b, T, d)).

        Documents: `attention_mask` (b, T) or (b, past + T), HF style: zeros mark padding, on the left (in a
        decoding call, padding after real tokens is an error); `seq_idx` (b, T): a document index per token,
        nondecreasing along a row (packed sequences, as mamba-ssm names it); or `position_ids` (b, T) that restart
        at 0 where a document starts (what `transformers.DataCollatorWithFlattening` returns). Each document is
        computed as if it stood alone: the SSM, the windows and the B'MOJO memories restart at its first token,
        and its positions count from there; pad tokens form documents that no real token reads.

        The loss takes one of two target conventions (-100 ignored in both): `labels` (b, T), Hugging Face's:
        shifted inside, labels[:, t+1] is the target of position t (pass the inputs themselves for language
        modeling); `targets` (b, T), pre-shifted (nanoGPT's, what `bmojo.tasks` returns): targets[:, t] is the
        target of position t. Passing both is an error.
        `cache` (or its older name `past_key_values`) continues decoding from a BMojoCache; with `use_cache=True`
        and no cache, a new one is started. Returns loss, logits (b, T', V) for the last `logits_to_keep`
        positions (0 = all), cache, and with `output_hidden_states` the hidden states (embeddings, each block's
        output, the last one after the final norm)."""
        if labels is not None and targets is not None:
            raise ValueError("pass labels (HF convention, shifted inside) or targets (pre-shifted, as bmojo.tasks "
                             "returns them), not both")
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids (b, T) and inputs_embeds (b, T, hidden_size)")
        cache = cache if cache is not None else past_key_values
        shape = tuple(input_ids.shape) if input_ids is not None else tuple(inputs_embeds.shape[:-1])
        if use_cache and cache is None and len(shape) == 2:
            cache = self.new_cache(shape[0], *self._decoding)
        self._check_inputs(input_ids, inputs_embeds, cache)
        docs = self._documents(shape, attention_mask, seq_idx, position_ids, cache)
        if (cache is not None and cache.decoding != "reference" and shape[1] == 1 and input_ids is not None
                and labels is None and targets is None and not output_hidden_states and not torch.is_grad_enabled()
                and (docs is None or not bool(docs.starts.any()))):  # one token per row: the static step
            return BMojoCausalLMOutput(logits=cache.static_step(self, input_ids), cache=cache)
        h = self.model.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
        hidden = self.model(h, cache, docs)
        h = hidden[-1]
        logits = self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h)
        loss = None
        if labels is not None:
            loss = next_token_cross_entropy(logits, labels)
        elif targets is not None:
            loss = token_cross_entropy(logits, targets)
        return BMojoCausalLMOutput(loss=loss, logits=logits, cache=cache,
                                   hidden_states=tuple(hidden) if output_hidden_states else None)

    def _check_inputs(self, input_ids, inputs_embeds, cache) -> None:
        """ValueError for inputs of the wrong shape, empty, or with token ids outside the vocabulary (checked
        without a host sync on accelerators: there an out-of-range id fails asynchronously)."""
        if input_ids is not None and input_ids.dim() != 2:
            raise ValueError(f"input_ids must be a (batch, seq_len) tensor, got {tuple(input_ids.shape)}")
        d = self.config.hidden_size
        if inputs_embeds is not None and (inputs_embeds.dim() != 3 or inputs_embeds.shape[2] != d):
            raise ValueError(f"inputs_embeds must be (batch, seq_len, hidden_size={self.config.hidden_size}), "
                             f"got {tuple(inputs_embeds.shape)}")
        ids = input_ids if input_ids is not None else inputs_embeds[..., 0]
        if ids.shape[1] == 0:
            raise ValueError("input_ids is an empty sequence (seq_len 0); pass at least one token")
        if cache is not None and not isinstance(cache, BMojoCache):
            raise ValueError(f"the cache must be a BMojoCache (from model.new_cache(batch_size)), "
                             f"got {type(cache).__name__}")
        if cache is not None:
            batch, dtype = ids.shape[0], next(self.parameters()).dtype
            if cache.positions.shape[0] != batch:
                raise ValueError(f"the cache was made for batch size {cache.positions.shape[0]}, the input has "
                                 f"{batch} rows; make one with model.new_cache({batch})")
            if cache.dtype != dtype:
                raise ValueError(f"the cache holds {cache.dtype} states, the model computes in {dtype}; make the "
                                 "cache after moving the model (model.new_cache(batch_size))")
        if input_ids is not None:
            in_range = (input_ids >= 0).all() & (input_ids < self.config.vocab_size).all()
            _require(in_range, lambda: f"token ids must lie in [0, vocab_size={self.config.vocab_size}); got min "
                                       f"{int(input_ids.min())}, max {int(input_ids.max())}")

    def _documents(self, shape, attention_mask, seq_idx, position_ids, cache) -> Documents | None:
        """The document structure of a (b, T) block, or None when it is one document per row that continues the
        cache (or starts at position 0): the fast path."""
        b, T = shape
        past = cache.seen_tokens if cache is not None else 0
        device = self.model.embed_tokens.weight.device
        starts = None
        if seq_idx is not None:
            if tuple(seq_idx.shape) != (b, T):
                raise ValueError(f"seq_idx has shape {tuple(seq_idx.shape)}; expected (batch, seq_len) = {(b, T)}")
            _require((seq_idx[:, 1:] >= seq_idx[:, :-1]).all(),
                     "seq_idx must be nondecreasing along each row (a document index per token)")
            before = cache.seq_idx if past else seq_idx[:, 0]
            starts = torch.cat([seq_idx[:, :1] != before[:, None], seq_idx[:, 1:] != seq_idx[:, :-1]], dim=1)
        elif attention_mask is not None:
            ok = (b, T), (b, past + T)
            if attention_mask.dim() != 2 or tuple(attention_mask.shape) not in ok:
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected one of {ok} "
                                 "(batch, [past +] seq_len)")
            real = attention_mask.bool()
            if past:
                _require(~(real[:, :-1] & ~real[:, 1:]).any(), "attention_mask has padding after real tokens (right "
                         "padding) in a decoding call; pad on the left (tokenizer.padding_side = 'left')")
            before = torch.ones_like(real[:, :1]) if real.shape[1] == T and past else torch.zeros_like(real[:, :1])
            starts = real & ~torch.cat([before, real[:, :-1]], dim=1)  # a real token after padding
            starts = starts[:, -T:]
            if not past:
                starts[:, 0] = True
        elif position_ids is not None:
            if tuple(position_ids.shape) != (b, T):
                raise ValueError(f"position_ids has shape {tuple(position_ids.shape)}; expected (batch, seq_len)")
            starts = position_ids == 0
        aligned = cache is None or cache.aligned
        if starts is None or (aligned and not bool(starts[:, 1:].any()) and (not past or not bool(starts[:, 0].any()))):
            if aligned:
                return None
            starts = torch.zeros(b, T, dtype=torch.bool, device=device)
        first_seq = cache.seq_idx if cache is not None else torch.zeros(b, dtype=torch.long, device=device)
        first_position = cache.positions if cache is not None else torch.zeros(b, dtype=torch.long, device=device)
        return documents_from_starts(starts, first_seq, first_position)
