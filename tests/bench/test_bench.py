"""bmojo.bench: `bmojo bench --quick` end to end: it runs every suite and writes a valid bench.json, bench.md and PNGs.
Nothing here asserts anything about time."""

import json
import math

import pytest
import torch

SUITES = ("kernels", "layers", "models", "packing", "small", "decode", "store")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory, cli):
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    try:  # one thread: tiny sizes gain nothing from two, and a busy CI box can stall the second one
        assert cli("bench", "--quick", "--threads", "1", "--out", out) == 0
    finally:
        torch.set_num_threads(threads)
    return out, json.loads((out / "bench.json").read_text())


def test_bench_json_schema(quick_run):
    _, doc = quick_run
    assert doc["schema_version"] == 1 and doc["quick"] is True
    assert doc["suites"] == list(SUITES)
    machine = doc["machine"]
    for key in ("cpu_model", "cpu_count", "torch_threads", "torch", "transformers", "device"):
        assert machine[key] not in (None, ""), key
    assert machine["torch_threads"] == 1 and machine["device"] == "cpu"
    assert doc["ceiling_flops"]["fp32"] > 0 and doc["ceiling_flops"]["bf16"] > 0
    names = [f["name"] for f in doc["figures"]]
    assert len(names) == len(set(names)), "figure names are unique"
    for f in doc["figures"]:
        assert {"name", "suite", "value", "unit", "settings", "better"} <= set(f), f["name"]
        assert f["suite"] in ("ceiling",) + SUITES and f["name"].startswith(f["suite"] + "/")
        assert isinstance(f["value"], (int, float)) and math.isfinite(f["value"]), f["name"]
        assert isinstance(f["unit"], str) and f["unit"] and isinstance(f["settings"], dict)
        if "stats" in f:
            st = f["stats"]
            assert st["min"] <= st["median"] <= st["max"] and st["repeats"] == len(st["samples"]) >= 1
        if f.get("peer"):
            assert f["peer"] in names, f"{f['name']}: peer {f['peer']} is a figure too"
            assert f["ratio"] > 0
    for suite in SUITES:
        assert any(f["suite"] == suite for f in doc["figures"]), suite


def test_bench_reports_every_target_figure(quick_run):
    _, doc = quick_run
    by_name = {f["name"]: f for f in doc["figures"]}
    for kind, peer in (("ssm", "hf_mamba2"), ("swa", "hf_mistral_swa"), ("attn", "hf_llama_attn"),
                       ("bmojo", "hf_mamba2+hf_mistral_swa"), ("bmojo_f", "hf_mamba2+hf_mistral_swa")):
        for direction in ("fwd", "fwd_bwd"):
            assert by_name[f"layers/{kind}/{direction}"]["peer"] == f"layers/{peer}/{direction}"
    assert by_name["kernels/ssd_chunked/fwd"]["peer"] == "kernels/ssd_sequential/fwd"
    assert by_name["kernels/window_attention/fwd"]["peer"] == "kernels/dense_masked_sdpa/fwd"
    presets = doc["extra"]["model_configs"]
    params = [c["non_embedding_params"] for c in presets.values()]
    anchor = presets["bmojo"]["non_embedding_params"]
    assert all(abs(p - anchor) <= 0.1 * anchor for p in params), "parameter counts matched within 10%"
    for preset in presets:
        train = [f for f in doc["figures"] if f["name"].startswith(f"models/train/{preset}/")]
        assert len(train) == 2 and all(0 < f["mfu"] for f in train)
        assert any(f["name"].startswith(f"models/train_bf16/{preset}/") for f in doc["figures"])
        assert by_name[f"decode/latency_growth/{preset}"]["value"] > 0
    assert by_name["decode/cache_growth/bmojo"]["value"] == 1.0  # constant-size cache
    assert by_name["decode/cache_growth/bmojo_static"]["value"] == 1.0  # and in the static layout
    assert by_name["decode/latency/bmojo_static/ctx128"]["settings"]["decoding"] == "static"
    assert by_name["decode/cache_growth/transformer"]["value"] > 1.0  # the KV cache grows
    for batch in (1, 8):
        for peer in ("hf_mistral", "hf_mamba2"):
            fig = by_name[f"decode/generate/bmojo/batch{batch}/vs_{peer}"]
            assert fig["peer"] == f"decode/generate/{peer}/batch{batch}" and fig["ratio"] > 0
    bandwidth = by_name["decode/bandwidth/bmojo_100m"]
    assert (
        0
        < bandwidth["fraction_of_bandwidth"]
        == pytest.approx(bandwidth["value"] / by_name["ceiling/memory_read"]["value"])
    )
    assert by_name["packing/train_packed/bmojo/L128"]["peer"] == "packing/train_unpacked/bmojo/L128"
    bf16_in_hardware = doc["ceiling_flops"]["bf16"] > doc["ceiling_flops"]["fp32"]
    for preset in presets:
        small = by_name[f"small/train_step/{preset}"]
        assert small["settings"]["batch"] == 32 and small["settings"]["L"] == 32  # the quick recall size
        assert preset == "transformer" or small["peer"] == "small/train_step/transformer"
        small_bf16 = by_name.get(f"small/train_step_bf16/{preset}")  # timed only where bf16 beats fp32
        assert (small_bf16 is not None) == bf16_in_hardware
        if small_bf16 is not None:
            assert small_bf16["settings"]["dtype"] == "bf16" and small["settings"]["dtype"] == "fp32"
            assert preset == "transformer" or small_bf16["peer"] == "small/train_step_bf16/transformer"
    small_store, large_store = by_name["store/latency/stored256"], by_name["store/latency/stored1024"]
    assert large_store["peer"] == "store/latency/stored256" and large_store["ratio"] > 0
    assert small_store["settings"]["working_bytes"] == large_store["settings"]["working_bytes"]
    assert small_store["settings"]["stored_bytes"] < large_store["settings"]["stored_bytes"]
    faiss_store = by_name["store/latency_faiss/stored1024"]  # timed in the same run, against its own smallest N
    assert faiss_store["peer"] == "store/latency_faiss/stored256" and faiss_store["settings"]["backend"] == "faiss"
    assert len(doc["targets"]) == 17
    unmeasured = [t["figure"] for t in doc["targets"] if t["measured"] is None]
    assert unmeasured == ([] if bf16_in_hardware else ["small/train_step_bf16/bmojo"])
    assert bf16_in_hardware or any(n.startswith("small: bf16 autocast not timed") for n in doc["notes"])


def test_bench_markdown_and_plots(quick_run, png_signature):
    out, doc = quick_run
    md = (out / "bench.md").read_text()
    assert md.startswith("# bmojo bench") and "## Targets" in md and "## layers" in md
    assert "| >= 0.667 |" in md and "0.6666" not in md  # thresholds in 3 significant digits, like the figures
    assert set(doc["plots"]) == {"train_throughput.png", "loss_curve.png", "decode_latency.png", "decode_cache.png"}
    for name in doc["plots"]:
        data = (out / name).read_bytes()
        assert data[:8] == png_signature and len(data) > 1000, name


def test_bench_rejects_unknown_suite(tmp_path, capsys, cli):
    assert cli("bench", "--suite", "kernels,nope", "--out", tmp_path) == 2
    assert "unknown suite" in capsys.readouterr().err
