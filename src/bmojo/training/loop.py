"""The training loop: `Trainer` on `accelerate`, its settings (`TrainConfig`) and result (`TrainResult`).

- AdamW with decoupled weight decay on matrices only, and a separate learning rate for SSM parameters
  (the paper's recipe: Mamba's lr for the SSM, GPT-3's for attention); the schedule is `schedule.py`'s.
- Batches are a pure function of (seed, step): step s reads a fixed slice of an epoch permutation, so a
  resumed run sees exactly the data it would have seen; under torchrun / `accelerate launch --multi_gpu`
  each process takes its share of the same global batch, and DDP averages the gradients (on a machine
  without CUDA the processes join a gloo group).
- Checkpoints (`checkpoint.py`) every `save_every` steps; a run that stops off the save grid (time budget,
  target) checkpoints where it stopped. `resume` refuses a checkpoint whose model config or `RUN_FIELDS`
  differ, and records every other setting that changed (`TrainResult.changes`, with the step).
- Divergence guard: a step whose loss or gradient norm is not finite makes no update and is recorded
  (`TrainResult.nonfinite`); more than `max_nonfinite_steps` of them in a row stop the run ("diverged")
  without checkpointing the diverged state.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch
from accelerate import Accelerator
from tqdm.auto import tqdm

from ..layers.mamba2 import Mamba2Mixer
from . import checkpoint
from .schedule import cosine_with_warmup


@dataclass
class TrainConfig:
    """Optimization, logging, evaluation and checkpointing settings of one training run."""

    max_steps: int = 1000
    batch_size: int = 32  # global batch (all processes together)
    lr: float = 1e-3  # peak lr of every non-SSM parameter
    ssm_lr: float | None = None  # peak lr of SSM parameters; None = lr
    weight_decay: float = 0.1
    warmup_ratio: float = 0.05
    min_lr_ratio: float = 0.1  # cosine floor, as a fraction of the peak
    grad_clip: float = 1.0
    bf16: bool = False  # autocast matmuls to bf16; master weights and optimizer stay fp32
    seed: int = 0
    log_every: int = 10
    eval_every: int = 0  # 0 = only at the end
    save_every: int = 0  # 0 = no checkpoints
    keep_checkpoints: int = 2
    time_budget_s: float | None = None  # stop (after a step) when exceeded
    target_accuracy: float | None = None  # early stop when evaluate() reports accuracy >= target
    progress: bool = True
    tensorboard: bool = False
    cpu: bool = False  # force CPU even if a GPU is visible
    max_nonfinite_steps: int = 0  # non-finite steps in a row skipped (no update) before the run stops; 0 = none


# TrainConfig fields that the optimizer state, the learning-rate schedule or the order of the batches of a
# checkpoint depend on: a resumed run must keep them (the other fields may change, and are recorded).
RUN_FIELDS = ("batch_size", "lr", "ssm_lr", "weight_decay", "warmup_ratio", "min_lr_ratio", "grad_clip", "bf16",
              "seed")


def resume_conflicts(saved: dict, cfg: TrainConfig) -> list[str]:
    """The RUN_FIELDS where `cfg` differs from a checkpoint's saved config `saved` (a dict of TrainConfig)."""
    return [k for k in RUN_FIELDS if k in saved and saved[k] != getattr(cfg, k)]


@dataclass
class TrainResult:
    """What a run did: steps, seconds, its log and evaluation records, and why it stopped."""

    steps: int
    seconds: float
    history: list[dict] = field(default_factory=list)  # {"step", "loss", "lr", ...} every log_every steps
    evals: list[dict] = field(default_factory=list)  # {"step", **metrics}
    stopped: str = "max_steps"  # max_steps | target | time_budget | diverged
    changes: list[dict] = field(default_factory=list)  # {"step", "flag", "from", "to"}: settings changed on resume
    nonfinite: list[dict] = field(default_factory=list)  # {"step", "loss", "grad_norm"}: steps that made no update


def param_groups(model: torch.nn.Module, cfg: TrainConfig) -> list[dict]:
    """AdamW groups: (SSM | other) x (decayed matrices | undecayed vectors: norms, biases, A_log, D, dt_bias)."""
    ssm_ids = {id(p) for m in model.modules() if isinstance(m, Mamba2Mixer) for p in m.parameters()}
    groups: dict[tuple[bool, bool], list] = {}
    seen = set()
    for p in model.parameters():
        if not p.requires_grad or id(p) in seen:
            continue
        seen.add(id(p))
        groups.setdefault((id(p) in ssm_ids, p.dim() >= 2), []).append(p)
    return [
        {"params": ps, "lr": (cfg.ssm_lr or cfg.lr) if is_ssm else cfg.lr,
         "weight_decay": cfg.weight_decay if decay else 0.0}
        for (is_ssm, decay), ps in sorted(groups.items())
    ]


def batch_indices(step: int, num_examples: int, batch_size: int, seed: int) -> torch.Tensor:
    """Global batch of `step`: consecutive slices of per-epoch permutations seeded by (seed, epoch)."""
    per_epoch = num_examples // batch_size
    if per_epoch == 0:
        raise ValueError(f"the training set has {num_examples} examples, fewer than one batch of {batch_size}")
    epoch, k = divmod(step, per_epoch)
    perm = torch.randperm(num_examples, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))
    return perm[k * batch_size : (k + 1) * batch_size]


def collate(dataset, indices: torch.Tensor) -> dict[str, torch.Tensor]:
    """Stack the examples (dicts of equal-shape tensors) at `indices` into one batch dict."""
    items = [dataset[int(i)] for i in indices]
    return {k: torch.stack([torch.as_tensor(it[k]) for it in items]) for k in items[0]}


def force_cpu(cpu: bool) -> bool:
    """Whether to pass cpu=True to accelerate: when asked, and for several processes (torchrun / accelerate
    launch) on a machine without CUDA, where accelerate otherwise runs each process alone instead of
    joining them in a gloo group."""
    return cpu or (not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1)


def _accelerator(**kwargs) -> Accelerator:
    """An Accelerator; if an earlier Trainer of this process fixed another precision/device, accelerate's
    shared state is reset first (the process group, if any, is kept), so Trainers with different
    settings can follow each other in one process."""
    try:
        return Accelerator(**kwargs)
    except ValueError as err:
        if "already been initialized" not in str(err):
            raise
        from accelerate.state import AcceleratorState

        AcceleratorState._reset_state(reset_partial_state=False)
        return Accelerator(**kwargs)


class _Throughput:
    """Tokens per second over the steps since the previous log record."""

    def __init__(self):
        self.tokens, self.since = 0, time.perf_counter()

    def add(self, tokens: int) -> None:
        """Count the tokens of one step."""
        self.tokens += tokens

    def rate(self) -> float:
        """Tokens per second since the previous call (or since construction); starts a new window."""
        now = time.perf_counter()
        rate = self.tokens / max(now - self.since, 1e-9)
        self.tokens, self.since = 0, now
        return rate


class Trainer:
    """Train `model` on a map-style `dataset` of dicts of equal-shape tensors.

    loss_fn(model, batch) -> scalar loss (default: model(**batch).loss).
    evaluate(model) -> dict of metrics (called every eval_every steps and at the end, on every process).
    on_log(record) is called on the main process with every history record ({"step", "loss", "lr", "tokens",
    "tokens_per_s"}) and with every evaluation ({"step", **metrics}); e.g. to print lines without a progress bar.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        dataset,
        cfg: TrainConfig,
        out_dir: str | Path | None = None,
        loss_fn: Callable | None = None,
        evaluate: Callable | None = None,
        tokens_per_example: int | None = None,
        on_log: Callable[[dict], None] | None = None,
    ):
        self.cfg, self.dataset, self.out_dir = cfg, dataset, Path(out_dir) if out_dir else None
        self.loss_fn = loss_fn or (lambda m, batch: m(**batch).loss)
        self.evaluate = evaluate
        self.tokens_per_example = tokens_per_example
        self.on_log = on_log
        # step_scheduler_with_optimizer=False: accelerate would otherwise step the schedule once per process
        # per optimizer step (it assumes each process adds its own batch); our batch_size is already global.
        self.accelerator = _accelerator(mixed_precision="bf16" if cfg.bf16 else "no", cpu=force_cpu(cfg.cpu),
                                        step_scheduler_with_optimizer=False)
        kind = self.accelerator.distributed_type.name
        if kind in ("FSDP", "DEEPSPEED", "MEGATRON_LM") and out_dir is not None:
            raise ValueError(f"checkpoints and resume support single-process and DDP runs (torchrun, accelerate launch "
                             f"--multi_gpu), not {kind}: they save the unsharded model and optimizer from the main "
                             "process; launch with DDP instead")
        if cfg.batch_size % self.accelerator.num_processes:
            raise ValueError(f"batch_size={cfg.batch_size} must be divisible by the "
                             f"{self.accelerator.num_processes} processes")
        torch.manual_seed(cfg.seed)
        optimizer = torch.optim.AdamW(param_groups(model, cfg), betas=(0.9, 0.95), eps=1e-8)
        scheduler = cosine_with_warmup(optimizer, cfg)
        self.model, self.optimizer, self.scheduler = self.accelerator.prepare(model, optimizer, scheduler)
        self.step = 0
        self.nonfinite_streak = 0  # non-finite steps in a row, up to the current one
        self.result = TrainResult(steps=0, seconds=0.0)

    @property
    def unwrapped(self) -> torch.nn.Module:
        """The model without accelerate's wrappers (DDP)."""
        return self.accelerator.unwrap_model(self.model)

    def _state(self) -> dict:
        """The trainer state a checkpoint stores: data position, time, history, evaluations, settings, their
        changes, the non-finite steps."""
        return {"step": self.step, "seconds": self.result.seconds, "history": self.result.history,
                "evals": self.result.evals, "config": dataclasses.asdict(self.cfg), "changes": self.result.changes,
                "nonfinite": self.result.nonfinite, "nonfinite_streak": self.nonfinite_streak}

    def save(self) -> Path | None:
        """Checkpoint the current step (main process; every process waits); None without an out_dir."""
        if self.out_dir is None:
            return None
        path = None
        if self.accelerator.is_main_process:
            path = checkpoint.save_checkpoint(self.out_dir, self.step, self.unwrapped, self.optimizer,
                                              self.scheduler, self._state(), self.cfg.keep_checkpoints)
        self.accelerator.wait_for_everyone()
        return path

    def resume(self, path: str | Path | None = None) -> Path | None:
        """Load checkpoint `path`, by default the newest valid one of out_dir (None, and nothing changes, if
        there is none). ValueError if its model config or RUN_FIELDS differ from this Trainer's; every other
        setting that differs is recorded in `result.changes` at the checkpoint's step."""
        if path is not None:
            path = Path(path)
            problem = checkpoint.verify_manifest(path)
            if problem:
                raise ValueError(f"checkpoint {path} is unusable: {problem}")
        else:
            path = checkpoint.latest_valid_checkpoint(self.out_dir) if self.out_dir else None
        if path is None:
            return None
        checkpoint.check_resume_config(path, json.loads((path / "config.json").read_text()),
                                       self.unwrapped.config.to_dict())
        state = json.loads((path / "trainer_state.json").read_text())
        saved_cfg = state.get("config", {})
        conflicts = resume_conflicts(saved_cfg, self.cfg)
        if conflicts:
            raise ValueError(f"cannot resume from {path}: "
                             + ", ".join(f"{k}={getattr(self.cfg, k)!r} (saved {saved_cfg[k]!r})" for k in conflicts)
                             + " differ from the checkpoint, whose optimizer state, learning-rate schedule and batch "
                             "order assume the saved values; keep them, or start a new run")
        checkpoint.load_checkpoint(path, self.unwrapped, self.optimizer, self.scheduler)
        self.step = state["step"]
        self.nonfinite_streak = state.get("nonfinite_streak", 0)
        changes = [{"step": self.step, "flag": k, "from": saved_cfg[k], "to": v}
                   for k, v in dataclasses.asdict(self.cfg).items() if k in saved_cfg and saved_cfg[k] != v]
        self.result = TrainResult(steps=self.step, seconds=state["seconds"], history=state["history"],
                                  evals=state["evals"], changes=state.get("changes", []) + changes,
                                  nonfinite=state.get("nonfinite", []))
        return path

    def fit(self) -> TrainResult:
        """Train to max_steps, or until the accuracy target, the time budget or divergence stops the run; then
        checkpoint (if off the save grid, and not after divergence) and evaluate (unless the last step just was)."""
        cfg = self.cfg
        writer, bar = self._tensorboard(), self._progress_bar()
        start, throughput = time.perf_counter() - self.result.seconds, _Throughput()
        self.model.train()
        while self.step < cfg.max_steps:
            batch = self._batch()
            loss, grad_norm = self._train_step(batch)
            self.step += 1
            step_tokens = cfg.batch_size * (self.tokens_per_example or batch["input_ids"].shape[1])
            throughput.add(step_tokens)
            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                self._log_step(loss, step_tokens, throughput.rate(), bar, writer)
            bar.update(1)
            self.result.seconds = time.perf_counter() - start
            if self._diverged(loss, grad_norm):
                self.result.stopped = "diverged"
                break
            stop = self._stop_reason(self._periodic_eval(writer))
            if cfg.save_every and self.step % cfg.save_every == 0:
                self.save()
            if stop:
                self.result.stopped = stop
                break
        bar.close()
        self._finish(start, writer)
        return self.result

    def _batch(self) -> dict[str, torch.Tensor]:
        """This process's share of the current step's global batch, on the device."""
        acc, per_process = self.accelerator, self.cfg.batch_size // self.accelerator.num_processes
        idx = batch_indices(self.step, len(self.dataset), self.cfg.batch_size, self.cfg.seed)
        idx = idx[acc.process_index * per_process : (acc.process_index + 1) * per_process]
        return {k: v.to(acc.device) for k, v in collate(self.dataset, idx).items()}

    def _train_step(self, batch: dict[str, torch.Tensor]) -> tuple[float, float]:
        """One step on `batch`: forward, backward, clipping, an optimizer update unless the loss or the gradient
        norm is not finite, the schedule; returns (loss averaged over the processes, gradient norm before
        clipping)."""
        acc = self.accelerator
        with acc.autocast():
            loss = self.loss_fn(self.model, batch)
        acc.backward(loss)
        if self.cfg.grad_clip:
            grad_norm = acc.clip_grad_norm_(self.model.parameters(), self.cfg.grad_clip)
        else:
            grad_norm = torch.nn.utils.get_total_norm([p.grad for p in self.model.parameters() if p.grad is not None])
        loss_value, grad_norm = acc.reduce(loss.detach(), reduction="mean").item(), float(grad_norm)
        if math.isfinite(loss_value) and math.isfinite(grad_norm):
            self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return loss_value, grad_norm

    def _diverged(self, loss: float, grad_norm: float) -> bool:
        """Record the step just taken if its loss or gradient norm is not finite (it made no update); True once
        more than max_nonfinite_steps such steps came in a row."""
        if math.isfinite(loss) and math.isfinite(grad_norm):
            self.nonfinite_streak = 0
            return False
        self.nonfinite_streak += 1
        self.result.nonfinite.append({"step": self.step, "loss": loss, "grad_norm": grad_norm})
        return self.nonfinite_streak > self.cfg.max_nonfinite_steps

    def _log_step(self, loss: float, step_tokens: int, tokens_per_s: float, bar, writer) -> None:
        """Append the step's history record and show it (on_log, progress bar, TensorBoard)."""
        rec = {"step": self.step, "loss": loss, "lr": self.scheduler.get_last_lr()[-1],
               "tokens": self.step * step_tokens, "tokens_per_s": tokens_per_s}
        self.result.history.append(rec)
        if self.on_log and self.accelerator.is_main_process:
            self.on_log(rec)
        bar.set_postfix(loss=f"{loss:.4f}", tok_s=f"{tokens_per_s:.0f}")
        if writer:
            for k in ("loss", "lr", "tokens_per_s"):
                writer.add_scalar(f"train/{k}", rec[k], self.step)

    def _periodic_eval(self, writer) -> dict | None:
        """The metrics of the every-eval_every-steps evaluation if this step has one (not the last step, which
        `_finish` evaluates); None otherwise."""
        cfg = self.cfg
        if not (self.evaluate and cfg.eval_every and self.step % cfg.eval_every == 0 and self.step < cfg.max_steps):
            return None
        metrics = self._run_eval()
        if writer:
            for k, v in metrics.items():
                writer.add_scalar(f"eval/{k}", v, self.step)
        return metrics

    def _stop_reason(self, metrics: dict | None) -> str | None:
        """"target" if `metrics` reach the accuracy target, else "time_budget" if it is spent, else None."""
        cfg = self.cfg
        target = cfg.target_accuracy
        if metrics is not None and target is not None and metrics.get("accuracy", 0.0) >= target:
            return "target"
        if cfg.time_budget_s is not None and self.result.seconds > cfg.time_budget_s:
            return "time_budget"
        return None

    def _finish(self, start: float, writer) -> None:
        """After the last step: checkpoint if off the save grid (keeps the end resumable; never a diverged
        state), evaluate unless this step was, record the totals, close TensorBoard."""
        if self.cfg.save_every and self.step % self.cfg.save_every and self.result.stopped != "diverged":
            self.save()
        if self.evaluate and (not self.result.evals or self.result.evals[-1]["step"] != self.step):
            self._run_eval()
        self.result.steps, self.result.seconds = self.step, time.perf_counter() - start
        if writer:
            writer.close()

    def _run_eval(self) -> dict:
        """Evaluate the unwrapped model (no grad, autocast), record and log the metrics, return them."""
        self.model.eval()
        with torch.no_grad(), self.accelerator.autocast():
            metrics = self.evaluate(self.unwrapped)
        self.model.train()
        self.result.evals.append({"step": self.step, **metrics})
        if self.on_log and self.accelerator.is_main_process:
            self.on_log(self.result.evals[-1])
        return metrics

    def _progress_bar(self) -> tqdm:
        """The step progress bar (shown on the main process when cfg.progress)."""
        return tqdm(total=self.cfg.max_steps, initial=self.step, desc="train", dynamic_ncols=True,
                    disable=not (self.cfg.progress and self.accelerator.is_main_process))

    def _tensorboard(self):
        """A TensorBoard SummaryWriter on out_dir/tensorboard when cfg.tensorboard (main process), else None."""
        if not (self.cfg.tensorboard and self.out_dir and self.accelerator.is_main_process):
            return None
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as err:
            raise ValueError("--tensorboard needs the tensorboard package: pip install tensorboard") from err
        return SummaryWriter(str(self.out_dir / "tensorboard"))
