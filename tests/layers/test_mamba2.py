"""Our `ssm` and `swa` layers against `transformers`' pure-PyTorch Mamba2Mixer and Mistral, weights copied."""

import torch
from transformers import Mamba2Config, MistralConfig, MistralForCausalLM
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HFMamba2Mixer

from bmojo.layers.mamba2 import Mamba2Mixer
from conftest import tiny_config, tiny_model


def test_ssm_mixer_matches_transformers_mamba2():
    cfg = tiny_config("mamba", hidden_size=64, ssm_head_dim=16, ssm_state_size=16, ssm_n_groups=2, ssm_chunk_size=16)
    ours = Mamba2Mixer(cfg)
    hf_cfg = Mamba2Config(
        hidden_size=64, num_heads=ours.num_heads, head_dim=16, state_size=16, n_groups=2, expand=2, conv_kernel=4,
        chunk_size=16, use_bias=False, use_conv_bias=True, layer_norm_epsilon=cfg.rms_norm_eps, num_hidden_layers=1,
    )
    hf = HFMamba2Mixer(hf_cfg, layer_idx=0).eval()
    with torch.no_grad():  # random but sane weights, then copy ours -> HF by name
        for p in ours.parameters():
            p.normal_(0, 0.3)
        ours.A_log.copy_(torch.rand_like(ours.A_log) * 2)
    hf.load_state_dict(ours.state_dict(), strict=True)
    u = torch.randn(2, 41, 64)  # 41: not a multiple of the chunk size
    with torch.no_grad():
        y, _ = ours(u)
        y_hf = hf(u)
    torch.testing.assert_close(y, y_hf, atol=1e-4, rtol=1e-4)


def test_swa_model_matches_transformers_mistral_sliding_window():
    """A `swa` preset model is a Mistral with a sliding window: same block (RMSNorm, attention with RoPE and
    grouped KV heads, RMSNorm, SwiGLU), same window rule (the last w tokens, self included)."""
    ours = tiny_model("swa", rms_norm_eps=1e-6, tie_word_embeddings=False)
    cfg = ours.config
    hf = MistralForCausalLM(MistralConfig(
        vocab_size=cfg.vocab_size, hidden_size=cfg.hidden_size, intermediate_size=cfg.intermediate_size,
        num_hidden_layers=cfg.num_hidden_layers, num_attention_heads=cfg.num_attention_heads,
        num_key_value_heads=cfg.num_key_value_heads, sliding_window=cfg.window_size, rms_norm_eps=1e-6,
        tie_word_embeddings=False, rope_parameters={"rope_type": "default", "rope_theta": cfg.rope_theta},
        attn_implementation="eager",
    )).eval()
    rename = {"input_norm": "input_layernorm", "mlp_norm": "post_attention_layernorm", "mixer": "self_attn"}
    state = {}
    for name, t in ours.state_dict().items():
        for a, b in rename.items():
            name = name.replace(f".{a}.", f".{b}.")
        state[name] = t
    hf.load_state_dict(state, strict=True)
    ids = torch.randint(0, cfg.vocab_size, (2, 45))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=1e-4, rtol=1e-4)
