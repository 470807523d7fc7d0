"""bmojo.training's Trainer: trainers of different precision in one process, two-process DDP (torchrun,
gloo) matching a single process, the divergence guard (a non-finite loss stops the run without saving it, or
is skipped within the patience), and what resume refuses and records."""

import json
import math
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

from bmojo.training import TrainConfig, Trainer, list_checkpoints

VOCAB = 61  # the tiny models' vocab_size (TINY in tests/conftest.py)


def _data():
    from bmojo.data import LMDataset

    return LMDataset(torch.randint(0, VOCAB, (16, 12)))


def _nan_at(*bad_steps: int):
    """A loss_fn that is the model's loss, times NaN at the given (1-based) steps."""
    calls = []

    def loss_fn(model, batch):
        calls.append(1)
        loss = model(**batch).loss
        return loss * float("nan") if len(calls) in bad_steps else loss
    return loss_fn


def test_trainers_with_different_precision_in_one_process(tiny_model):
    from bmojo.data import LMDataset

    data = LMDataset(torch.randint(0, VOCAB, (16, 12)))
    for bf16 in (False, True, False):
        config = TrainConfig(max_steps=2, batch_size=4, bf16=bf16, progress=False)
        trainer = Trainer(tiny_model("transformer"), data, config)
        assert trainer.accelerator.mixed_precision == ("bf16" if bf16 else "no")
        assert trainer.fit().steps == 2


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_single_process(corpus, tmp_path, cli, tiny_run_args, subprocess_env, losses):
    """torchrun, 2 CPU processes (gloo), global batch 8 = 2 x 4: the same losses and lr schedule as 1 x 8."""
    argv = [*tiny_run_args, "--corpus", str(corpus), "--max-steps", "6", "--save-every", "3", "--no-bf16"]
    single = tmp_path / "single"
    assert cli("train", *argv, "--out", single) == 0
    ddp = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "bmojo.cli", "train", *argv, "--out", str(ddp)]
    proc = subprocess.run(cmd, env=subprocess_env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "on 2 process(es)" in proc.stderr
    assert losses(ddp) == pytest.approx(losses(single), rel=1e-5)  # measured: <= 2e-7 apart
    lrs = lambda d: [h["lr"] for h in json.loads((d / "metrics.json").read_text())["history"]]  # noqa: E731
    assert lrs(ddp) == pytest.approx(lrs(single), rel=1e-9)
    assert [p.name for p in sorted((ddp / "checkpoints").iterdir())] == ["step-3", "step-6"]
    assert AutoModelForCausalLM.from_pretrained(ddp).config.vocab_size == 256


def test_nonfinite_loss_stops_the_run_and_keeps_the_last_good_checkpoint(tiny_model, tmp_path):
    model = tiny_model("transformer")
    cfg = TrainConfig(max_steps=6, batch_size=4, save_every=1, keep_checkpoints=5, progress=False)
    trainer = Trainer(model, _data(), cfg, out_dir=tmp_path, loss_fn=_nan_at(3))
    result = trainer.fit()
    assert result.stopped == "diverged" and result.steps == 3
    assert [r["step"] for r in result.nonfinite] == [3] and math.isnan(result.nonfinite[0]["loss"])
    assert [p.name for p in list_checkpoints(tmp_path)] == ["step-2", "step-1"]  # nothing saved from step 3
    # the NaN step made no update: the weights are still those of step 2's checkpoint
    saved, now = load_file(tmp_path / "checkpoints/step-2/model.safetensors"), model.state_dict()
    assert all(torch.equal(now[k], v) for k, v in saved.items())


def test_nonfinite_steps_within_the_patience_are_skipped(tiny_model):
    cfg = TrainConfig(max_steps=6, batch_size=4, progress=False, max_nonfinite_steps=1, log_every=1)
    result = Trainer(tiny_model("transformer"), _data(), cfg, loss_fn=_nan_at(2, 4)).fit()
    assert result.stopped == "max_steps" and result.steps == 6
    assert [r["step"] for r in result.nonfinite] == [2, 4]
    assert all(h["loss"] == h["loss"] for h in result.history if h["step"] not in (2, 4))  # finite elsewhere
    two_in_a_row = Trainer(tiny_model("transformer"), _data(), cfg, loss_fn=_nan_at(2, 3)).fit()
    assert two_in_a_row.stopped == "diverged" and two_in_a_row.steps == 3


def test_resume_refuses_run_fields_and_records_other_changes(tiny_model, tmp_path):
    cfg = TrainConfig(max_steps=2, batch_size=4, save_every=2, progress=False)
    Trainer(tiny_model("transformer"), _data(), cfg, out_dir=tmp_path).fit()
    changed = Trainer(tiny_model("transformer"), _data(), TrainConfig(**{**cfg.__dict__, "lr": 5e-3}), out_dir=tmp_path)
    with pytest.raises(ValueError, match=r"lr=0.005 \(saved 0.001\)"):
        changed.resume()
    longer = Trainer(tiny_model("transformer"), _data(), TrainConfig(**{**cfg.__dict__, "max_steps": 4}),
                     out_dir=tmp_path)
    assert longer.resume().name == "step-2"
    result = longer.fit()
    assert result.steps == 4 and result.changes == [{"step": 2, "flag": "max_steps", "from": 2, "to": 4}]
