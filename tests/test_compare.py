"""bmojo.compare: budget fitting, `bmojo compare` end to end on a tiny spec, its argument checks, and an
interrupted compare resumed."""

import dataclasses
import json
import re
from pathlib import Path

import pytest
import torch

from bmojo import BMojoConfig, BMojoForCausalLM
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


def test_standard_preset_is_the_quick_models_at_three_budgets_three_seeds_four_tasks():
    """The standard preset (docs/recall.md) has what issue 12 asks of it: >= 3 budgets, 3 seeds, MQAR at two kv
    settings and two MAD tasks; the quick preset's models and training but 250 steps and no time budget. Its plan:
    168 runs, and 48 rows skipped (the Transformer below 36, the B'MOJO presets below 24), each saying why."""
    from bmojo.compare import _plan

    standard, quick = SPECS["standard"], SPECS["quick"]
    assert standard.model == quick.model and standard.lrs == quick.lrs and standard.presets == quick.presets
    assert standard.train == {**quick.train, "max_steps": 250, "eval_every": 50}
    assert standard.time_budget_s is None
    assert len(standard.budgets) >= 3 and standard.seeds == [0, 1, 2]
    assert sorted(t["num_kv_pairs"] for t in standard.tasks if t["task"] == "mqar") == [2, 4]
    assert {t["task"] for t in standard.tasks} == {"mqar", "in_context_recall", "selective_copying"}
    plan = _plan(standard)
    skipped = [record for record, _, config in plan if config is None]
    assert len(plan) - len(skipped) == 168
    assert sorted({(r["preset"], r["budget_tokens"]) for r in skipped}) == [
        ("bmojo", 16), ("bmojo_f", 16), ("transformer", 16), ("transformer", 24)]
    assert all(r["skipped"].startswith("its smallest setting needs") for r in skipped) and len(skipped) == 48


EXPERIMENTS = Path(__file__).resolve().parents[1] / "experiments"


def quick_600() -> CompareSpec:
    """experiments/mqar_quick_600.toml: the quick preset until 2026-12-06 (600 steps, lr 1e-3 for every row), which
    several experiments change."""
    return CompareSpec.from_file(EXPERIMENTS / "mqar_quick_600.toml")


def test_quick_600_experiment_is_the_quick_preset_at_600_steps_one_learning_rate():
    """experiments/mqar_quick_600.toml is the quick preset with 600 steps instead of 1000 and lr 1e-3 for Mamba, the
    hybrid and bmojo_f too; the quick preset gives those three 3e-3 (docs/recall.md)."""
    quick = SPECS["quick"]
    assert quick.preset_lrs == {"mamba": [3e-3], "hybrid": [3e-3], "bmojo_f": [3e-3]}
    assert quick.train["max_steps"] == 1000
    assert quick_600() == dataclasses.replace(quick, train={**quick.train, "max_steps": 600}, preset_lrs={})


def test_mamba_experiment_is_the_quick_600_spec_at_two_rates_two_state_sizes_3000_steps():
    """experiments/mqar_quick_mamba.toml (docs/recall.md, "Mamba on the quick task"): the quick task and model, the
    mamba preset and the same with a state of 64, at lr 1e-3 and 3e-3, 3000 steps, one seed, no time budget."""
    quick = quick_600()
    expected = dataclasses.replace(quick, presets=["mamba", "mamba_n64"], seeds=[0], lrs=[1e-3, 3e-3],
                                   variants={"mamba_n64": {"preset": "mamba", "ssm_state_size": 64}},
                                   train={**quick.train, "max_steps": 3000}, time_budget_s=None)
    assert CompareSpec.from_file(EXPERIMENTS / "mqar_quick_mamba.toml") == expected


def test_bmojo_f_rate_experiment_is_the_quick_preset_bmojo_f_row_at_three_rates():
    """experiments/mqar_quick_bmojo_f_lr.toml (docs/recall.md, "bmojo_f's learning rate on the quick task"): the quick
    preset (task, model, 1000 steps, seeds 0 and 1), its bmojo_f row alone, at lr 1e-3, 2e-3 and 3e-3, no time
    budget."""
    expected = dataclasses.replace(SPECS["quick"], presets=["bmojo_f"], lrs=[1e-3, 2e-3, 3e-3], preset_lrs={},
                                   time_budget_s=None)
    assert CompareSpec.from_file(EXPERIMENTS / "mqar_quick_bmojo_f_lr.toml") == expected


def paper_layer_quick() -> CompareSpec:
    """experiments/mqar_quick_paper_layer.toml: the quick preset with the paper's B'MOJO layer, which several
    experiments measured."""
    return CompareSpec.from_file(EXPERIMENTS / "mqar_quick_paper_layer.toml")


def test_paper_layer_experiment_is_the_quick_preset_without_the_residual():
    """experiments/mqar_quick_paper_layer.toml (docs/recall.md) is the 600-step quick spec with fading_residual off
    (the paper's layer) instead of the gated residual, and the SSD chunk of its measurements (16: two chunks per
    sequence, the same model to fp32 rounding), nothing else."""
    quick = quick_600()
    model = {k: v for k, v in quick.model.items() if not k.startswith("fading_residual_gate")}
    expected = dataclasses.replace(quick, model={**model, "fading_residual": False, "ssm_chunk_size": 16})
    assert paper_layer_quick() == expected


def test_plateau_experiment_is_the_quick_preset_of_the_plateau_measurements():
    """experiments/mqar_plateau.toml keeps the quick preset of docs/inspect.md and the plateau table of docs/recall.md:
    V 128, L 64, kv 4 and 8, d 64, batch 32, lr 5e-3, 600 steps (the preset since: V 64, L 32, kv 4, d 128)."""
    plateau = CompareSpec.from_file(EXPERIMENTS / "mqar_plateau.toml")
    assert [(t["vocab_size"], t["seq_len"], t["num_kv_pairs"]) for t in plateau.tasks] == [(128, 64, 4), (128, 64, 8)]
    assert (plateau.model["hidden_size"], plateau.model["window_size"], plateau.lrs) == (64, 16, [5e-3])
    assert plateau.presets == SPECS["quick"].presets and plateau.num_train == SPECS["quick"].num_train


def test_constant_filler_experiment_is_the_plateau_bmojo_run_with_constant_filler():
    """experiments/mqar_constant_filler.toml (docs/inspect.md) differs from the plateau-era quick spec's bmojo kv-4 run
    only in the filler."""
    plateau = CompareSpec.from_file(EXPERIMENTS / "mqar_plateau.toml")
    expected = dataclasses.replace(plateau, presets=["bmojo"],
                                   tasks=[{**plateau.tasks[0], "random_non_queries": False}])
    assert CompareSpec.from_file(EXPERIMENTS / "mqar_constant_filler.toml") == expected


def test_paper_layer_experiment_is_the_plateau_bmojo_run_without_the_residual():
    """experiments/quick_paper_layer.toml (docs/recall.md) is the plateau-era quick spec's bmojo, three seeds, with
    only fading_residual switched off (the paper's layer)."""
    plateau = CompareSpec.from_file(EXPERIMENTS / "mqar_plateau.toml")
    expected = dataclasses.replace(plateau, presets=["bmojo"], seeds=[0, 1, 2],
                                   model={**plateau.model, "fading_residual": False})
    assert CompareSpec.from_file(EXPERIMENTS / "quick_paper_layer.toml") == expected


def test_random_filler_experiment_is_the_quick_preset_with_only_the_filler_changed():
    """experiments/mqar_quick_random_filler.toml (docs/recall.md, "Which filler"): the quick preset with the paper's
    layer and Zoology's random filler instead of a constant one, nothing else."""
    quick = paper_layer_quick()
    random = CompareSpec.from_file(EXPERIMENTS / "mqar_quick_random_filler.toml")
    assert quick.tasks == [{**random.tasks[0], "random_non_queries": False}]
    assert dataclasses.replace(random, tasks=quick.tasks) == quick


def test_window_stall_experiment_is_the_quick_task_with_only_the_windows_and_residual_changed():
    """experiments/mqar_window_stall.toml (docs/recall.md): the random-filler quick spec's task, model and training
    (1200 steps), with swa at longer windows and bmojo with a window as long as the sequence, with and without the
    residual."""
    quick = CompareSpec.from_file(EXPERIMENTS / "mqar_quick_random_filler.toml")
    variants = {f"swa_w{w}": {"preset": "swa", "window_size": w} for w in (16, 24, 31)}
    variants |= {"bmojo_w32": {"preset": "bmojo", "window_size": 32},
                 "bmojo_w32_paper": {"preset": "bmojo", "window_size": 32, "fading_residual": False}}
    model = {k: v for k, v in quick.model.items() if k != "fading_residual"}  # bmojo_w32 keeps the preset's residual
    expected = dataclasses.replace(quick, presets=["transformer", "swa", *variants], variants=variants, model=model,
                                   train={**quick.train, "max_steps": 1200}, time_budget_s=None)
    assert CompareSpec.from_file(EXPERIMENTS / "mqar_window_stall.toml") == expected


def test_residual_gate_experiment_is_the_window_stall_spec_with_gated_bmojo_rows():
    """experiments/mqar_residual_gate.toml (docs/recall.md): the window-stall spec (the quick task, model and
    training at 1200 steps) with two bmojo rows, at window 32 and at the quick window 8, their residual gated."""
    stall = CompareSpec.from_file(EXPERIMENTS / "mqar_window_stall.toml")
    variants = {"bmojo_w32_gate": {"preset": "bmojo", "window_size": 32, "fading_residual_gate": True},
                "bmojo_gate": {"preset": "bmojo", "fading_residual_gate": True}}
    expected = dataclasses.replace(stall, presets=list(variants), variants=variants)
    assert CompareSpec.from_file(EXPERIMENTS / "mqar_residual_gate.toml") == expected


def test_lr_sweep_experiment_is_the_quick_spec_with_three_learning_rates_for_the_bounded_presets():
    """experiments/mqar_lr_sweep.toml (docs/recall.md): the random-filler quick task and model, 1200 steps, one seed,
    the bounded presets at lr 3e-4, 1e-3 and 3e-3."""
    quick = CompareSpec.from_file(EXPERIMENTS / "mqar_quick_random_filler.toml")
    expected = dataclasses.replace(quick, presets=["swa", "mamba", "bmojo_f", "bmojo"], seeds=[0],
                                   lrs=[3e-4, 1e-3, 3e-3], train={**quick.train, "max_steps": 1200},
                                   time_budget_s=None)
    assert CompareSpec.from_file(EXPERIMENTS / "mqar_lr_sweep.toml") == expected


def test_quick_lr_experiment_is_the_quick_preset_at_two_larger_learning_rates():
    """experiments/mqar_quick_lr.toml (docs/recall.md, "Which filler"): the quick preset's bounded presets with the
    paper's layer, one seed, at lr 2e-3 and 3e-3, with no whole-command time budget."""
    quick = paper_layer_quick()
    expected = dataclasses.replace(quick, presets=["swa", "mamba", "bmojo_f", "bmojo"], seeds=[0], lrs=[2e-3, 3e-3],
                                   time_budget_s=None)
    assert CompareSpec.from_file(EXPERIMENTS / "mqar_quick_lr.toml") == expected


def test_quick_residual_experiment_is_the_quick_preset_with_the_residual_on():
    """experiments/mqar_quick_residual.toml (docs/recall.md): the quick preset with three bmojo rows, the residual on,
    ungated and gated (gate scale 1 and 10) on top of the paper's layer, and no whole-command time budget."""
    quick = paper_layer_quick()
    gate = {"preset": "bmojo", "fading_residual": True, "fading_residual_gate": True}
    variants = {"bmojo_resid": {"preset": "bmojo", "fading_residual": True}, "bmojo_gate": gate,
                "bmojo_gate10": {**gate, "fading_residual_gate_scale": 10.0}}
    expected = dataclasses.replace(quick, presets=list(variants), variants=variants, time_budget_s=None)
    assert CompareSpec.from_file(EXPERIMENTS / "mqar_quick_residual.toml") == expected


def test_gate_scale_experiment_is_the_quick_preset_with_a_faster_gate_row():
    """experiments/mqar_quick_gate_scale.toml (docs/recall.md, "A faster gate"): the 600-step quick spec's bmojo and
    bmojo_f rows and the same layers with the gate at 30x the learning rate, and no whole-command time budget."""
    quick = quick_600()
    variants = {f"{p}_gate30": {"preset": p, "fading_residual_gate_scale": 30.0} for p in ("bmojo", "bmojo_f")}
    expected = dataclasses.replace(quick, presets=["bmojo", "bmojo_gate30", "bmojo_f", "bmojo_f_gate30"],
                                   variants=variants, time_budget_s=None)
    assert CompareSpec.from_file(EXPERIMENTS / "mqar_quick_gate_scale.toml") == expected


def test_bf16_experiment_is_the_quick_preset_in_bf16_autocast():
    """experiments/mqar_quick_bf16.toml (docs/benchmarks.md, "Small models"): the 600-step quick spec in bf16
    autocast, and no whole-command time budget."""
    quick = quick_600()
    expected = dataclasses.replace(quick, train={**quick.train, "bf16": True}, time_budget_s=None)
    assert CompareSpec.from_file(EXPERIMENTS / "mqar_quick_bf16.toml") == expected


def long_shown() -> CompareSpec:
    """experiments/long_recall_shown.toml: the long preset until 2026-12-06 (the answers shown, 1500 steps, width 64),
    which several experiments change."""
    return CompareSpec.from_file(EXPERIMENTS / "long_recall_shown.toml")


def test_long_preset_is_the_shown_answers_spec_with_the_answers_hidden_and_the_quick_recipe():
    """The long preset (docs/recall.md, "Long recall") is experiments/long_recall_shown.toml with the answers hidden,
    the quick spec's width, learning rate, weight decay and B'MOJO layer, and 4500 steps; and
    long_recall_no_answers_4500.toml is its transformer and bmojo_store rows."""
    old, long = long_shown(), SPECS["long"]
    assert long.tasks == [{**old.tasks[0], "show_answers": False}]
    assert long.model == {**old.model, "hidden_size": 128, "fading_residual_gate": True,
                          "fading_residual_gate_scale": 10.0}
    assert (long.lrs, long.weight_decays, long.train) == ([1e-3], [0.1], {**old.train, "max_steps": 4500})
    assert dataclasses.replace(long, tasks=old.tasks, model=old.model, lrs=old.lrs, weight_decays=old.weight_decays,
                               train=old.train) == old
    assert CompareSpec.from_file(EXPERIMENTS / "long_recall_no_answers_4500.toml") == dataclasses.replace(
        long, presets=["transformer", "bmojo_store"])


def test_eidetic_edge_experiment_is_the_long_preset_with_its_bmojo_rows_at_the_edge():
    """experiments/long_recall_eidetic_edge.toml (docs/recall.md, "Eidetic tokens at the edge") is the long preset's
    two B'MOJO rows, with and without the store, their eidetic tokens at the chunk edge, two seeds."""
    long = SPECS["long"]
    edge = {"eidetic_position": "edge"}
    expected = dataclasses.replace(
        long, presets=["bmojo_store_edge", "bmojo_edge"], seeds=[0, 1],
        variants={"bmojo_store_edge": {**long.variants["bmojo_store"], **edge},
                  "bmojo_edge": {"preset": "bmojo", **edge}})
    assert CompareSpec.from_file(EXPERIMENTS / "long_recall_eidetic_edge.toml") == expected


def test_random_lead_experiment_is_the_edge_store_row_with_the_pairs_anywhere():
    """experiments/long_recall_random_lead.toml (docs/recall.md, "Pairs anywhere") is the edge experiment's store row
    on the long preset's task with random_lead, two seeds."""
    edge = CompareSpec.from_file(EXPERIMENTS / "long_recall_eidetic_edge.toml")
    expected = dataclasses.replace(
        edge, tasks=[{**edge.tasks[0], "random_lead": True}], presets=["bmojo_store_edge"],
        variants={"bmojo_store_edge": edge.variants["bmojo_store_edge"]})
    assert CompareSpec.from_file(EXPERIMENTS / "long_recall_random_lead.toml") == expected


def test_random_lead_512_experiment_is_the_random_lead_spec_with_a_second_stage_at_512():
    """experiments/long_recall_random_lead_512.toml (docs/recall.md, "Pairs anywhere") is the random-lead spec with
    the length curriculum's second stage: 300 steps at L 512, lr 5e-4, 5000 new examples."""
    random_lead = CompareSpec.from_file(EXPERIMENTS / "long_recall_random_lead.toml")
    expected = dataclasses.replace(random_lead, second_stage={"seq_len": 512, "max_steps": 300, "lr": 5e-4,
                                                              "num_train": 5000})
    assert CompareSpec.from_file(EXPERIMENTS / "long_recall_random_lead_512.toml") == expected


def test_random_lead_512_baselines_are_the_curriculum_spec_with_other_architectures_seed_0():
    """experiments/long_recall_random_lead_512_baselines.toml (docs/recall.md, "Baselines at a million tokens") is the
    curriculum spec but for its rows: swa, mamba, and the store row without its store; seed 0 only."""
    store = CompareSpec.from_file(EXPERIMENTS / "long_recall_random_lead_512.toml")
    expected = dataclasses.replace(store, presets=["swa", "mamba", "bmojo_edge"], seeds=[0],
                                   variants={"bmojo_edge": {"preset": "bmojo", "eidetic_position": "edge"}})
    assert store.variants == {"bmojo_store_edge": {**expected.variants["bmojo_edge"], "num_retrieved_tokens": 8}}
    assert CompareSpec.from_file(EXPERIMENTS / "long_recall_random_lead_512_baselines.toml") == expected


def test_long_recall_experiment_is_the_long_preset_trained_twice_as_long():
    """experiments/long_recall_3000.toml (docs/recall.md) is long_recall_shown.toml's transformer and bmojo_store
    rows with 3000 training steps instead of 1500."""
    path = Path(__file__).resolve().parents[1] / "experiments" / "long_recall_3000.toml"
    long = long_shown()
    expected = dataclasses.replace(long, presets=["transformer", "bmojo_store"],
                                   train={**long.train, "max_steps": 3000})
    assert CompareSpec.from_file(path) == expected


def test_long_recall_quick_recipe_experiments():
    """experiments/long_recall_quick_recipe.toml is long_recall_shown.toml's transformer and bmojo_store rows with
    the quick spec's width, learning rate, weight decay and B'MOJO layer; long_recall_no_answers.toml is its
    transformer on the task with the answers hidden, tested at 1x and 4x; long_recall_no_answers_4500.toml both rows
    on that task, trained 4500 steps; long_recall_shortcut.toml is that recipe at L 32 with the answers shown and
    hidden (docs/recall.md, "A shortcut in the long-recall task")."""
    long = long_shown()
    recipe = dataclasses.replace(
        long, presets=["transformer", "bmojo_store"], lrs=[1e-3], weight_decays=[0.1],
        model={**long.model, "hidden_size": 128, "fading_residual_gate": True, "fading_residual_gate_scale": 10.0})
    assert CompareSpec.from_file(EXPERIMENTS / "long_recall_quick_recipe.toml") == recipe
    hidden = {**long.tasks[0], "show_answers": False}
    assert CompareSpec.from_file(EXPERIMENTS / "long_recall_no_answers.toml") == dataclasses.replace(
        recipe, tasks=[hidden], presets=["transformer"], variants={}, eval_lengths=[128, 512])
    assert CompareSpec.from_file(EXPERIMENTS / "long_recall_no_answers_4500.toml") == dataclasses.replace(
        recipe, tasks=[hidden], train={**recipe.train, "max_steps": 4500})
    short = {**long.tasks[0], "seq_len": 32}
    assert CompareSpec.from_file(EXPERIMENTS / "long_recall_shortcut.toml") == dataclasses.replace(
        recipe, tasks=[short, {**short, "show_answers": False}], presets=["transformer"], variants={}, eval_lengths=[])


def test_lean_long_recall_experiment_changes_only_the_working_memory():
    """experiments/long_recall_lean.toml (docs/recall.md) is long_recall_shown.toml's bmojo_store row trained 3000
    steps, and a second row that differs only by 1 fading and 1 eidetic token."""
    path = Path(__file__).resolve().parents[1] / "experiments" / "long_recall_lean.toml"
    long = long_shown()
    lean = {**long.variants["bmojo_store"], "num_fading_tokens": 1, "num_eidetic_tokens": 1}
    expected = dataclasses.replace(long, presets=["bmojo_store", "bmojo_store_lean"],
                                   variants={**long.variants, "bmojo_store_lean": lean},
                                   train={**long.train, "max_steps": 3000})
    assert CompareSpec.from_file(path) == expected


def test_positions_long_recall_experiment_changes_only_the_retrieved_position():
    """experiments/long_recall_positions.toml (docs/recall.md): long_recall_shown.toml's bmojo_store trained 3000
    steps with retrieved_position "original" and "edge"."""
    path = Path(__file__).resolve().parents[1] / "experiments" / "long_recall_positions.toml"
    long = long_shown()
    store = long.variants["bmojo_store"]
    variants = {"bmojo_store_original": {**store, "retrieved_position": "original"},
                "bmojo_store_edge": {**store, "retrieved_position": "edge"}}
    expected = dataclasses.replace(long, presets=["bmojo_store_original", "bmojo_store_edge"], variants=variants,
                                   train={**long.train, "max_steps": 3000})
    assert CompareSpec.from_file(path) == expected


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


def test_saved_models_are_the_best_of_the_sweep_and_load_with_their_task(tmp_path, cli):
    """--save-models: each run's best model of the lr sweep, reloaded, scores the recorded accuracy on the test split;
    task.json names the task and settings `bmojo inspect` reads."""
    from bmojo import tasks
    from bmojo.compare import evaluate_accuracy
    from bmojo.models import BMojoForCausalLM

    path = tmp_path / "spec.json"
    path.write_text(json.dumps({**TINY_SPEC, "presets": ["bmojo"], "lrs": [1e-4, 3e-2], "num_test": 32,
                                "model": {**TINY_SPEC["model"], "num_fading_tokens": 2, "num_eidetic_tokens": 2}}))
    assert cli("compare", "--spec", path, "--threads", "1", "--save-models", "--out", tmp_path / "out") == 0
    (run,) = json.loads((tmp_path / "out" / "results.json").read_text())["runs"]
    folder = tmp_path / "out" / "models" / "mqar-num_kv_pairs4-seq_len32-vocab_size64-bmojo-seed0"
    assert run["model_dir"] == str(folder)
    saved = json.loads((folder / "task.json").read_text())
    assert saved == {"task": "mqar", "settings": dict(vocab_size=64, seq_len=32, num_kv_pairs=4), "seed": 0,
                     "lr": run["lr"], "preset": "bmojo"}
    _, (test_inputs, test_targets) = tasks.train_test_split("mqar", 16, 32, 0, **saved["settings"])
    model = BMojoForCausalLM.from_pretrained(folder).eval()
    assert evaluate_accuracy(model, test_inputs, test_targets) == run["accuracy"]


def test_spec_values_are_checked(tmp_path):
    """Values out of range, misspelt or missing settings and fields, a train field compare sets itself, and a batch
    larger than the training set stop a spec file when it is read."""
    path = tmp_path / "spec.json"
    for change, message in [
        (dict(seeds=[0, -1]), "seeds must be in [0, 2**32), got -1"),
        (dict(budgets=[64.0, 0.0]), "budgets must be > 0 (token-equivalents), got 0.0"),
        (dict(lrs=[-1.0]), "lrs must be > 0, got -1.0"),
        (dict(num_train=0), "num_train must be >= 1, got 0"),
        (dict(time_budget_s=-5.0), "time_budget_s must be > 0 seconds, got -5.0"),
        (dict(presets=[]), "'presets' is empty: nothing would run"),
        (dict(train=dict(max_steps=0)), "train.max_steps must be >= 1, got 0"),
        (dict(train=dict(batch_size=32)), "train.batch_size=32 exceeds num_train=16"),
        (dict(model=dict(windowsize=8)), "model: unknown BMojoConfig field 'windowsize'; did you mean 'window_size'?"),
        (dict(tasks=[dict(task="mqar", vocab_size=64, seq_len=32, num_kv_pair=4)]),
         "unknown mqar setting(s) ['num_kv_pair']; valid mqar settings: vocab_size, seq_len, num_kv_pairs"),
        (dict(tasks=[dict(task="mqar", vocab_size=64, seq_len=32)]),
         "task 'mqar' needs the setting(s) ['num_kv_pairs']"),
        (dict(train=dict(lr=0.01)), "train.lr is set for each run by compare; use lrs"),
        (dict(train=dict(batch_size="8")), "train.batch_size must be int, got '8'"),
        (dict(preset_lrs={"mambo": [3e-3]}), "unknown preset_lrs entry(s) ['mambo']; valid preset_lrs entrys: "),
        (dict(preset_lrs={"mamba": []}), "preset_lrs['mamba'] must be a non-empty list of learning rates, got []"),
        (dict(preset_lrs={"mamba": [0.0]}), "preset_lrs['mamba'] must be > 0, got 0.0"),
        (dict(second_stage={"max_steps": 3}), "second_stage needs 'seq_len', the task's length in the second stage"),
        (dict(second_stage={"seq_len": 0}), "second_stage.seq_len must be an integer >= 1, got 0"),
        (dict(second_stage={"seq_len": 64, "seed": 1}), "unknown second_stage field(s) ['seed']; valid second_stage "
                                                        "fields: seq_len, num_train, max_steps"),
        (dict(second_stage={"seq_len": 64, "lr": -1.0}), "second_stage.lr must be > 0, got -1.0"),
        (dict(second_stage={"seq_len": 64, "max_steps": "3"}), "second_stage.max_steps must be int, got '3'"),
        (dict(second_stage={"seq_len": 64, "batch_size": 32}), "second_stage: batch_size=32 exceeds its num_train=16"),
        (dict(second_stage={"seq_len": 64}, time_budget_s=60.0), "second_stage with a time budget (time_budget_s, "),
        (dict(second_stage={"seq_len": 64, "num_train": 0}), "second_stage.num_train must be an integer >= 1, got 0"),
        (dict(second_stage={"seq_len": 64, "weight_decay": -0.1}), "second_stage.weight_decay must be >= 0, got -0.1"),
    ]:
        path.write_text(json.dumps({**TINY_SPEC, **change}))
        with pytest.raises(ValueError, match=re.escape(f"{path}: {message}")):
            CompareSpec.from_file(path)


@pytest.mark.parametrize(
    "case, argv, message",
    [
        ("max_steps", ["--max-steps", "0"], "--max-steps must be >= 1, got 0"),
        ("tpu", ["--device", "tpu"], "argument --device: invalid choice: 'tpu' (choose from"),
        ("cuda", ["--device", "cuda"], "--device cuda: this machine has no CUDA GPU"),
        ("budgets", ["--memory-budgets", "-5"], "--memory-budgets must be > 0 (token-equivalents), got -5.0"),
        ("seeds", ["--seeds", "-1"], "--seeds must be in [0, 2**32), got -1"),
        ("time_budget", ["--time-budget", "0"], "--time-budget must be > 0 seconds, got 0.0"),
        ("out_file", [], "is a file, not a folder"),
        ("all_skipped", ["--memory-budgets", "0.01"], "nothing to run: no preset fits the memory budget(s) [0.01]"),
        ("other_folder", [], "is not empty and holds no compare results (spec.json); choose a new --out"),
        ("compare_folder", [], "already holds compare results; pass --resume to continue that run, or choose a new"),
        ("other_spec", ["--resume", "--seeds", "1"], "holds results of another spec (differs in seeds)"),
    ],
)
def test_compare_cli_checks_arguments_before_any_run(case, argv, message, tmp_path, cli_exit, capsys, monkeypatch):
    """Every bad argument stops `bmojo compare` with exit code 2 and one line, before a run trains or a file is
    written (an existing folder is left as it was)."""
    path, out = tmp_path / "spec.json", tmp_path / "out"
    path.write_text(json.dumps(TINY_SPEC))
    if case == "cuda":
        monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    elif case == "out_file":
        out.write_text("x")
    elif case == "other_folder":
        out.mkdir()
        (out / "notes.txt").write_text("x")
    elif case in ("compare_folder", "other_spec"):
        out.mkdir()
        (out / "spec.json").write_text(json.dumps(CompareSpec(**TINY_SPEC).to_dict()))
        (out / "runs.jsonl").write_text("")
    before = sorted(p.name for p in out.iterdir()) if out.is_dir() else None
    monkeypatch.setattr("bmojo.compare.run_one", _no_training)
    capsys.readouterr()
    assert cli_exit("compare", "--spec", path, *argv, "--out", out) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err, err
    assert (sorted(p.name for p in out.iterdir()) if out.is_dir() else None) == before


def _no_training(*args, **kwargs):
    raise AssertionError("a run started")


TIMING = ("train_seconds",)  # record fields that vary from run to run; everything else is deterministic


def _without_timing(records: list[dict]) -> list[dict]:
    return [{k: ([_without_timing([s])[0] for s in v] if k == "sweep" else v) for k, v in r.items() if k not in TIMING}
            for r in records]


def test_interrupted_compare_keeps_finished_runs_and_resumes(tmp_path, cli, capsys, monkeypatch):
    """Interrupted during its 2nd run, `compare` keeps the 1st in runs.jsonl and results.json; `--resume` runs
    only the rest (a line torn by the interruption is dropped) and ends with the records of an uninterrupted run."""
    import bmojo.compare

    path = tmp_path / "spec.json"
    path.write_text(json.dumps({**TINY_SPEC, "seeds": [0, 1, 2]}))
    assert cli("compare", "--spec", path, "--threads", "1", "--out", tmp_path / "whole") == 0
    whole = json.loads((tmp_path / "whole" / "results.json").read_text())["runs"]
    assert len(whole) == 3

    out, train, calls = tmp_path / "interrupted", bmojo.compare.run_one, []

    def interrupt_the_second(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return train(*args, **kwargs)

    monkeypatch.setattr(bmojo.compare, "run_one", interrupt_the_second)
    capsys.readouterr()
    assert cli("compare", "--spec", path, "--threads", "1", "--out", out) == 130
    err = capsys.readouterr().err
    assert "interrupted; 1 finished run(s) are recorded" in err and "--resume" in err
    recorded = [json.loads(line) for line in (out / "runs.jsonl").read_text().splitlines()]
    assert _without_timing(recorded) == _without_timing(whole[:1])
    assert _without_timing(json.loads((out / "results.json").read_text())["runs"]) == _without_timing(whole[:1])
    with open(out / "runs.jsonl", "a") as f:
        f.write('{"task": "mqar", "task_se')  # a line cut short by the interruption

    assert cli("compare", "--spec", path, "--threads", "1", "--out", out, "--resume") == 0
    assert len(calls) == 4  # the 2nd and 3rd runs only
    resumed = json.loads((out / "results.json").read_text())["runs"]
    assert _without_timing(resumed) == _without_timing(whole)
    assert (out / "runs.jsonl").read_text().count("\n") == 3 and list(out.glob("*.png"))
    monkeypatch.setattr(bmojo.compare, "run_one", _no_training)  # a finished folder: --resume runs nothing
    assert cli("compare", "--spec", path, "--threads", "1", "--out", out, "--resume") == 0


def test_parallel_processes_give_the_records_of_a_sequential_run(tmp_path, one_thread):
    """--jobs 2 (two one-thread processes) and one sequential one-thread process: the same accuracies, losses and
    steps for every run (same seeds)."""
    spec = CompareSpec(**{**TINY_SPEC, "presets": ["swa", "mamba"], "seeds": [0, 1],
                          "model": {**TINY_SPEC["model"], "ssm_state_size": 8, "ssm_head_dim": 16}})
    sequential = run_compare(spec, tmp_path / "seq", progress=False)
    parallel = run_compare(spec, tmp_path / "par", progress=False, jobs=2)
    fields = ("preset", "seed", "accuracy", "final_loss", "steps")
    assert [[r[k] if k != "final_loss" else r["sweep"][0][k] for k in fields] for r in parallel] == \
        [[r[k] if k != "final_loss" else r["sweep"][0][k] for k in fields] for r in sequential]
    assert len({r["preset"] for r in parallel}) == 2 and len(parallel) == 4


def test_jobs_are_checked_and_adjusted(tmp_path, capsys):
    spec = CompareSpec(**TINY_SPEC)
    with pytest.raises(ValueError, match="--jobs must be >= 1, got 0"):
        run_compare(spec, tmp_path / "a", progress=False, jobs=0)
    assert not (tmp_path / "a").exists()  # checked before anything is written
    run_compare(spec, tmp_path / "b", progress=False, jobs=3)
    assert "--jobs 3 but 1 run(s) to do: using 1 process(es)" in capsys.readouterr().err


def test_budget_fitting_is_the_same_for_every_seed_and_reports_what_a_skipped_preset_needs(tmp_path):
    spec = CompareSpec(**{**TINY_SPEC, "presets": ["swa", "bmojo"], "budgets": [12.0], "seeds": [0, 1],
                          "model": {**TINY_SPEC["model"], "ssm_state_size": 8, "ssm_head_dim": 16,
                                    "num_fading_tokens": 2, "num_eidetic_tokens": 2}})
    records = run_compare(spec, tmp_path, progress=False)
    swa = [r for r in records if r["preset"] == "swa"]
    assert len(swa) == 2 and swa[0]["knob"] == swa[1]["knob"] and swa[0]["memory_tokens"] <= 12
    smallest = min(memory_of(c, 32)[1] for c in budget_candidates("bmojo", {**spec.model, "vocab_size": 64}))
    assert smallest > 12
    for r in records:
        if r["preset"] == "bmojo":
            assert r["skipped"] == (f"its smallest setting needs {smallest:.1f} token-equivalents, more than the "
                                    "budget 12")
    assert f"skipped: its smallest setting needs {smallest:.1f}" in (tmp_path / "results.md").read_text()


def test_the_sweep_is_decided_on_the_validation_split_never_the_test_split(tmp_path, monkeypatch):
    """Of two learning rates, the one best on validation is kept, with its test accuracy, although the other one
    scores higher on the test split."""
    import bmojo.compare

    scores = {1e-4: (0.9, 0.5), 3e-2: (0.5, 0.9)}  # lr -> (validation, test) accuracy

    def fake_run(config, train, val, test, spec, seed, lr, wd, device, time_budget):
        v, t = scores[lr]
        return {"val_accuracy": v, "accuracy": t, "steps": 1, "train_seconds": 0.0, "stopped": "max_steps",
                "final_loss": 1.0}, BMojoForCausalLM(config)

    monkeypatch.setattr(bmojo.compare, "run_one", fake_run)
    (record,) = run_compare(CompareSpec(**{**TINY_SPEC, "lrs": [1e-4, 3e-2]}), tmp_path, progress=False)
    assert (record["lr"], record["val_accuracy"], record["accuracy"]) == (1e-4, 0.9, 0.5)


def test_preset_lrs_replace_the_sweep_of_their_row_only(tmp_path, monkeypatch):
    """A row named in `preset_lrs` sweeps its own learning rates (the best on validation kept); the others sweep
    `lrs`; the time budget of a run is split over its own row's sweep."""
    import bmojo.compare

    calls = []

    def fake_run(config, train, val, test, spec, seed, lr, wd, device, time_budget):
        calls.append((config.layer_pattern[0], lr, time_budget))
        return {"val_accuracy": lr, "accuracy": 0.5, "steps": 1, "train_seconds": 0.0, "stopped": "max_steps",
                "final_loss": 1.0}, BMojoForCausalLM(config)

    monkeypatch.setattr(bmojo.compare, "run_one", fake_run)
    spec = CompareSpec(**{**TINY_SPEC, "presets": ["mamba", "swa"], "lrs": [1e-3],
                          "preset_lrs": {"mamba": [1e-3, 3e-3]}, "time_budget_s": 1000.0})
    mamba, swa = run_compare(spec, tmp_path, progress=False)
    assert [(kind, lr) for kind, lr, _ in calls] == [("ssm", 1e-3), ("ssm", 3e-3), ("swa", 1e-3)]
    assert (mamba["lr"], swa["lr"]) == (3e-3, 1e-3)
    assert [r["lr"] for r in mamba["sweep"]] == [1e-3, 3e-3]
    # mamba, the first of 2 runs: half the 1000 s, split over its 2 rates; swa: what is left, about 1000 s
    assert [budget for _, _, budget in calls] == pytest.approx([250, 250, 1000], abs=5)
    table = (tmp_path / "results.md").read_text()
    mamba_row, swa_row = (next(line for line in table.splitlines() if f"| {p} |" in line) for p in ("mamba", "swa"))
    assert "| 0.003 | 1 |" in mamba_row and "| 0.001 | 1 |" in swa_row  # the rate each row trained at


def test_a_jobs_worker_budget_shares_what_is_left_of_the_time(monkeypatch):
    """--jobs: each run, as it starts, gets (time left) x (processes) / (runs not started), at most the time left."""
    import multiprocessing
    import time

    import bmojo.compare

    started = multiprocessing.get_context("spawn").Value("i", 0)
    monkeypatch.setattr(bmojo.compare, "_WORKER", (started, time.time() + 100, 4, 2))
    spec = CompareSpec(**{**TINY_SPEC, "lrs": [1e-3, 2e-3]})  # two sweep entries share a run's budget
    budgets = [bmojo.compare._worker_time_budget(spec, "swa") for _ in range(4)]
    assert budgets == pytest.approx([100 * 2 / 4 / 2, 100 * 2 / 3 / 2, 100 / 2, 100 / 2], abs=0.1)
    assert started.value == 4
    monkeypatch.setattr(bmojo.compare, "_WORKER", (started, None, 4, 2))
    assert bmojo.compare._worker_time_budget(spec, "swa") is None  # no --time-budget


def test_variants_and_accuracy_by_length(tmp_path, png_signature):
    """A variant is a preset with config overrides, run as a row of its own; eval_lengths measures the trained model
    on the task made longer (the test split's seed), tabled and plotted."""
    spec = CompareSpec(
        tasks=[dict(task="long_recall", vocab_size=64, seq_len=32, num_kv_pairs=2)],
        presets=["bmojo", "bmojo_store"],
        variants={"bmojo_store": {"preset": "bmojo", "num_retrieved_tokens": 3}},
        budgets=[], seeds=[0],
        model=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, window_size=8, ssm_state_size=8,
                   ssm_head_dim=16, ssm_chunk_size=8, num_fading_tokens=2, num_eidetic_tokens=2),
        train=dict(max_steps=2, batch_size=8), num_train=64, num_test=8, eval_lengths=[32, 96],
    )
    records = run_compare(spec, tmp_path, progress=False, save_models=True)
    by_row = {r["preset"]: r for r in records}
    assert set(by_row) == {"bmojo", "bmojo_store"}
    store = BMojoForCausalLM.from_pretrained(by_row["bmojo_store"]["model_dir"])
    assert store.config.num_retrieved_tokens == 3 and store.config.layer_pattern == ["bmojo"]
    assert BMojoForCausalLM.from_pretrained(by_row["bmojo"]["model_dir"]).config.num_retrieved_tokens == 0
    for r in records:
        assert set(r["accuracy_by_length"]) == {"32", "96"}
        assert r["accuracy_by_length"]["32"] == r["accuracy"]  # the training length: the test split itself
    table = (tmp_path / "results.md").read_text()
    assert "## Test accuracy by context length" in table and "L = 96" in table and "| bmojo_store |" in table
    png = tmp_path / "recall_vs_length_long_recall__seq_len_32__num_kv_pairs_2.png"
    assert png.read_bytes()[:8] == png_signature


def test_second_stage_trains_the_chosen_model_on_at_the_longer_length(tmp_path):
    """second_stage: the first stage is the one-stage run's (same sweep, same test accuracy before); then the saved
    model equals that run's model trained on by hand on the task made longer, data from seed + SECOND_STAGE_SEED,
    and the record's accuracies are that model's."""
    from bmojo import tasks
    from bmojo.compare import SECOND_STAGE_SEED, _TaskDataset, evaluate_accuracy
    from bmojo.training import TrainConfig, Trainer

    one = CompareSpec(
        tasks=[dict(task="long_recall", vocab_size=64, seq_len=32, num_kv_pairs=2, random_lead=True)],
        presets=["bmojo_store"], variants={"bmojo_store": {"preset": "bmojo", "num_retrieved_tokens": 2}},
        budgets=[], seeds=[1],
        model=dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, window_size=8, ssm_state_size=8,
                   ssm_head_dim=16, ssm_chunk_size=8, num_fading_tokens=2, num_eidetic_tokens=2),
        train=dict(max_steps=2, batch_size=8), num_train=64, num_test=8, num_val=8, eval_lengths=[32, 64],
    )
    two = dataclasses.replace(one, second_stage={"seq_len": 64, "max_steps": 3, "lr": 5e-4, "num_train": 16})
    (first,) = run_compare(one, tmp_path / "one", progress=False, save_models=True)
    (second,) = run_compare(two, tmp_path / "two", progress=False, save_models=True)
    assert _without_timing(second["sweep"]) == _without_timing(first["sweep"])
    assert second["accuracy_before_second_stage"] == first["accuracy"]
    stage = second["second_stage"]
    assert (stage["seq_len"], stage["lr"], stage["steps"]) == (64, 5e-4, 3)

    model = BMojoForCausalLM.from_pretrained(first["model_dir"])
    settings = {**one.tasks[0], "seq_len": 64}
    del settings["task"]
    train = tasks.train_test_split("long_recall", 16, 1, 1 + SECOND_STAGE_SEED, **settings)[0]
    val = tasks.validation_split("long_recall", 8, 1 + SECOND_STAGE_SEED, **settings)
    cfg = TrainConfig(max_steps=3, batch_size=8, lr=5e-4, weight_decay=0.1, seed=1, cpu=True, progress=False)
    Trainer(model, _TaskDataset(*train), cfg, evaluate=lambda m: {"accuracy": evaluate_accuracy(m, *val)}).fit()
    saved = BMojoForCausalLM.from_pretrained(second["model_dir"])
    theirs = saved.state_dict()
    assert list(theirs) == list(model.state_dict())
    for name, mine in model.state_dict().items():
        torch.testing.assert_close(theirs[name], mine, rtol=0, atol=0, msg=name)
    test = tasks.train_test_split("long_recall", 1, 8, 1, **settings)[1]
    assert second["accuracy_by_length"]["64"] == evaluate_accuracy(model, *test)
    assert stage["val_accuracy"] == evaluate_accuracy(model, *val)
    assert json.loads((tmp_path / "two" / "models" / Path(second["model_dir"]).name / "task.json").read_text())[
        "second_stage"] == stage
    assert second["accuracy"] == evaluate_accuracy(model, *tasks.train_test_split(
        "long_recall", 1, 8, 1, **{**settings, "seq_len": 32})[1])
    assert "| 2 + 3 at L 64 |" in (tmp_path / "two" / "results.md").read_text()
    too_short = dataclasses.replace(two, second_stage={"seq_len": 6})
    with pytest.raises(ValueError, match="second_stage: task 'long_recall' at seq_len=6: "):
        run_compare(too_short, tmp_path / "three", progress=False)
    assert not (tmp_path / "three").exists()  # refused before anything ran or was written


def test_a_folder_from_before_a_new_spec_field_resumes(tmp_path):
    """A results folder whose spec.json predates a spec field (second_stage) resumes under a spec that leaves the
    field at its default."""
    from bmojo.compare import open_out_dir

    spec = CompareSpec(**TINY_SPEC)
    open_out_dir(tmp_path, spec, resume=False)
    saved = json.loads((tmp_path / "spec.json").read_text())
    del saved["second_stage"]
    (tmp_path / "spec.json").write_text(json.dumps(saved))
    assert open_out_dir(tmp_path, spec, resume=True) == []
    with pytest.raises(ValueError, match="differs in second_stage"):
        open_out_dir(tmp_path, dataclasses.replace(spec, second_stage={"seq_len": 64}), resume=True)


@pytest.mark.parametrize("variants, message", [
    ({"big": {"hidden_size": 64}}, "variant 'big' needs a 'preset'"),
    ({"swa": {"preset": "swa"}}, "variant 'swa' has a preset's name"),
    ({"x": {"preset": "bmojo", "num_retrived_tokens": 2}}, "variant 'x': unknown BMojoConfig field 'num_retrived_"),
])
def test_bad_variants_are_refused(variants, message):
    spec = dataclasses.replace(SPECS["long"], variants=variants, presets=["swa"])
    with pytest.raises(ValueError, match=message):
        spec.check()


def test_standard_600_experiment_is_the_standard_preset_trained_as_long_as_quick():
    """experiments/standard_600.toml (docs/recall.md, "standard"): the standard preset's tasks, budgets, seeds and
    model (with the SSD chunk of its measurements, 16), with the 600-step quick spec's training instead of 250."""
    standard = SPECS["standard"]
    expected = dataclasses.replace(standard, train=quick_600().train,
                                   model={**standard.model, "ssm_chunk_size": 16})
    assert CompareSpec.from_file(EXPERIMENTS / "standard_600.toml") == expected
