"""`bmojo bench`: speed and memory against peers and the machine's ceiling, in one process and one run.

    bmojo bench [--quick] [--suite kernels,layers,models,decode] [--device cpu|cuda] [--threads N] --out DIR

writes DIR/bench.json (every figure: name, value, unit, settings, the peer and the speed-up over it where
there is one, spread of the repeats; the machine; the targets), DIR/bench.md (the same as tables) and
DIR/*.png (training throughput vs L, decode latency and cache size vs context, the fp32/bf16 loss curves).
The machine's ceiling (fp32 and bf16 matmul throughput, memory read bandwidth) is always measured first;
model-FLOP utilization and decoding's bytes/s are given against it. Benchmarks assert nothing about time.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import torch

from ..cli import check_device, check_writable
from . import suites
from .harness import SUITES, Bench, load_average, machine_info, matmul_ceiling, memory_bandwidth
from .report import targets, write_json, write_markdown


def add_arguments(parser) -> None:
    """The options of `bmojo bench`."""
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes and few repeats (CI smoke run, under two minutes)")
    parser.add_argument("--suite", default=",".join(SUITES),
                        help=f"comma-separated subset of {','.join(SUITES)} (default: all)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats of the ceiling, kernel and layer figures (default 5, --quick 2); model "
                             "training uses 5 (3 at L=16k), decoding 16 steps per context")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up calls per figure (default 1)")
    parser.add_argument("--compile", action="store_true",
                        help="also time torch.compile(model) training (bmojo; slow to compile)")
    parser.add_argument("--out", required=True, help="output directory (created if missing)")


def run(args) -> int:
    """Measure the ceiling and the chosen suites; write bench.json, bench.md and the PNGs to --out."""
    chosen = [s.strip() for s in args.suite.split(",") if s.strip()]
    unknown = [s for s in chosen if s not in SUITES]
    if unknown or not chosen:
        raise ValueError(f"--suite {args.suite!r}: unknown suite(s) {unknown}; choose from {','.join(SUITES)}")
    device = check_device(args.device)
    out = Path(args.out)
    check_writable(out)
    repeats = args.repeats or (2 if args.quick else 5)
    bench = Bench(device=device, quick=args.quick, warmup=args.warmup, repeats=repeats, compile=args.compile, out=out)
    torch.manual_seed(0)
    started, t0 = datetime.now(timezone.utc).isoformat(timespec="seconds"), time.perf_counter()
    machine = machine_info(device)
    print(f"bmojo bench: {machine['cpu_model']}, {machine['torch_threads']} threads, torch {machine['torch']}, "
          f"device {device}", flush=True)
    ceiling = matmul_ceiling(bench)
    ceiling["bandwidth"] = memory_bandwidth(bench)
    print(f"  ceiling: fp32 {ceiling['fp32'] / 1e9:.0f} GFLOP/s, bf16 {ceiling['bf16'] / 1e9:.0f} GFLOP/s, memory read "
          f"{ceiling['bandwidth'] / 1e9:.1f} GB/s", flush=True)
    timings = {}
    for name in SUITES:
        if name not in chosen:
            continue
        ts = time.perf_counter()
        if name in ("models", "small", "decode"):
            getattr(suites, name)(bench, ceiling)
        else:
            getattr(suites, name)(bench)
        timings[name] = {"seconds": time.perf_counter() - ts, "load_average_after": load_average()}
        print(f"  {name}: {timings[name]['seconds']:.0f} s", flush=True)
    machine["load_average_at_end"] = load_average()
    noisy = [f["name"] for f in bench.figures
             if "stats" in f and f["stats"]["min"] > 0 and f["stats"]["max"] > 2 * f["stats"]["min"]]
    if noisy:
        bench.notes.append(f"{len(noisy)} figure(s) varied more than 2x between repeats (another process competing for "
                           f"the cores?), so their medians are unreliable: {', '.join(noisy)}. Load average "
                           f"{machine['load_average_at_start']} at start, {machine['load_average_at_end']} at end "
                           f"({os.cpu_count()} CPUs, {torch.get_num_threads()} threads).")
    meta = {
        "command": "bmojo bench " + " ".join(shlex.quote(a) for a in sys.argv[2:]) if sys.argv[1:2] == ["bench"]
        else (f"bmojo bench {'--quick ' if args.quick else ''}--suite {','.join(chosen)} --device {args.device} "
              f"--out {args.out}"),
        "started": started, "elapsed_s": time.perf_counter() - t0, "quick": args.quick, "suites": chosen,
        "repeats": repeats, "warmup": args.warmup, "machine": machine,
        "ceiling_flops": ceiling, "suite_timings": timings,
        "ratio_definition": "speed-up over the peer figure: peer time / this time (or this rate / peer rate); "
                            "> 1 = faster",
    }
    doc = write_json(bench, meta, out / "bench.json")
    write_markdown(doc, out / "bench.md")
    for t in targets(bench):
        if t["measured"] is not None:
            state = "met" if t["met"] else "NOT met"
            state += " (--quick sizes: not the target's setting)" if args.quick else ""
            print(f"  target: {t['target']}: {t['measured']:.3g} ({t['op']} {t['threshold']:.3g}) {state}")
    print(f"wrote {out / 'bench.json'}, {out / 'bench.md'}" + "".join(f", {out / p}" for p in bench.plots), flush=True)
    return 0
