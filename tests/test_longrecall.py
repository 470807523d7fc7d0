"""bmojo.longrecall (`bmojo longrecall`): reading task examples through the decoding cache in pieces gives the
parallel forward's accuracy; the command writes a row per model and store backend (the faiss backend probing every
list agrees with the exact one, search recall 1); bad input is refused with a message."""

import json
import weakref
from concurrent.futures import Future

import pytest
import torch

import bmojo
from bmojo import tasks
from bmojo.accounting import stored_bytes_per_token
from bmojo.longrecall import check_memory, count_right, read_batches, read_through_cache
from bmojo.records import read_records

SETTINGS = dict(vocab_size=32, seq_len=24, num_kv_pairs=3)
TINY = dict(vocab_size=32, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
            window_size=8, ssm_state_size=8, ssm_head_dim=16, intermediate_size=48)


def predict_through_cache(model, inputs, piece, batch=None):
    """Greedy predictions (n, L) of `read_through_cache`, and the first batch's cache bytes."""
    preds, sizes = torch.full_like(inputs, -1), None
    for rows, batch_preds, batch_sizes in read_through_cache(model, inputs, piece, batch):
        preds[rows], sizes = batch_preds, sizes or batch_sizes
    return preds, sizes


def save_model(folder, preset, **overrides):
    torch.manual_seed(0)
    config = bmojo.BMojoConfig.from_preset(preset, **TINY, **overrides)
    bmojo.BMojoForCausalLM(config).save_pretrained(folder)
    (folder / "task.json").write_text(json.dumps({"task": "long_recall", "settings": SETTINGS, "seed": 0,
                                                  "preset": f"{preset}{'_store' if config.stores_tokens else ''}"}))
    return folder


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    root = tmp_path_factory.mktemp("longrecall")
    return (save_model(root / "store", "bmojo", num_fading_tokens=2, num_eidetic_tokens=2, num_retrieved_tokens=4),
            save_model(root / "swa", "swa"))


def test_reading_through_the_cache_equals_the_parallel_forward(saved):
    model = bmojo.BMojoForCausalLM.from_pretrained(saved[0]).eval()
    _, (inputs, targets) = tasks.train_test_split("long_recall", 1, 16, 0, **{**SETTINGS, "seq_len": 100})
    preds, sizes = predict_through_cache(model, inputs, piece=13)  # pieces across chunk edges
    with torch.no_grad():
        assert torch.equal(preds, model(inputs).logits.argmax(-1))
    scored = targets != -100
    assert count_right(preds, targets) == (int((preds == targets)[scored].sum()), int(scored.sum()))
    assert sizes["stored_bytes"] > 0 and sizes["working_bytes"] > 0


def test_reading_in_batches_gives_the_same_predictions_and_one_batchs_bytes(saved, monkeypatch, tmp_path):
    """Rows never interact: 7 examples read 3 at a time (batches of 3, 3, 1) predict what one batch of 7 predicts,
    and a batch's cache is gone once the next is in use; the bytes reported are the first batch's, and the estimate
    of stored bytes is what a cache stores per token. Each batch's counts reach the journal and the log as it ends;
    given an earlier run's first batches, only the rest is read."""
    model = bmojo.BMojoForCausalLM.from_pretrained(saved[0]).eval()
    _, (inputs, targets) = tasks.train_test_split("long_recall", 1, 7, 0, **{**SETTINGS, "seq_len": 100})
    whole, whole_sizes = predict_through_cache(model, inputs, piece=32)
    made, new_cache = [], model.new_cache

    def tracked_cache(batch_size):
        assert all(ref() is None for ref in made), "an earlier batch's cache is still held"
        cache = new_cache(batch_size)
        made.append(weakref.ref(cache))
        return cache

    monkeypatch.setattr(model, "new_cache", tracked_cache)
    batched, sizes = predict_through_cache(model, inputs, piece=32, batch=3)
    assert len(made) == 3 and torch.equal(batched, whole)
    assert sizes["stored_bytes"] * 7 == whole_sizes["stored_bytes"] * 3  # bytes per row: the first batch holds 3
    assert sizes["working_bytes"] * 7 == whole_sizes["working_bytes"] * 3
    journal, lines = tmp_path / "batches.jsonl", []
    batches = read_batches(model, inputs, targets, 32, 3, False, {"k": 1}, [], journal, lines.append)
    running = [count_right(whole[:n], targets[:n]) for n in (3, 6, 7)]
    assert [line.split(" right")[0] for line in lines] == [f"rows {n}/7: {c}/{s}" for n, (c, s) in
                                                           zip((3, 6, 7), running, strict=True)]
    assert [(b["rows"], b["correct"], b["scored"]) for b in batches] == [
        (3, *running[0]), (3, running[1][0] - running[0][0], running[1][1] - running[0][1]),
        (1, running[2][0] - running[1][0], running[2][1] - running[1][1])]
    assert read_records(journal) == batches  # each batch on disk as it ended
    # an earlier run's first two batches are kept and only the rest is read: one more cache, the same counts
    made.clear()
    again = read_batches(model, inputs, targets, 32, 3, False, {"k": 1}, batches[:2], None)
    assert len(made) == 1 and [b["correct"] for b in again] == [b["correct"] for b in batches]
    with pytest.raises(ValueError, match=r"hold \[3, 1\] rows, not the first batches of 7 examples read 3 at a time"):
        read_batches(model, inputs, targets, 32, 3, False, {"k": 1}, [batches[0], batches[2]], None)
    cache = new_cache(3)
    with torch.no_grad():
        model(inputs[:3], cache=cache)
    slots = [sum(block.pos.shape[1] for block in s.store.blocks) for s in cache._states if s.store is not None]
    assert len(slots) == 2 and slots[0] == slots[1] > 0  # both layers store every token that left the window
    assert sizes["stored_bytes"] == cache.stored_nbytes == 3 * slots[0] * stored_bytes_per_token(model.config, None)[0]


def test_memory_check_names_what_fits_and_steps_aside_where_the_store_is_bounded(saved, monkeypatch):
    """The tiny store: 2 layers x (2 x 2 kv heads x 8 x 4 bytes + 8) = 272 bytes per token, at its merge peak 408;
    the faiss indexes 2 x 2 x (8 x 4 + 8) = 160 more. Against a machine of 1 GB (900 MB usable)."""
    config = bmojo.BMojoConfig.from_pretrained(saved[0])
    assert stored_bytes_per_token(config, "faiss") == (272, 160) and stored_bytes_per_token(config, "exact") == (272, 0)
    monkeypatch.setattr("bmojo.longrecall.os.sysconf", {"SC_PAGE_SIZE": 1000, "SC_PHYS_PAGES": 10**6}.__getitem__)
    check_memory(config, "faiss", 10**6, 1, "m")  # 0.57 GB
    with pytest.raises(ValueError, match=r"m: 2 examples of 1,000,000 tokens at once would hold about 1.1 GB \(0.57 "
                       r"GB per example: the keys and values of every storing layer at their merge peak and the faiss "
                       r"indexes\), more than 90% of this machine's 1.0 GB: pass --batch 1 \(about 0.6 GB\)"):
        check_memory(config, "faiss", 10**6, 2, "m")
    with pytest.raises(ValueError, match=r"no batch fits: read a shorter length or a float16 store \(--variant "
                       r"half:store_dtype=float16\)"):
        check_memory(config, "exact", 3 * 10**6, 1, "m")
    half = bmojo.BMojoConfig.from_pretrained(saved[0], store_dtype="float16")
    with pytest.raises(ValueError, match=r"no batch fits: read a shorter length$"):
        check_memory(half, "exact", 6 * 10**6, 1, "m")
    with pytest.raises(ValueError, match=r"m: 2 examples of 1,000,000 tokens at once \(1 in each of 2 processes\) "
                       r"would hold about 1.1 GB .* no batch fits: read a shorter length or a float16 store "
                       r"\(--variant half:store_dtype=float16\) or pass fewer --jobs"):
        check_memory(config, "faiss", 10**6, 1, "m", jobs=2)
    with pytest.raises(ValueError, match=r"m: 6 examples .* \(3 in each of 2 processes\) .*: pass --batch 2 "
                       r"\(about 0.8 GB\)"):
        check_memory(config, "exact", 5 * 10**5, 3, "m", jobs=2)  # 0.204 GB per example: 4 fit, 2 per process
    # 0.286 GB per example, 3 fit: one batch of 4 does not, and no smaller batch does with 4 --jobs (2 x 2, 4 x 1)
    with pytest.raises(ValueError, match=r"m: 4 examples .* at once would hold .*: no batch fits: .* fewer --jobs"):
        check_memory(config, "exact", 7 * 10**5, 4, "m", jobs=4, examples=4)
    check_memory(config, "exact", 7 * 10**5, 3, "m", jobs=1, examples=4)  # one process: a batch of 3 fits
    for bounded in (dict(store_horizon=64), dict(store_regime_threshold=2.0), dict(store_write="evicted")):
        check_memory(bmojo.BMojoConfig.from_pretrained(saved[0], **bounded), "faiss", 10**9, 20, "m")  # not checked
    def unknown(name):
        raise ValueError(f"unrecognized configuration name {name!r}")  # what os.sysconf raises for a missing name

    monkeypatch.setattr("bmojo.longrecall.os.sysconf", unknown)  # memory unknown: not checked
    check_memory(config, "faiss", 10**9, 20, "m")


def test_command_rows_per_model_and_backend(saved, cli, tmp_path, monkeypatch, png_signature):
    """With every inverted list probed the faiss rows equal the exact rows, and their searches find every exact
    top-r slot (recall 1); a model without a store gets one row. (Blocks of at most 96 slots have at most
    isqrt(96) = 9 lists, all probed by the default store_nprobe of 32.)"""
    pytest.importorskip("faiss")
    monkeypatch.setattr("bmojo.ops.store.ANN_MIN_BLOCK", 16)
    out = tmp_path / "out"
    assert cli("longrecall", *saved, "--lengths", "40,96", "--backends", "exact,faiss", "--examples", "3",
               "--piece", "16", "--threads", "1", "--out", out) == 0
    records = json.loads((out / "results.json").read_text())
    rows = {(r["model"], r["backend"], r["length"]): r for r in records}
    assert set(rows) == {(m, b, n) for m, b in [("bmojo_store", "exact"), ("bmojo_store", "faiss"), ("swa", None)]
                         for n in (40, 96)}
    for n in (40, 96):
        assert rows["bmojo_store", "faiss", n]["accuracy"] == rows["bmojo_store", "exact", n]["accuracy"]
        assert rows["bmojo_store", "exact", n]["search_recall"] is None
    assert rows["bmojo_store", "faiss", 96]["search_recall"] == 1.0  # the store held >= 16 slots: indexes searched
    assert rows["swa", None, 96]["stored_bytes"] == 0
    working = {n: rows["bmojo_store", "exact", n]["working_bytes"] for n in (40, 96)}
    assert working[40] == working[96]  # the working memory does not grow; the store does
    assert rows["bmojo_store", "exact", 96]["stored_bytes"] > rows["bmojo_store", "exact", 40]["stored_bytes"]
    assert cli("longrecall", saved[0], "--lengths", "96", "--backends", "faiss", "--examples", "3", "--piece", "16",
               "--no-search-recall", "--threads", "1", "--out", tmp_path / "fast") == 0
    (fast,) = json.loads((tmp_path / "fast" / "results.json").read_text())
    assert fast["search_recall"] is None and fast["accuracy"] == rows["bmojo_store", "faiss", 96]["accuracy"]
    table = (out / "results.md").read_text()
    assert "| bmojo_store (faiss) | " in table and "| swa | " in table
    swa = rows["swa", None, 96]
    assert swa["accuracy"] == swa["correct"] / swa["scored"] and swa["scored"] == 3 * SETTINGS["num_kv_pairs"]
    assert f"| swa | 96 | {swa['correct']} / {swa['scored']} | " in table  # the counts behind the accuracy
    assert (out / "recall_vs_length.png").read_bytes().startswith(png_signature)


def test_command_reads_another_task_with_a_row_per_variant(saved, cli, tmp_path):
    """`--task regime_recall --variant`: each variant is the model read with those storage-tier settings (the same
    accuracy as loading it with them), labelled by its name; a model without a store gets one row."""
    out = tmp_path / "out"
    assert cli("longrecall", *saved, "--lengths", "96", "--task", "regime_recall", "--task-set", "shift=true",
               "--variant", "keep", "--variant", "horizon:store_horizon=24", "--examples", "4", "--piece", "16",
               "--threads", "1", "--out", out) == 0
    records = json.loads((out / "results.json").read_text())
    assert [(r["model"], r["variant"], r["task"]) for r in records] == [
        ("bmojo_store", "keep", "regime_recall"), ("bmojo_store", "horizon", "regime_recall"),
        ("swa", None, "regime_recall")]
    settings = {**SETTINGS, "seq_len": 96, "shift": True}
    _, (inputs, targets) = tasks.train_test_split("regime_recall", 1, 4, 0, **settings)
    for record, overrides in zip(records[:2], [{}, dict(store_horizon=24)], strict=True):
        model = bmojo.BMojoForCausalLM.from_pretrained(saved[0], **overrides).eval()
        correct, scored = count_right(predict_through_cache(model, inputs, 16)[0], targets)
        assert (record["correct"], record["scored"], record["accuracy"]) == (correct, scored, correct / scored)
        assert record["overrides"] == overrides
    assert records[1]["stored_bytes"] < records[0]["stored_bytes"]  # the horizon forgot the oldest stored tokens
    assert "| bmojo_store horizon (exact) | " in (out / "results.md").read_text()


def test_variant_moves_the_eidetic_tokens_of_a_model_without_a_store(saved, cli, tmp_path):
    """`--variant edge:eidetic_position=edge` reads a B'MOJO model without a store again with its eidetic tokens at
    the chunk edge (a setting that holds no weights): a row each, the accuracy of loading it so."""
    plain = save_model(tmp_path / "plain", "bmojo", num_fading_tokens=2, num_eidetic_tokens=2)
    out = tmp_path / "out"
    assert cli("longrecall", plain, saved[1], "--lengths", "96", "--variant", "own", "--variant",
               "edge:eidetic_position=edge", "--examples", "4", "--piece", "16", "--threads", "1", "--out", out) == 0
    records = json.loads((out / "results.json").read_text())
    assert [(r["model"], r["variant"], r["overrides"]) for r in records] == [
        ("bmojo", "own", {}), ("bmojo", "edge", {"eidetic_position": "edge"}), ("swa", None, {})]
    _, (inputs, targets) = tasks.train_test_split("long_recall", 1, 4, 0, **{**SETTINGS, "seq_len": 96})
    for record, position in zip(records[:2], ["original", "edge"], strict=True):
        model = bmojo.BMojoForCausalLM.from_pretrained(plain, eidetic_position=position).eval()
        correct, scored = count_right(predict_through_cache(model, inputs, 16)[0], targets)
        assert (record["correct"], record["scored"], record["accuracy"]) == (correct, scored, correct / scored)
    assert "| bmojo edge | " in (out / "results.md").read_text()


def test_an_interrupted_run_resumes_from_its_finished_batches(saved, cli, cli_exit, tmp_path, capsys):
    """Each batch is journaled as it ends; `--resume` keeps the batches of the same reading (a damaged last line is
    read again) and reads only the rest, for the records of a run that was never interrupted; without --resume a
    folder that holds batches is refused."""
    args = ("longrecall", saved[0], "--lengths", "40", "--examples", "5", "--batch", "2", "--piece", "16",
            "--threads", "1")
    assert cli(*args, "--out", tmp_path / "whole") == 0
    assert "L=40: rows 4/5: " in capsys.readouterr().err  # the running count, unbuffered beside the bar
    lines = (tmp_path / "whole" / "batches.jsonl").read_text().splitlines()
    assert len(lines) == 3
    (tmp_path / "cut").mkdir()
    (tmp_path / "cut" / "batches.jsonl").write_text("\n".join(lines[:2]) + "\n" + lines[2][:30])  # died mid-line
    assert cli_exit(*args, "--out", tmp_path / "cut") == 2
    assert "holds the batches of a longrecall run (batches.jsonl): pass --resume" in capsys.readouterr().err
    assert cli(*args, "--out", tmp_path / "cut", "--resume") == 0
    assert "L=40: kept 2 batch(es) of 4 rows from " in capsys.readouterr().err
    (whole,), (resumed,) = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("whole", "cut"))
    assert (resumed["resumed_batches"], whole["resumed_batches"], resumed["batches"]) == (2, 0, 3)
    same = ("accuracy", "correct", "scored", "working_bytes", "stored_bytes")
    assert [resumed[k] for k in same] == [whole[k] for k in same]
    assert len(read_records(tmp_path / "cut" / "batches.jsonl")) == 3  # the damaged line dropped, the batch redone
    assert cli(*args, "--out", tmp_path / "whole", "--resume") == 0  # all done: nothing read, nothing journaled
    (again,) = json.loads((tmp_path / "whole" / "results.json").read_text())
    assert again["resumed_batches"] == 3 and [again[k] for k in same] == [whole[k] for k in same]
    assert (tmp_path / "whole" / "batches.jsonl").read_text().splitlines() == lines
    twice = ("longrecall", saved[0], "--lengths", "40,40", *args[4:])
    assert cli(*twice, "--out", tmp_path / "twice") == 0  # a reading asked for twice is read (and journaled) once
    first, second = json.loads((tmp_path / "twice" / "results.json").read_text())
    assert (first["resumed_batches"], second["resumed_batches"], second["correct"]) == (0, 3, whole["correct"])
    assert len(read_records(tmp_path / "twice" / "batches.jsonl")) == 3


def test_batches_that_end_out_of_order_are_journaled_in_order(saved, monkeypatch, tmp_path):
    """With --jobs the batches may end in any order: each is journaled (and logged) only once the ones before it have
    ended, so the journal is the one-process run's. Here the pool runs in this process and hands the results back in
    reverse order."""
    model = bmojo.BMojoForCausalLM.from_pretrained(saved[0]).eval()
    _, (inputs, targets) = tasks.train_test_split("long_recall", 1, 7, 0, **{**SETTINGS, "seq_len": 100})
    pools = []

    class InProcess:
        def __init__(self, workers, **options):
            pools.append(workers)

        def submit(self, fn, task):
            future = Future()
            future.set_result(fn(task))
            return future

        def shutdown(self, **options):
            pass

    monkeypatch.setattr("bmojo.longrecall.ProcessPoolExecutor", InProcess)
    monkeypatch.setattr("bmojo.longrecall.as_completed", lambda futures: reversed(futures))
    timeless = lambda entries: [{k: v for k, v in e.items() if k != "seconds"} for e in entries]  # noqa: E731
    lines_one, lines_two, journal = [], [], tmp_path / "batches.jsonl"
    one = read_batches(model, inputs, targets, 32, 2, False, {"k": 1}, [], None, lines_one.append)
    two = read_batches(model, inputs, targets, 32, 2, False, {"k": 1}, [], journal, lines_two.append, jobs=3,
                       load=(saved[0], None, {}))
    assert pools == [3] and timeless(two) == timeless(one) == timeless(read_records(journal)) and len(two) == 4
    assert [line.split(" right")[0] for line in lines_two] == [line.split(" right")[0] for line in lines_one]


def test_batches_read_side_by_side_equal_one_process(saved, cli, tmp_path, capsys):
    """--jobs 2: two one-thread processes read the batches; the records and the journal equal a one-process run's
    (but for the seconds), the journal in batch order, and --resume goes on from it the same way."""
    args = ("longrecall", *saved, "--lengths", "40,72", "--examples", "5", "--batch", "2", "--piece", "16",
            "--threads", "1")
    assert cli(*args, "--out", tmp_path / "one") == 0 and cli(*args, "--jobs", "2", "--out", tmp_path / "two") == 0
    assert "L=72: rows 5/5: " in capsys.readouterr().err
    timeless = lambda entries: [{k: v for k, v in e.items() if k != "seconds"} for e in entries]  # noqa: E731
    one, two = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("one", "two"))
    assert timeless(one) == timeless(two) and len(one) == 4
    journals = [read_records(tmp_path / d / "batches.jsonl") for d in ("one", "two")]
    assert timeless(journals[0]) == timeless(journals[1]) and len(journals[1]) == 12
    lines = (tmp_path / "two" / "batches.jsonl").read_text().splitlines()
    (tmp_path / "two" / "batches.jsonl").write_text("\n".join(lines[:4]) + "\n")  # cut after 4 of 12 batches
    assert cli(*args, "--jobs", "2", "--out", tmp_path / "two", "--resume") == 0
    again = json.loads((tmp_path / "two" / "results.json").read_text())
    assert timeless(journals[0]) == timeless(read_records(tmp_path / "two" / "batches.jsonl"))
    assert [r["resumed_batches"] for r in again] == [3, 1, 0, 0]
    assert [{k: v for k, v in r.items() if k not in ("seconds", "resumed_batches")} for r in again] == \
        [{k: v for k, v in r.items() if k not in ("seconds", "resumed_batches")} for r in one]


def test_search_recall_is_the_same_read_in_batches(saved, cli, tmp_path, monkeypatch):
    """The faiss search's recall counts each batch's own searches: read one example at a time, it is the recall of
    reading all at once (one list probed, by a --variant of store_nprobe: under 1, so a count carried over between
    batches would show)."""
    pytest.importorskip("faiss")
    monkeypatch.setattr("bmojo.ops.store.ANN_MIN_BLOCK", 16)
    args = ("longrecall", saved[0], "--lengths", "96", "--backends", "faiss", "--examples", "3", "--piece", "16",
            "--threads", "1", "--variant", "one:store_nprobe=1")
    assert cli(*args, "--out", tmp_path / "all") == 0 and cli(*args, "--batch", "1", "--out", tmp_path / "one") == 0
    (together,), (apart,) = (json.loads((tmp_path / d / "results.json").read_text()) for d in ("all", "one"))
    assert apart["batches"] == 3 and together["search_recall"] < 1
    assert apart["search_recall"] == pytest.approx(together["search_recall"], abs=1e-12)
    journal = read_records(tmp_path / "one" / "batches.jsonl")
    assert sum(b["search_found"] for b in journal) / sum(b["search_total"] for b in journal) == apart["search_recall"]


def test_bad_input_is_refused(saved, cli_exit, tmp_path, capsys):
    assert cli_exit("longrecall", saved[0], "--lengths", "64", "--backends", "hnsw", "--out", tmp_path) == 2
    assert "--backends 'hnsw': choose from exact, faiss" in capsys.readouterr().err
    (tmp_path / "bare").mkdir()
    assert cli_exit("longrecall", tmp_path / "bare", "--lengths", "64", "--out", tmp_path / "o") == 2
    assert "has no task.json: pass a model folder written by `bmojo compare --save-models`" in capsys.readouterr().err
    assert cli_exit("longrecall", saved[0], "--lengths", "0", "--out", tmp_path) == 2
    assert "every length must be >= 1" in capsys.readouterr().err
    wide = ("--variant", "wide:hidden_size=64")
    assert cli_exit("longrecall", saved[0], "--lengths", "64", *wide, "--out", tmp_path) == 2
    assert "'hidden_size=64' is not FIELD=VALUE with FIELD one of num_retrieved_tokens" in capsys.readouterr().err
    assert cli_exit("longrecall", saved[0], "--lengths", "64", "--task-set", "foo=1", "--out", tmp_path) == 2
    assert ("task 'long_recall' takes no setting foo (from the model's task.json or --task-set); its settings: "
            "vocab_size, seq_len, num_kv_pairs") in capsys.readouterr().err
    assert cli_exit("longrecall", saved[0], "--lengths", "64", "--task", "mqar", "--out", tmp_path) == 2
    assert "vocab_size must be > seq_len" in capsys.readouterr().err
    short = ("--variant", "h:store_horizon=3")
    assert cli_exit("longrecall", saved[0], "--lengths", "64", *short, "--out", tmp_path) == 2
    assert "store_horizon" in capsys.readouterr().err and not (tmp_path / "results.json").exists()
    assert cli_exit("longrecall", saved[0], "--lengths", "64", "--batch", "0", "--out", tmp_path) == 2
    assert "--examples, --piece, --jobs and --batch must be >= 1, got 20, 2048, 1 and 0" in capsys.readouterr().err
    assert cli_exit("longrecall", saved[0], "--lengths", "64", "--jobs", "0", "--out", tmp_path) == 2
    assert "--examples, --piece, --jobs and --batch must be >= 1, got 20, 2048, 0 and None" in capsys.readouterr().err


def test_a_store_larger_than_memory_is_refused_before_any_run(saved, cli_exit, tmp_path, capsys, monkeypatch):
    """20 examples x 10^6 tokens of the tiny store, 408 bytes per token at its merge peak: 8.2 GB at once against a
    machine of 5 GB; 11 examples fit (4.5 GB)."""
    sysconf = {"SC_PAGE_SIZE": 4096, "SC_PHYS_PAGES": 5 * 10**9 // 4096}
    monkeypatch.setattr("bmojo.longrecall.os.sysconf", sysconf.__getitem__)
    assert cli_exit("longrecall", saved[0], "--lengths", "1000000", "--out", tmp_path / "o") == 2
    assert ("store: 20 examples of 1,000,000 tokens at once would hold about 8.2 GB (0.41 GB per example: the keys and "
            "values of every storing layer at their merge peak), more than 90% of this machine's 5.0 GB: pass --batch "
            "11 (about 4.5 GB)") in capsys.readouterr().err
    assert not (tmp_path / "o" / "results.json").exists()
