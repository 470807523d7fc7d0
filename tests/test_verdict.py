"""bmojo.verdict: the verdict on the paper's ordering from hand-made records (holds / fails / within noise), the
seed summary and the kv trend."""

import pytest

from bmojo.verdict import NOISE_FLOOR, compare_pair, full_windows, gap_trend, summarize, verdict_markdown, verdicts

TASK = dict(task="mqar", task_settings=dict(vocab_size=128, seq_len=64, num_kv_pairs=8))


def runs(accuracies: dict[str, list[float]], budget=64.0, task=TASK) -> list[dict]:
    """Records of `bmojo compare`: one per preset and seed (seeds 0, 1, ...)."""
    return [dict(**task, preset=preset, budget_tokens=budget, seed=seed, accuracy=acc, memory_tokens=budget - 1,
                 steps=600, stopped="max_steps")
            for preset, accs in accuracies.items() for seed, acc in enumerate(accs)]


def test_ordering_holds_when_every_seed_agrees():
    (v,) = verdicts(runs({"bmojo": [0.9, 0.8], "bmojo_f": [0.7, 0.6], "mamba": [0.3, 0.2], "hybrid": [0.4, 0.3],
                          "swa": [0.2, 0.25]}))
    assert v["ordering"] == "holds"
    assert v["bmojo_minus"]["mamba"] == pytest.approx({"mean": 0.6, "min": 0.6, "max": 0.6, "seeds": 2, "call": ">"})
    assert v["bmojo_minus"]["swa"]["call"] == ">" and v["bmojo_minus"]["swa"]["min"] == pytest.approx(0.55)


def test_ordering_fails_when_a_peer_beats_bmojo_f_on_every_seed():
    (v,) = verdicts(runs({"bmojo": [0.9, 0.8], "bmojo_f": [0.3, 0.2], "mamba": [0.5, 0.4]}))
    assert v["ordering"] == "fails" and v["checks"]["bmojo_f > mamba"]["call"] == "<"


def test_ordering_fails_when_bmojo_trails_bmojo_f():
    (v,) = verdicts(runs({"bmojo": [0.5, 0.5], "bmojo_f": [0.7, 0.6], "swa": [0.1, 0.1]}))
    assert v["ordering"] == "fails" and v["checks"]["bmojo >= bmojo_f"]["call"] == "<"


def test_ordering_is_within_noise_when_seeds_disagree_or_differences_are_tiny():
    mixed = verdicts(runs({"bmojo": [0.9, 0.8], "bmojo_f": [0.6, 0.3], "mamba": [0.5, 0.4]}))[0]
    assert mixed["ordering"] == "within noise" and mixed["checks"]["bmojo_f > mamba"]["call"] == "~"
    tiny = compare_pair({0: 0.5, 1: 0.5}, {0: 0.5 - NOISE_FLOOR / 2, 1: 0.5 - NOISE_FLOOR / 4})
    assert tiny["call"] == "~" and tiny["min"] > 0  # ahead on every seed, but by less than the noise floor
    assert compare_pair({0: 0.9}, {0: 0.1})["call"] == "~"  # one seed: no spread, never called


def test_ordering_needs_bmojo_f_and_a_peer():
    assert verdicts(runs({"bmojo": [0.9], "mamba": [0.1]}))[0]["ordering"] == "n/a"
    assert verdicts(runs({"mamba": [0.1]})) == []  # no bmojo run: no verdict


def test_summary_gives_mean_min_max_and_flags_time_stops():
    records = runs({"bmojo": [0.9, 0.7, 0.8]})
    records[1]["stopped"] = "time_budget"
    records.append(dict(**TASK, preset="swa", budget_tokens=64.0, seed=0, skipped="needs 80.0"))
    bmojo, swa = summarize(records)
    assert bmojo["mean"] == pytest.approx(0.8) and (bmojo["min"], bmojo["max"]) == (0.7, 0.9)
    assert bmojo["seeds"] == [0, 1, 2] and bmojo["time_stopped"] == 1
    assert swa == {"task_label": "mqar (seq_len=64, num_kv_pairs=8)", "budget_tokens": 64.0, "preset": "swa",
                   "seeds": [0], "skipped": "needs 80.0"}


def test_tasks_that_differ_in_any_setting_get_their_own_rows_and_labels():
    """Two variants of one task that differ only in a setting the label does not always show (here long_recall's
    show_answers, set on one of them) are two rows, each label naming it; settings common to every run stay out."""
    base = dict(task="long_recall", task_settings=dict(vocab_size=256, seq_len=32, num_kv_pairs=4))
    hidden = dict(task="long_recall", task_settings={**base["task_settings"], "show_answers": False})
    records = runs({"bmojo": [0.5, 0.6]}, task=base) + runs({"bmojo": [0.3, 0.2]}, task=hidden)
    shown, hidden_row = summarize(records)
    assert shown["task_label"] == "long_recall (seq_len=32, num_kv_pairs=4)" and shown["mean"] == pytest.approx(0.55)
    assert hidden_row["task_label"] == "long_recall (seq_len=32, num_kv_pairs=4, show_answers=False)"
    assert hidden_row["mean"] == pytest.approx(0.25)
    assert [v["task_label"] for v in verdicts(records)] == [shown["task_label"], hidden_row["task_label"]]


def test_gap_trend_reads_bmojo_minus_mamba_over_kv():
    kv4 = dict(task="mqar", task_settings=dict(vocab_size=128, seq_len=64, num_kv_pairs=4))
    records = runs({"bmojo": [0.9, 0.9], "mamba": [0.8, 0.8]}, task=kv4) + runs({"bmojo": [0.7, 0.7],
                                                                                  "mamba": [0.3, 0.3]})
    assert gap_trend(verdicts(records)) == [
        "- budget 64: bmojo - mamba +0.100 (kv 4) -> +0.400 (kv 8): grows with kv"]
    assert any("grows with kv" in line for line in verdict_markdown(records))


def test_the_verdict_says_where_the_window_covers_the_sequence():
    """A swa run whose fitted window reaches the task's length (the setting or the generator's default) is named, once
    per (task, budget), under the verdict; a shorter window, another preset's window and a skipped run are not."""
    seq_len = TASK["task_settings"]["seq_len"]
    covering = runs({"bmojo": [0.9, 0.8], "swa": [0.9, 0.9]}, budget=72.0)
    for r in covering:
        r["knob"] = {"window_size": seq_len}
    default_length = dict(task="in_context_recall", task_settings=dict(vocab_size=16))  # seq_len 128 by default
    covering += [{**r, "knob": {"window_size": 128}} for r in runs({"swa": [0.5]}, task=default_length)]
    not_covering = [{**r, "knob": {"window_size": seq_len - 1}} for r in runs({"swa": [0.5]})]
    not_covering += [{**r, "knob": {"window_size": 127}} for r in runs({"swa": [0.5]}, task=default_length)]
    not_covering += [{**r, "knob": {"window_size": 999}} for r in runs({"bmojo_f": [0.5]})]
    not_covering += [dict(**TASK, preset="swa", budget_tokens=8.0, seed=0, skipped="needs 9")]
    expected = [f"- mqar (seq_len={seq_len}, num_kv_pairs=8), budget 72: window {seq_len} >= L = {seq_len}",
                "- in_context_recall, budget 64: window 128 >= L = 128"]
    assert full_windows(covering + not_covering) == expected
    assert full_windows(not_covering) == []
    lines = verdict_markdown(covering + not_covering)
    assert lines[-3:] == ["Where the sliding window covers the whole sequence, `swa` is full attention there:",
                          *expected]
