"""bmojo.lm.common: loading a run folder (`load_run`, and `bmojo eval` / `bmojo generate` through it) when its
final model is damaged: a truncated `model.safetensors` or a corrupted `config.json` is reported in one line
and, where the run has a valid checkpoint, the newest one is used with a warning saying so."""

import shutil

import pytest

from bmojo.lm import load_run


def _damage(run_dir, what: str) -> None:
    """Truncate the final weights, or cut config.json short (no longer JSON)."""
    if what == "truncated_weights":
        weights = run_dir / "model.safetensors"
        with open(weights, "r+b") as f:
            f.truncate(weights.stat().st_size // 2)
    else:
        (run_dir / "config.json").write_text('{"model_type": "bmo')


@pytest.mark.parametrize("what", ["truncated_weights", "corrupted_config"])
def test_damaged_final_model_falls_back_to_the_newest_checkpoint(what, reference_run, tmp_path, capsys, cli):
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    _damage(out, what)
    file = "model.safetensors" if what == "truncated_weights" else "config.json"
    damaged = rf"has a damaged final model \({file} has \d+ bytes.*\(truncated\?\)\); using checkpoint step-12"
    with pytest.warns(UserWarning, match=damaged):
        model, _, _ = load_run(out)
    assert model.config.vocab_size == 256
    capsys.readouterr()
    with pytest.warns(UserWarning, match="using checkpoint step-12"):
        assert cli("generate", out, "--prompt", "the", "--max-new-tokens", 4, "--threads", 1) == 0
    assert capsys.readouterr().out.startswith("the")


@pytest.mark.parametrize("manifest", [True, False])
@pytest.mark.parametrize("what", ["truncated_weights", "corrupted_config"])
def test_damaged_model_without_a_checkpoint_is_one_line(what, manifest, reference_run, tmp_path, capsys, cli):
    """No checkpoint to fall back to: eval and generate exit 2 with one line naming the damage; a folder without
    manifest (an older run, or a plain save_pretrained folder) is caught when it fails to load."""
    out = tmp_path / "run"
    shutil.copytree(reference_run, out)
    shutil.rmtree(out / "checkpoints")
    if not manifest:
        (out / "manifest.json").unlink()
    _damage(out, what)
    expected = "(truncated?)" if manifest else ("SafetensorError" if what == "truncated_weights" else "OSError")
    for command in (("generate", out, "--prompt", "x"), ("eval", out, "--threads", 1)):
        capsys.readouterr()
        assert cli(*command) == 2
        err = capsys.readouterr().err
        assert err.startswith(f"bmojo {command[0]}: error: {out} has a damaged final model") and err.count("\n") == 1
        assert expected in err and "no valid checkpoint to fall back to" in err
