"""`bmojo compare`: train architectures on recall tasks at matched memory and report recall vs memory.

For every (task, memory budget, architecture preset, seed) the command builds the preset's model,
turns its *memory knob* (window for `swa`, SSM state for `mamba`/`hybrid`, fading tokens for
`bmojo_f`, SSM state and eidetic tokens for `bmojo`) to the setting with the most decoding state within the budget,
trains it (optionally over an lr x weight-decay sweep, keeping the best), and measures test accuracy
on the scored positions only (targets other than -100). Budgets are in token-equivalents (see `bmojo.accounting`); a run
whose smallest setting does not fit is recorded as skipped. `transformer` has no knob: its memory is
the KV of the whole sequence, reported as is.

Nothing finished is lost: each run is appended to `runs.jsonl` in the output folder as it ends (flushed to disk),
the tables are rewritten atomically after it, and `--resume` continues an interrupted folder of the same spec.
Every argument is checked before the first run.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import json
import math
import sys
import time
import tomllib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import tasks as task_lib
from .accounting import decoding_state_bytes, parameter_count, token_equivalents
from .allocator import cpu_allocator_tuned, tune_cpu_allocator
from .cli import check_writable, sigterm_interrupts
from .models import PRESETS, BMojoConfig, BMojoForCausalLM
from .models.configuration import has_type, type_name
from .plotting import pyplot
from .records import append_record, read_records, reopen_records, write_atomically
from .training import TrainConfig, Trainer, quiet_hf_progress
from .verdict import label_settings, summarize, task_label, verdict_markdown

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

# The allowed numbers of a spec: spec field or train field -> (test of one value, what is allowed). The
# command-line flags that set a field are checked by its rule. NaN fails every test.
VALUE_RULES: dict[str, tuple[Callable, str]] = {
    "budgets": (lambda v: 0 < v < math.inf, "> 0 (token-equivalents)"),
    "seeds": (lambda v: 0 <= v < 2**32, "in [0, 2**32)"),
    "lrs": (lambda v: 0 < v < math.inf, "> 0"),
    "weight_decays": (lambda v: 0 <= v < math.inf, ">= 0"),
    "num_train": (lambda v: v >= 1, ">= 1"),
    "num_test": (lambda v: v >= 1, ">= 1"),
    "num_val": (lambda v: v >= 1, ">= 1"),
    "time_budget_s": (lambda v: v is None or 0 < v < math.inf, "> 0 seconds"),
    "max_steps": (lambda v: v >= 1, ">= 1"),
    "batch_size": (lambda v: v >= 1, ">= 1"),
    "eval_lengths": (lambda v: v >= 1, ">= 1 (tokens)"),
}
# TrainConfig fields compare sets for each run itself -> what sets them (so a spec's `train` may not)
SET_PER_RUN = {"lr": "lrs", "weight_decay": "weight_decays", "seed": "seeds", "time_budget_s": "time_budget_s",
               "cpu": "--device", "progress": "compare's own progress bar"}
# a run of seed s reads its second stage's data from seed s + 100, not its own splits (with seeds s and s + 100 in one
# spec, s's second stage shares a seed with s + 100's first stage, whose data is at another length)
SECOND_STAGE_SEED = 100
NON_EMPTY = ("tasks", "presets", "seeds", "lrs", "weight_decays")  # spec lists that need an entry for anything to run
DEVICES = ("cpu", "cuda")
SPEC_FILE = "spec.json"  # in the output folder: the spec its runs belong to (what --resume checks)
RUNS_FILE = "runs.jsonl"  # in the output folder: one finished run per line, appended as each ends


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
    num_val: int = 256  # the validation split: lr / weight-decay choice and early stopping (never the test split)
    time_budget_s: float | None = None  # whole command; split evenly over the remaining runs
    # more rows for `presets`: name -> {"preset": a preset, config field: value, ...} (e.g. bmojo with a store)
    variants: dict = field(default_factory=dict)
    eval_lengths: list[int] = field(default_factory=list)  # test accuracy also at these seq_len (the task made longer)
    # a row's own learning rates: preset or variant name -> lrs swept for it instead of `lrs` (e.g. Mamba's higher one)
    preset_lrs: dict = field(default_factory=dict)
    # a length curriculum: {"seq_len": L, "num_train": n, train field: value, ...}. The sweep's best model trains on
    # with the task made L long (new training and validation data, from seed + SECOND_STAGE_SEED; the train fields
    # given here over `train`, lr by default the one chosen), then every test accuracy is measured. {} = one stage
    second_stage: dict = field(default_factory=dict)

    def lrs_of(self, preset: str) -> list[float]:
        """The learning rates swept for row `preset`: its `preset_lrs` entry, else `lrs`."""
        return self.preset_lrs.get(preset, self.lrs)

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
            if not has_type(value, hints[key]):
                raise ValueError(f"{source}: field {key!r} must be {type_name(hints[key])}, got {value!r}")
        spec = cls(**data)
        spec.check(source)
        return spec

    def check(self, source: str = "the spec") -> None:
        """ValueError naming the first unknown or missing task setting, unknown preset, model or train field, train
        field of the wrong type or set per run (SET_PER_RUN), empty list, value out of range (VALUE_RULES), or a
        batch larger than the training set (`source` names where the spec came from)."""
        where = f"{source}: "
        if not all("task" in t for t in self.tasks):
            raise ValueError(f"{where}every entry of 'tasks' needs a 'task' name, e.g. {{\"task\": \"mqar\"}}")
        _check_names("task", [t["task"] for t in self.tasks], task_lib.TASKS, where)
        for name, variant in self.variants.items():
            if not isinstance(variant, dict) or variant.get("preset") not in PRESETS:
                raise ValueError(f"{where}variant {name!r} needs a 'preset' among {', '.join(PRESETS)}; got "
                                 f"{variant!r}")
            if name in PRESETS:
                raise ValueError(f"{where}variant {name!r} has a preset's name; choose another")
            BMojoConfig.check_field_names([k for k in variant if k != "preset"], f"{where}variant {name!r}: ")
        _check_names("preset", self.presets, [*PRESETS, *self.variants], where)
        for task in self.tasks:
            params = inspect.signature(task_lib.TASKS[task["task"]]).parameters
            settable = [name for name in params if name not in ("num_examples", "seed")]
            _check_names(f"{task['task']} setting", [k for k in task if k != "task"], settable, where)
            missing = [n for n in settable if params[n].default is inspect.Parameter.empty and n not in task]
            if missing:
                raise ValueError(f"{where}task {task['task']!r} needs the setting(s) {missing}")
        train_hints = typing.get_type_hints(TrainConfig)
        _check_names("train field", list(self.train), list(train_hints), where)
        for name, value in self.train.items():
            if name in SET_PER_RUN:
                raise ValueError(f"{where}train.{name} is set for each run by compare; use {SET_PER_RUN[name]}")
            if not has_type(value, train_hints[name]):
                raise ValueError(f"{where}train.{name} must be {type_name(train_hints[name])}, got {value!r}")
        BMojoConfig.check_field_names(self.model, f"{where}model: ")
        for name in NON_EMPTY:
            if not getattr(self, name):
                raise ValueError(f"{where}{name!r} is empty: nothing would run")
        _check_names("preset_lrs entry", list(self.preset_lrs), [*PRESETS, *self.variants], where)
        for name, lrs in self.preset_lrs.items():
            if not has_type(lrs, list[float]) or not lrs:
                raise ValueError(f"{where}preset_lrs[{name!r}] must be a non-empty list of learning rates, got {lrs!r}")
            check_value(f"{where}preset_lrs[{name!r}]", lrs, "lrs")
        for name in VALUE_RULES:
            if hasattr(self, name):
                check_value(f"{where}{name}", getattr(self, name), name)
            elif name in self.train:
                check_value(f"{where}train.{name}", self.train[name], name)
        batch_size = TrainConfig(**self.train).batch_size
        if batch_size > self.num_train:
            raise ValueError(f"{where}train.batch_size={batch_size} exceeds num_train={self.num_train}")
        if self.second_stage:
            self._check_second_stage(where, train_hints)

    def _check_second_stage(self, where: str, train_hints: dict) -> None:
        """ValueError naming what is wrong in `second_stage` (see the field)."""
        stage, name = self.second_stage, f"{where}second_stage"
        settable = ["seq_len", "num_train", *(k for k in train_hints if k in ("lr", "weight_decay")
                                               or k not in SET_PER_RUN)]
        _check_names("second_stage field", list(stage), settable, where)
        for key in ("seq_len", "num_train"):
            value = stage.get(key, 1)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name}.{key} must be an integer >= 1, got {value!r}")
        if "seq_len" not in stage:
            raise ValueError(f"{name} needs 'seq_len', the task's length in the second stage, e.g. {{seq_len = 512}}")
        for key, value in stage.items():
            if key in train_hints and not has_type(value, train_hints[key]):
                raise ValueError(f"{name}.{key} must be {type_name(train_hints[key])}, got {value!r}")
            if key in VALUE_RULES:
                check_value(f"{name}.{key}", value, key)
            elif key in ("lr", "weight_decay"):
                check_value(f"{name}.{key}", value, f"{key}s")
        config = TrainConfig(**{**self.train, **{k: v for k, v in stage.items() if k in train_hints}})
        if config.batch_size > stage.get("num_train", self.num_train):
            raise ValueError(f"{name}: batch_size={config.batch_size} exceeds its num_train="
                             f"{stage.get('num_train', self.num_train)}")
        if self.time_budget_s is not None:
            raise ValueError(f"{name} with a time budget (time_budget_s, --time-budget): the budget is split over "
                             "first stages only; drop second_stage or the time budget")

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


def check_value(name: str, value, field: str) -> None:
    """ValueError if `value` (a number or a list of them) breaks the rule of spec field `field` (VALUE_RULES);
    `name` is what the user wrote it as: a flag (--seeds) or a spec field."""
    ok, allowed = VALUE_RULES[field]
    bad = [v for v in (value if isinstance(value, list) else [value]) if not ok(v)]
    if bad:
        raise ValueError(f"{name} must be {allowed}, got {bad[0]!r}")


def _check_names(kind: str, names: list[str], valid, where: str = "") -> None:
    """ValueError (its message starting with `where`) listing the `names` that are not in `valid` (the names
    of tasks, presets, ...) and the valid ones."""
    unknown = [n for n in names if n not in valid]
    if unknown:
        raise ValueError(f"{where}unknown {kind}(s) {unknown}; valid {kind}s: {', '.join(valid)}")


ALL_PRESETS = list(MEMORY_KNOBS)  # every preset compare can match to a memory budget

# The quick and standard specs' model. The B'MOJO layers add the SSM output to the residual stream (the presets'
# choice for language modeling) through a gate that starts at 0 and moves 10x the learning rate: ungated, the residual
# keeps bmojo on the plateau (experiments/mqar_quick_residual.toml); the other presets have no B'MOJO layer
# and ignore it. SSD chunks of 32 = the tasks' L: one chunk per sequence, the quadratic form alone (about 2x faster
# than two chunks of 16, the same model to fp32 rounding; the experiments/ files measured before 2026-12-06 keep 16).
QUICK_MODEL = dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, window_size=8, ssm_state_size=16,
                   ssm_head_dim=32, ssm_chunk_size=32, num_fading_tokens=4, num_eidetic_tokens=8,
                   fading_residual_gate=True, fading_residual_gate_scale=10.0)

SPECS: dict[str, CompareSpec] = {
    # A 2-core CPU in <= 10 minutes: MQAR (4 kv pairs) with most keys beyond an 8-token window, two seeds. The
    # recipe (width 128, batch 32, lr 1e-3) is the cheapest found with which full attention leaves MQAR's plateau
    # on every seed tried; docs/recall.md has the search and why the bounded models learn slowly. Mamba, the hybrid
    # and bmojo_f take 3e-3 (better on the validation split: Mamba and the hybrid stay on the plateau for 1200 steps
    # at 1e-3; bmojo_f leaves it on 3 of 4 seeds at 3e-3, 1 of 4 at 1e-3). 1000 steps:
    # what fits the 10 minutes with a margin (at 1200 every bounded row scores higher). Constant filler: the setting
    # in which an innovation test can tell the pairs from the filler (with Zoology's random filler every token is as
    # surprising as a pair; experiments/mqar_quick_random_filler.toml is that variant).
    "quick": CompareSpec(
        tasks=[dict(task="mqar", vocab_size=64, seq_len=32, num_kv_pairs=4, random_non_queries=False)],
        presets=ALL_PRESETS,
        budgets=[],
        seeds=[0, 1],
        model=dict(QUICK_MODEL),
        train=dict(max_steps=1000, batch_size=32, warmup_ratio=0.1, eval_every=100, target_accuracy=0.99),
        lrs=[1e-3],
        preset_lrs={"mamba": [3e-3], "hybrid": [3e-3], "bmojo_f": [3e-3]},
        num_train=20000,
        num_test=256,
        time_budget_s=540,  # a safety net on slow machines; on a free 2-core CPU the step count binds
    ),
    # The paper's figure on a 2-core CPU in <= 60 minutes: the quick spec's models, lr 1e-3, every bounded preset fitted
    # to three memory budgets, three seeds, MQAR at 2 and 4 kv pairs and two MAD tasks, all at L = 32 (at longer L a
    # step costs 2-3x more and too few fit the hour). 168 runs (B'MOJO's smallest state, 17 token-equivalents with an
    # 8-token window, does not fit the budget 16; the Transformer's KV fits only 36), 250 steps each: 25-27 min on the
    # 2-core machines measured (docs/recall.md), a 2x margin for slower ones.
    # No whole-command time budget: shared equally by the runs, it would cut the B'MOJO runs (2x the cost of a
    # Mamba run at this size) short and leave the cheap ones whole.
    "standard": CompareSpec(
        tasks=[dict(task="mqar", vocab_size=64, seq_len=32, num_kv_pairs=kv, random_non_queries=False) for kv in (2, 4)]
        + [dict(task="in_context_recall", vocab_size=16, seq_len=32),
           dict(task="selective_copying", vocab_size=16, seq_len=32, num_tokens_to_copy=4)],
        presets=ALL_PRESETS,
        budgets=[16, 24, 36],
        seeds=[0, 1, 2],
        model=dict(QUICK_MODEL),
        train=dict(max_steps=250, batch_size=32, warmup_ratio=0.1, eval_every=50, target_accuracy=0.99),
        lrs=[1e-3],
        num_train=20000,
        num_test=256,
    ),
    # The storage tier's benchmark on a CPU: long_recall (4 key-value pairs at the start, random filler, the keys
    # asked at the end, no answer shown: answering by elimination does not pay), trained at L = 128, tested up to 64x
    # longer. Every bounded working memory is far smaller than the distance; `bmojo_store` is the bmojo preset with a
    # store read by each query (docs/recall.md, "Long recall"). The quick spec's width, lr and B'MOJO layer, 4500
    # steps: full attention learns the task at L = 32 by step 1400 with this schedule. Until 2026-12-06 the answers
    # were shown, at 1500 steps, width 64 (experiments/long_recall_shown.toml).
    "long": CompareSpec(
        tasks=[dict(task="long_recall", vocab_size=256, seq_len=128, num_kv_pairs=4, show_answers=False)],
        presets=[*ALL_PRESETS, "bmojo_store"],
        variants={"bmojo_store": {"preset": "bmojo", "num_retrieved_tokens": 8}},
        budgets=[],
        seeds=[0],
        model=dict(hidden_size=128, num_hidden_layers=2, num_attention_heads=2, window_size=16, ssm_state_size=16,
                   ssm_head_dim=32, ssm_chunk_size=32, num_fading_tokens=4, num_eidetic_tokens=4,
                   fading_residual_gate=True, fading_residual_gate_scale=10.0),
        train=dict(max_steps=4500, batch_size=32, warmup_ratio=0.05, eval_every=100, target_accuracy=0.99),
        lrs=[1e-3],
        weight_decays=[0.1],
        num_train=20000,
        num_test=64,
        eval_lengths=[128, 512, 2048, 8192],
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


def preset_of(name: str, spec: CompareSpec) -> tuple[str, dict]:
    """A row name of `spec.presets` -> (its preset, its config overrides): a preset's own name, or a variant."""
    variant = dict(spec.variants.get(name, {"preset": name}))
    return variant.pop("preset"), variant


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


def run_one(config: BMojoConfig, train, val, test, spec: CompareSpec, seed: int, lr: float, wd: float,
            device: str, time_budget: float | None) -> tuple[dict, BMojoForCausalLM]:
    """Train one model on task data `train` = (inputs, targets), evaluating (and stopping early) on `val`; (its
    final accuracy on `val` and on `test`, training facts; the trained model)."""
    torch.manual_seed(seed)
    model = BMojoForCausalLM(config)
    cfg = TrainConfig(**{**spec.train, "lr": lr, "weight_decay": wd, "seed": seed, "time_budget_s": time_budget,
                         "cpu": device == "cpu", "progress": False})
    trainer = Trainer(model, _TaskDataset(*train), cfg, evaluate=lambda m: {"accuracy": evaluate_accuracy(m, *val)})
    result = trainer.fit()
    return {"val_accuracy": result.evals[-1]["accuracy"], "accuracy": evaluate_accuracy(model, *test),
            "steps": result.steps, "train_seconds": result.seconds, "stopped": result.stopped,
            "final_loss": result.history[-1]["loss"] if result.history else None}, model


def _plan(spec: CompareSpec) -> list[tuple[dict, int, BMojoConfig | None]]:
    """Every run of `spec` in order: (its record's identifying fields, seq_len, config or None if none fits)."""
    plan = []
    for task in spec.tasks:
        settings = {k: v for k, v in task.items() if k != "task"}
        sample = task_lib.make_task(task["task"], num_examples=1, seed=0, **settings)  # checks the settings' values
        if spec.second_stage:  # and the second stage's length, before hours of first stages
            longer = {**settings, "seq_len": spec.second_stage["seq_len"]}
            try:
                task_lib.make_task(task["task"], num_examples=1, seed=0, **longer)
            except (TypeError, ValueError) as err:
                raise ValueError(f"second_stage: task {task['task']!r} at seq_len={longer['seq_len']}: {err}") from err
        seq_len = settings.get("seq_len") or sample[0].shape[1]
        vocab = task_lib.task_vocab_size(task["task"], **settings)
        for budget in spec.budgets or [None]:
            for preset in spec.presets:
                kind, overrides = preset_of(preset, spec)
                base = {**spec.model, **overrides, "vocab_size": vocab}
                config = fit_to_budget(kind, base, seq_len, budget)
                for seed in spec.seeds:
                    record = {"task": task["task"], "task_settings": settings, "preset": preset,
                              "budget_tokens": budget, "seed": seed}
                    if config is None:
                        needs = min(memory_of(c, seq_len)[1] for c in budget_candidates(kind, base))
                        record["skipped"] = (f"its smallest setting needs {needs:.1f} token-equivalents, more than "
                                             f"the budget {budget:g}")
                    plan.append((record, seq_len, config))
    return plan


def _run_key(record: dict) -> str:
    """What identifies a run in a record: task, task settings, budget, preset and seed."""
    return json.dumps([record[k] for k in ("task", "task_settings", "budget_tokens", "preset", "seed")],
                      sort_keys=True)


def check_device(device: str) -> None:
    """ValueError unless `device` is one of DEVICES and present on this machine."""
    if device not in DEVICES:
        raise ValueError(f"unknown device {device!r}; valid devices: {', '.join(DEVICES)}")
    if device == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: this machine has no CUDA GPU (torch.cuda.is_available() is False); "
                         "use --device cpu")


def _default_of(name: str):
    """The default of CompareSpec field `name` (None where it has none), as JSON data."""
    f = next(f for f in dataclasses.fields(CompareSpec) if f.name == name)
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else \
        None if f.default is dataclasses.MISSING else f.default


def open_out_dir(out_dir: Path, spec: CompareSpec, resume: bool) -> list[dict]:
    """Make `out_dir` the folder of `spec`'s runs; returns the runs it already recorded. A new run needs an empty
    or absent folder; `resume` needs the folder of the same spec (or an empty one). ValueError otherwise."""
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"--out {out_dir} is a file, not a folder; choose a folder for the results")
    spec_file, runs_file = out_dir / SPEC_FILE, out_dir / RUNS_FILE
    if spec_file.is_file():
        if not resume:
            raise ValueError(f"{out_dir} already holds compare results; pass --resume to continue that run, "
                             "or choose a new --out")
        try:
            saved = json.loads(spec_file.read_text(encoding="utf-8"))
        except json.JSONDecodeError as err:
            raise ValueError(f"{spec_file} is not valid JSON ({err}); cannot resume, choose a new --out") from err
        wanted = json.loads(json.dumps(spec.to_dict()))
        differ = [k for k in wanted if saved.get(k, _default_of(k)) != wanted[k]]  # a field newer than the folder
        if differ:
            raise ValueError(f"{out_dir} holds results of another spec (differs in {', '.join(differ)}); "
                             "resume it with the same spec, or choose a new --out")
        return reopen_records(runs_file)
    if out_dir.is_dir() and any(out_dir.iterdir()):
        raise ValueError(f"{out_dir} is not empty and holds no compare results ({SPEC_FILE}); choose a new --out")
    check_writable(out_dir)
    write_atomically(spec_file, lambda tmp: tmp.write_text(json.dumps(spec.to_dict(), indent=1)))
    runs_file.touch()
    return []


def run_compare(spec: CompareSpec, out_dir: Path, device: str = "cpu", progress: bool = True,
                resume: bool = False, save_models: bool = False, jobs: int = 1) -> list[dict]:
    """Run every (task, budget, preset, seed) of `spec`. Each finished run is appended to out_dir/runs.jsonl
    as it ends and results.json and results.md are rewritten after it; the PNGs follow at the end. `resume`
    skips the runs already recorded in out_dir (same spec required, see `open_out_dir`). Returns the records in
    the spec's order. `save_models`: each run's best model goes to out_dir/models/ (see `_train_and_measure`).
    `jobs` > 1: that many worker processes of one thread each run the runs side by side (CPU only; the records
    equal those of a sequential one-thread run). Every check (spec, device, jobs, folder, something to run) comes
    before the first run."""
    spec.check()
    check_device(device)
    if jobs < 1:
        raise ValueError(f"--jobs must be >= 1, got {jobs}")
    if jobs > 1 and device != "cpu":
        raise ValueError("--jobs > 1 runs one-thread CPU processes; with --device cuda use --jobs 1")
    plan = _plan(spec)
    if all(config is None for _, _, config in plan):
        raise ValueError(f"nothing to run: no preset fits the memory budget(s) {spec.budgets} token-equivalents "
                         "(every run would be skipped); raise --memory-budgets")
    out_dir = Path(out_dir)
    done = {_run_key(r): r for r in open_out_dir(out_dir, spec, resume)}
    todo = [entry for entry in plan if _run_key(entry[0]) not in done]
    runnable = [entry for entry in todo if entry[2] is not None]
    if jobs > max(len(runnable), 1):
        print(f"bmojo compare: --jobs {jobs} but {len(runnable)} run(s) to do: using {max(len(runnable), 1)} "
              "process(es)", file=sys.stderr)
        jobs = max(len(runnable), 1)
    models_dir = out_dir / "models" if save_models else None
    bar = tqdm(total=len(plan), initial=len(plan) - len(todo), desc="compare", disable=not progress,
               dynamic_ncols=True)

    def finished(record: dict) -> None:
        append_record(out_dir / RUNS_FILE, record)
        done[_run_key(record)] = record
        write_tables(_in_plan_order(plan, done), out_dir, spec)
        bar.set_postfix(task=record["task"], preset=record["preset"], budget=record["budget_tokens"])
        bar.update()

    for record, _, config in todo:
        if config is None:  # skipped: recorded at once
            finished(record)
    deadline = None if spec.time_budget_s is None else time.time() + spec.time_budget_s
    if jobs == 1:
        data_cache: dict = {}
        for i, (record, seq_len, config) in enumerate(runnable):
            remaining = run_time_budget(spec, record["preset"], deadline, len(runnable) - i, 1)
            finished(_run_task(record, seq_len, config, spec, device, remaining, models_dir, data_cache))
    elif runnable:
        import multiprocessing

        context = multiprocessing.get_context("spawn")  # a fresh interpreter per worker: no state copied from this one
        shared = (context.Value("i", 0), deadline, len(runnable), jobs)  # see _worker_time_budget
        tasks = [(record, seq_len, config, spec, device, models_dir) for record, seq_len, config in runnable]
        pool = context.Pool(jobs, initializer=_init_worker, initargs=(cpu_allocator_tuned(), *shared))
        with sigterm_interrupts():  # a SIGTERM stops the workers too, as Ctrl-C does
            try:
                for record in pool.imap_unordered(_run_task_star, tasks):
                    finished(record)
                pool.close()
            except BaseException:
                pool.terminate()
                raise
            finally:
                pool.join()
    bar.close()
    records = _in_plan_order(plan, done)
    write_outputs(records, out_dir, spec)
    return records


_WORKER: tuple | None = None  # in a --jobs worker: (runs started, deadline, runs in all, jobs), shared


def _init_worker(tune_allocator: bool, *shared) -> None:
    """A --jobs worker: one thread, the allocator tuned as in the parent (`bmojo compare` tunes it at start), so a run
    computes in the same setting whatever --jobs is; the shared run counter and deadline."""
    global _WORKER
    torch.set_num_threads(1)
    if tune_allocator:
        tune_cpu_allocator()
    _WORKER = shared


def run_time_budget(spec: CompareSpec, preset: str, deadline: float | None, runs_left: int,
                    jobs: int) -> float | None:
    """The time budget (s) of one training run of row `preset`'s lr x weight-decay sweep, for the run about to start:
    what is left until `deadline` (time.time(); None: no budget), times the `jobs` processes, shared by the
    `runs_left` runs not started yet (this one included), never more than what is left; then split over the sweep;
    at least 1 s."""
    if deadline is None:
        return None
    left = deadline - time.time()
    per_run = min(left * jobs / max(runs_left, 1), left)
    return max(per_run / (len(spec.lrs_of(preset)) * len(spec.weight_decays)), 1.0)


def _worker_time_budget(spec: CompareSpec, preset: str) -> float | None:
    """`run_time_budget` in a --jobs worker: the shared counter says how many runs have started."""
    started, deadline, total, jobs = _WORKER
    if deadline is None:
        return None
    with started.get_lock():
        before = started.value
        started.value += 1
    return run_time_budget(spec, preset, deadline, total - before, jobs)


def _run_task_star(args: tuple) -> dict:
    record, seq_len, config, spec, device, models_dir = args
    return _run_task(record, seq_len, config, spec, device, _worker_time_budget(spec, record["preset"]), models_dir)


def _run_task(record: dict, seq_len: int, config: BMojoConfig, spec: CompareSpec, device: str,
              time_budget: float | None, models_dir: Path | None, data_cache: dict | None = None) -> dict:
    """One planned run: its task data (a pure function of the seed; kept in `data_cache` when given), then
    `_train_and_measure`. Runs in this process or in a `--jobs` worker."""
    key = (record["task"], json.dumps(record["task_settings"], sort_keys=True), record["seed"])
    data = None if data_cache is None else data_cache.get(key)
    if data is None:
        train, test = task_lib.train_test_split(record["task"], spec.num_train, spec.num_test, record["seed"],
                                                **record["task_settings"])
        val = task_lib.validation_split(record["task"], spec.num_val, record["seed"], **record["task_settings"])
        data = train, val, test, task_lib.check_leakage(train[0], test[0])
        if data_cache is not None:
            data_cache[key] = data
    return _train_and_measure(record, config, seq_len, data, spec, device, time_budget, models_dir)


def _in_plan_order(plan: list[tuple], done: dict[str, dict]) -> list[dict]:
    """The recorded runs `done` (run key -> record) in the order of `plan`."""
    return [done[key] for key in (_run_key(record) for record, _, _ in plan) if key in done]


def _train_and_measure(record: dict, config: BMojoConfig, seq_len: int, data: tuple, spec: CompareSpec,
                       device: str, time_budget: float | None, models_dir: Path | None = None) -> dict:
    """`record` completed by training `config` over its row's lr x weight-decay sweep on `data` = (train, val,
    test, leaked count), keeping the run best on the validation split, then, if `spec.second_stage` is set, training
    it further (`second_stage`), then measuring its test accuracy (the record's) and its memory. The record's
    `val_accuracy`, `steps` and `train_seconds` are the first stage's. With `models_dir`, the best run's model is
    saved there (save_pretrained, plus task.json naming its task and settings, what `bmojo inspect` reads)."""
    train, val, test, leaked = data
    sweep, best_model = [], None
    for lr in spec.lrs_of(record["preset"]):
        for wd in spec.weight_decays:
            result, model = run_one(config, train, val, test, spec, record["seed"], lr, wd, device, time_budget)
            sweep.append(dict(lr=lr, weight_decay=wd, **result))
            if best_model is None or result["val_accuracy"] > max(r["val_accuracy"] for r in sweep[:-1]):
                best_model = model
    best = max(sweep, key=lambda r: r["val_accuracy"])
    stage = {}
    if spec.second_stage:
        stage = {"second_stage": second_stage(best_model, record, spec, best["lr"], best["weight_decay"],
                                                device),
                 "accuracy_before_second_stage": best["accuracy"]}
        best = {**best, "accuracy": evaluate_accuracy(best_model, *test)}
    num_bytes, tokens = memory_of(config, seq_len)
    by_length = {}
    for length in spec.eval_lengths:  # the test split's seed, the task made longer (for long_recall: more filler)
        longer = {**record["task_settings"], "seq_len": length}
        _, (inputs, targets) = task_lib.train_test_split(record["task"], 1, spec.num_test, record["seed"], **longer)
        by_length[str(length)] = evaluate_accuracy(best_model, inputs, targets,
                                                   batch_size=max(1, 128 * seq_len // length))
    lengths = {"accuracy_by_length": by_length} if by_length else {}
    saved = {}
    if models_dir is not None:
        folder = models_dir / model_folder_name(record)
        with quiet_hf_progress():
            best_model.save_pretrained(folder)
        (folder / "task.json").write_text(json.dumps({"task": record["task"], "settings": record["task_settings"],
                                                      "seed": record["seed"], "lr": best["lr"],
                                                      "preset": record["preset"], **stage}, indent=1))
        saved = {"model_dir": str(folder)}
    return {
        **record, "accuracy": best["accuracy"], "val_accuracy": best["val_accuracy"],
        "test_sequences_seen_in_training": leaked, "lr": best["lr"],
        "weight_decay": best["weight_decay"],
        "memory_bytes": num_bytes, "memory_tokens": tokens,
        "knob": {name: getattr(config, name) for name in MEMORY_KNOBS[preset_of(record["preset"], spec)[0]]},
        "parameters": parameter_count(config),
        "train_seconds": sum(r["train_seconds"] for r in sweep), "steps": best["steps"], "stopped": best["stopped"],
        "sweep": sweep, **stage, **lengths, **saved,
    }


def second_stage(model: BMojoForCausalLM, record: dict, spec: CompareSpec, lr: float, weight_decay: float,
                 device: str) -> dict:
    """Train `model` on (in place) as `spec.second_stage` says: the run's task made `seq_len` long, training and
    validation data from seed + SECOND_STAGE_SEED, `lr` and `weight_decay` unless the stage sets them; what that stage
    did (its validation accuracy at that length)."""
    stage = dict(spec.second_stage)
    seq_len, num_train = stage.pop("seq_len"), stage.pop("num_train", spec.num_train)
    settings, seed = {**record["task_settings"], "seq_len": seq_len}, record["seed"] + SECOND_STAGE_SEED
    train = task_lib.train_test_split(record["task"], num_train, 1, seed, **settings)[0]
    val = task_lib.validation_split(record["task"], spec.num_val, seed, **settings)
    test = task_lib.train_test_split(record["task"], 1, spec.num_test, record["seed"], **settings)[1]
    cfg = TrainConfig(**{**spec.train, "lr": lr, "weight_decay": weight_decay, **stage,
                         "seed": record["seed"], "cpu": device == "cpu", "progress": False})
    result = Trainer(model, _TaskDataset(*train), cfg,
                     evaluate=lambda m: {"accuracy": evaluate_accuracy(m, *val)}).fit()
    return {"seq_len": seq_len, "lr": cfg.lr, "val_accuracy": result.evals[-1]["accuracy"], "steps": result.steps,
            "train_seconds": result.seconds, "stopped": result.stopped,
            "test_sequences_seen_in_training": task_lib.check_leakage(train[0], test[0])}


def model_folder_name(record: dict) -> str:
    """The folder name of a run's saved model, e.g. `mqar-num_kv_pairs4-seq_len64-bmojo-budget32-seed0`."""
    settings = "-".join(f"{k}{v}" for k, v in sorted(record["task_settings"].items()))
    budget = "" if record["budget_tokens"] is None else f"-budget{record['budget_tokens']:g}"
    return f"{record['task']}-{settings}-{record['preset']}{budget}-seed{record['seed']}".replace("--", "-")


def write_outputs(records: list[dict], out_dir: Path, spec: CompareSpec) -> None:
    """results.json, results.md (`write_tables`) and the recall-vs-memory PNGs."""
    write_tables(records, out_dir, spec)
    plot_recall_vs_memory(records, out_dir)
    plot_recall_vs_length(records, out_dir)


def write_tables(records: list[dict], out_dir: Path, spec: CompareSpec) -> None:
    """results.json (spec and records) and results.md (one row per task, budget and preset over its seeds, then the
    verdict), each replaced atomically."""
    results = json.dumps({"spec": spec.to_dict(), "runs": records}, indent=1)
    write_atomically(out_dir / "results.json", lambda tmp: tmp.write_text(results))
    write_atomically(out_dir / "results.md", lambda tmp: tmp.write_text(results_markdown(records)))


def results_markdown(records: list[dict]) -> str:
    """The results table (accuracy mean and min-max over seeds; the learning rates the validation split chose;
    runs the time budget stopped flagged; a second stage's steps and length) and the verdict (`bmojo.verdict`)."""
    shown = label_settings(records)
    config_of, lrs_of, stages_of = {}, {}, {}
    for r in records:
        if "skipped" not in r:
            key = (task_label(r, shown), r["budget_tokens"], r["preset"])
            config_of[key] = r
            lrs_of.setdefault(key, set()).add(r["lr"])
            if "second_stage" in r:
                stages_of.setdefault(key, []).append(r["second_stage"])
    lines = ["| task | budget (tok) | preset | knob | memory (tok) | params | lr | seeds | accuracy mean [min, max] "
             "| steps |", "|---|---|---|---|---|---|---|---|---|---|"]
    for row in summarize(records):
        budget = "-" if row["budget_tokens"] is None else f"{row['budget_tokens']:g}"
        head = f"| {row['task_label']} | {budget} | {row['preset']} |"
        if "skipped" in row:
            lines.append(f"{head} - | - | - | - | - | skipped: {row['skipped']} | - |")
            continue
        key = (row["task_label"], row["budget_tokens"], row["preset"])
        r, lrs = config_of[key], ", ".join(f"{lr:g}" for lr in sorted(lrs_of[key]))
        knob = ", ".join(f"{k}={v}" for k, v in r["knob"].items()) or "-"
        steps = _steps_range(row["steps"])
        if row["time_stopped"]:
            steps += f" ({row['time_stopped']} stopped by the time budget)"
        if key in stages_of:  # the second stage's steps over seeds, at its one length
            steps += f" + {_steps_range([st['steps'] for st in stages_of[key]])} at L {stages_of[key][0]['seq_len']}"
        lines.append(f"{head} {knob} | {row['memory_tokens']:.1f} | {r['parameters']:,} | {lrs} | "
                     f"{len(row['seeds'])} | {row['mean']:.3f} [{row['min']:.3f}, {row['max']:.3f}] | {steps} |")
    return "\n".join([*lines, *length_markdown(records), "", "## Verdict", "", *verdict_markdown(records)]) + "\n"


def _steps_range(steps: list[int]) -> str:
    """Steps over seeds as a table cell: "300", or "200-300" where the seeds differ."""
    return f"{min(steps)}" if min(steps) == max(steps) else f"{min(steps)}-{max(steps)}"


def length_summary(records: list[dict]) -> list[dict]:
    """Per (task label, budget, preset): test accuracy at each evaluated length over seeds, {length: (mean, min,
    max)}, for the runs that measured `accuracy_by_length`."""
    shown = label_settings(records)
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if r.get("accuracy_by_length"):
            groups.setdefault((task_label(r, shown), r["budget_tokens"], r["preset"]), []).append(r)
    rows = []
    for (label, budget, preset), runs in groups.items():
        lengths = sorted({int(k) for r in runs for k in r["accuracy_by_length"]})
        stats = {}
        for n in lengths:
            values = [r["accuracy_by_length"][str(n)] for r in runs if str(n) in r["accuracy_by_length"]]
            stats[n] = (sum(values) / len(values), min(values), max(values))
        rows.append({"task_label": label, "budget_tokens": budget, "preset": preset, "seeds": len(runs),
                     "by_length": stats})
    return rows


def length_markdown(records: list[dict]) -> list[str]:
    """The accuracy-by-context-length table (mean [min, max] over seeds), or nothing if no run measured it."""
    rows = length_summary(records)
    if not rows:
        return []
    lengths = sorted({n for row in rows for n in row["by_length"]})
    lines = ["", "## Test accuracy by context length", "",
             "| task | budget (tok) | preset | seeds | " + " | ".join(f"L = {n:,}" for n in lengths) + " |",
             "|---|---|---|---|" + "---|" * len(lengths)]
    for row in rows:
        budget = "-" if row["budget_tokens"] is None else f"{row['budget_tokens']:g}"
        cells = ["{:.3f} [{:.3f}, {:.3f}]".format(*row["by_length"][n]) if n in row["by_length"] else "-"
                 for n in lengths]
        lines.append(f"| {row['task_label']} | {budget} | {row['preset']} | {row['seeds']} | {' | '.join(cells)} |")
    return lines


def plot_recall_vs_memory(records: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per task: accuracy vs memory in token-equivalents, a line per preset through the means over seeds,
    error bars from the min to the max seed."""
    plt = pyplot()
    import matplotlib.ticker

    paths = []
    rows = [row for row in summarize(records) if "skipped" not in row]
    for label in dict.fromkeys(row["task_label"] for row in rows):
        fig, ax = plt.subplots(figsize=(6, 4))
        for preset in dict.fromkeys(row["preset"] for row in rows):
            points = sorted((row["memory_tokens"], row["mean"], row["min"], row["max"]) for row in rows
                            if row["task_label"] == label and row["preset"] == preset)
            if not points:
                continue
            xs, means, lows, highs = zip(*points, strict=True)
            ax.errorbar(xs, means, yerr=[[m - lo for m, lo in zip(means, lows, strict=True)],
                                         [hi - m for m, hi in zip(means, highs, strict=True)]],
                        marker="o", capsize=3, label=preset)
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
        write_atomically(path, functools.partial(fig.savefig, dpi=110, format="png"))
        plt.close(fig)
        paths.append(path)
    return paths


def plot_recall_vs_length(records: list[dict], out_dir: Path) -> list[Path]:
    """One PNG per task (and budget) whose runs measured `accuracy_by_length`: accuracy vs context length (log), a
    line per preset through the means over seeds, error bars from the min to the max seed."""
    rows = length_summary(records)
    if not rows:
        return []
    plt = pyplot()
    paths = []
    for label, budget in dict.fromkeys((row["task_label"], row["budget_tokens"]) for row in rows):
        fig, ax = plt.subplots(figsize=(6, 4))
        for row in rows:
            if (row["task_label"], row["budget_tokens"]) != (label, budget):
                continue
            xs = sorted(row["by_length"])
            means, lows, highs = zip(*(row["by_length"][n] for n in xs), strict=True)
            ax.errorbar(xs, means, yerr=[[m - lo for m, lo in zip(means, lows, strict=True)],
                                         [hi - m for m, hi in zip(means, highs, strict=True)]],
                        marker="o", capsize=3, label=row["preset"])
        ax.set_xscale("log")
        ax.set_xlabel("context length (tokens, log)")
        ax.set_ylabel("test accuracy")
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(label if budget is None else f"{label}, budget {budget:g}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        fig.tight_layout()
        name = label if budget is None else f"{label}_budget{budget:g}"
        path = out_dir / ("recall_vs_length_" + "".join(c if c.isalnum() else "_" for c in name).strip("_") + ".png")
        write_atomically(path, functools.partial(fig.savefig, dpi=110, format="png"))
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
    parser.add_argument("--device", choices=DEVICES, default="cpu", help="cpu or cuda (default cpu; cuda needs a GPU)")
    parser.add_argument("--out", required=True, type=Path, help="results folder (new or empty, unless --resume)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the interrupted run in --out: runs it recorded are kept, the rest run "
                             "(the spec must be the same)")
    parser.add_argument("--jobs", type=int, default=1, metavar="N",
                        help="run N runs side by side in N one-thread processes (CPU; default 1: one process with "
                             "--threads threads)")
    parser.add_argument("--save-models", action="store_true",
                        help="save each run's trained model under OUT/models/ (for `bmojo inspect`)")


def spec_from_args(args: argparse.Namespace) -> CompareSpec:
    """The --spec file's or --preset's spec, with the command line's restrictions and overrides."""
    spec = CompareSpec.from_file(args.spec) if args.spec else dataclasses.replace(SPECS[args.preset])
    if args.tasks:
        _check_names("task", args.tasks, task_lib.TASKS)
        chosen = [t for t in spec.tasks if t["task"] in args.tasks]
        chosen += [dict(task=t) for t in args.tasks if t not in {c["task"] for c in chosen}]
        spec.tasks = chosen
    if args.presets:
        _check_names("preset", args.presets, [*PRESETS, *spec.variants])
        spec.presets = args.presets
    if args.memory_budgets is not None:
        check_value("--memory-budgets", args.memory_budgets, "budgets")
        spec.budgets = args.memory_budgets
    if args.seeds is not None:
        check_value("--seeds", args.seeds, "seeds")
        spec.seeds = args.seeds
    if args.max_steps is not None:
        check_value("--max-steps", args.max_steps, "max_steps")
        spec.train = {**spec.train, "max_steps": args.max_steps}
    if args.time_budget is not None:
        check_value("--time-budget", args.time_budget, "time_budget_s")
        spec.time_budget_s = args.time_budget
    return spec


def run(args: argparse.Namespace) -> int:
    """Run the experiment `args` describe and print its results table."""
    spec = spec_from_args(args)
    try:
        run_compare(spec, args.out, device=args.device, resume=args.resume, save_models=args.save_models,
                    jobs=args.jobs)
    except KeyboardInterrupt:
        recorded = len(read_records(args.out / RUNS_FILE))
        print(f"bmojo compare: interrupted; {recorded} finished run(s) are recorded in {args.out / RUNS_FILE}. "
              "Run the same command with --resume to finish.", file=sys.stderr)
        return 130
    print((args.out / "results.md").read_text())
    print(f"wrote {args.out}/results.json, results.md and {len(list(args.out.glob('*.png')))} PNG(s)")
    return 0
