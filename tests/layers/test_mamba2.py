"""bmojo.layers.mamba2: our `ssm` mixer against `transformers`' pure-PyTorch Mamba2Mixer, weights copied."""

import torch
from transformers import Mamba2Config
from transformers.models.mamba2.modeling_mamba2 import Mamba2Mixer as HFMamba2Mixer

from bmojo.layers.mamba2 import Mamba2Mixer

HF_TOL = 1e-4  # ours vs the transformers implementation: the same fp32 function, computed in another order


def test_ssm_mixer_matches_transformers_mamba2(tiny_config):
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
    torch.testing.assert_close(y, y_hf, atol=HF_TOL, rtol=HF_TOL)
