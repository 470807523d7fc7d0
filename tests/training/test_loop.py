"""bmojo.training's Trainer: trainers of different precision in one process, and two-process DDP (torchrun,
gloo) matching a single process."""

import json
import socket
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM

from bmojo.training import TrainConfig, Trainer

VOCAB = 61  # the tiny models' vocab_size (TINY in tests/conftest.py)


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
