"""Language modeling end to end: `bmojo train` / `eval` / `generate` and the shared Trainer underneath
(resume exactness after a kill, corrupt-checkpoint fallback, two-process DDP, learning on the builtin
corpus, bad-input messages). Tokenizer round-trips and the document split are tested in test_data.py."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import random
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import bmojo
from bmojo.cli import main as cli_main
from bmojo.lm import build_config, load_run, parameter_count, window_nll
from bmojo.training import TrainConfig, Trainer, latest_valid_checkpoint, verify_checkpoint
from conftest import tiny_model

PYTHON = sys.executable
SRC = str(Path(bmojo.__file__).resolve().parents[1])
TINY = ["hidden_size=32", "num_hidden_layers=2", "num_attention_heads=4", "window_size=8", "ssm_state_size=8",
        "ssm_head_dim=16", "ssm_chunk_size=16", "intermediate_size=48", "num_fading_tokens=3", "num_eidetic_tokens=4"]
# A short run on the toy corpus: 12 steps of 8 x 32 tokens, every step logged, checkpoints every 4 steps.
RUN = ["--preset", "bmojo", "--seq-len", "32", "--batch-size", "8", "--max-steps", "12", "--lr", "3e-3",
       "--log-every", "1", "--save-every", "4", "--keep-checkpoints", "3", "--eval-sequences", "8", "--threads", "1",
       "--no-progress", "--set", *TINY]


def cli(*argv) -> int:
    return cli_main([str(a) for a in argv])


def subprocess_env() -> dict:
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = SRC + os.pathsep + env.get("PYTHONPATH", "")
    return env


def losses(run_dir: Path) -> list[float]:
    history = json.loads((run_dir / "metrics.json").read_text())["history"]
    assert [h["step"] for h in history] == list(range(1, len(history) + 1))
    return [h["loss"] for h in history]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    """Eight documents of word salad with some structure (about 5 KB each)."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    words = "the cat sat on a mat while dogs ran far away and birds sang loudly in tall green trees".split()
    for i in range(8):
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) + "." for _ in range(120)]
        (root / f"doc{i}.txt").write_text("\n".join(lines), encoding="utf-8")
    return root


@pytest.fixture(scope="module")
def reference_run(corpus, tmp_path_factory) -> Path:
    """An uninterrupted run (single process) that the resume and DDP tests compare against."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert cli("train", *RUN, "--corpus", corpus, "--out", out) == 0
    return out


# ---------------------------------------------------------------- a run folder and what reads it

def test_run_folder_loads_evaluates_and_generates(reference_run, capsys):
    out = reference_run
    for name in ("config.json", "model.safetensors", "bmojo_tokenizer.json", "run.json", "metrics.json"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-12", "step-4", "step-8"]
    # The top-level model is the final state: identical to the last checkpoint, and loadable by the Auto class.
    model = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(model, bmojo.BMojoForCausalLM)
    final, ckpt = load_file(out / "model.safetensors"), load_file(out / "checkpoints/step-12/model.safetensors")
    assert final.keys() == ckpt.keys() and all(torch.equal(final[k], ckpt[k]) for k in final)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == 12 and metrics["tokens"] == 12 * 8 * 32
    assert losses(out)[-1] < losses(out)[0] - 0.5  # it learns
    assert {"val_loss", "val_ppl", "val_bpb"} <= metrics["final"].keys()

    capsys.readouterr()
    assert cli("eval", out, "--lengths", "1,2,4", "--split", "train", "--eval-tokens", "1024", "--threads", "1") == 0
    report = json.loads((out / "eval.json").read_text())
    rows = report["results"]
    assert [r["context_length"] for r in rows] == [32, 64, 128]
    assert all(r["targets"] == 1024 - 1024 // r["context_length"] for r in rows)  # the same 1024 tokens each time
    for r in rows:  # byte tokenizer: bits per byte is exactly nats per token / ln 2
        assert r["bits_per_byte"] == pytest.approx(r["loss"] / math.log(2))
        assert r["perplexity"] == pytest.approx(math.exp(r["loss"]))
    assert (out / "length_generalization.png").stat().st_size > 1000
    assert "| run |" in (out / "length_generalization.md").read_text()

    capsys.readouterr()
    args = ("generate", out, "--prompt", "the cat", "--max-new-tokens", "20", "--temperature", "0", "--ignore-eos")
    assert cli(*args) == 0
    greedy = capsys.readouterr().out
    assert cli(*args) == 0
    assert capsys.readouterr().out == greedy and greedy.startswith("the cat") and len(greedy.rstrip("\n")) > len("the cat")
    assert cli("generate", out, "--prompt", "the", "--max-new-tokens", "8", "--num-samples", "2", "--seed", "1") == 0


@pytest.mark.parametrize("preset", ["transformer", "mamba", "hybrid", "bmojo"])
def test_recurrent_sweep_equals_parallel(preset):
    """Lengths past --max-parallel-len go through the cache in blocks; the numbers must not change."""
    model = tiny_model(preset)
    windows = torch.randint(0, model.config.vocab_size, (3, 45))
    par = window_nll(model, windows, batch_size=2)
    rec = window_nll(model, windows, batch_size=2, max_parallel_len=16, block_size=11)
    assert (par[1], par[2], rec[1], rec[2]) == (3 * 44, "parallel", 3 * 44, "recurrent")
    assert rec[0] == pytest.approx(par[0], rel=1e-5)


def test_bpe_tokenizer_is_trained_and_saved_with_the_run(corpus, tmp_path, capsys):
    out = tmp_path / "bpe"
    assert cli("train", *RUN, "--max-steps", "3", "--save-every", "0", "--tokenizer", "bpe", "--bpe-vocab-size", "300",
               "--corpus", corpus, "--out", out) == 0
    model, tok, info = load_run(out)
    assert (out / "tokenizer.json").is_file() and tok.kind == "bpe"
    assert model.config.vocab_size == tok.vocab_size <= 300 and info["tokenizer"] == "bpe"
    text = "birds sang loudly 🙂"
    assert tok.decode(tok.encode(text)) == text
    assert cli("eval", out, "--lengths", "1", "--split", "train", "--eval-tokens", "256", "--threads", "1") == 0
    row = json.loads((out / "eval.json").read_text())["results"][0]
    assert 1.5 < row["loss"] / math.log(2) / row["bits_per_byte"] < 6  # several bytes per BPE token


def test_target_params_picks_the_closest_depth():
    overrides = dict(hidden_size=64, num_attention_heads=4, ssm_state_size=16, ssm_head_dim=32)
    for preset in ("transformer", "mamba", "bmojo"):
        config = build_config(preset, None, overrides, 256, target_params=400_000)
        n = config.num_hidden_layers
        best = abs(parameter_count(config) - 400_000)
        for other in (n - 1, n + 1):
            if other >= 1:
                neighbour = build_config(preset, None, {**overrides, "num_hidden_layers": other}, 256)
                assert abs(parameter_count(neighbour) - 400_000) >= best
        assert parameter_count(config) == sum(p.numel() for p in bmojo.BMojoForCausalLM(config).parameters())


# ---------------------------------------------------------------- checkpoints and resume

KILL_DURING_SAVE = """
import os, signal, sys
import bmojo.training as T
real_save = T.save_checkpoint
def save_checkpoint(out_dir, step, *args, **kwargs):
    if step == int(os.environ["KILL_AT_STEP"]):  # die mid-write: files are in the temp folder, no manifest yet
        T._sha256 = lambda path: os.kill(os.getpid(), signal.SIGKILL)
    return real_save(out_dir, step, *args, **kwargs)
T.save_checkpoint = save_checkpoint
from bmojo.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_killed_run_resumes_exactly(corpus, reference_run, tmp_path):
    out = tmp_path / "killed"
    argv = [*RUN, "--corpus", str(corpus), "--out", str(out)]
    env = {**subprocess_env(), "KILL_AT_STEP": "8"}
    proc = subprocess.run([PYTHON, "-c", KILL_DURING_SAVE, "train", *argv], env=env, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == -9, proc.stderr[-3000:]
    ckpts = out / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [".tmp-step-8", "step-4"]  # the half-written one stayed aside
    assert verify_checkpoint(ckpts / "step-4") is None and not (out / "model.safetensors").exists()

    assert cli("train", *argv, "--resume") == 0
    assert losses(out) == pytest.approx(losses(reference_run), rel=1e-6, abs=1e-7)
    final, ref = load_file(out / "model.safetensors"), load_file(reference_run / "model.safetensors")
    for k in ref:
        torch.testing.assert_close(final[k], ref[k], rtol=1e-5, atol=1e-6)
    assert not list(ckpts.glob(".tmp-step-*"))  # cleaned up by the next save


def test_truncated_checkpoint_is_detected_and_the_previous_one_used(reference_run, corpus, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(reference_run, out)
    weights = out / "checkpoints/step-12/model.safetensors"
    with open(weights, "r+b") as f:
        f.truncate(weights.stat().st_size // 2)
    assert "truncated" in verify_checkpoint(out / "checkpoints/step-12")
    with pytest.warns(UserWarning, match=r"step-12 is unusable: model.safetensors has \d+ bytes"):
        assert latest_valid_checkpoint(out).name == "step-8"
    capsys.readouterr()
    with pytest.warns(UserWarning, match="step-12 is unusable"):
        assert cli("train", *RUN, "--corpus", corpus, "--out", out, "--resume") == 0
    assert "checkpoints/step-8 (step 8)" in capsys.readouterr().err
    assert losses(out) == pytest.approx(losses(reference_run), rel=1e-6, abs=1e-7)
    assert verify_checkpoint(out / "checkpoints/step-12") is None  # rewritten whole


def test_resume_continues_after_a_time_budget_stop(corpus, reference_run, tmp_path):
    """A run stopped early (time budget) checkpoints where it stopped; --resume completes it exactly."""
    out = tmp_path / "budget"
    assert cli("train", *RUN, "--corpus", corpus, "--out", out, "--time-budget", "0") == 0
    assert json.loads((out / "metrics.json").read_text())["stopped"] == "time_budget"
    assert [p.name for p in (out / "checkpoints").iterdir()] == ["step-1"]
    assert cli("train", *RUN, "--corpus", corpus, "--out", out, "--resume") == 0
    assert losses(out) == pytest.approx(losses(reference_run), rel=1e-6, abs=1e-7)


def test_trainers_with_different_precision_in_one_process():
    from bmojo.data import LMDataset

    data = LMDataset(torch.randint(0, 61, (16, 12)))
    for bf16 in (False, True, False):
        trainer = Trainer(tiny_model("transformer"), data, TrainConfig(max_steps=2, batch_size=4, bf16=bf16, progress=False))
        assert trainer.accelerator.mixed_precision == ("bf16" if bf16 else "no")
        assert trainer.fit().steps == 2


# ---------------------------------------------------------------- several processes

def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_ddp_matches_single_process(corpus, tmp_path):
    """torchrun, 2 CPU processes (gloo), global batch 8 = 2 x 4: the same losses and lr schedule as 1 x 8."""
    argv = [*RUN, "--corpus", str(corpus), "--max-steps", "6", "--save-every", "3", "--no-bf16"]
    single = tmp_path / "single"
    assert cli("train", *argv, "--out", single) == 0
    ddp = tmp_path / "ddp"
    cmd = [PYTHON, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "bmojo.cli", "train", *argv, "--out", str(ddp)]
    proc = subprocess.run(cmd, env=subprocess_env(), capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "on 2 process(es)" in proc.stderr
    assert losses(ddp) == pytest.approx(losses(single), rel=1e-5)  # measured: <= 2e-7 apart
    lrs = lambda d: [h["lr"] for h in json.loads((d / "metrics.json").read_text())["history"]]  # noqa: E731
    assert lrs(ddp) == pytest.approx(lrs(single), rel=1e-9)
    assert [p.name for p in sorted((ddp / "checkpoints").iterdir())] == ["step-3", "step-6"]
    assert AutoModelForCausalLM.from_pretrained(ddp).config.vocab_size == 256


# ---------------------------------------------------------------- it learns

def test_builtin_corpus_beats_the_unigram_baseline(tmp_path):
    """200 steps of a 180k-parameter bmojo on the stdlib corpus (byte level, L = 64). Unigram entropy of the
    train split is 3.25 nats/byte; this run measured validation loss 2.52 (threads=1), so assert a 0.5 margin."""
    out = tmp_path / "builtin"
    assert cli("train", "--preset", "bmojo", "--corpus", "builtin", "--seq-len", "64", "--batch-size", "8",
               "--max-steps", "200", "--lr", "5e-3", "--save-every", "0", "--eval-sequences", "64", "--threads", "1",
               "--no-progress", "--out", out, "--set", "hidden_size=64", "num_hidden_layers=2", "num_attention_heads=4",
               "window_size=16", "ssm_state_size=16", "ssm_head_dim=32", "ssm_chunk_size=32", "num_fading_tokens=4",
               "num_eidetic_tokens=4") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    unigram, val = metrics["unigram_entropy"], metrics["final"]["val_loss"]
    assert 3.0 < unigram < 3.5
    assert val < unigram - 0.5, (val, unigram)


# ---------------------------------------------------------------- bad input

def _write_blank_corpus(root: Path) -> Path:
    (root / "blank").mkdir()
    (root / "blank" / "a.txt").write_text("   \n\n")
    return root / "blank"


@pytest.mark.filterwarnings("ignore:the corpus has 1 document")
@pytest.mark.parametrize("case", ["missing_corpus", "empty_corpus", "tiny_corpus", "vocab_mismatch", "unwritable_out",
                                  "resume_nothing", "existing_run", "bad_override", "no_tensorboard"])
def test_bad_input_stops_before_training(case, corpus, tmp_path, capsys):
    out = tmp_path / "out"
    argv = [*RUN, "--corpus", corpus, "--out", out]
    if case == "missing_corpus":
        argv[-3], expect = tmp_path / "nope", "does not exist"
    elif case == "empty_corpus":
        argv[-3], expect = _write_blank_corpus(tmp_path), "is empty"
    elif case == "tiny_corpus":
        (tmp_path / "small.txt").write_text("just a few words")
        argv[-3], expect = tmp_path / "small.txt", "corpus too small"
    elif case == "vocab_mismatch":
        cfg = tmp_path / "config.json"
        cfg.write_text(json.dumps(bmojo.BMojoConfig.from_preset("bmojo", vocab_size=100, hidden_size=32).to_dict()))
        i = argv.index("--preset")
        argv[i : i + 2] = ["--config", cfg]
        expect = "vocabulary mismatch"
    elif case == "unwritable_out":
        (tmp_path / "file").write_text("x")
        out = argv[-1] = tmp_path / "file" / "run"
        expect = "is not writable"
    elif case == "resume_nothing":
        argv.append("--resume")
        expect = "no checkpoints to resume"
    elif case == "existing_run":
        (out / "checkpoints" / "step-1").mkdir(parents=True)
        expect = "already holds a run"
    elif case == "bad_override":
        argv += ["--set", "hidden_size"]
        expect = "KEY=VALUE"
    else:
        if importlib.util.find_spec("tensorboard") is not None:
            pytest.skip("tensorboard is installed")
        argv.append("--tensorboard")
        expect = "pip install tensorboard"
    capsys.readouterr()
    assert cli("train", *argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("bmojo train: error:") and expect in err and "Traceback" not in err, err
    assert not (out / "checkpoints").is_dir() or case == "existing_run"
    assert not (out / "metrics.json").exists()


def test_resume_with_an_incompatible_config_is_refused(reference_run, corpus, tmp_path, capsys):
    out = tmp_path / "copy"
    shutil.copytree(reference_run, out)
    before = sorted(p.name for p in (out / "checkpoints").iterdir())
    capsys.readouterr()
    assert cli("train", *RUN, "--corpus", corpus, "--out", out, "--resume", "--set", "hidden_size=48") == 2
    err = capsys.readouterr().err
    assert "cannot resume" in err and "hidden_size" in err
    assert cli("train", *RUN, "--corpus", corpus, "--out", out, "--resume", "--seq-len", "64") == 2
    assert "seq_len=64" in capsys.readouterr().err
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == before


def test_eval_and_generate_bad_input(reference_run, tmp_path, capsys):
    assert cli("eval", tmp_path / "missing") == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli("eval", reference_run, "--lengths", "1,x") == 2
    assert "--lengths" in capsys.readouterr().err
    # the validation split of the toy corpus is one ~5 KB document, too short for a 256 x 32-token window
    assert cli("eval", reference_run, "--lengths", "256", "--split", "validation", "--threads", "1") == 2
    assert "corpus too small" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert cli("generate", tmp_path / "empty", "--prompt", "x") == 2
    assert "holds no model" in capsys.readouterr().err
