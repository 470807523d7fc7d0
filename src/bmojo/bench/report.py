"""bench.json and bench.md: every figure, the machine, and the performance targets (docs/benchmarks.md)."""

from __future__ import annotations

import json
import math
from pathlib import Path

from .harness import FIGURE_SUITES, Bench
from .suites import SIZES, fast_decoding

SCHEMA_VERSION = 1


def targets(bench: Bench) -> list[dict]:
    """The performance targets (docs/benchmarks.md), each with its measured value read off the figures and whether
    it is met (None where the suite did not run)."""
    size = SIZES[bench.quick]
    mid, long = size["bf16_L"], size["train_L"][-1]
    mfu = size["mfu"]
    fast = f"bmojo_{fast_decoding(bench)}"  # the rows of bmojo's static decode step
    rows = [
        ("bmojo layer fwd+bwd vs HF Mamba2Mixer + Mistral SWA (speed-up)", "layers/bmojo/fwd_bwd", "ratio", ">=", 1.5),
        (f"bmojo training tokens/s vs transformer at L={mid}", f"models/train/bmojo/L{mid}", "ratio", ">=", 1.5),
        (f"bmojo training tokens/s vs transformer at L={long}", f"models/train/bmojo/L{long}", "ratio", ">=", 4.0),
        ("bmojo decode latency (static step), longest / shortest context", f"decode/latency_growth/{fast}", "value",
         "<=", 1.2),
        ("bmojo decode cache bytes (static step), longest / shortest context", f"decode/cache_growth/{fast}",
         "value", "==", 1.0),
        *[(f"bmojo generate() tokens/s vs HF {peer_name}, batch {b}", f"decode/generate/bmojo/batch{b}/vs_{peer}",
           "ratio", ">=", goal)
          for b, goal in ((1, 3.0), (8, 2.0)) for peer, peer_name in (("hf_mistral", "Mistral (SWA)"),
                                                                     ("hf_mamba2", "Mamba2"))],
        ("~100M-parameter bmojo decoding, batch 1: bytes read per second / memory bandwidth",
         "decode/bandwidth/bmojo_100m", "fraction_of_bandwidth", ">=", 0.6),
        (f"bmojo bf16 autocast training tokens/s vs fp32 at L={mid}", f"models/train_bf16/bmojo/L{mid}", "ratio",
         ">=", 1.5),
        ("bf16 loss tracks fp32: max relative difference, second half", "models/loss_curve/bf16_vs_fp32_max_rel_diff",
         "value", "<=", 0.02),
        (f"bmojo MFU vs fp32 ceiling at d {mfu['hidden_size']}, L {mfu['L']} (fp32)",
         f"models/mfu_bmojo_d{mfu['hidden_size']}/L{mfu['L']}/fp32", "value", ">=", 0.30),
        (f"bmojo packed-document training tokens/s vs one stream at L={mid} (at most 10% slower)",
         f"packing/train_packed/bmojo/L{mid}", "ratio", ">=", 1 / 1.1),
        ("bmojo training step at the quick recall size vs a transformer of equal width and depth (at most 1.5x)",
         "small/train_step/bmojo", "ratio", ">=", 1 / 1.5),
        ("the same, both in bf16 autocast (where the CPU has bf16 matmuls)", "small/train_step_bf16/bmojo", "ratio",
         ">=", 1 / 1.5),
        (f"bmojo decode latency with {max(size['store_sizes']):,} stored tokens per layer vs "
         f"{min(size['store_sizes']):,}, faiss backend (at most 2x)",
         f"store/latency_faiss/stored{max(size['store_sizes'])}", "ratio", ">=", 0.5),
    ]
    out = []
    for text, name, field, op, threshold in rows:
        fig = bench.get(name)
        value = None if fig is None else fig.get(field)
        met = None
        if value is not None:
            met = {">=": value >= threshold, "<=": value <= threshold, "==": math.isclose(value, threshold)}[op]
        out.append(dict(target=text, figure=name, field=field, op=op, threshold=threshold, measured=value, met=met))
    return out


def write_json(bench: Bench, meta: dict, path: Path) -> dict:
    """Write bench.json (schema version, `meta`, figures, targets, plots, notes, extra); returns its content."""
    doc = {"schema_version": SCHEMA_VERSION, **meta, "figures": bench.figures, "targets": targets(bench),
           "plots": bench.plots, "notes": bench.notes, "extra": bench.extra}
    path.write_text(json.dumps(doc, indent=1, default=_jsonable))
    return doc


def _jsonable(x):
    """JSON form of what json cannot write itself: tensors/arrays as lists, anything else as its str."""
    if hasattr(x, "tolist"):
        return x.tolist()
    return str(x)


def _fmt(x, digits: int = 3) -> str:
    """A table cell: - for None, yes/**no** for booleans, thousands separators, 3 significant digits."""
    if x is None:
        return "-"
    if isinstance(x, bool):
        return "yes" if x else "**no**"
    if isinstance(x, int) or (isinstance(x, float) and x.is_integer() and abs(x) >= 1000):
        return f"{int(x):,}"
    if isinstance(x, float):
        return f"{x:.{digits}g}" if abs(x) < 1e5 else f"{x:,.0f}"
    return str(x)


def _settings(s: dict) -> str:
    """A figure's settings as `k=v, ...` (without the parameter count, shown elsewhere)."""
    return ", ".join(f"{k}={v}" for k, v in s.items() if k not in ("non_embedding_params",))


def write_markdown(doc: dict, path: Path) -> None:
    """Write bench.md: the machine, the targets, a table per suite, the plots and the notes."""
    m = doc["machine"]
    lines = [
        "# bmojo bench",
        "",
        f"Command: `{doc['command']}`  ",
        f"Started {doc['started']}, {doc['elapsed_s']:.0f} s; suites: {', '.join(doc['suites'])}"
        + (" (**--quick**: tiny sizes, not the targets' settings)" if doc["quick"] else ""),
        "",
        "| machine | |",
        "|---|---|",
    ]
    for key in ("cpu_model", "cpu_flags", "cpu_count", "torch_threads", "torch_cpu_capability", "cpu_allocator",
                "device", "cuda_device", "torch", "transformers", "python", "load_average_at_start",
                "load_average_at_end"):
        if key in m:
            lines.append(f"| {key} | {', '.join(map(str, m[key])) if isinstance(m[key], list) else m[key]} |")
    lines += ["", "Each figure is the median of the repeats after warm-up; ratios are speed-ups over the peer "
              "(peer time / our time), timed interleaved with it.", "", "## Targets", "",
              "| target | measured | threshold | met |", "|---|---|---|---|"]
    for t in doc["targets"]:
        met = _fmt(t["met"]) if t["met"] is not None else "not run"
        lines.append(f"| {t['target']} | {_fmt(t['measured'])} | {t['op']} {_fmt(float(t['threshold']))} | {met} |")
    for suite in FIGURE_SUITES:
        figs = [f for f in doc["figures"] if f["suite"] == suite]
        if not figs:
            continue
        lines += ["", f"## {suite}", "", "| figure | value | unit | peer | speed-up | MFU | min..max | settings |",
                  "|---|---|---|---|---|---|---|---|"]
        for f in figs:
            st = f.get("stats")
            spread = f"{_fmt(st['min'])}..{_fmt(st['max'])} (n={st['repeats']})" if st else ""
            peer = f.get("peer", "").split("/", 1)[-1] if f.get("peer") else ""
            lines.append(f"| {f['name'].split('/', 1)[1]} | {_fmt(f['value'])} | {f['unit']} | {peer} "
                         f"| {_fmt(f.get('ratio'))} | {_fmt(f.get('mfu'))} | {spread} | {_settings(f['settings'])} |")
    if doc["plots"]:
        lines += ["", "## Plots", ""] + [f"- `{name}`: {what}" for name, what in doc["plots"].items()]
    if doc["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in doc["notes"]]
    path.write_text("\n".join(lines) + "\n")
