"""bmojo.lm.evaluate: `bmojo eval` on a run folder (perplexity, bits per byte, the length sweep, its table and
plot), the recurrent sweep against the parallel one, and bad-input messages (numeric flags out of range name
the allowed range)."""

import json
import math
from pathlib import Path

import pytest
import torch

from bmojo.lm import window_nll

EVAL_TOKENS = 1024  # --eval-tokens of the sweep on the reference run


def test_eval_of_a_run_folder(reference_run, capsys, cli):
    out = reference_run
    capsys.readouterr()
    args = ("eval", out, "--lengths", "1,2,4", "--split", "train", "--eval-tokens", EVAL_TOKENS, "--threads", "1")
    assert cli(*args) == 0
    report = json.loads((out / "eval.json").read_text())
    rows = report["results"]
    assert [r["context_length"] for r in rows] == [32, 64, 128]
    # the same 1024 tokens each time
    assert all(r["targets"] == EVAL_TOKENS - EVAL_TOKENS // r["context_length"] for r in rows)
    for r in rows:  # byte tokenizer: bits per byte is exactly nats per token / ln 2
        assert r["bits_per_byte"] == pytest.approx(r["loss"] / math.log(2))
        assert r["perplexity"] == pytest.approx(math.exp(r["loss"]))
    assert (out / "length_generalization.png").stat().st_size > 1000
    assert "| run |" in (out / "length_generalization.md").read_text()


def test_eval_on_several_corpora(reference_run, corpus, tmp_path, capsys, cli):
    """--corpus repeated: one row per run and corpus; a corpus the run did not train on gets its own eval file and
    is marked in the table; the training corpus's row equals a plain eval."""
    other = tmp_path / "stdlib_json"  # real text the run never saw: the standard library's json package
    other.mkdir()
    for f in Path(json.__file__).parent.glob("*.py"):
        (other / f.name).write_text(f.read_text(encoding="utf-8"), encoding="utf-8")
    capsys.readouterr()
    common = ("--lengths", "1,2", "--split", "train", "--eval-tokens", EVAL_TOKENS, "--threads", "1", "--out", tmp_path)
    assert cli("eval", reference_run, *common) == 0
    losses = lambda report: [r["loss"] for r in report["results"]]  # noqa: E731
    alone = losses(json.loads((reference_run / "eval.json").read_text()))
    assert cli("eval", reference_run, "--corpus", corpus, "--corpus", other, *common) == 0
    own = json.loads((reference_run / "eval.json").read_text())
    unseen = json.loads((reference_run / "eval.stdlib_json.json").read_text())
    assert losses(own) == alone and own["trained_on_corpus"] and not unseen["trained_on_corpus"]
    assert unseen["corpus"] == str(other) and unseen["results"][0]["loss"] > own["results"][0]["loss"]
    table = (tmp_path / "length_generalization.md").read_text()
    assert "| model | corpus | params |" in table and f"| run | {corpus.name} |" in table
    assert "| run | stdlib_json * |" in table
    assert cli("eval", reference_run, "--corpus", other, "--corpus", tmp_path / "x" / "stdlib_json") == 2
    assert "several corpora are named stdlib_json" in capsys.readouterr().err


def test_eval_with_the_storage_tier_replaced(reference_run, tiny_model, tmp_path, capsys, cli):
    """--retrieved-tokens R evaluates the run's model with R stored tokens per query (its own eval file and row,
    marked r=R): R = 0 on a run trained without a store is the plain eval; R = 4 reads the store, which changes the
    numbers once tokens have left the working memory; a run without a 'bmojo' layer is refused before any
    evaluation."""
    common = ("--lengths", "1,4", "--split", "train", "--eval-tokens", EVAL_TOKENS, "--threads", "1", "--out", tmp_path)
    losses = lambda name: [r["loss"] for r in json.loads((reference_run / name).read_text())["results"]]  # noqa: E731
    assert cli("eval", reference_run, *common) == 0
    assert cli("eval", reference_run, *common, "--retrieved-tokens", "0") == 0
    assert cli("eval", reference_run, *common, "--retrieved-tokens", "4") == 0
    plain, off, on = losses("eval.json"), losses("eval.r0.json"), losses("eval.r4.json")
    assert off == plain and on != plain
    report = json.loads((reference_run / "eval.r4.json").read_text())
    assert (report["name"], report["num_retrieved_tokens"]) == ("run r=4", 4)
    assert "| run r=4 |" in (tmp_path / "length_generalization.md").read_text()
    mamba = tmp_path / "mamba_run"
    tiny_model("mamba").save_pretrained(mamba)
    capsys.readouterr()
    assert cli("eval", reference_run, mamba, *common, "--retrieved-tokens", "4") == 2
    assert "--retrieved-tokens: " + str(mamba) + " has no 'bmojo' layer" in capsys.readouterr().err


@pytest.mark.parametrize("preset", ["transformer", "mamba", "hybrid", "bmojo"])
def test_recurrent_sweep_equals_parallel(preset, tiny_model):
    """Lengths past --max-parallel-len go through the cache in blocks; the numbers must not change."""
    model = tiny_model(preset)
    windows = torch.randint(0, model.config.vocab_size, (3, 45))
    par = window_nll(model, windows, batch_size=2)
    rec = window_nll(model, windows, batch_size=2, max_parallel_len=16, block_size=11)
    assert (par[1], par[2], rec[1], rec[2]) == (3 * 44, "parallel", 3 * 44, "recurrent")
    assert rec[0] == pytest.approx(par[0], rel=1e-5)


def test_eval_bad_input(reference_run, tmp_path, capsys, cli):
    assert cli("eval", tmp_path / "missing") == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli("eval", reference_run, "--lengths", "1,x") == 2
    assert "--lengths" in capsys.readouterr().err
    # the validation split of the toy corpus is one ~5 KB document, too short for a 256 x 32-token window
    assert cli("eval", reference_run, "--lengths", "256", "--split", "validation", "--threads", "1") == 2
    assert "corpus too small" in capsys.readouterr().err
    assert cli("eval", reference_run, "--device", "tpu") == 2
    assert "--device tpu: only cpu and cuda[:N] are supported" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli("eval", reference_run, "--device", "cuda") == 2
        assert "--device cuda: this machine has no CUDA GPU" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, allowed", [
    ("--eval-tokens", "0", ">= 1"), ("--batch-size", "-1", ">= 1"), ("--max-parallel-len", "0", ">= 1"),
    ("--block-size", "0", ">= 1"), ("--seq-len", "1", ">= 2"),
])
def test_eval_numeric_flags_out_of_range(flag, value, allowed, tmp_path, capsys, cli_exit):
    capsys.readouterr()
    code = cli_exit("eval", tmp_path, flag, value)
    err = capsys.readouterr().err
    assert code == 2 and f"error: argument {flag}: must be" in err and allowed in err, err


def test_document_boundaries_score_each_document_alone(tiny_model):
    """window_nll with the separator: the sum over a window equals the sum over its documents scored alone, each
    without its first token (nothing in its document predicts it); the recurrent form refuses boundaries."""
    model = tiny_model("bmojo")
    sep = 0
    docs = [torch.randint(1, 61, (n,)) for n in (9, 14, 6)]
    window = torch.cat([torch.cat([d, torch.tensor([sep])]) for d in docs])[None]  # each document ends with sep
    total, count, form = window_nll(model, window, sep_id=sep)
    expected, expected_count = 0.0, 0
    for d in docs:
        part = torch.cat([d, torch.tensor([sep])])[None]
        nll, n, _ = window_nll(model, part)
        expected, expected_count = expected + nll, expected_count + n
    assert form == "parallel" and count == expected_count == window.shape[1] - len(docs)
    assert math.isclose(total, expected, rel_tol=1e-5)
    with pytest.raises(ValueError, match="parallel form only"):
        window_nll(model, window, max_parallel_len=8, sep_id=sep)
