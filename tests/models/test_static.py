"""bmojo.models.static: the fixed-address decode step equals the reference decoding (the mixers' recurrent forms) for
every kind, at every chunk phase; compiled with fullgraph it equals eager; the layouts convert both ways exactly."""

import pytest
import torch

import bmojo
from bmojo.layers.documents import state_tensors
from bmojo.models import static
from bmojo.models.static import auto_decoding, decode_step, to_dynamic, to_static

PRESETS = list(bmojo.PRESETS)
VOCAB = 61  # TINY in tests/conftest.py
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (the GPU path is optional)")


def decode_logits(model, ids, prefill: int, decoding: str, attention_mask=None):
    """Logits of ids[:, prefill-1:] (b, T - prefill + 1, V): prefill in one call, then one token per call."""
    cache = model.new_cache(ids.shape[0], decoding=decoding)
    mask = None if attention_mask is None else attention_mask[:, :prefill]
    out = [model(ids[:, :prefill], cache=cache, attention_mask=mask).logits[:, -1:]]
    for t in range(prefill, ids.shape[1]):
        mask = None if attention_mask is None else attention_mask[:, : t + 1]
        out.append(model(ids[:, t : t + 1], cache=cache, attention_mask=mask).logits)
    return torch.cat(out, dim=1), cache


@pytest.mark.parametrize("window", [5, 7])
@pytest.mark.parametrize("preset", PRESETS)
def test_static_step_equals_reference_decoding_at_every_phase(preset, window, tiny_model, one_thread):
    assert_static_step_equals_reference(tiny_model(preset, window_size=window, num_hidden_layers=2), window)


def test_knob_static_step_equals_reference_decoding_at_every_phase(knob, tiny_model, one_thread):
    model = tiny_model(knob[0], num_hidden_layers=2, **knob[1])
    if model.config.stores_tokens:  # a store grows: the fixed-address layout refuses it, "auto" decodes by reference
        with pytest.raises(ValueError, match="static decoding does not hold the storage tier"):
            decode_logits(model, torch.randint(0, VOCAB, (2, 20)), 9, "static")
        assert auto_decoding(100_000, torch.device("cpu"), 1, stores_tokens=True) == "reference"
        return
    assert_static_step_equals_reference(model, model.config.window_size)


def assert_static_step_equals_reference(model, window: int):
    """Every prefill length mod w, then >= 3 chunk boundaries crossed one token at a time."""
    ids = torch.randint(0, VOCAB, (2, 5 * window))
    with torch.no_grad():
        full = model(ids).logits
        for prefill in range(1, window + 1):
            reference, _ = decode_logits(model, ids, prefill, "reference")
            static, cache = decode_logits(model, ids, prefill, "static")
            assert cache._static_current  # the one-token calls ran the static step
            torch.testing.assert_close(static, reference, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(static, full[:, prefill - 1 :], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("preset", ["transformer", "hybrid", "bmojo"])
def test_left_padded_batch_generates_the_same_tokens(preset, tiny_model, one_thread):
    """Rows at different positions (left padding): the static step keeps per-row positions and chunk grids."""
    model = tiny_model(preset, window_size=5)
    ids = torch.randint(1, VOCAB, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    mask[1, :1] = 0
    kwargs = dict(
        attention_mask=mask,
        max_new_tokens=17,
        do_sample=False,
        pad_token_id=0,
        output_scores=True,
        return_dict_in_generate=True,
    )
    ref = model.generate(ids, decoding="reference", **kwargs)
    static = model.generate(ids, decoding="static", **kwargs)
    assert torch.equal(static.sequences, ref.sequences)
    torch.testing.assert_close(torch.stack(static.scores), torch.stack(ref.scores), rtol=1e-5, atol=1e-5)


def test_beam_search_and_sampling_with_the_static_step(tiny_model, one_thread):
    """Beam search reorders the cache every step (back to the reference layout and in again); sampling with
    num_return_sequences widens the batch: both give the reference's sequences."""
    model = tiny_model("bmojo", window_size=5)
    prompt = torch.randint(1, VOCAB, (2, 13))
    for kwargs in (dict(num_beams=3, do_sample=False), dict(do_sample=True, num_return_sequences=3)):
        out = {}
        for decoding in ("reference", "static"):
            torch.manual_seed(1)
            out[decoding] = model.generate(prompt, max_new_tokens=12, pad_token_id=0, decoding=decoding, **kwargs)
        assert torch.equal(out["static"], out["reference"])


@pytest.mark.parametrize("preset", PRESETS)
def test_static_step_in_bf16(preset, tiny_model, rel, one_thread):
    """Under autocast (new keys in bf16, the slots keep the cache's dtype, as in the reference) and with bf16 weights
    (bf16 states): the two decodings round in different places, so they agree to the bf16 tolerance of
    tests/conftest.py (2e-2)."""
    model = tiny_model(preset, window_size=5)
    ids = torch.randint(0, VOCAB, (2, 24))
    with torch.no_grad():
        with torch.autocast("cpu", dtype=torch.bfloat16):
            reference, _ = decode_logits(model, ids, 3, "reference")
            static, _ = decode_logits(model, ids, 3, "static")
            compiled, cache = decode_logits(model, ids, 3, "compiled")  # the eager step: nothing compiled for autocast
        assert rel(static.float(), reference.float()) < 2e-2
        assert torch.equal(compiled, static) and cache._fixed_step is None
        model = model.to(torch.bfloat16)
        reference, _ = decode_logits(model, ids, 3, "reference")
        static, cache = decode_logits(model, ids, 3, "static")
    assert cache._static_current and rel(static.float(), reference.float()) < 2e-2


@pytest.mark.parametrize("preset", PRESETS)
def test_layouts_convert_both_ways_exactly(preset, tiny_model):
    model = tiny_model(preset, window_size=5)
    cache = model.new_cache(2)
    with torch.no_grad():
        model(torch.randint(0, VOCAB, (2, 13)), cache=cache)
    pos, count = cache.positions, cache.seen_tokens
    for kind, layer, state in zip(cache.layer_pattern, model.model.layers, cache.states, strict=True):
        back = to_dynamic(kind, to_static(kind, layer.mixer, state, pos, 64), pos, count)
        assert [t.tolist() for t in state_tensors(back)] == [t.tolist() for t in state_tensors(state)]


def test_switching_layouts_mid_stream_and_growing_capacity(tiny_model, one_thread):
    """Static steps, then a multi-token call (back to the reference layout), then static steps again; full attention
    outgrows its static capacity (new buffers of twice the size): all equal to the reference."""
    model = tiny_model(
        "hybrid", window_size=5, layer_pattern=["attn", "bmojo"], num_fading_tokens=2, num_eidetic_tokens=3
    )
    ids = torch.randint(0, VOCAB, (2, 40))
    with torch.no_grad():
        full = model(ids).logits
        cache = model.new_cache(2, decoding="static", capacity=8)
        out = [model(ids[:, :3], cache=cache).logits]
        out += [model(ids[:, t : t + 1], cache=cache).logits for t in range(3, 12)]
        grown = cache.static  # 8 slots, then 16 from the 8th token on
        out.append(model(ids[:, 12:15], cache=cache).logits)  # multi-token: the reference form
        out.append(model(ids[:, 15:16], cache=cache).logits)  # static again, in the same buffers
        assert cache.static is grown and grown.capacity == 16
        out += [model(ids[:, t : t + 1], cache=cache).logits for t in range(16, 40)]
    assert cache.static.capacity == 64  # 32 from token 16, 64 from token 32
    torch.testing.assert_close(torch.cat(out, dim=1), full, rtol=1e-4, atol=1e-4)


def test_bounded_kinds_keep_their_static_bytes(tiny_model):
    model = tiny_model("bmojo", window_size=5)
    cache = model.new_cache(1, decoding="static")
    sizes = []
    with torch.no_grad():
        model(torch.randint(0, VOCAB, (1, 7)), cache=cache)
        for n in range(200):
            model(torch.randint(0, VOCAB, (1, 1)), cache=cache)
            if n in (10, 199):
                sizes.append(cache.nbytes)
    assert sizes[0] == sizes[1] > 0


def test_compiled_fullgraph_step_equals_eager(tiny_model, one_thread, tmp_path, monkeypatch):
    """One model with every kind: the step under torch.compile(fullgraph=True) (a graph break would raise), and the
    "compiled" decoding (the step compiled ahead of time by AOTInductor), each against the eager step; the compiled
    step is kept on disk, and another process (here: an emptied in-process table) loads it without compiling."""
    monkeypatch.setenv("BMOJO_CACHE_DIR", str(tmp_path))
    model = tiny_model(
        "bmojo", window_size=5, num_hidden_layers=5, layer_pattern=["attn", "swa", "ssm", "bmojo_f", "bmojo"]
    )
    ids = torch.randint(0, VOCAB, (2, 24))
    fullgraph = torch.compile(decode_step, fullgraph=True, dynamic=False)
    with torch.no_grad():
        caches = {name: model.new_cache(2, decoding=decoding, capacity=32)
                  for name, decoding in (("eager", "static"), ("fullgraph", "static"), ("aot", "compiled"))}
        for cache in caches.values():
            model(ids[:, :4], cache=cache)
        mixers = [layer.mixer for layer in model.model.layers]
        for t in range(4, 24):
            a = decode_step(model, caches["eager"].static_layout(mixers), ids[:, t : t + 1])
            b = fullgraph(model, caches["fullgraph"].static_layout(mixers), ids[:, t : t + 1])
            c = model(ids[:, t : t + 1], cache=caches["aot"]).logits
            torch.testing.assert_close(b, a, rtol=1e-4, atol=1e-4)
            torch.testing.assert_close(c, a, rtol=1e-4, atol=1e-4)
        assert caches["aot"].seen_tokens == 24 and caches["aot"].positions.tolist() == [24, 24]
        # the weights are inputs of the compiled program, not copies: a changed weight changes its output, and a
        # new cache of the same layout reuses the compiled runner
        runners = len(static._RUNNERS)
        model.lm_head.weight.mul_(2.0)
        again = model.new_cache(2, decoding="compiled", capacity=32)
        eager = model.new_cache(2, decoding="static", capacity=32)
        for cache in (again, eager):
            model(ids[:, :4], cache=cache)
        torch.testing.assert_close(model(ids[:, 4:5], cache=again).logits, model(ids[:, 4:5], cache=eager).logits,
                                   rtol=1e-4, atol=1e-4)
        assert len(static._RUNNERS) == runners
        assert [p.parent for p in tmp_path.rglob("*") if p.is_file()] == [static.compiled_step_dir()]  # one package

        def compile_again(*args):
            raise AssertionError("compiled again instead of loading the package")

        monkeypatch.setattr(static, "_RUNNERS", {})
        monkeypatch.setattr(static, "_compile_step", compile_again)
        loaded, eager = (model.new_cache(2, decoding=d, capacity=32) for d in ("compiled", "static"))
        for cache in (loaded, eager):
            model(ids[:, :4], cache=cache)
        torch.testing.assert_close(model(ids[:, 4:5], cache=loaded).logits, model(ids[:, 4:5], cache=eager).logits,
                                   rtol=1e-4, atol=1e-4)


def test_bad_decoding_is_refused(tiny_model):
    model = tiny_model("bmojo")
    with pytest.raises(ValueError, match="decoding must be one of reference, static, compiled, cuda_graph; got 'fast'"):
        model.new_cache(1, decoding="fast")
    with pytest.raises(ValueError, match="must be one of auto, reference"):
        model.generate(torch.ones(1, 3, dtype=torch.long), max_new_tokens=2, decoding="fast")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="decoding='cuda_graph' needs a model on a CUDA device"):
            model.new_cache(1, decoding="cuda_graph")


def test_auto_decoding_choice():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert [auto_decoding(n, cpu) for n in (8191, 8192)] == ["reference", "compiled"]
    assert [auto_decoding(n, gpu) for n in (15, 16)] == ["reference", "cuda_graph"]
    assert auto_decoding(10**6, gpu, num_beams=4) == auto_decoding(10**6, cpu, num_beams=2) == "reference"


@cuda
@pytest.mark.parametrize("preset", PRESETS)
def test_cuda_graph_step_equals_cpu_reference(preset, tiny_model):
    torch.backends.cuda.matmul.allow_tf32 = False
    model = tiny_model(preset, window_size=5)
    ids = torch.randint(0, VOCAB, (2, 30))
    with torch.no_grad():
        reference, _ = decode_logits(model, ids, 3, "reference")
        graph, cache = decode_logits(model.to("cuda"), ids.cuda(), 3, "cuda_graph")
    assert cache._graph is not None
    torch.testing.assert_close(graph.cpu(), reference, rtol=1e-4, atol=1e-4)


@cuda
@pytest.mark.parametrize("preset", ["transformer", "hybrid", "bmojo"])
def test_cuda_generate_auto_takes_the_graph_and_gives_the_cpu_tokens(preset, tiny_model, caplog):
    """A left-padded batch on CUDA: "auto" captures the CUDA graph and generates the CPU reference's tokens."""
    torch.backends.cuda.matmul.allow_tf32 = False
    model = tiny_model(preset, window_size=5)
    ids = torch.randint(1, VOCAB, (3, 9))
    mask = torch.ones_like(ids)
    mask[0, :4] = 0
    kwargs = dict(max_new_tokens=17, do_sample=False, pad_token_id=0, output_scores=True, return_dict_in_generate=True)
    ref = model.generate(ids, attention_mask=mask, decoding="reference", **kwargs)
    with caplog.at_level("INFO", logger="bmojo"):
        gpu = model.to("cuda").generate(ids.cuda(), attention_mask=mask.cuda(), **kwargs)
    assert "cuda_graph decoding" in caplog.text
    assert torch.equal(gpu.sequences.cpu(), ref.sequences)
    torch.testing.assert_close(torch.stack(gpu.scores).cpu(), torch.stack(ref.scores), rtol=1e-4, atol=1e-4)
