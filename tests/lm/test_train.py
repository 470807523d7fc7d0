"""bmojo.lm.train: `bmojo train` end to end: the run folder it writes (the final model with its manifest), a
BPE tokenizer trained with the run, --target-params, learning on the builtin corpus, a diverging run (stopped,
not saved, exit code 2), numeric flags out of range and other bad-input messages. The short reference run and
the toy corpus are fixtures in tests/conftest.py; checkpoints and resume are tested in tests/training/."""

from __future__ import annotations

import importlib.util
import json
import math
import re
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import bmojo
from bmojo.lm import build_config, load_run, parameter_count
from bmojo.training import verify_manifest

REFERENCE_STEPS = 12  # the reference run's --max-steps (tiny_run_args in tests/conftest.py)
TARGET_PARAMS = 400_000  # --target-params of the depth-picking test


def test_run_folder_written_by_train(reference_run, losses):
    out = reference_run
    for name in ("config.json", "model.safetensors", "bmojo_tokenizer.json", "run.json", "metrics.json"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "checkpoints").iterdir()) == ["step-12", "step-4", "step-8"]
    # The top-level model is the final state: identical to the last checkpoint, and loadable by the Auto class.
    model = AutoModelForCausalLM.from_pretrained(out)
    assert isinstance(model, bmojo.BMojoForCausalLM)
    final, ckpt = load_file(out / "model.safetensors"), load_file(out / "checkpoints/step-12/model.safetensors")
    assert final.keys() == ckpt.keys() and all(torch.equal(final[k], ckpt[k]) for k in final)
    assert verify_manifest(out) is None
    assert json.loads((out / "manifest.json").read_text()).keys() >= {"config.json", "model.safetensors"}
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["steps"] == REFERENCE_STEPS and metrics["tokens"] == REFERENCE_STEPS * 8 * 32
    assert metrics["train_config"]["lr"] == 3e-3 and metrics["changes"] == [] and metrics["nonfinite"] == []
    assert losses(out)[-1] < losses(out)[0] - 0.5  # it learns
    assert {"val_loss", "val_ppl", "val_bpb"} <= metrics["final"].keys()
    assert json.loads((out / "run.json").read_text())["doc_boundaries"] is True  # packed with boundaries by default
    assert bmojo.BMojoByteTokenizer.from_pretrained(out).pad_token_id == 0  # the HF tokenizer travels with the run


def test_bpe_tokenizer_is_trained_and_saved_with_the_run(corpus, tmp_path, capsys, cli, tiny_run_args):
    out = tmp_path / "bpe"
    assert cli("train", *tiny_run_args, "--max-steps", "3", "--save-every", "0", "--tokenizer", "bpe",
               "--bpe-vocab-size", "300", "--corpus", corpus, "--out", out) == 0
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
        config = build_config(preset, None, overrides, 256, target_params=TARGET_PARAMS)
        n = config.num_hidden_layers
        best = abs(parameter_count(config) - TARGET_PARAMS)
        for other in (n - 1, n + 1):
            if other >= 1:
                neighbour = build_config(preset, None, {**overrides, "num_hidden_layers": other}, 256)
                assert abs(parameter_count(neighbour) - TARGET_PARAMS) >= best
        assert parameter_count(config) == sum(p.numel() for p in bmojo.BMojoForCausalLM(config).parameters())


def test_builtin_corpus_beats_the_unigram_baseline(tmp_path, cli):
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


def _write_blank_corpus(root: Path) -> Path:
    (root / "blank").mkdir()
    (root / "blank" / "a.txt").write_text("   \n\n")
    return root / "blank"


@pytest.mark.filterwarnings("ignore:the corpus has 1 document")
@pytest.mark.parametrize("case", ["missing_corpus", "empty_corpus", "tiny_corpus", "vocab_mismatch", "unwritable_out",
                                  "resume_nothing", "existing_run", "bad_override", "no_tensorboard"])
def test_bad_input_stops_before_training(case, corpus, tmp_path, capsys, cli, tiny_run_args):
    out = tmp_path / "out"
    argv = [*tiny_run_args, "--corpus", corpus, "--out", out]
    if case == "missing_corpus":
        argv[-3], expect = tmp_path / "nope", "does not exist"
    elif case == "empty_corpus":
        argv[-3], expect = _write_blank_corpus(tmp_path), "is empty"
    elif case == "tiny_corpus":
        (tmp_path / "small.txt").write_text("just a few words")
        argv[-3], expect = tmp_path / "small.txt", "corpus too small"
    elif case == "vocab_mismatch":
        cfg = tmp_path / "config.json"
        cfg.write_text(json.dumps(bmojo.BMojoConfig.from_preset("bmojo", vocab_size=100, hidden_size=32,
                                                              num_hidden_layers=2).to_dict()))
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


def test_a_diverging_run_stops_unsaved_with_an_error(corpus, tmp_path, capsys, cli, tiny_run_args):
    """--lr 1e6: the first update wrecks the weights, the next loss is not finite; the run stops there."""
    out = tmp_path / "diverged"
    capsys.readouterr()
    assert cli("train", *tiny_run_args, "--corpus", corpus, "--out", out, "--lr", "1e6", "--save-every", "1") == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    step = int(re.search(r"training diverged at step (\d+): loss", err).group(1))
    assert err.startswith("bmojo train: error:") and f"checkpoints/step-{step - 1}," in err
    assert max(int(p.name[5:]) for p in (out / "checkpoints").iterdir()) == step - 1  # the last good one
    assert not (out / "model.safetensors").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["stopped"] == "diverged" and metrics["steps"] == step and metrics["nonfinite"][0]["step"] == step


@pytest.mark.parametrize("flag, value, allowed", [
    ("--lr", "-1", "> 0"), ("--lr", "nan", "> 0"), ("--lr", "inf", "> 0"), ("--ssm-lr", "0", "> 0"),
    ("--weight-decay", "-0.1", ">= 0"), ("--warmup-ratio", "2", ">= 0 and <= 1"),
    ("--min-lr-ratio", "-1", ">= 0 and <= 1"), ("--grad-clip", "-1", ">= 0"), ("--max-steps", "0", ">= 1"),
    ("--max-tokens", "0", "> 0"), ("--batch-size", "0", ">= 1"), ("--seq-len", "1", ">= 2"),
    ("--log-every", "0", ">= 1"), ("--save-every", "-1", ">= 0"), ("--eval-every", "-5", ">= 0"),
    ("--keep-checkpoints", "0", ">= 1"), ("--eval-sequences", "-1", ">= 0"), ("--time-budget", "-1", ">= 0"),
    ("--val-fraction", "1", "< 1"), ("--bpe-vocab-size", "0", ">= 1"), ("--max-nonfinite-steps", "-1", ">= 0"),
    ("--target-params", "-5", "> 0"), ("--batch-size", "eight", "an integer >= 1"),
    ("--threads", "-2", ">= 1"), ("--threads", "0", ">= 1"),
])
def test_numeric_flags_out_of_range_are_refused(flag, value, allowed, corpus, tmp_path, capsys, cli_exit,
                                                tiny_run_args):
    out = tmp_path / "out"
    capsys.readouterr()
    assert cli_exit("train", *tiny_run_args, "--corpus", corpus, "--out", out, flag, value) == 2
    err = capsys.readouterr().err
    assert err.splitlines()[-1].startswith("bmojo train: error:") and flag in err and allowed in err, err
    assert "Traceback" not in err and not out.exists()
