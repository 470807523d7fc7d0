"""`bmojo compare`: train architectures on recall tasks at matched memory and report recall vs memory.

For every (task, memory budget, architecture preset, seed) the command builds the preset's model,
turns its *memory knob* (window for `swa`, SSM state for `mamba`/`hybrid`, fading tokens for
`bmojo_f`, SSM state and eidetic tokens for `bmojo`) to the setting with the most decoding state within the budget,
trains it (optionally over an lr x weight-decay sweep, keeping the best), and measures test accuracy
on the scored positions only (targets other than -100). Budgets are in token-equivalents (see `bmojo.accounting`); a run
whose smallest setting does not fit is recorded as skipped. `transformer` has no knob: its memory is
the KV of the whole sequence, reported as is.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
import tomllib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import tasks as task_lib
from .accounting import decoding_state_bytes, parameter_count, token_equivalents
from .cli import check_writable
from .models import PRESETS, BMojoConfig, BMojoForCausalLM
from .plotting import pyplot
from .training import TrainConfig, Trainer

# preset -> the config fields turned to meet a memory budget, with their candidate values. Every
# combination is a candidate; the one with the most memory within the budget is used.
MEMORY_KNOBS: dict[str, dict[str, list[int]]] = {
    "transformer": {},
    "swa": {"window_size": [2, 4, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256]},
    "mamba": {"ssm_state_size": [1, 2, 4, 8, 16, 32, 64, 128, 256]},
    "hybrid": {"ssm_state_size": [1, 2, 4, 8, 16, 32, 64, 128, 256]},
    "bmojo_f": {"ssm_state_size": [2, 4, 8, 16, 32], "num_fading_tokens": [1, 2, 4, 8, 16, 32, 64]},
    "bmojo": {"ssm_state_size": [2, 4, 8, 16, 32], "num_fading_tokens": [0, 2, 8],
              "num_eidetic_tokens": [1, 2, 4, 8, 16, 32, 64, 128, 256]},
}


@dataclass
class CompareSpec:
    """Everything one `bmojo compare` experiment runs. `tasks`: [{"task": name, **generator settings}].
    Plain data: `to_dict()` and `from_dict` / `from_file` (JSON or TOML, validated) convert both ways."""

    tasks: list[dict]
    presets: list[str]
    budgets: list[float]  # token-equivalents; empty = each preset's own config, no matching
    seeds: list[int]
    model: dict  # BMojoConfig overrides shared by every preset (width, depth, heads, window, ...)
    train: dict  # TrainConfig overrides
    lrs: list[float] = field(default_factory=lambda: [1e-3])
    weight_decays: list[float] = field(default_factory=lambda: [0.1])
    num_train: int = 2000
    num_test: int = 256
    time_budget_s: float | None = None  # whole command; split evenly over the remaining runs

    def to_dict(self) -> dict:
        """The spec as plain JSON-able data; `from_dict` reads it back."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: dict, source: str = "the spec") -> CompareSpec:
        """A spec from plain data; ValueError naming an unknown or missing field, a value of the wrong type,
        or an unknown task or preset (`source` names where the data came from)."""
        fields = {f.name: f for f in dataclasses.fields(cls)}
        hints = typing.get_type_hints(cls)
        unknown = [k for k in data if k not in fields]
        if unknown:
            raise ValueError(f"{source}: unknown field(s) {unknown}; valid fields: {', '.join(fields)}")
        missing = [k for k, f in fields.items() if k not in data and f.default is dataclasses.MISSING
                   and f.default_factory is dataclasses.MISSING]
        if missing:
            raise ValueError(f"{source}: missing field(s) {missing}")
        for key, value in data.items():
            if not _has_type(value, hints[key]):
                raise ValueError(f"{source}: field {key!r} must be {_type_name(hints[key])}, got {value!r}")
        if not all("task" in t for t in data["tasks"]):
            raise ValueError(f"{source}: every entry of 'tasks' needs a 'task' name, e.g. {{\"task\": \"mqar\"}}")
        _check_names("task", [t["task"] for t in data["tasks"]], task_lib.TASKS, f"{source}: ")
        _check_names("preset", data["presets"], PRESETS, f"{source}: ")
        _check_names("train field", list(data["train"]), [f.name for f in dataclasses.fields(TrainConfig)],
                     f"{source}: ")
        return cls(**data)

    @classmethod
    def from_file(cls, path: str | Path) -> CompareSpec:
        """A spec from a JSON file, or a TOML file if its name ends in .toml (see `from_dict`)."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"spec file {str(path)!r} does not exist")
        text = path.read_text(encoding="utf-8")
        try:
            data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
        except (json.JSONDecodeError, tomllib.TOMLDecodeError) as err:
            raise ValueError(f"{path} is not valid {'TOML' if path.suffix == '.toml' else 'JSON'} ({err})") from err
        if not isinstance(data, dict):
            raise ValueError(f"{path}: a spec is a JSON object (field: value), got {type(data).__name__}")
        return cls.from_dict(data, source=str(path))


def _has_type(value, hint) -> bool:
    """Whether plain data `value` fits the type annotation `hint` (an int is a float; a bool is neither)."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType):
        return any(_has_type(value, h) for h in args)
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(_has_type(v, args[0]) for v in value)
    if typing.get_origin(hint) is dict or hint is dict:
        return isinstance(value, dict)
    if isinstance(value, bool):
        return hint is bool
    return isinstance(value, (int, float)) if hint is float else isinstance(value, hint)


def _type_name(hint) -> str:
    """A type annotation as the spec's reader would write it, e.g. `int`, `list[float]`, `float | None`."""
    return str(hint).replace("NoneType", "None") if typing.get_args(hint) else hint.__name__


def _check_names(kind: str, names: list[str], valid, where: str = "") -> None:
    """ValueError (its message starting with `where`) listing the `names` that are not in `valid` (the names
    of tasks, presets, ...) and the valid ones."""
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"{where}unknown {kind}(s) {unknown}; valid {kind}s: {', '.join(valid)}")


ALL_PRESETS = list(MEMORY_KNOBS)  # every preset compare can match to a memory budget

SPECS: dict[str, CompareSpec] = {
    # A 2-core CPU in <= 10 minutes: MQAR with the keys beyond a 16-token window, two kv counts.
    "quick": CompareSpec(
        tasks=[dict(task="mqar", vocab_size=128, seq_len=64, num_kv_pairs=4),
               dict(task="mqar", vocab_size=128, seq_len=64, num_kv_pairs=8)],
        presets=ALL_PRESETS,
        budgets=[],
        seeds=[0],
        model=dict(hidden_size=64, num_hidden_layers=2, num_attention_heads=2, window_size=16, ssm_state_size=16,
                   ssm_head_dim=32, ssm_chunk_size=32, num_fading_tokens=4, num_eidetic_tokens=16),
        train=dict(max_steps=600, batch_size=32, warmup_ratio=0.1, eval_every=100, target_accuracy=0.99),
        lrs=[5e-3],
        num_train=20000,
        num_test=256,
        time_budget_s=540,  # a safety net on slow machines; on a free 2-core CPU the step count binds
    ),
    # The paper's MQAR setting (2 layers, L = 256, window 32, several kv counts, a sweep of memory
    # budgets) and the MAD suite, with the Zoology lr sweep. Meant for a GPU.
    "paper": CompareSpec(
        tasks=[dict(task="mqar", vocab_size=8192, seq_len=256, num_kv_pairs=kv) for kv in (16, 32, 64)]
        + [dict(task="in_context_recall"), dict(task="fuzzy_recall"), dict(task="noisy_recall"),
           dict(task="selective_copying"), dict(task="induction_heads", vocab_size=64, seq_len=256)],
        presets=ALL_PRESETS,
        budgets=[64, 128, 256, 512],
        seeds=[0, 1, 2],
        model=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, window_size=32, ssm_state_size=16,
                   ssm_head_dim=64, ssm_chunk_size=64, num_fading_tokens=8, num_eidetic_tokens=32),
        train=dict(max_steps=6000, batch_size=64, warmup_ratio=0.05, eval_every=250, target_accuracy=0.99),
        lrs=[1e-4, 5e-4, 1e-3, 3e-3, 1e-2],
        weight_decays=[0.0, 0.1],
        num_train=100_000,
        num_test=1000,
    ),
}


@torch.no_grad()
def evaluate_accuracy(model, inputs: torch.Tensor, targets: torch.Tensor, batch_size: int = 128) -> float:
    """Accuracy of the model's greedy predictions on the scored positions of task data (inputs, targets)."""
    device = next(model.parameters()).device
    preds = torch.cat([model(inputs[i : i + batch_size].to(device)).logits.argmax(-1).cpu()
                       for i in range(0, len(inputs), batch_size)])
    return task_lib.accuracy(preds, targets)


class _TaskDataset(torch.utils.data.Dataset):
    """Task data as Trainer examples {"input_ids", "targets"}: the model's default loss is then the task loss
    (cross-entropy on the pre-shifted targets, -100 unscored)."""

    def __init__(self, inputs: torch.Tensor, targets: torch.Tensor):
        self.inputs, self.targets = inputs, targets

    def __len__(self):
        return len(self.inputs)

    def __getitem__(self, i):
        return {"input_ids": self.inputs[i], "targets": self.targets[i]}


def memory_of(config: BMojoConfig, seq_len: int) -> tuple[int, float]:
    """(bytes, token-equivalents) of one sequence's decoding state after `seq_len` tokens."""
    num_bytes = decoding_state_bytes(config, seq_len)["total"]
    return num_bytes, token_equivalents(num_bytes, config)


def budget_candidates(preset: str, base: dict) -> list[BMojoConfig]:
    """Every combination of the preset's memory-knob values on top of `base`."""
    configs = [{}]
    for name, values in MEMORY_KNOBS[preset].items():
        configs = [{**c, name: v} for c in configs for v in values]
    return [BMojoConfig.from_preset(preset, **{**base, **c}) for c in configs]


def fit_to_budget(preset: str, base: dict, seq_len: int, budget: float | None) -> BMojoConfig | None:
    """The candidate with the most memory within `budget` token-equivalents (None if none fits);
    budget None: the base config unchanged."""
    if budget is None:
        return BMojoConfig.from_preset(preset, **base)
    fitting = [(memory_of(c, seq_len)[1], i, c) for i, c in enumerate(budget_candidates(preset, base))]
    fitting = [f for f in fitting if f[0] <= budget]
    return max(fitting, key=lambda f: (f[0], -f[1]))[2] if fitting else None


def run_one(config: BMojoConfig, train, test, spec: CompareSpec, seed: int, lr: float, wd: float,
            device: str, time_budget: float | None) -> dict:
    """Train one model on task data `train` = (inputs, targets) and report its accuracy on `test`."""
    torch.manual_seed(seed)
    model = BMojoForCausalLM(config)
    cfg = TrainConfig(**{**spec.train, "lr": lr, "weight_decay": wd, "seed": seed, "time_budget_s": time_budget,
                         "cpu": device == "cpu", "progress": False})
    test_inputs, test_targets = test
    trainer = Trainer(model, _TaskDataset(*train), cfg,
                      evaluate=lambda m: {"accuracy": evaluate_accuracy(m, test_inputs, test_targets)})
    result = trainer.fit()
    return {"accuracy": result.evals[-1]["accuracy"], "steps": result.steps, "train_seconds": result.seconds,
            "stopped": result.stopped, "final_loss": result.history[-1]["loss"] if result.history else None}


def _plan(spec: CompareSpec) -> list[tuple]:
    """Every run of `spec` in order: (task, settings, seq_len, budget, preset, config or None if none fits, seed)."""
    plan = []
    for task in spec.tasks:
        settings = {k: v for k, v in task.items() if k != "task"}
        seq_len = (settings.get("seq_len")
                   or task_lib.make_task(task["task"], num_examples=1, seed=0, **settings)[0].shape[1])
        vocab = task_lib.task_vocab_size(task["task"], **settings)
        for budget in spec.budgets or [None]:
            for preset in spec.presets:
                config = fit_to_budget(preset, {**spec.model, "vocab_size": vocab}, seq_len, budget)
                for seed in spec.seeds:
                    plan.append((task, settings, seq_len, budget, preset, config, seed))
    return plan


def run_compare(spec: CompareSpec, out_dir: Path, device: str = "cpu", progress: bool = True) -> list[dict]:
    """Run every (task, budget, preset, seed) of `spec`; write results.json, results.md and PNGs to out_dir."""
    check_writable(out_dir)
    plan = _plan(spec)
    records, start = [], time.perf_counter()
    data_cache: dict = {}
    bar = tqdm(plan, desc="compare", disable=not progress, dynamic_ncols=True)
    for i, (task, settings, seq_len, budget, preset, config, seed) in enumerate(bar):
        bar.set_postfix(task=task["task"], preset=preset, budget=budget)
        record = {"task": task["task"], "task_settings": settings, "preset": preset, "budget_tokens": budget,
                  "seed": seed}
        if config is None:
            records.append({**record, "skipped": "smallest setting exceeds the memory budget"})
            continue
        key = (task["task"], json.dumps(settings, sort_keys=True), seed)
        if key not in data_cache:
            train, test = task_lib.train_test_split(task["task"], spec.num_train, spec.num_test, seed, **settings)
            data_cache[key] = train, test, task_lib.check_leakage(train[0], test[0])
        train, test, leaked = data_cache[key]
        remaining = None
        if spec.time_budget_s is not None:
            per_run = (spec.time_budget_s - (time.perf_counter() - start)) / (len(plan) - i)
            remaining = max(per_run / (len(spec.lrs) * len(spec.weight_decays)), 1.0)
        sweep = [dict(lr=lr, weight_decay=wd, **run_one(config, train, test, spec, seed, lr, wd, device, remaining))
                 for lr in spec.lrs for wd in spec.weight_decays]
        best = max(sweep, key=lambda r: r["accuracy"])
        num_bytes, tokens = memory_of(config, seq_len)
        records.append({
            **record, "accuracy": best["accuracy"], "test_sequences_seen_in_training": leaked, "lr": best["lr"],
            "weight_decay": best["weight_decay"],
            "memory_bytes": num_bytes, "memory_tokens": tokens,
            "knob": {name: getattr(config, name) for name in MEMORY_KNOBS[preset]},
            "parameters": parameter_count(config),
            "train_seconds": sum(r["train_seconds"] for r in sweep), "steps": best["steps"], "stopped": best["stopped"],
            "sweep": sweep,
        })
    bar.close()
    write_outputs(records, out_dir, spec)
    return records


def _task_label(record: dict) -> str:
    """The task with the settings that tell its variants apart, e.g. `mqar (num_kv_pairs=4, seq_len=64)`."""
    s = record["task_settings"]
    extra = ", ".join(f"{k}={v}" for k, v in s.items() if k in ("num_kv_pairs", "seq_len", "frac_noise"))
    return f"{record['task']} ({extra})" if extra else record["task"]


def write_outputs(records: list[dict], out_dir: Path, spec: CompareSpec) -> None:
    """results.json (spec and records), results.md (the table) and the recall-vs-memory PNGs."""
    (out_dir / "results.json").write_text(json.dumps({"spec": spec.to_dict(), "runs": records}, indent=1))
    lines = ["| task | budget (tok) | preset | knob | memory (tok) | memory (KiB) | params | accuracy | steps "
             "| train s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in records:
        budget = "-" if r["budget_tokens"] is None else f"{r['budget_tokens']:g}"
        if "skipped" in r:
            lines.append(f"| {_task_label(r)} | {budget} | {r['preset']} | - | - | - | - | skipped | - | - |")
            continue
        knob = ", ".join(f"{k}={v}" for k, v in r["knob"].items()) or "-"
        lines.append(f"| {_task_label(r)} | {budget} | {r['preset']} | {knob} | {r['memory_tokens']:.1f} | "
                     f"{r['memory_bytes'] / 1024:.1f} | {r['parameters']:,} | {r['accuracy']:.3f} | {r['steps']} | "
                     f"{r['train_seconds']:.0f} |")
    (out_dir / "results.md").write_text("\n".join(lines) + "\n")
    plot_recall_vs_memory(records, out_dir)


def plot_recall_vs_memory(records: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per task: accuracy (mean over seeds) vs memory in token-equivalents, a line per preset."""
    plt = pyplot()
    import matplotlib.ticker

    paths = []
    done = [r for r in records if "skipped" not in r]
    for label in dict.fromkeys(_task_label(r) for r in done):
        fig, ax = plt.subplots(figsize=(6, 4))
        for preset in dict.fromkeys(r["preset"] for r in done):
            points: dict[float, list[float]] = {}
            for r in done:
                if _task_label(r) == label and r["preset"] == preset:
                    points.setdefault(r["memory_tokens"], []).append(r["accuracy"])
            xs = sorted(points)
            ax.plot(xs, [sum(points[x]) / len(points[x]) for x in xs], marker="o", label=preset)
        ax.set_xscale("log")
        ax.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(matplotlib.ticker.FormatStrFormatter("%g"))
        ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        ax.set_xlabel("decoding state (token-equivalents, log)")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(label)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        path = out_dir / ("recall_vs_memory_" + "".join(c if c.isalnum() else "_" for c in label).strip("_") + ".png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `bmojo compare`."""
    experiment = parser.add_mutually_exclusive_group()
    experiment.add_argument("--preset", choices=list(SPECS), default="quick", help="which experiment (default: quick)")
    experiment.add_argument("--spec", type=Path, metavar="FILE",
                            help="the experiment as a CompareSpec in a JSON (or .toml) file, e.g. the \"spec\" "
                                 "object of a results.json")
    parser.add_argument("--tasks", nargs="+", metavar="TASK",
                        help=f"restrict to these tasks ({', '.join(task_lib.TASKS)})")
    parser.add_argument("--presets", nargs="+", metavar="ARCH", help=f"architectures ({', '.join(PRESETS)})")
    parser.add_argument("--memory-budgets", nargs="+", type=float, metavar="TOKENS",
                        help="memory budgets in token-equivalents (default: the preset's)")
    parser.add_argument("--seeds", nargs="+", type=int)
    parser.add_argument("--max-steps", type=int, help="training steps per run")
    parser.add_argument("--time-budget", type=float, metavar="SECONDS", help="whole-command time budget")
    parser.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    parser.add_argument("--out", required=True, type=Path, help="results folder")


def spec_from_args(args: argparse.Namespace) -> CompareSpec:
    """The --spec file's or --preset's spec, with the command line's restrictions and overrides."""
    spec = CompareSpec.from_file(args.spec) if args.spec else dataclasses.replace(SPECS[args.preset])
    if args.tasks:
        _check_names("task", args.tasks, task_lib.TASKS)
        chosen = [t for t in spec.tasks if t["task"] in args.tasks]
        chosen += [dict(task=t) for t in args.tasks if t not in {c["task"] for c in chosen}]
        spec.tasks = chosen
    if args.presets:
        _check_names("preset", args.presets, PRESETS)
        spec.presets = args.presets
    if args.memory_budgets:
        spec.budgets = args.memory_budgets
    if args.seeds:
        spec.seeds = args.seeds
    if args.max_steps:
        spec.train = {**spec.train, "max_steps": args.max_steps}
    if args.time_budget is not None:
        spec.time_budget_s = args.time_budget
    return spec


def run(args: argparse.Namespace) -> int:
    """Run the experiment `args` describe and print its results table."""
    spec = spec_from_args(args)
    records = run_compare(spec, args.out, device=args.device)
    print((args.out / "results.md").read_text())
    print(f"wrote {args.out}/results.json, results.md and {len(list(args.out.glob('*.png')))} PNG(s)")
    return 0 if records else 1
