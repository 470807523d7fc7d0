"""bmojo.compare: budget fitting, and `bmojo compare` end to end on a tiny spec."""

import json

import pytest

from bmojo import BMojoConfig
from bmojo.accounting import decoding_state_bytes
from bmojo.compare import SPECS, CompareSpec, budget_candidates, fit_to_budget, memory_of, run_compare


@pytest.mark.parametrize("preset", ["swa", "mamba", "hybrid", "bmojo_f", "bmojo"])
def test_fit_to_budget_takes_the_most_memory_within_budget(preset):
    base = dict(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2, window_size=8,
                ssm_state_size=8, ssm_head_dim=16, num_fading_tokens=2, num_eidetic_tokens=4)
    budget = memory_of(BMojoConfig.from_preset(preset, **base), 64)[1] * 1.5
    chosen = memory_of(fit_to_budget(preset, base, 64, budget), 64)[1]
    assert chosen <= budget
    others = [memory_of(c, 64)[1] for c in budget_candidates(preset, base)]
    assert all(m > budget for m in others if m > chosen)  # nothing with more memory fits
    assert len(set(others)) > 1  # the knob really moves memory
    assert fit_to_budget(preset, base, 64, 0.5) is None


def test_compare_writes_results_table_and_plots(tmp_path, png_signature):
    spec = CompareSpec(
        tasks=[dict(task="mqar", vocab_size=64, seq_len=32, num_kv_pairs=4)],
        presets=["swa", "bmojo"],
        budgets=[40.0, 1000.0],
        seeds=[0],
        model=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, window_size=8, ssm_state_size=8,
                   ssm_head_dim=16, ssm_chunk_size=8, num_fading_tokens=2, num_eidetic_tokens=4),
        train=dict(max_steps=3, batch_size=8, log_every=1),
        num_train=64, num_test=16,
    )
    records = run_compare(spec, tmp_path, progress=False)
    assert len(records) == 4
    data = json.loads((tmp_path / "results.json").read_text())
    assert len(data["runs"]) == 4
    for r in data["runs"]:
        assert {"task", "task_settings", "preset", "seed", "budget_tokens"} <= set(r)
        if "skipped" not in r:
            assert {"memory_bytes", "memory_tokens", "parameters", "accuracy", "train_seconds"} <= set(r)
            assert 0.0 <= r["accuracy"] <= 1.0 and r["memory_tokens"] <= r["budget_tokens"]
            assert r["test_sequences_seen_in_training"] == 0
            cfg = fit_to_budget(r["preset"], {**spec.model, "vocab_size": 64}, 32, r["budget_tokens"])
            assert r["memory_bytes"] == decoding_state_bytes(cfg, 32)["total"]
    assert "| mqar" in (tmp_path / "results.md").read_text()
    pngs = list(tmp_path.glob("*.png"))
    assert pngs and all(p.read_bytes()[:8] == png_signature for p in pngs)


def test_compare_cli_rejects_unknown_names(tmp_path, capsys, cli):
    assert cli("compare", "--tasks", "mqar", "sorting", "--out", tmp_path) == 2
    err = capsys.readouterr().err
    assert "unknown task" in err and "'sorting'" in err and "in_context_recall" in err
    assert cli("compare", "--presets", "gpt", "--out", tmp_path) == 2
    err = capsys.readouterr().err
    assert "unknown preset" in err and "bmojo_f" in err


# ---------------------------------------------------------------- experiment specs as files

TINY_SPEC = dict(
    tasks=[dict(task="mqar", vocab_size=64, seq_len=32, num_kv_pairs=4)],
    presets=["swa"], budgets=[], seeds=[0],
    model=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, window_size=8),
    train=dict(max_steps=2, batch_size=8), num_train=16, num_test=8,
)


@pytest.mark.parametrize("name", list(SPECS))
def test_spec_round_trips_through_json(name, tmp_path):
    spec = SPECS[name]
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(spec.to_dict()))
    assert CompareSpec.from_file(path) == spec
    assert CompareSpec.from_dict(json.loads(path.read_text())).to_dict() == spec.to_dict()


def test_spec_reads_toml(tmp_path):
    path = tmp_path / "spec.toml"
    path.write_text('presets = ["swa"]\nbudgets = []\nseeds = [0]\nnum_train = 16\nnum_test = 8\n'
                    '[[tasks]]\ntask = "mqar"\nvocab_size = 64\nseq_len = 32\nnum_kv_pairs = 4\n'
                    '[model]\nhidden_size = 32\nnum_hidden_layers = 1\nnum_attention_heads = 2\nwindow_size = 8\n'
                    '[train]\nmax_steps = 2\nbatch_size = 8\n')
    assert CompareSpec.from_file(path) == CompareSpec(**TINY_SPEC)


def test_spec_file_errors_name_the_field(tmp_path):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps({**TINY_SPEC, "epochs": 3}))
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['epochs'\]; valid fields: tasks, presets, budgets"):
        CompareSpec.from_file(path)
    path.write_text(json.dumps({**TINY_SPEC, "seeds": [0.5]}))
    with pytest.raises(ValueError, match=r"field 'seeds' must be list\[int\], got \[0.5\]"):
        CompareSpec.from_file(path)
    path.write_text(json.dumps({k: v for k, v in TINY_SPEC.items() if k != "presets"}))
    with pytest.raises(ValueError, match=r"missing field\(s\) \['presets'\]"):
        CompareSpec.from_file(path)
    path.write_text(json.dumps({**TINY_SPEC, "train": {"epochs": 1}}))
    with pytest.raises(ValueError, match=r"unknown train field\(s\) \['epochs'\]; valid train fields: max_steps"):
        CompareSpec.from_file(path)


def test_compare_cli_runs_a_spec_file(tmp_path, cli, capsys):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(TINY_SPEC))
    assert cli("compare", "--spec", path, "--threads", "1", "--out", tmp_path / "out") == 0
    data = json.loads((tmp_path / "out" / "results.json").read_text())
    assert data["spec"] == CompareSpec(**TINY_SPEC).to_dict() and len(data["runs"]) == 1
    with pytest.raises(SystemExit):  # --spec and --preset are alternatives
        cli("compare", "--spec", path, "--preset", "paper", "--out", tmp_path / "out")
    assert "not allowed with argument" in capsys.readouterr().err
