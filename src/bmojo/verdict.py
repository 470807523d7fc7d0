"""What a `bmojo compare` experiment says, with its seed spread: per (task, budget, preset) the mean and min-max
accuracy over seeds, and per (task, budget) a verdict on the B'MOJO paper's ordering at equal memory
(docs/recall.md, the paragraph on `results.md`).

Two presets are compared on the seeds both ran (paired): A beats B when every paired difference is positive
and the mean difference exceeds `NOISE_FLOOR`; A trails B in the mirror case; anything else, and any comparison
on a single seed, is "within noise".
"""

from __future__ import annotations

import itertools
import re
import statistics
from collections.abc import Iterable

from .tasks import task_seq_len

NOISE_FLOOR = 0.01  # accuracy points below which a mean difference is never called a difference
PEERS = ("mamba", "hybrid", "swa")  # what bmojo is compared against (and bmojo_f must beat) in the paper's ordering


LABEL_SETTINGS = ("num_kv_pairs", "seq_len", "frac_noise")  # the task settings a label always shows, where set


def label_settings(records: list[dict]) -> tuple[str, ...]:
    """The task settings labels show for these runs: LABEL_SETTINGS, and any other setting that two runs of the same
    task set differently (or one sets and the other not), so that runs of different tasks never share a label."""
    names: dict[str, set[str]] = {}  # per task, every setting any of its runs sets
    for r in records:
        names.setdefault(r["task"], set()).update(r["task_settings"])
    seen: dict[tuple[str, str], set[str]] = {}
    for r in records:
        for k in names[r["task"]]:
            seen.setdefault((r["task"], k), set()).add(repr(r["task_settings"][k]) if k in r["task_settings"] else "")
    varying = sorted({k for (_, k), values in seen.items() if len(values) > 1} - set(LABEL_SETTINGS))
    return (*LABEL_SETTINGS, *varying)


def task_label(record: dict, shown: tuple[str, ...] = LABEL_SETTINGS) -> str:
    """The task with the settings in `shown` (see `label_settings`), e.g. `mqar (num_kv_pairs=4, seq_len=64)`."""
    s = record["task_settings"]
    extra = ", ".join(f"{k}={v}" for k, v in s.items() if k in shown)
    return f"{record['task']} ({extra})" if extra else record["task"]


def _key(record: dict, shown: tuple[str, ...]) -> tuple:
    return task_label(record, shown), record["budget_tokens"]


def summarize(records: Iterable[dict]) -> list[dict]:
    """One row per (task label, budget, preset), in first-seen order: seeds, mean / min / max accuracy, memory
    (token-equivalents, mean), how many runs the time budget stopped; skipped runs give a row with `skipped`."""
    records = list(records)
    shown = label_settings(records)
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        groups.setdefault((*_key(r, shown), r["preset"]), []).append(r)
    rows = []
    for (label, budget, preset), runs in groups.items():
        done = [r for r in runs if "skipped" not in r]
        row = {"task_label": label, "budget_tokens": budget, "preset": preset, "seeds": [r["seed"] for r in runs]}
        if not done:
            rows.append({**row, "skipped": runs[0]["skipped"]})
            continue
        acc = [r["accuracy"] for r in done]
        rows.append({**row, "mean": statistics.fmean(acc), "min": min(acc), "max": max(acc),
                     "memory_tokens": statistics.fmean(r["memory_tokens"] for r in done),
                     "time_stopped": sum(r.get("stopped") == "time_budget" for r in done),
                     "steps": [r["steps"] for r in done]})
    return rows


def compare_pair(a: dict[int, float], b: dict[int, float]) -> dict | None:
    """Paired comparison of two presets' accuracy by seed ({seed: accuracy}): mean difference a - b, its min and
    max over the shared seeds, and the call: '>' (a ahead), '<' (a behind) or '~' (within noise). None if no seed
    is shared."""
    seeds = sorted(set(a) & set(b))
    if not seeds:
        return None
    d = [a[s] - b[s] for s in seeds]
    mean = statistics.fmean(d)
    call = "~"
    if len(d) >= 2 and min(d) > 0 and mean > NOISE_FLOOR:
        call = ">"
    elif len(d) >= 2 and max(d) < 0 and mean < -NOISE_FLOOR:
        call = "<"
    return {"mean": mean, "min": min(d), "max": max(d), "seeds": len(d), "call": call}


def verdicts(records: Iterable[dict]) -> list[dict]:
    """Per (task label, budget) with a bmojo run: bmojo - peer for each of PEERS present, and whether the paper's
    ordering (bmojo >= bmojo_f > hybrid, mamba, swa) 'holds', 'fails' or is 'within noise' (needs bmojo_f and at
    least one peer; else 'n/a')."""
    records = list(records)
    shown = label_settings(records)
    by_cell: dict[tuple, dict[str, dict[int, float]]] = {}
    for r in records:
        if "skipped" not in r:
            by_cell.setdefault(_key(r, shown), {}).setdefault(r["preset"], {})[r["seed"]] = r["accuracy"]
    out = []
    for (label, budget), acc in by_cell.items():
        if "bmojo" not in acc:
            continue
        diffs = {peer: compare_pair(acc["bmojo"], acc[peer]) for peer in PEERS if peer in acc}
        checks = []
        if "bmojo_f" in acc:
            checks.append(("bmojo >= bmojo_f", compare_pair(acc["bmojo"], acc["bmojo_f"]), ("<",)))
            checks += [(f"bmojo_f > {peer}", compare_pair(acc["bmojo_f"], acc[peer]), ("<", "~"))
                       for peer in PEERS if peer in acc]
        if len(checks) < 2:
            ordering = "n/a"
        elif any(c is not None and c["call"] == "<" for _, c, _ in checks):
            ordering = "fails"
        elif all(c is not None and c["call"] not in bad for _, c, bad in checks):
            ordering = "holds"
        else:
            ordering = "within noise"
        out.append({"task_label": label, "budget_tokens": budget, "bmojo_minus": diffs, "ordering": ordering,
                    "checks": {name: c for name, c, _ in checks}})
    return out


def _budget_name(budget: float | None) -> str:
    return "base configs" if budget is None else f"budget {budget:g}"


def gap_trend(verdict_rows: list[dict], peer: str = "mamba") -> list[str]:
    """For MQAR variants that differ only in num_kv_pairs, at each budget: does bmojo - peer grow with kv?
    One line per budget with two or more kv settings."""

    series: dict[tuple, list[tuple[int, float]]] = {}
    for v in verdict_rows:
        m = re.match(r"mqar \((.*)\)", v["task_label"])
        d = v["bmojo_minus"].get(peer)
        if not m or d is None:
            continue
        settings = dict(part.split("=") for part in m.group(1).split(", "))
        kv = int(settings.pop("num_kv_pairs", 0))
        series.setdefault((tuple(sorted(settings.items())), v["budget_tokens"]), []).append((kv, d["mean"]))
    lines = []
    for (_, budget), points in series.items():
        if len(points) < 2:
            continue
        points.sort()
        steps = " -> ".join(f"{d:+.3f} (kv {kv})" for kv, d in points)
        grows = "grows" if all(b[1] > a[1] for a, b in itertools.pairwise(points)) else "does not grow"
        lines.append(f"- {_budget_name(budget)}: bmojo - {peer} {steps}: {grows} with kv")
    return lines


def full_windows(records: Iterable[dict]) -> list[str]:
    """One line per (task label, budget) where the budget gave `swa` a window covering the whole training sequence:
    there it is full attention, not a bounded memory (a reader of `bmojo - swa` should know)."""
    records = list(records)
    shown = label_settings(records)
    lines = {}
    for r in records:
        if r["preset"] != "swa" or "skipped" in r or "window_size" not in r.get("knob", {}):
            continue
        window, seq_len = r["knob"]["window_size"], task_seq_len(r["task"], **r["task_settings"])
        if window >= seq_len:
            label, budget = _key(r, shown)
            lines[label, budget] = f"- {label}, {_budget_name(budget)}: window {window} >= L = {seq_len}"
    return list(lines.values())


def _fmt(c: dict | None) -> str:
    if c is None:
        return "n/a"
    return f"{c['mean']:+.3f} [{c['min']:+.3f}, {c['max']:+.3f}] {c['call']}"


def verdict_markdown(records: list[dict]) -> list[str]:
    """The verdict section of results.md (and of the command's output)."""
    rows = verdicts(records)
    if not rows:
        return ["No verdict: no bmojo run."]
    lines = ["| task | budget (tok) | " + " | ".join(f"bmojo - {p}" for p in PEERS) + " | paper's ordering |",
             "|---|---|" + "---|" * len(PEERS) + "---|"]
    for v in rows:
        budget = "-" if v["budget_tokens"] is None else f"{v['budget_tokens']:g}"
        cells = " | ".join(_fmt(v["bmojo_minus"].get(p)) for p in PEERS)
        lines.append(f"| {v['task_label']} | {budget} | {cells} | {v['ordering']} |")
    lines += ["", f"Each cell: mean accuracy difference over paired seeds [min, max]; '>' ahead or '<' behind on "
              f"every seed by more than {NOISE_FLOOR} on average, '~' within noise (one seed is always '~'). The "
              "paper's ordering at equal memory: bmojo >= bmojo_f > hybrid, mamba, swa."]
    trend = gap_trend(rows)
    if trend:
        lines += ["", "Gap with the number of kv pairs:", *trend]
    full = full_windows(records)
    if full:
        lines += ["", "Where the sliding window covers the whole sequence, `swa` is full attention there:", *full]
    return lines
