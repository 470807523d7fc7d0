"""Seed summary of a language-model ablation folder (scripts/lm_ablation.sh): one markdown row per model.

    python3 scripts/lm_summary.py OUT [REFERENCE]     (REFERENCE: the row to compare with, default mamba)

Reads OUT/NAME_sSEED/eval.json (written by `bmojo eval`). Columns: seeds; test perplexity at 1x as mean [min, max];
the mean against the reference's mean; per seed against the reference run of the same seed; drift = perplexity at
the longest multiple / at 1x, per seed.
"""

import glob
import json
import os
import statistics
import sys


def main(root: str, reference: str = "mamba") -> None:
    rows: dict[str, dict[int, dict[float, float]]] = {}
    for path in sorted(glob.glob(os.path.join(root, "*_s*", "eval.json"))):
        name, seed = os.path.basename(os.path.dirname(path)).rsplit("_s", 1)
        ppl = {r["multiple"]: r["perplexity"] for r in json.load(open(path))["results"]}
        rows.setdefault(name, {})[int(seed)] = ppl
    if reference not in rows:
        sys.exit(f"no {reference}_s* runs with an eval.json in {root}")
    ref = rows[reference]
    ref_mean = statistics.mean(p[1] for p in ref.values())
    print("| row | seeds | ppl @ 1x | vs " + reference + " | per seed | drift at longest |")
    print("|---|---|---|---|---|---|")
    for name, seeds in rows.items():
        at1 = [p[1] for p in seeds.values()]
        mean = statistics.mean(at1)
        spread = f" [{min(at1):.3f}, {max(at1):.3f}]" if len(at1) > 1 else ""
        paired = ", ".join(f"{100 * (seeds[s][1] / ref[s][1] - 1):+.1f}%" for s in seeds if s in ref)
        drift = ", ".join(f"{p[max(p)] / p[1]:.3f}" for p in seeds.values())
        versus = "-" if name == reference else f"{100 * (mean / ref_mean - 1):+.1f}%"
        print(f"| {name} | {len(at1)} | {mean:.3f}{spread} | {versus} | {paired or '-'} | {drift} |")


if __name__ == "__main__":
    main(*sys.argv[1:])
