"""bmojo.lm.generate: `bmojo generate` from a run folder (greedy is reproducible, sampling runs) and its
bad-input messages (no model; numeric flags out of range, with the allowed range)."""

import pytest

PROMPT = "the cat"  # the greedy prompt


def test_generate_from_a_run_folder(reference_run, capsys, cli):
    out = reference_run
    capsys.readouterr()
    args = ("generate", out, "--prompt", PROMPT, "--max-new-tokens", "20", "--temperature", "0", "--ignore-eos")
    assert cli(*args) == 0
    greedy = capsys.readouterr().out
    assert cli(*args) == 0
    assert capsys.readouterr().out == greedy and greedy.startswith(PROMPT) and len(greedy.rstrip("\n")) > len(PROMPT)
    assert cli("generate", out, "--prompt", "the", "--max-new-tokens", "8", "--num-samples", "2", "--seed", "1") == 0
    capsys.readouterr()
    assert cli(*args, "--decoding", "static") == 0  # the static decode step: the same text
    assert capsys.readouterr().out == greedy


def test_generate_bad_input(tmp_path, capsys, cli):
    (tmp_path / "empty").mkdir()
    assert cli("generate", tmp_path / "empty", "--prompt", "x") == 2
    assert "holds no model" in capsys.readouterr().err


@pytest.mark.parametrize("flag, value, allowed", [
    ("--max-new-tokens", "0", ">= 1"), ("--temperature", "-1", ">= 0"), ("--temperature", "nan", ">= 0"),
    ("--top-p", "0", "> 0 and <= 1"), ("--top-k", "-1", ">= 0"), ("--repetition-penalty", "0", "> 0"),
    ("--num-samples", "0", ">= 1"),
])
def test_generate_numeric_flags_out_of_range(flag, value, allowed, tmp_path, capsys, cli_exit):
    capsys.readouterr()
    code = cli_exit("generate", tmp_path, flag, value)
    err = capsys.readouterr().err
    assert code == 2 and f"error: argument {flag}: must be" in err and allowed in err, err
