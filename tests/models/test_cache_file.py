"""bmojo.models.cache_file: a saved cache, loaded back, continues decoding exactly; a file from another config or
other weights, or a truncated one, is refused with a message naming the problem."""

import pytest
import torch

VOCAB = 61  # the tiny models' vocab_size (TINY in tests/conftest.py)
STORE = dict(num_retrieved_tokens=3)


@pytest.mark.parametrize("preset, overrides", [("bmojo", STORE), ("bmojo", dict(STORE, store_write="evicted")),
                                               ("bmojo", dict(STORE, store_horizon=20, store_regime_threshold=1.1,
                                                              store_regime_chunks=2, store_dtype="bfloat16")),
                                               ("transformer", {}), ("hybrid", {})])
def test_saved_cache_continues_decoding_exactly(preset, overrides, tiny_model, tmp_path):
    model = tiny_model(preset, **overrides)
    ids = torch.randint(0, VOCAB, (2, 70))
    with torch.no_grad():
        cache = model.new_cache(2)
        model(ids[:, :43], cache=cache)
        model.save_cache(cache, tmp_path / "cache.safetensors")
        loaded = model.load_cache(tmp_path / "cache.safetensors")
        assert loaded.nbytes == cache.nbytes and loaded.stored_nbytes == cache.stored_nbytes
        for t in range(43, 70):  # one token at a time: crosses chunk boundaries, so the store is written and read
            a = model(ids[:, t : t + 1], cache=cache).logits
            b = model(ids[:, t : t + 1], cache=loaded).logits
            assert torch.equal(a, b), t
    assert loaded.seen_tokens == 70 and (cache.stored_nbytes > 0) == model.config.stores_tokens


def test_saved_cache_with_faiss_indexes_continues_exactly(tiny_model, tmp_path, monkeypatch):
    """The approximate backend's indexes are rebuilt from the stored keys after a load, identically (fixed seed):
    decoding after the reload gives the same logits as decoding on."""
    pytest.importorskip("faiss")
    import bmojo.ops.store as store

    monkeypatch.setattr(store, "ANN_MIN_BLOCK", 16)
    calls = []
    monkeypatch.setattr(store, "ann_top_r", lambda *a, top=store.ann_top_r: calls.append(1) or top(*a))
    test_saved_cache_continues_decoding_exactly("bmojo", dict(STORE, store_backend="faiss"), tiny_model, tmp_path)
    assert calls  # the indexes were searched


def saved_cache(model, path):
    """`model`'s cache after 30 tokens, saved at `path`."""
    cache = model.new_cache(1)
    with torch.no_grad():
        model(torch.randint(0, VOCAB, (1, 30)), cache=cache)
    model.save_cache(cache, path)
    return path


def test_cache_from_another_config_or_weights_is_refused(tiny_model, tmp_path):
    path = saved_cache(tiny_model("bmojo", **STORE), tmp_path / "cache.safetensors")
    with pytest.raises(ValueError, match=r"another config: num_retrieved_tokens=3 \(this model: 5\)"):
        tiny_model("bmojo", num_retrieved_tokens=5).load_cache(path)
    with pytest.raises(ValueError, match="same config but other weights"):
        tiny_model("bmojo", seed=1, **STORE).load_cache(path)


def test_cache_loads_under_other_search_settings(tiny_model, tmp_path):
    """How decoding searches the store (store_backend, store_nprobe) is not part of a cache's identity: a cache saved
    with the exact search loads into the same model set to search through faiss with 4 lists."""
    pytest.importorskip("faiss")
    path = saved_cache(tiny_model("bmojo", **STORE), tmp_path / "cache.safetensors")
    loaded = tiny_model("bmojo", store_backend="faiss", store_nprobe=4, **STORE).load_cache(path)
    assert loaded.seen_tokens == 30 and loaded.stored_nbytes > 0


def test_truncated_cache_file_is_refused(tiny_model, tmp_path):
    model = tiny_model("bmojo", **STORE)
    path = saved_cache(model, tmp_path / "cache.safetensors")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(ValueError, match="not a complete bmojo cache file"):
        model.load_cache(path)
