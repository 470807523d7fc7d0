"""Model-level behaviour: causality, decoding == parallel forward, the special cases of DESIGN.md
section 4, the eidetic memory against brute force, bounded cache, HF save/load/generate, gradients."""

import pytest
import torch
from transformers import AutoModelForCausalLM

import bmojo
from bmojo.ops.memory import EMPTY, innovation_score
from conftest import tiny_config, tiny_model

PRESETS = list(bmojo.PRESETS)
L = 45  # 5 chunks of w = 8 plus a remainder of 5


def logits(model, ids):
    with torch.no_grad():
        return model(ids).logits


@pytest.mark.parametrize("preset", PRESETS)
def test_causal(preset):
    model = tiny_model(preset)
    ids = torch.randint(0, 61, (2, L))
    base = logits(model, ids)
    for t in (0, 9, 23, 44):
        changed = ids.clone()
        changed[:, t + 1 :] = torch.randint(0, 61, changed[:, t + 1 :].shape)
        if t + 1 < L:
            changed[:, t + 1] = (ids[:, t + 1] + 1) % 61  # make sure something changes
        torch.testing.assert_close(logits(model, changed)[:, : t + 1], base[:, : t + 1], atol=0, rtol=0)


VARIANTS = [
    {},
    dict(pos_encoding="none"),
    dict(pos_encoding="rope", tie_fading_projections=False, num_key_value_heads=4),
    dict(window_size=7, ssm_chunk_size=5),
]


@pytest.mark.parametrize("variant", range(len(VARIANTS)))
@pytest.mark.parametrize("preset", PRESETS)
def test_decoding_equals_parallel_forward(preset, variant):
    overrides = VARIANTS[variant]
    if preset in ("transformer", "mamba") and variant:
        pytest.skip("variant only concerns windowed / B'MOJO layers")
    model = tiny_model(preset, **overrides)
    ids = torch.randint(0, 61, (2, L))
    ref = logits(model, ids)
    with torch.no_grad():
        cache = model.new_cache(2)
        step = torch.cat([model(ids[:, t : t + 1], past_key_values=cache).logits for t in range(L)], dim=1)
        cache = model.new_cache(2)
        parts = [model(ids[:, a:b], cache=cache).logits for a, b in [(0, 13), (13, 16), (16, 33), (33, 34), (34, L)]]
        chunked = torch.cat(parts, dim=1)
    assert (step - ref).abs().max() <= 1e-4
    assert (chunked - ref).abs().max() <= 1e-4
    assert cache.seen_tokens == L


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


def test_bmojo_without_memory_equals_swa():
    swa = tiny_model("swa", pos_encoding="none")
    bm = tiny_model("bmojo", seed=1, pos_encoding="none", num_fading_tokens=0, num_eidetic_tokens=0)
    copy_mixer_weights(swa, bm, attr="attn")
    ids = torch.randint(0, 61, (2, L))
    torch.testing.assert_close(logits(bm, ids), logits(swa, ids), atol=1e-5, rtol=1e-5)


def test_bmojo_with_window_covering_sequence_equals_attn():
    attn = tiny_model("transformer")
    bm = tiny_model("bmojo", seed=1, pos_encoding="rope", window_size=L)
    copy_mixer_weights(attn, bm, attr="attn")
    ids = torch.randint(0, 61, (2, L))
    torch.testing.assert_close(logits(bm, ids), logits(attn, ids), atol=1e-5, rtol=1e-5)


def test_bmojo_without_eidetic_equals_bmojo_f():
    f = tiny_model("bmojo_f")
    bm = tiny_model("bmojo", seed=1, pos_encoding="rope", num_eidetic_tokens=0)
    bm.load_state_dict(f.state_dict())
    ids = torch.randint(0, 61, (2, L))
    torch.testing.assert_close(logits(bm, ids), logits(f, ids), atol=1e-6, rtol=1e-6)
    # and m_e > 0 really changes the output (the eidetic path is live)
    bm_e = tiny_model("bmojo", seed=1, pos_encoding="rope")
    bm_e.load_state_dict(f.state_dict())
    assert (logits(bm_e, ids) - logits(f, ids)).abs().max() > 1e-3


def test_decoded_eidetic_memory_is_top_innovation_at_every_chunk():
    """At every chunk boundary the recurrent cache's eidetic memory holds exactly the m_e eligible
    positions (p <= c w - w) with the highest innovation, recomputed by brute force from the SSM outputs."""
    model = tiny_model("bmojo", num_hidden_layers=1, num_eidetic_tokens=6)
    mixer = model.model.layers[0].mixer
    w, m_e, n = 8, 6, 70
    ids = torch.randint(0, 61, (1, n))
    with torch.no_grad():
        u = model.model.layers[0].input_norm(model.model.embed_tokens(ids))
        y, _ = mixer.ssm(u)
        eps = innovation_score(y, mixer.innovation_weights)[0]
        cache = model.new_cache(1)
        for t in range(n):
            model(ids[:, t : t + 1], cache=cache)
            if (t + 1) % w == 1 and t >= w:  # the step that entered chunk c = t // w
                c = t // w
                eligible = sorted(range(c * w - w + 1), key=lambda p: (eps[p].item(), p), reverse=True)
                got = sorted(p for p in cache.states[0].eid_pos[0].tolist() if p != EMPTY)
                assert got == sorted(eligible[:m_e]), (t, got)


@pytest.mark.parametrize("preset", [p for p in PRESETS if p != "transformer"])
def test_cache_size_is_constant_in_context_length(preset):
    model = tiny_model(preset, num_hidden_layers=2)
    cache = model.new_cache(1)
    sizes = {}
    with torch.no_grad():
        for _ in range(40):  # 20 000 tokens, fed 500 at a time through the recurrent path
            model(torch.randint(0, 61, (1, 500)), cache=cache, logits_to_keep=1)
            sizes[cache.seen_tokens] = cache.nbytes
    assert sizes[2000] == sizes[20000] > 0
    grow = tiny_model("transformer").new_cache(1)
    with torch.no_grad():
        tiny_model("transformer")(torch.randint(0, 61, (1, 100)), cache=grow)
    assert grow.nbytes > 0  # full attention's cache grows (contrast)


@pytest.mark.parametrize("preset", PRESETS)
def test_save_load_roundtrip_and_auto_classes(preset, tmp_path):
    model = AutoModelForCausalLM.from_config(tiny_config(preset))
    assert isinstance(model, bmojo.BMojoForCausalLM)
    assert model.config.layer_pattern == tiny_config(preset).layer_pattern
    model.eval()
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors").exists()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path).eval()
    ids = torch.randint(0, 61, (2, L))
    assert torch.equal(logits(loaded, ids), logits(model, ids))


@pytest.mark.parametrize("preset", ["transformer", "mamba", "bmojo"])
def test_generate_matches_manual_greedy_decoding(preset):
    model = tiny_model(preset)
    prompt = torch.randint(1, 61, (2, 11))  # no pad id (0) inside the prompt
    out = model.generate(prompt, max_new_tokens=20, do_sample=False, pad_token_id=0)
    assert out.shape == (2, 31)
    ids = prompt
    with torch.no_grad():
        for _ in range(20):  # greedy with full re-computation, no cache
            ids = torch.cat([ids, model(ids).logits[:, -1:].argmax(-1)], dim=1)
    assert torch.equal(out, ids)


@pytest.mark.parametrize("preset", PRESETS)
def test_every_parameter_gets_a_gradient(preset):
    model = tiny_model(preset, tie_fading_projections=preset not in ("bmojo", "bmojo_f")).train()
    ids = torch.randint(0, 61, (2, L))
    model(ids, labels=ids).loss.backward()
    dead = [n for n, p in model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert not dead, dead


def test_loss_ignores_minus_100_and_shifts_labels():
    model = tiny_model("bmojo")
    ids = torch.randint(0, 61, (1, 12))
    labels = torch.full_like(ids, -100)
    labels[0, 5] = ids[0, 5]
    out = model(ids, labels=labels)
    expected = torch.nn.functional.cross_entropy(out.logits[0, 4:5], ids[0, 5:6])
    torch.testing.assert_close(out.loss, expected)


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(window_size=0), "window_size"),
        (dict(num_fading_tokens=-1), "num_fading_tokens"),
        (dict(num_eidetic_tokens=-2), "num_eidetic_tokens"),
        (dict(num_attention_heads=5), "num_attention_heads"),
        (dict(num_key_value_heads=3), "num_key_value_heads"),
        (dict(layer_pattern=["bmojo", "lstm"]), "layer_pattern"),
        (dict(layer_pattern="swa", num_fading_tokens=4), "num_fading_tokens"),
        (dict(layer_pattern="bmojo_f", num_eidetic_tokens=4), "num_eidetic_tokens"),
        (dict(pos_encoding="alibi"), "pos_encoding"),
        (dict(ssm_head_dim=7), "ssm_head_dim"),
    ],
)
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        bmojo.BMojoConfig(**{**dict(hidden_size=32, num_attention_heads=4, ssm_head_dim=16), **overrides})


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match="transformer.*bmojo"):
        bmojo.BMojoConfig.from_preset("gpt5")


def test_bad_inputs_raise_clear_errors():
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


@pytest.mark.parametrize("preset", ["hybrid", "bmojo"])
def test_beam_search_with_cache_equals_without(preset):
    """Beam search reorders the cache's batch rows (BMojoCache.reorder_cache); recomputing from scratch
    every step (use_cache=False) must pick the same beams."""
    model = tiny_model(preset)
    prompt = torch.randint(1, 61, (2, 13))
    kwargs = dict(max_new_tokens=12, num_beams=3, do_sample=False, pad_token_id=0)
    assert torch.equal(model.generate(prompt, use_cache=True, **kwargs), model.generate(prompt, use_cache=False, **kwargs))
