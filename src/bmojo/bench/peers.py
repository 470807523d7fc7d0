"""Layer-level peers from `transformers`, at the width of our layers.

- Mamba-2: `transformers.models.mamba2.modeling_mamba2.Mamba2Mixer` (its pure-PyTorch path: without the
  `mamba_ssm` / `causal_conv1d` packages it falls back to reference PyTorch code; `bmojo`'s HF_HUB_OFFLINE=1,
  set by `bmojo.cli.main`, keeps it from fetching hub kernels).
- Mistral sliding-window attention and Llama full attention (`MistralAttention`, `LlamaAttention`, SDPA
  implementation). They take precomputed rotary embeddings and a mask, which the HF model builds once per
  forward for all layers: we build them the same way (`MistralRotaryEmbedding`, `create_sliding_window_causal_mask`
  / `create_causal_mask`) once, outside the timed region. So the peers are timed without that overhead,
  while our layers compute their RoPE inside. For Llama at full causal attention `create_causal_mask`
  returns None (SDPA runs with is_causal=True); for Mistral it is a dense (L, L) boolean mask.
"""

from __future__ import annotations

from collections.abc import Callable

import torch


def _mamba2_config(config, **more):
    """HF `Mamba2Config` with our SSM sizes (and `more` fields)."""
    from transformers import Mamba2Config

    inner = config.ssm_expand * config.hidden_size
    return Mamba2Config(
        hidden_size=config.hidden_size, num_heads=inner // config.ssm_head_dim, head_dim=config.ssm_head_dim,
        state_size=config.ssm_state_size, n_groups=config.ssm_n_groups, expand=config.ssm_expand,
        conv_kernel=config.ssm_conv_kernel, chunk_size=config.ssm_chunk_size, use_bias=False, use_conv_bias=True,
        layer_norm_epsilon=config.rms_norm_eps, **more,
    )


# What the HF language models share with ours in the decode benchmark: tied embeddings, token 0 as pad/bos/eos.
_LM_FIELDS = dict(tie_word_embeddings=True, pad_token_id=0, bos_token_id=0, eos_token_id=0)


def mamba2_peer(config) -> tuple[torch.nn.Module, Callable]:
    """HF Mamba2Mixer with our SSM sizes; returns (module, fn(x) -> y)."""
    from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer

    module = Mamba2Mixer(_mamba2_config(config, num_hidden_layers=1), layer_idx=0)
    return module, lambda x: module(x)


def attention_peer(config, x: torch.Tensor, window: int | None) -> tuple[torch.nn.Module, Callable]:
    """HF MistralAttention (window) or LlamaAttention (window=None), SDPA; rotary and mask prepared for x."""
    from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask

    kw = dict(
        hidden_size=config.hidden_size, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, intermediate_size=config.intermediate_size,
        num_hidden_layers=1, rms_norm_eps=config.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta},
    )
    if window is not None:
        from transformers import MistralConfig
        from transformers.models.mistral.modeling_mistral import MistralAttention as Attn
        from transformers.models.mistral.modeling_mistral import MistralRotaryEmbedding as Rope

        hf_cfg = MistralConfig(sliding_window=window, **kw)
        make_mask = create_sliding_window_causal_mask
    else:
        from transformers import LlamaConfig
        from transformers.models.llama.modeling_llama import LlamaAttention as Attn
        from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding as Rope

        hf_cfg = LlamaConfig(**kw)
        make_mask = create_causal_mask
    hf_cfg._attn_implementation = "sdpa"
    module = Attn(hf_cfg, layer_idx=0).to(x.device)
    position_ids = torch.arange(x.shape[1], device=x.device)[None]
    rope = Rope(hf_cfg).to(x.device)
    with torch.no_grad():
        pos_emb = rope(x, position_ids)
        mask = make_mask(config=hf_cfg, inputs_embeds=x, attention_mask=None, cache=None, position_ids=position_ids)
    return module, lambda h: module(h, pos_emb, mask)[0]


def mamba2_lm_peer(config) -> torch.nn.Module:
    """HF `Mamba2ForCausalLM` with the sizes of our `mamba` preset `config` (layers, width, SSM sizes, vocabulary,
    tied embeddings): the same parameters up to its per-layer norms."""
    from transformers import Mamba2ForCausalLM

    hf_cfg = _mamba2_config(config, vocab_size=config.vocab_size, num_hidden_layers=config.num_hidden_layers,
                            **_LM_FIELDS)
    return Mamba2ForCausalLM(hf_cfg).eval()


def mistral_lm_peer(config) -> torch.nn.Module:
    """HF `MistralForCausalLM` (SDPA, sliding window) with the sizes of our `swa` preset `config`."""
    from transformers import MistralConfig, MistralForCausalLM

    hf_cfg = MistralConfig(
        vocab_size=config.vocab_size, hidden_size=config.hidden_size, intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers, num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads, sliding_window=config.window_size,
        rms_norm_eps=config.rms_norm_eps, max_position_embeddings=1 << 20,
        rope_parameters={"rope_type": "default", "rope_theta": config.rope_theta}, **_LM_FIELDS,
    )
    hf_cfg._attn_implementation = "sdpa"
    return MistralForCausalLM(hf_cfg).eval()
