"""Timing, figures and the machine record shared by every benchmark suite.

Every figure is the median of `repeats` timed runs after `warmup` untimed ones. Functions that are
compared with each other (ours and its peer, or the presets of one sequence length) are timed
*interleaved* (run 1 of each, then run 2 of each, ...), so that a change in machine load during the
benchmark hits all of them alike instead of biasing their ratio.
"""

from __future__ import annotations

import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch

from ..allocator import tune_cpu_allocator
from ..plotting import pyplot

# what `bmojo bench --suite` chooses from, in run order
SUITES = ("kernels", "layers", "models", "packing", "small", "decode", "store")
FIGURE_SUITES = ("ceiling", *SUITES)  # the suite of every figure: the ceiling is measured before any suite


def sync(device: torch.device) -> None:
    """Wait for the device's queued work (CUDA); nothing to wait for on the CPU."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def measure(fns: dict[str, Callable[[], object]], device: torch.device, warmup: int,
            repeats: int) -> dict[str, list[float]]:
    """Seconds per call of each function: `warmup` untimed calls each, then `repeats` interleaved rounds."""
    for fn in fns.values():
        for _ in range(warmup):
            fn()
    sync(device)
    samples: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            sync(device)
            t0 = time.perf_counter()
            fn()
            sync(device)
            samples[name].append(time.perf_counter() - t0)
    return samples


def stats(samples: list[float], scale: float = 1.0) -> dict:
    """Median (the figure), min, max and the raw samples, each multiplied by `scale`."""
    xs = [s * scale for s in samples]
    return {"median": statistics.median(xs), "min": min(xs), "max": max(xs), "repeats": len(xs), "samples": xs}


@dataclass
class Bench:
    """What a suite needs: device, sizes (`quick`), repeat counts, and the list of figures it appends to."""

    device: torch.device
    quick: bool
    warmup: int
    repeats: int
    compile: bool = False  # also time torch.compile(model) (minutes of compilation on a small CPU)
    figures: list[dict] = field(default_factory=list)
    plots: dict[str, str] = field(default_factory=dict)  # file name -> what it shows
    notes: list[str] = field(default_factory=list)
    extra: dict = field(default_factory=dict)  # suite data that is not a figure (curves), kept in bench.json
    out: Path | None = None  # where plots are written

    def save_plot(self, fig, file_name: str, description: str) -> None:
        """Write a matplotlib figure as out/file_name (PNG) and close it."""
        if self.out is not None:
            fig.savefig(self.out / file_name, dpi=110)
            self.plots[file_name] = description
        pyplot().close(fig)

    def add(self, suite: str, name: str, value: float, unit: str, settings: dict, *, better: str = "lower",
            spread: dict | None = None, peer: str | None = None, ratio: float | None = None, **more) -> dict:
        """Record one figure. `ratio` is the speed-up over `peer`: peer time / our time (or our rate / peer rate),
        so > 1 means ours is faster."""
        fig = {"name": f"{suite}/{name}", "suite": suite, "value": value, "unit": unit, "better": better,
               "settings": settings}
        if spread is not None:
            fig["stats"] = spread
        if peer is not None:
            fig["peer"] = peer if peer.split("/")[0] in FIGURE_SUITES else f"{suite}/{peer}"
            fig["ratio"] = ratio
        fig.update(more)
        self.figures.append(fig)
        return fig

    def get(self, name: str) -> dict | None:
        """The figure named `name` (suite/...), or None."""
        return next((f for f in self.figures if f["name"] == name), None)


def _cpu_model() -> str:
    """The CPU's model name (/proc/cpuinfo, else what platform knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _cpu_flags() -> list[str]:
    """The CPU's vector and matrix extensions that matter for these kernels (/proc/cpuinfo)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    wanted = {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile", "avx512_vnni", "fma"}
                    return sorted(flags & wanted)
    except OSError:
        pass
    return []


def load_average() -> list[float] | None:
    """The 1, 5 and 15-minute load averages (None where the OS does not report them)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def machine_info(device: torch.device) -> dict:
    """The machine record of bench.json: CPU, threads, versions, device, allocator, load."""
    import transformers

    info = {
        "cpu_model": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "device": str(device),
        "cpu_allocator": "tuned" if tune_cpu_allocator() else "default",
        "load_average_at_start": load_average(),
    }
    if device.type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(device)
        info["cuda"] = torch.version.cuda
    return info


def matmul_ceiling(bench: Bench) -> dict[str, float]:
    """The machine's ceiling: measured square-matmul throughput (FLOP/s) in fp32 and bf16 on the device, at n 2048
    (1024 with --quick), or smaller for a dtype so slow here that one product would take over a second (bf16 on a
    CPU without bf16 instructions is emulated, ~100x slower: a probe at n 256 decides; the n is in the settings)."""
    n_max = 1024 if bench.quick else 2048
    dtypes = {"fp32": torch.float32, "bf16": torch.bfloat16}
    fns, sizes = {}, {}
    for name, dtype in dtypes.items():
        probe = torch.randn(256, 256, device=bench.device, dtype=dtype)
        torch.mm(probe, probe)
        sync(bench.device)
        t0 = time.perf_counter()
        torch.mm(probe, probe)
        sync(bench.device)
        probe_rate = 2 * 256**3 / max(time.perf_counter() - t0, 1e-9)
        n = n_max
        while n > 256 and 2 * n**3 / probe_rate > 1.0:
            n //= 2
        a = torch.randn(n, n, device=bench.device, dtype=dtype)
        b = torch.randn(n, n, device=bench.device, dtype=dtype)
        fns[name], sizes[name] = (lambda a=a, b=b: torch.mm(a, b)), n
    reps = max(bench.repeats, 5)
    samples = measure(fns, bench.device, warmup=2, repeats=reps)
    ceiling = {}
    for name, xs in samples.items():
        flops = 2 * sizes[name] ** 3
        ceiling[name] = flops / statistics.median(xs)
        bench.add("ceiling", f"matmul_{name}", ceiling[name] / 1e9, "GFLOP/s", {"n": sizes[name], "dtype": name},
                  better="higher", spread=stats([flops / x / 1e9 for x in xs]))
    return ceiling


def memory_bandwidth(bench: Bench) -> float:
    """The machine's memory ceiling: measured streaming read bandwidth (bytes/s) on the device, summing a 512 MiB
    fp32 tensor (64 MiB with --quick): far larger than any cache, so it is read from memory every time."""
    n = (64 if bench.quick else 512) * 2**20 // 4
    x = torch.ones(n, device=bench.device)
    samples = measure({"read": lambda: x.sum()}, bench.device, warmup=2, repeats=max(bench.repeats, 5))["read"]
    rate = x.numel() * 4 / statistics.median(samples)
    bench.add("ceiling", "memory_read", rate / 1e9, "GB/s", {"bytes": x.numel() * 4, "op": "sum, fp32"},
              better="higher", spread=stats([x.numel() * 4 / s / 1e9 for s in samples]))
    return rate
