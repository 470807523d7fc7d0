"""bmojo.training checkpoints through `bmojo train`: a run killed mid-save resumes exactly, a truncated
checkpoint is detected and the previous one used, a time-budget stop resumes, an incompatible config is
refused; `--resume` alone continues the saved run with its settings, flags that would change its optimizer,
schedule or batches are refused, and --max-steps extends it (recorded in metrics.json). The toy corpus and the
reference run are fixtures in tests/conftest.py."""

import json
import shutil
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from bmojo.training import latest_valid_checkpoint, verify_manifest

# A resumed run repeats the reference run's losses: the same batches and ops, up to fp32 rounding.
RESUME_REL, RESUME_ABS = 1e-6, 1e-7

KILL_DURING_SAVE = """
import os, signal, sys
import bmojo.training.checkpoint as T
real_save = T.save_checkpoint
def save_checkpoint(out_dir, step, *args, **kwargs):
    if step == int(os.environ["KILL_AT_STEP"]):  # die mid-write: files are in the temp folder, no manifest yet
        T._sha256 = lambda path: os.kill(os.getpid(), signal.SIGKILL)
    return real_save(out_dir, step, *args, **kwargs)
T.save_checkpoint = save_checkpoint
from bmojo.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_run_resumes_exactly(corpus, reference_run, tmp_path, cli, tiny_run_args, subprocess_env, losses):
    out = tmp_path / "killed"
    argv = [*tiny_run_args, "--corpus", str(corpus), "--out", str(out)]
    env = {**subprocess_env, "KILL_AT_STEP": "8"}
    proc = subprocess.run([sys.executable, "-c", KILL_DURING_SAVE, "train", *argv], env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [".tmp-step-8", "step-4"]  # the half-written one stayed aside
    assert verify_manifest(ckpts / "step-4") is None and not (out / "model.safetensors").exists()

    assert cli("train", *argv, "--resume") == 0
    assert losses(out) == pytest.approx(losses(reference_run), rel=RESUME_REL, abs=RESUME_ABS)
    final, ref = load_file(out / "model.safetensors"), load_file(reference_run / "model.safetensors")
    for k in ref:
        torch.testing.assert_close(final[k], ref[k], rtol=1e-5, atol=1e-6)
    assert not list(ckpts.glob(".tmp-step-*"))  # cleaned up by the next save


def test_truncated_checkpoint_is_detected_and_the_previous_one_used(reference_run, corpus, tmp_path, capsys, cli,
                                                                    tiny_run_args, losses):
    out = tmp_path / "copy"
    shutil.copytree(reference_run, out)
    weights = out / "checkpoints/step-12/model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    assert "truncated" in verify_manifest(out / "checkpoints/step-12")
    with pytest.warns(UserWarning, match=r"step-12 is unusable: model.safetensors has \d+ bytes"):
        assert latest_valid_checkpoint(out).name == "step-8"
    capsys.readouterr()
    with pytest.warns(UserWarning, match="step-12 is unusable"):
        assert cli("train", *tiny_run_args, "--corpus", corpus, "--out", out, "--resume") == 0
    assert "checkpoints/step-8 (step 8)" in capsys.readouterr().err
    assert losses(out) == pytest.approx(losses(reference_run), rel=RESUME_REL, abs=RESUME_ABS)
    assert verify_manifest(out / "checkpoints/step-12") is None  # rewritten whole


def test_resume_continues_after_a_time_budget_stop(corpus, reference_run, tmp_path, cli, tiny_run_args, losses):
    """A run stopped early (time budget) checkpoints where it stopped; --resume completes it exactly."""
    out = tmp_path / "budget"
    assert cli("train", *tiny_run_args, "--corpus", corpus, "--out", out, "--time-budget", "0") == 0
    assert json.loads((out / "metrics.json").read_text())["stopped"] == "time_budget"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-1"]
    assert cli("train", *tiny_run_args, "--corpus", corpus, "--out", out, "--resume") == 0
    assert losses(out) == pytest.approx(losses(reference_run), rel=RESUME_REL, abs=RESUME_ABS)


def test_resume_with_an_incompatible_config_is_refused(reference_run, corpus, tmp_path, capsys, cli, tiny_run_args):
    out = tmp_path / "copy"
    shutil.copytree(reference_run, out)
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    capsys.readouterr()
    assert cli("train", *tiny_run_args, "--corpus", corpus, "--out", out, "--resume", "--set", "hidden_size=48") == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "hidden_size" in err
    assert cli("train", *tiny_run_args, "--corpus", corpus, "--out", out, "--resume", "--seq-len", "64") == 2
    assert "seq_len=64" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def _interrupted_copy(reference_run, out, at_step: int):
    """A copy of the reference run as it was after checkpoint `at_step` (later checkpoints and results removed)."""
    shutil.copytree(reference_run, out)
    for ckpt in (out / "checkpoints").iterdir():
        if int(ckpt.name[5:]) > at_step:
            shutil.rmtree(ckpt)
    for name in ("config.json", "model.safetensors", "generation_config.json", "manifest.json", "metrics.json"):
        (out / name).unlink(missing_ok=True)
    return out


def test_resume_alone_continues_the_saved_run(reference_run, tmp_path, cli, losses, one_thread):
    """`bmojo train --out X --resume` and nothing else: model, data and training settings come from the run."""
    out = _interrupted_copy(reference_run, tmp_path / "run", at_step=4)
    assert cli("train", "--out", out, "--resume") == 0
    assert losses(out) == pytest.approx(losses(reference_run), rel=RESUME_REL, abs=RESUME_ABS)
    metrics, reference = (json.loads((d / "metrics.json").read_text()) for d in (out, reference_run))
    assert metrics["train_config"] == reference["train_config"] and metrics["changes"] == []
    assert metrics["final"] == pytest.approx(reference["final"], rel=1e-5)  # the same validation sequences


@pytest.mark.parametrize("flags, named", [
    (("--lr", "5e-3", "--weight-decay", "0.5"), ("--lr 0.005", "--weight-decay 0.5")),
    (("--batch-size", "16"), ("--batch-size 16",)),
    (("--no-bf16", "--seed", "1"), ("--no-bf16", "--seed 1")),
])
def test_resume_refuses_flags_that_change_the_run(flags, named, reference_run, tmp_path, capsys, cli):
    out = _interrupted_copy(reference_run, tmp_path / "run", at_step=8)
    capsys.readouterr()
    assert cli("train", "--out", out, "--resume", *flags) == 2
    err = capsys.readouterr().err
    assert err.startswith("bmojo train: error: --resume:") and err.count("\n") == 1, err
    assert all(flag in err for flag in named) and "start a new run" in err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-4", "step-8"]
    assert not (out / "metrics.json").exists()


def test_resume_with_max_steps_extends_the_run_and_records_it(reference_run, tmp_path, cli, losses, capsys):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    capsys.readouterr()
    assert cli("train", "--out", out, "--resume", "--max-steps", 16, "--threads", 1) == 0
    assert "changed: max_steps 12 -> 16" in capsys.readouterr().err
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 16 and metrics["train_config"]["max_steps"] == 16
    assert metrics["changes"] == [{"step": 12, "flag": "max_steps", "from": 12, "to": 16}]
    assert losses(out)[:12] == losses(reference_run)
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-12", "step-16", "step-8"]
