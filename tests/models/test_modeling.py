"""bmojo.models.modeling: causality, decoding == parallel forward for every preset, the special cases of
docs/design.md section 4.6, the mixer contract and registry, `transformers`' Mistral as an oracle for the `swa`
preset, HF save/load/generate, gradients and the loss (labels and targets), input checks, and the model's fast
paths (bf16 autocast, CUDA; tolerances: see tests/conftest.py)."""

import pytest
import torch
from transformers import AutoModelForCausalLM, MistralConfig, MistralForCausalLM

import bmojo

PRESETS = list(bmojo.PRESETS)
L = 45  # 5 chunks of w = 8 plus a remainder of 5
VOCAB = 61  # the tiny models' vocab_size (TINY in tests/conftest.py)
DECODE_TOL = 1e-4  # decoding (token by token or in pieces) vs the parallel forward, max abs difference
EQUIVALENT_TOL = 1e-5  # two models that compute the same function (weights copied), fp32
HF_TOL = 1e-4  # ours vs the transformers implementation: the same fp32 function, computed in another order
BF16_LOGITS_TOL = 2e-2  # bf16 autocast vs fp32 logits, relative (tests/conftest.py)
BF16_LOSS_TOL = 1e-3  # bf16 autocast vs fp32 loss, relative
BF16_GRAD_TOL = 5e-2  # bf16 autocast vs fp32 gradients (all together), relative
BF16_GRAD_COSINE = 0.999  # bf16 autocast vs fp32 gradients: the update direction, minimum cosine similarity
CUDA_TOL = 1e-3  # CUDA vs CPU logits: the same fp32 arithmetic (no TF32) in another order

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (the GPU path is optional)")


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("preset", PRESETS)
def test_causal(preset, tiny_model):
    model = tiny_model(preset)
    ids = torch.randint(0, VOCAB, (2, L))
    base = logits(model, ids)
    for t in (0, 9, 23, 44):
        changed = ids.clone()
        changed[:, t + 1 :] = torch.randint(0, VOCAB, changed[:, t + 1 :].shape)
        if t + 1 < L:
            changed[:, t + 1] = (ids[:, t + 1] + 1) % VOCAB  # make sure something changes
        torch.testing.assert_close(logits(model, changed)[:, : t + 1], base[:, : t + 1], atol=0, rtol=0)


VARIANTS = [
    {},
    dict(pos_encoding="none"),
    dict(pos_encoding="rope", tie_fading_projections=False, num_key_value_heads=4),
    dict(window_size=7, ssm_chunk_size=5),
]


@pytest.mark.parametrize("variant", range(len(VARIANTS)))
@pytest.mark.parametrize("preset", PRESETS)
def test_decoding_equals_parallel_forward(preset, variant, tiny_model):
    overrides = VARIANTS[variant]
    if preset in ("transformer", "mamba") and variant:
        pytest.skip("variant only concerns windowed / B'MOJO layers")
    model = tiny_model(preset, **overrides)
    ids = torch.randint(0, VOCAB, (2, L))
    ref = logits(model, ids)
    with torch.no_grad():
        cache = model.new_cache(2)
        step = torch.cat([model(ids[:, t : t + 1], past_key_values=cache).logits for t in range(L)], dim=1)
        cache = model.new_cache(2)
        parts = [model(ids[:, a:b], cache=cache).logits for a, b in [(0, 13), (13, 16), (16, 33), (33, 34), (34, L)]]
        chunked = torch.cat(parts, dim=1)
    assert (step - ref).abs().max() <= DECODE_TOL
    assert (chunked - ref).abs().max() <= DECODE_TOL
    assert cache.seen_tokens == L


# ---------------------------------------------------------------- special cases (docs/design.md section 4.6)


def copy_mixer_weights(src, dst, attr=None):
    """Copy each layer's attention (and MLP/norm/embedding) weights of `src` into `dst`; for B'MOJO
    targets the attention lives at `mixer.attn`."""
    state = {}
    for name, tensor in src.state_dict().items():
        if attr and ".mixer." in name:
            name = name.replace(".mixer.", f".mixer.{attr}.")
        state[name] = tensor
    missing, unexpected = dst.load_state_dict(state, strict=False)
    assert not unexpected, unexpected
    assert all(".mixer.ssm." in m or "fade_" in m for m in missing), missing


def test_bmojo_without_memory_equals_swa(tiny_model):
    swa = tiny_model("swa", pos_encoding="none")
    bm = tiny_model("bmojo", seed=1, pos_encoding="none", num_fading_tokens=0, num_eidetic_tokens=0)
    copy_mixer_weights(swa, bm, attr="attn")
    ids = torch.randint(0, VOCAB, (2, L))
    torch.testing.assert_close(logits(bm, ids), logits(swa, ids), atol=EQUIVALENT_TOL, rtol=EQUIVALENT_TOL)


def test_bmojo_with_window_covering_sequence_equals_attn(tiny_model):
    attn = tiny_model("transformer")
    bm = tiny_model("bmojo", seed=1, pos_encoding="rope", window_size=L)
    copy_mixer_weights(attn, bm, attr="attn")
    ids = torch.randint(0, VOCAB, (2, L))
    torch.testing.assert_close(logits(bm, ids), logits(attn, ids), atol=EQUIVALENT_TOL, rtol=EQUIVALENT_TOL)


def test_bmojo_without_eidetic_equals_bmojo_f(tiny_model):
    f = tiny_model("bmojo_f")
    bm = tiny_model("bmojo", seed=1, pos_encoding="rope", num_eidetic_tokens=0)
    bm.load_state_dict(f.state_dict())
    ids = torch.randint(0, VOCAB, (2, L))
    torch.testing.assert_close(logits(bm, ids), logits(f, ids), atol=1e-6, rtol=1e-6)  # the same layers exactly
    # and m_e > 0 really changes the output (the eidetic path is live)
    bm_e = tiny_model("bmojo", seed=1, pos_encoding="rope")
    bm_e.load_state_dict(f.state_dict())
    assert (logits(bm_e, ids) - logits(f, ids)).abs().max() > 1e-3


def test_swa_model_matches_transformers_mistral_sliding_window(tiny_model):
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
    ids = torch.randint(0, cfg.vocab_size, (2, L))
    with torch.no_grad():
        torch.testing.assert_close(ours(ids).logits, hf(ids).logits, atol=HF_TOL, rtol=HF_TOL)


# ---------------------------------------------------------------- Hugging Face integration


@pytest.mark.parametrize("preset", PRESETS)
def test_save_load_roundtrip_and_auto_classes(preset, tmp_path, tiny_config):
    model = AutoModelForCausalLM.from_config(tiny_config(preset))
    assert isinstance(model, bmojo.BMojoForCausalLM)
    assert model.config.layer_pattern == tiny_config(preset).layer_pattern
    model.eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, VOCAB, (2, L))
    assert torch.equal(logits(loaded, ids), logits(model, ids))


@pytest.mark.parametrize("preset", ["transformer", "mamba", "bmojo"])
def test_generate_matches_manual_greedy_decoding(preset, tiny_model):
    model = tiny_model(preset)
    prompt = torch.randint(1, VOCAB, (2, 11))  # no pad id (0) inside the prompt
    out = model.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 31)
    ids = prompt
    with torch.no_grad():
        for _ in range(20):  # greedy with full re-computation, no cache
            ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(out, ids)


# ---------------------------------------------------------------- training signal and input checks


@pytest.mark.parametrize("preset", PRESETS)
def test_every_parameter_gets_a_gradient(preset, tiny_model):
    model = tiny_model(preset, tie_fading_projections=preset not in ("bmojo", "bmojo_f")).train()
    ids = torch.randint(0, VOCAB, (2, L))
    model(ids, labels=ids).loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, dead


def test_loss_ignores_minus_100_and_shifts_labels(tiny_model):
    model = tiny_model("bmojo")
    ids = torch.randint(0, VOCAB, (1, 12))
    labels = torch.full_like(ids, -100)
    labels[0, 5] = ids[0, 5]
    out = model(ids, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[0, 4:5], ids[0, 5:6])
    torch.testing.assert_close(out.loss, expected)


def test_targets_are_pre_shifted_and_exclusive_with_labels(tiny_model):
    """Task data (pre-shifted targets, bmojo.tasks) and HF labels (shifted inside) give the same loss for the
    same prediction problem; passing both is refused."""
    model = tiny_model("bmojo")
    ids = torch.randint(0, VOCAB, (2, 12))
    targets = torch.full_like(ids, -100)
    targets[:, :-1] = ids[:, 1:]  # position t predicts token t + 1: the labels=ids problem, pre-shifted
    torch.testing.assert_close(model(ids, targets=targets).loss, model(ids, labels=ids).loss, rtol=0, atol=0)
    with pytest.raises(ValueError, match="not both"):
        model(ids, labels=ids, targets=targets)


@pytest.mark.parametrize("kind", bmojo.MIXER_KINDS)
def test_every_mixer_kind_has_one_contract(kind, tiny_config):
    """The registry builds every kind; each mixer maps (b, T, d) -> (b, T, d) with forward(x, state=None,
    start=0) -> (out, state): no state in the parallel form, a state of init_state's type when decoding."""
    from bmojo.models.modeling import MIXERS

    config = tiny_config("bmojo", layer_pattern=kind, num_fading_tokens=3, num_eidetic_tokens=5)
    mixer = MIXERS[kind](config).eval()
    x = torch.randn(2, 11, config.hidden_size)
    with torch.no_grad():
        out, none = mixer(x)
        state = mixer.init_state(2, x.device, x.dtype)
        first, state = mixer(x[:, :6], state, 0)
        rest, state = mixer(x[:, 6:], state, 6)
    assert out.shape == x.shape and none is None
    assert type(state) is type(mixer.init_state(1, x.device, x.dtype))
    torch.testing.assert_close(torch.cat([first, rest], 1), out, rtol=0, atol=DECODE_TOL)


def test_bad_inputs_raise_clear_errors(tiny_model):
    model = tiny_model("bmojo")
    with pytest.raises(ValueError, match="vocab_size=61"):
        model(torch.tensor([[1, 2, 61]]))
    with pytest.raises(ValueError, match="vocab_size"):
        model(torch.tensor([[-1, 2]]))
    with pytest.raises(ValueError, match="empty"):
        model(torch.zeros(1, 0, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask"):
        model(torch.tensor([[1, 2, 3]]), attention_mask=torch.ones(1, 4))
    with pytest.raises(ValueError, match="padding"):
        model(torch.tensor([[1, 2, 3]]), attention_mask=torch.tensor([[0, 1, 1]]))


# ---------------------------------------------------------------- fast paths: bf16 autocast, CUDA


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("preset", PRESETS)
def test_bf16_autocast_forward_and_decoding_track_fp32(preset, tiny_model, rel):
    model = tiny_model(preset)
    ids = torch.randint(0, VOCAB, (2, L))
    with torch.no_grad():
        ref = model(ids).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = model(ids).logits
            cache = model.new_cache(2)  # decode the first 20 tokens (two chunk boundaries at w = 8)
            step = torch.cat([model(ids[:, t : t + 1], cache=cache).logits for t in range(20)], dim=1)
    assert out.dtype == torch.bfloat16  # the LM head really ran in bf16
    assert rel(out, ref) <= BF16_LOGITS_TOL
    assert rel(step, ref[:, :20]) <= BF16_LOGITS_TOL


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("preset", PRESETS)
def test_bf16_autocast_training_step_tracks_fp32(preset, tiny_model, rel):
    """Loss and gradients under autocast; the master weights (and so the gradients) stay fp32."""
    model = tiny_model(preset).train()
    ids = torch.randint(0, VOCAB, (2, L))
    params = [p for p in model.parameters() if p.requires_grad]
    loss = model(ids, labels=ids).loss
    g_ref = torch.autograd.grad(loss, params, allow_unused=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss_bf = model(ids, labels=ids).loss
    g_bf = torch.autograd.grad(loss_bf, params, allow_unused=True)
    assert abs(loss_bf.item() - loss.item()) <= BF16_LOSS_TOL * loss.item()
    pairs = [(a, b) for a, b in zip(g_bf, g_ref, strict=True) if b is not None]
    assert all(a.dtype == torch.float32 for a, _ in pairs)
    flat_bf, flat_ref = torch.cat([a.flatten() for a, _ in pairs]), torch.cat([b.flatten() for _, b in pairs])
    assert rel(flat_bf, flat_ref) <= BF16_GRAD_TOL
    assert torch.nn.functional.cosine_similarity(flat_bf.double(), flat_ref.double(), dim=0) >= BF16_GRAD_COSINE


@cuda
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("preset", PRESETS)
def test_cuda_model_matches_cpu(preset, tiny_model):
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    model = tiny_model(preset)
    ids = torch.randint(0, VOCAB, (2, L))
    with torch.no_grad():
        ref = model(ids).logits
        gpu = model.to("cuda")
        out = gpu(ids.cuda()).logits.cpu()
        cache = gpu.new_cache(2)
        step = torch.cat([gpu(ids[:, t : t + 1].cuda(), cache=cache).logits.cpu() for t in range(L)], dim=1)
    torch.testing.assert_close(out, ref, atol=CUDA_TOL, rtol=CUDA_TOL)
    torch.testing.assert_close(step, ref, atol=CUDA_TOL, rtol=CUDA_TOL)
