"""bmojo.models.modeling: causality, decoding == parallel forward for every preset, the special cases of
docs/design.md section 4.6, the mixer contract and registry, `transformers`' Mistral as an oracle for the `swa`
preset, HF save/load/generate, gradients and the loss (labels and targets), input checks, and the model's fast
paths (bf16 autocast, CUDA; tolerances: see tests/conftest.py)."""

import shutil

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
CROSS_DOCUMENT_GRAD = 1e-7  # gradient reaching another document, relative: the SSD's fp32 cumulative-sum rounding
CUDA_TOL = 1e-3  # CUDA vs CPU logits: the same fp32 arithmetic (no TF32) in another order

cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (the GPU path is optional)")


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


def assert_causal(model):
    ids = torch.randint(0, VOCAB, (2, L))
    base = logits(model, ids)
    for t in (0, 9, 23, 44):
        changed = ids.clone()
        changed[:, t + 1 :] = torch.randint(0, VOCAB, changed[:, t + 1 :].shape)
        if t + 1 < L:
            changed[:, t + 1] = (ids[:, t + 1] + 1) % VOCAB  # make sure something changes
        torch.testing.assert_close(logits(model, changed)[:, : t + 1], base[:, : t + 1], atol=0, rtol=0)


@pytest.mark.parametrize("preset", PRESETS)
def test_causal(preset, tiny_model):
    assert_causal(tiny_model(preset))


def test_knob_is_causal(knob, tiny_model):
    assert_causal(tiny_model(knob[0], **knob[1]))


def test_fading_span_is_read_past_the_first_window(tiny_model):
    """Same weights, with and without the per-query fading span: equal up to position w (the span is empty before
    position 0), different after. Equal up to float rounding: the span adds masked keys to each query's softmax, and
    a longer reduction may sum in another order (CI saw 6e-8 on one CPU), far below the 1e-4 difference after w."""
    ids = torch.randint(0, VOCAB, (2, L))
    with_span, without = logits(tiny_model("bmojo", fading_span=8), ids), logits(tiny_model("bmojo"), ids)
    torch.testing.assert_close(with_span[:, :8], without[:, :8], rtol=0, atol=1e-6)
    assert (with_span[:, 8:] - without[:, 8:]).abs().amax(-1).min() > 1e-4


@pytest.mark.parametrize("retention, first", [(dict(store_horizon=20), 24),  # chunk 3 first forgets (3 w - 20 > 0)
                                               (dict(store_regime_threshold=1.1, store_regime_chunks=2), 32)])
def test_store_retention_changes_nothing_before_it_first_forgets(retention, first, tiny_model):
    """Same weights, with and without a retention rule: equal up to the first chunk that may forget (the horizon:
    c w > H; the regime test: R chunks after a document's first, then the chunk it tests), different after."""
    ids = torch.randint(0, VOCAB, (2, L))
    keep = logits(tiny_model("bmojo", num_retrieved_tokens=4), ids)
    forget = logits(tiny_model("bmojo", num_retrieved_tokens=4, **retention), ids)
    torch.testing.assert_close(forget[:, :first], keep[:, :first], rtol=0, atol=0)
    assert (forget[:, first:] - keep[:, first:]).abs().max() > 1e-4


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
    assert_decoding_equals_parallel_forward(tiny_model(preset, **overrides))


def test_knob_decoding_equals_parallel_forward(knob, tiny_model):
    assert_decoding_equals_parallel_forward(tiny_model(knob[0], **knob[1]))


def assert_decoding_equals_parallel_forward(model):
    """Token by token and in pieces that start and end at every chunk phase."""
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


def test_faiss_store_probing_every_list_equals_parallel_forward(tiny_model, monkeypatch):
    """The approximate backend (indexes on blocks of >= 8 slots here) with every inverted list probed (the config's
    store_nprobe) is exact: decoding equals the parallel forward, as with the exact backend."""
    pytest.importorskip("faiss")
    import bmojo.ops.store as store

    monkeypatch.setattr(store, "ANN_MIN_BLOCK", 8)
    calls = []
    monkeypatch.setattr(store, "ann_top_r", lambda *a, top=store.ann_top_r: calls.append(1) or top(*a))
    assert_decoding_equals_parallel_forward(tiny_model("bmojo", num_retrieved_tokens=4, store_backend="faiss",
                                                       store_nprobe=10**6))
    assert calls  # the indexes were searched


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
    bm = tiny_model("bmojo", seed=1, pos_encoding="none", num_fading_tokens=0, num_eidetic_tokens=0,
                    fading_residual=False)
    copy_mixer_weights(swa, bm, attr="attn")
    ids = torch.randint(0, VOCAB, (2, L))
    torch.testing.assert_close(logits(bm, ids), logits(swa, ids), atol=EQUIVALENT_TOL, rtol=EQUIVALENT_TOL)


def test_bmojo_with_window_covering_sequence_equals_attn(tiny_model):
    attn = tiny_model("transformer")
    bm = tiny_model("bmojo", seed=1, pos_encoding="rope", window_size=L, fading_residual=False)
    copy_mixer_weights(attn, bm, attr="attn")
    ids = torch.randint(0, VOCAB, (2, L))
    torch.testing.assert_close(logits(bm, ids), logits(attn, ids), atol=EQUIVALENT_TOL, rtol=EQUIVALENT_TOL)


@pytest.mark.parametrize("preset", ["bmojo_f", "bmojo"])
def test_residual_gate_starts_as_the_paper_layer_and_scales_the_ssm_output(preset, tiny_config):
    """fading_residual_gate: out + g * y with g = 0 at init, so a fresh gated model is the paper's layer
    (fading_residual=False) weight for weight; with g = 1 it is the ungated residual."""
    torch.manual_seed(0)
    gated = bmojo.BMojoForCausalLM(tiny_config(preset, fading_residual=True, fading_residual_gate=True)).eval()
    paper = bmojo.BMojoForCausalLM(tiny_config(preset, fading_residual=False)).eval()
    resid = bmojo.BMojoForCausalLM(tiny_config(preset, fading_residual=True)).eval()
    gates = {k for k in gated.state_dict() if k.endswith("residual_gate")}
    assert len(gates) == gated.config.num_hidden_layers and all(not gated.state_dict()[k].any() for k in gates)
    weights = {k: v for k, v in gated.state_dict().items() if k not in gates}
    paper.load_state_dict(weights)
    resid.load_state_dict(weights)
    ids = torch.randint(0, VOCAB, (2, L))
    assert torch.equal(logits(gated, ids), logits(paper, ids))
    with torch.no_grad():
        for k in gates:
            gated.get_parameter(k).fill_(1.0)
    torch.testing.assert_close(logits(gated, ids), logits(resid, ids))
    assert not torch.allclose(logits(gated, ids), logits(paper, ids))


def test_residual_gate_scale_multiplies_the_learned_gate(tiny_config):
    """fading_residual_gate_scale s: the gate is s * p, so a model with scale 10 and gate parameters p computes what a
    model with scale 1 and parameters 10 p does."""
    torch.manual_seed(0)
    scaled = bmojo.BMojoForCausalLM(tiny_config("bmojo", fading_residual=True, fading_residual_gate=True,
                                                fading_residual_gate_scale=10.0)).eval()
    plain = bmojo.BMojoForCausalLM(tiny_config("bmojo", fading_residual=True, fading_residual_gate=True)).eval()
    plain.load_state_dict(scaled.state_dict())
    gates = [k for k in scaled.state_dict() if k.endswith("residual_gate")]
    with torch.no_grad():
        for i, k in enumerate(gates):
            scaled.get_parameter(k).copy_(torch.linspace(-0.1, 0.1, scaled.config.hidden_size) * (i + 1))
            plain.get_parameter(k).copy_(10.0 * scaled.get_parameter(k))
    ids = torch.randint(0, VOCAB, (2, L))
    torch.testing.assert_close(logits(scaled, ids), logits(plain, ids))
    assert not torch.allclose(logits(scaled, ids), logits(bmojo.BMojoForCausalLM(scaled.config).eval(), ids))


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


# ---------------------------------------------------------------- fast paths: bf16 autocast, CUDA


# every preset, and bmojo with a storage tier (its retrieved logits join the softmax in fp32)
BF16_CASES = [pytest.param(p, {}, id=p) for p in PRESETS] + [
    pytest.param("bmojo", dict(num_retrieved_tokens=4), id="bmojo+store")]


@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("preset, overrides", BF16_CASES)
def test_bf16_autocast_forward_and_decoding_track_fp32(preset, overrides, tiny_model, rel):
    model = tiny_model(preset, **overrides)
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
@pytest.mark.parametrize("preset, overrides", BF16_CASES)
def test_bf16_autocast_training_step_tracks_fp32(preset, overrides, tiny_model, rel):
    """Loss and gradients under autocast; the master weights (and so the gradients) stay fp32."""
    model = tiny_model(preset, **overrides).train()
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


# ---------------------------------------------------------------- documents: left padding and packed sequences

PROMPT_LENGTHS = (5, 17, 40)  # left-padded to 40: no padding, a little, most of the row
DOC_LENGTHS = (11, 1, 20)  # a packed row: a 1-token document between two that do not fill whole windows
GENERATED = 12  # greedy tokens compared per prompt


def left_padded(prompts: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """HF-style left padding with pad id 0: (input_ids, attention_mask), both (len(prompts), longest)."""
    L = max(len(p) for p in prompts)
    ids = torch.zeros(len(prompts), L, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for i, p in enumerate(prompts):
        ids[i, L - len(p) :], mask[i, L - len(p) :] = p, 1
    return ids, mask


def packed(docs: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """One row holding `docs` back to back: (input_ids (1, N), seq_idx (1, N))."""
    seq_idx = torch.cat([torch.full((len(d),), i) for i, d in enumerate(docs)])
    return torch.cat(docs)[None], seq_idx[None]


@pytest.mark.parametrize("preset", PRESETS)
def test_left_padded_batch_equals_each_prompt_alone(preset, tiny_model):
    """Logits of the real positions and greedy generate() of a left-padded batch equal each prompt run alone."""
    model = tiny_model(preset)
    prompts = [torch.randint(1, VOCAB, (n,)) for n in PROMPT_LENGTHS]
    ids, mask = left_padded(prompts)
    L = ids.shape[1]
    kwargs = dict(max_new_tokens=GENERATED, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        batch = model(ids, attention_mask=mask).logits
        generated = model.generate(ids, attention_mask=mask, **kwargs)
        for i, p in enumerate(prompts):
            torch.testing.assert_close(batch[i, L - len(p) :], model(p[None]).logits[0], rtol=0, atol=DECODE_TOL)
            assert torch.equal(generated[i, L:], model.generate(p[None], **kwargs)[0, len(p) :]), i


@pytest.mark.parametrize("preset", PRESETS)
def test_packed_documents_equal_each_document_alone(preset, tiny_model):
    assert_packed_documents_equal_each_alone(tiny_model(preset))


def test_knob_packed_documents_equal_each_document_alone(knob, tiny_model):
    assert_packed_documents_equal_each_alone(tiny_model(knob[0], **knob[1]))


def assert_packed_documents_equal_each_alone(model):
    """A row of packed documents (seq_idx): each document's logits equal the document run alone, in the parallel
    form and in token-by-token decoding."""
    docs = [torch.randint(1, VOCAB, (n,)) for n in DOC_LENGTHS]
    ids, seq_idx = packed(docs)
    with torch.no_grad():
        parallel = model(ids, seq_idx=seq_idx).logits[0]
        cache = model.new_cache(1)
        decoded = torch.cat([model(ids[:, t : t + 1], seq_idx=seq_idx[:, t : t + 1], cache=cache).logits
                             for t in range(ids.shape[1])], dim=1)[0]
        a = 0
        for d in docs:
            alone = model(d[None]).logits[0]
            torch.testing.assert_close(parallel[a : a + len(d)], alone, rtol=0, atol=DECODE_TOL)
            torch.testing.assert_close(decoded[a : a + len(d)], alone, rtol=0, atol=DECODE_TOL)
            a += len(d)


@pytest.mark.parametrize("preset", PRESETS)
def test_no_gradient_crosses_a_document_boundary(preset, tiny_model):
    """The loss of a packed row's second document has no gradient with respect to the first one's inputs: exactly
    zero through attention and the conv; through the SSM, whose log-decays are summed along each chunk before the
    masks apply, what is left is the rounding of that sum (~1e-10 of the own document's gradient)."""
    model = tiny_model(preset)
    ids, seq_idx = packed([torch.randint(1, VOCAB, (n,)) for n in (DOC_LENGTHS[0], DOC_LENGTHS[2])])
    embeds = model.get_input_embeddings()(ids).detach().requires_grad_()
    model(inputs_embeds=embeds, seq_idx=seq_idx).logits[0, DOC_LENGTHS[0] :].sum().backward()
    own = embeds.grad[0, DOC_LENGTHS[0] :].abs().max()
    assert own > 0
    assert embeds.grad[0, : DOC_LENGTHS[0]].abs().max() <= CROSS_DOCUMENT_GRAD * own


@pytest.mark.parametrize("preset", PRESETS)
def test_all_padding_row_and_one_token_prompt(preset, tiny_model):
    """A batch with an all-padding row and a 1-token prompt: the prompt's logits and generation equal it alone,
    the padding row gives finite numbers."""
    model = tiny_model(preset)
    prompt = torch.randint(1, VOCAB, (1,))
    ids, mask = torch.zeros(2, 6, dtype=torch.long), torch.zeros(2, 6, dtype=torch.long)
    ids[1, -1], mask[1, -1] = prompt, 1
    kwargs = dict(max_new_tokens=GENERATED, do_sample=False, pad_token_id=0)
    with torch.no_grad():
        logits = model(ids, attention_mask=mask).logits
        torch.testing.assert_close(logits[1, -1], model(prompt[None]).logits[0, 0], rtol=0, atol=DECODE_TOL)
        assert torch.isfinite(logits).all()
        generated = model.generate(ids, attention_mask=mask, **kwargs)
        assert torch.equal(generated[1, 6:], model.generate(prompt[None], **kwargs)[0, 1:])


def test_flattening_collator_output_is_accepted(tiny_model):
    """transformers' DataCollatorWithFlattening (one row, position_ids restarting at each document, labels -100 at
    each document's first token) works as it is: per-document logits equal each document alone, and the loss
    equals the mean over the documents' own next-token losses."""
    from transformers import DataCollatorWithFlattening

    model = tiny_model("bmojo")
    docs = [torch.randint(1, VOCAB, (n,)) for n in DOC_LENGTHS]
    batch = DataCollatorWithFlattening(return_tensors="pt")([{"input_ids": d.tolist()} for d in docs])
    with torch.no_grad():
        out = model(**batch)
        a, total, count = 0, 0.0, 0
        for d in docs:
            alone = model(d[None], labels=d[None])
            torch.testing.assert_close(out.logits[0, a : a + len(d)], alone.logits[0], rtol=0, atol=DECODE_TOL)
            if len(d) > 1:
                total, count = total + alone.loss * (len(d) - 1), count + len(d) - 1
            a += len(d)
    torch.testing.assert_close(out.loss, total / count, rtol=1e-5, atol=0)


def test_from_pretrained_reports_a_damaged_run_folder_in_one_line(reference_run, tmp_path):
    """A folder with a manifest (written by `bmojo train`) is verified before loading: a truncated weights file
    or a corrupted config.json is a ValueError naming the file, not a parser's traceback."""
    for name, damage in (("model.safetensors", lambda b: b[: len(b) // 2]), ("config.json", lambda b: b"{oops")):
        folder = tmp_path / name
        shutil.copytree(reference_run, folder)
        (folder / name).write_bytes(damage((folder / name).read_bytes()))
        with pytest.raises(ValueError, match=f"is damaged: {name}.*load_run"):
            bmojo.BMojoForCausalLM.from_pretrained(folder)


def test_a_cache_of_another_batch_size_or_dtype_is_refused(tiny_model):
    model = tiny_model("bmojo")
    ids = torch.randint(1, VOCAB, (2, 6))
    with pytest.raises(ValueError, match=r"batch size 1, the input has 2 rows; make one with model.new_cache\(2\)"):
        model(ids, cache=model.new_cache(1))
    cache = model.new_cache(2)
    model.to(torch.bfloat16)
    with pytest.raises(ValueError, match="cache holds torch.float32 states, the model computes in torch.bfloat16"):
        model(ids, cache=cache)


def test_document_inputs_are_checked(tiny_model):
    model = tiny_model("bmojo")
    ids = torch.randint(1, VOCAB, (2, 6))
    with pytest.raises(ValueError, match="nondecreasing"):
        model(ids, seq_idx=torch.tensor([[0, 0, 1, 1, 0, 0], [0] * 6]))
    with pytest.raises(ValueError, match=r"seq_idx has shape \(2, 5\)"):
        model(ids, seq_idx=torch.zeros(2, 5, dtype=torch.long))
    with pytest.raises(ValueError, match="attention_mask has shape"):
        model(ids, attention_mask=torch.ones(2, 9))
    cache = model.new_cache(2)
    model(ids, cache=cache)
    right_padded = torch.ones(2, 7, dtype=torch.long)
    right_padded[0, 5:] = 0
    with pytest.raises(ValueError, match="right padding"):
        model(ids[:, :1], attention_mask=right_padded, cache=cache)


# ---------------------------------------------------------------- the rest of the HF interface


@pytest.mark.parametrize("preset", ["hybrid", "bmojo"])
def test_hidden_states_are_the_blocks_outputs(preset, tiny_model):
    """output_hidden_states: the embeddings, every block's output, the last one after the final norm."""
    model = tiny_model(preset)
    ids = torch.randint(0, VOCAB, (2, L))
    outputs = []
    hooks = [layer.register_forward_hook(lambda m, i, o: outputs.append(o[0])) for layer in model.model.layers]
    with torch.no_grad():
        out = model(ids, output_hidden_states=True)
    for hook in hooks:
        hook.remove()
    hidden = out.hidden_states
    assert len(hidden) == model.config.num_hidden_layers + 1
    assert torch.equal(hidden[0], model.get_input_embeddings()(ids))
    for got, block in zip(hidden[1:-1], outputs[:-1], strict=True):
        assert torch.equal(got, block)
    assert torch.equal(hidden[-1], model.model.norm(outputs[-1]))
    assert model(ids).hidden_states is None


@pytest.mark.parametrize("preset", ["transformer", "bmojo"])
def test_inputs_embeds_equal_the_ids_path(preset, tiny_model):
    model = tiny_model(preset)
    ids = torch.randint(0, VOCAB, (2, L))
    with torch.no_grad():
        assert torch.equal(model(inputs_embeds=model.get_input_embeddings()(ids)).logits, model(ids).logits)
    with pytest.raises(ValueError, match="exactly one of input_ids"):
        model()


@pytest.mark.parametrize("preset", ["hybrid", "bmojo"])
def test_gradient_checkpointing_gives_the_same_gradients(preset, tiny_model):
    model = tiny_model(preset).train()
    ids = torch.randint(0, VOCAB, (2, L))

    def grads() -> list[torch.Tensor]:
        model.zero_grad()
        model(ids, labels=ids).loss.backward()
        return [p.grad.clone() for p in model.parameters() if p.grad is not None]

    plain = grads()
    model.gradient_checkpointing_enable()
    checkpointed = grads()
    assert model.model.gradient_checkpointing
    for a, b in zip(plain, checkpointed, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=EQUIVALENT_TOL)


def test_input_checks_off_the_cpu_take_either_message_form():
    """Off the CPU an input check is an asynchronous device assertion (no host sync); both message forms (a string,
    or a function building one) must reach it. The meta device takes that branch without a GPU."""
    from bmojo.models.modeling import _require

    for message in ("attention_mask has padding after real tokens", lambda: "built lazily"):
        _require(torch.tensor(True, device="meta"), message)
    with pytest.raises(ValueError, match="built lazily"):
        _require(torch.tensor(False), lambda: "built lazily")
