"""`BMojoForCausalLM`: embeddings, a stack of pre-norm residual blocks with per-layer mixer kinds,
final norm, tied LM head. HF `PreTrainedModel` + `GenerationMixin`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn
from transformers import GenerationMixin, PreTrainedModel
from transformers import initialization as init
from transformers.utils import ModelOutput

from ..layers.attention import Attention
from ..layers.bmojo import BMojoMixer
from ..layers.common import RMSNorm, RotaryEmbedding, SwiGLU, rope_inverse_frequencies
from ..layers.mamba2 import Mamba2Mixer
from ..ops.loss import next_token_cross_entropy, token_cross_entropy
from .cache import BMojoCache
from .configuration import MIXER_KINDS, BMojoConfig

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

    def forward(self, h: torch.Tensor, state=None, start: int = 0):
        x = self.input_norm(h)
        out, state = self.mixer(x, state, start)
        h = h + out
        if self.mlp is not None:
            h = h + self.mlp(self.mlp_norm(h))
        return h, state


@dataclass
class BMojoCausalLMOutput(ModelOutput):
    """loss (scalar, with labels or targets); logits (b, T, V); cache (BMojoCache, with use_cache)."""

    loss: torch.Tensor | None = None
    logits: torch.Tensor | None = None
    cache: BMojoCache | None = None

    @property
    def past_key_values(self) -> BMojoCache | None:  # the pre-5.x name
        return self.cache


class BMojoPreTrainedModel(PreTrainedModel):
    config_class = BMojoConfig
    base_model_prefix = "model"
    _no_split_modules = ["BMojoBlock"]
    _is_stateful = True  # recurrent state: no cache rollback (assisted decoding)
    supports_gradient_checkpointing = False

    @classmethod
    def _supports_default_dynamic_cache(cls) -> bool:
        return False  # the model builds its own BMojoCache

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


class BMojoModel(BMojoPreTrainedModel):
    def __init__(self, config: BMojoConfig):
        super().__init__(config)
        self.embed_tokens = nn.Embedding(config.vocab_size, config.hidden_size)
        self.layers = nn.ModuleList(BMojoBlock(config, i) for i in range(config.num_hidden_layers))
        self.norm = RMSNorm(config.hidden_size, config.rms_norm_eps)
        self.post_init()

    def forward(self, input_ids: torch.Tensor, cache: BMojoCache | None = None) -> torch.Tensor:
        """input_ids: (b, T). Returns hidden states (b, T, d); advances `cache` in place if given."""
        h = self.embed_tokens(input_ids)
        start = cache.seen_tokens if cache is not None else 0
        for i, layer in enumerate(self.layers):
            if cache is None:
                h, _ = layer(h)
            else:
                h, cache.states[i] = layer(h, cache.states[i], start)
        if cache is not None:
            cache.seen_tokens += input_ids.shape[1]
        return self.norm(h)


class BMojoForCausalLM(BMojoPreTrainedModel, GenerationMixin):
    _tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}

    def __init__(self, config: BMojoConfig):
        super().__init__(config)
        self.model = BMojoModel(config)
        self.lm_head = nn.Linear(config.hidden_size, config.vocab_size, bias=False)
        self.post_init()

    def get_input_embeddings(self) -> nn.Embedding:
        return self.model.embed_tokens

    def new_cache(self, batch_size: int) -> BMojoCache:
        """An empty decoding cache for `batch_size` sequences, on the model's device and dtype."""
        p = next(self.parameters())
        states = [layer.mixer.init_state(batch_size, p.device, p.dtype) for layer in self.model.layers]
        return BMojoCache(states, self.config.layer_pattern)

    def _check_inputs(self, input_ids, attention_mask, cache) -> None:
        if input_ids is None or input_ids.dim() != 2:
            got = None if input_ids is None else tuple(input_ids.shape)
            raise ValueError(f"input_ids must be a (batch, seq_len) tensor, got {got}")
        if input_ids.shape[1] == 0:
            raise ValueError("input_ids is an empty sequence (seq_len 0); pass at least one token")
        lo, hi = int(input_ids.min()), int(input_ids.max())
        if lo < 0 or hi >= self.config.vocab_size:
            raise ValueError(f"token ids must lie in [0, vocab_size={self.config.vocab_size}); got min {lo}, max {hi}")
        if attention_mask is not None:
            past = cache.seen_tokens if cache is not None else 0
            ok = (input_ids.shape[0], input_ids.shape[1]), (input_ids.shape[0], past + input_ids.shape[1])
            if attention_mask.dim() != 2 or tuple(attention_mask.shape) not in ok:
                raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}; expected one of {ok} "
                                 "(batch, [past +] seq_len)")
            if not bool(attention_mask.bool().all()):
                raise ValueError("attention_mask contains padding (zeros): padded batches are not supported; "
                                 "pass sequences of equal length or run them one at a time")
        if cache is not None and not isinstance(cache, BMojoCache):
            raise ValueError(f"the cache must be a BMojoCache (from model.new_cache(batch_size)), "
                             f"got {type(cache).__name__}")

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        targets: torch.LongTensor | None = None,
        cache: BMojoCache | None = None,
        past_key_values: BMojoCache | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        return_dict: bool | None = None,
        **kwargs,
    ) -> BMojoCausalLMOutput:
        """input_ids: (b, T). The loss takes one of two target conventions (-100 ignored in both):
        `labels` (b, T), Hugging Face's: shifted inside, labels[:, t+1] is the target of position t (pass the
        inputs themselves for language modeling); `targets` (b, T), pre-shifted (nanoGPT's, what `bmojo.tasks`
        returns): targets[:, t] is the target of position t. Passing both is an error.
        `cache` (or its older name `past_key_values`) continues decoding from a BMojoCache; with `use_cache=True`
        and no cache, a new one is started. Returns loss, logits (b, T', V) for the last `logits_to_keep`
        positions (0 = all), cache."""
        if labels is not None and targets is not None:
            raise ValueError("pass labels (HF convention, shifted inside) or targets (pre-shifted, as bmojo.tasks "
                             "returns them), not both")
        cache = cache if cache is not None else past_key_values
        if use_cache and cache is None:
            cache = self.new_cache(input_ids.shape[0])
        self._check_inputs(input_ids, attention_mask, cache)
        h = self.model(input_ids, cache)
        logits = self.lm_head(h[:, -logits_to_keep:] if logits_to_keep else h)
        loss = None
        if labels is not None:
            loss = next_token_cross_entropy(logits, labels)
        elif targets is not None:
            loss = token_cross_entropy(logits, targets)
        return BMojoCausalLMOutput(loss=loss, logits=logits, cache=cache)
