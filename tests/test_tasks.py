"""Synthetic task generators: layouts, label consistency, RNG purity, registry, leakage, accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bmojo import tasks
from bmojo.tasks import (
    IGNORE_INDEX,
    TASKS,
    accuracy,
    check_leakage,
    fuzzy_recall,
    in_context_recall,
    induction_heads,
    long_recall,
    make_task,
    mqar,
    noisy_recall,
    regime_recall,
    selective_copying,
    task_vocab_size,
    train_test_split,
    validation_split,
)

SMALL = {
    "mqar": dict(vocab_size=256, seq_len=64, num_kv_pairs=8),
    "in_context_recall": dict(seq_len=64),
    "fuzzy_recall": dict(seq_len=64),
    "noisy_recall": dict(seq_len=64, frac_noise=0.4),
    "selective_copying": dict(seq_len=64, num_tokens_to_copy=8),
    "induction_heads": dict(vocab_size=16, seq_len=32),
    "long_recall": dict(vocab_size=64, seq_len=64, num_kv_pairs=4),
    "regime_recall": dict(vocab_size=64, seq_len=64, num_kv_pairs=4),
}


def np_pair(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[np.ndarray, np.ndarray]:
    return batch[0].numpy(), batch[1].numpy()


# ---------------------------------------------------------------------------------------- generic


@pytest.mark.parametrize("name", sorted(SMALL))
def test_shapes_dtype_determinism(name):
    settings = SMALL[name]
    x, y = make_task(name, num_examples=50, seed=3, **settings)
    assert x.shape == y.shape == (50, settings["seq_len"])
    assert x.dtype == y.dtype == torch.long
    vocab = task_vocab_size(name, **settings)
    assert 0 <= x.min() and x.max() < vocab
    labelled = y[y != IGNORE_INDEX]
    assert labelled.numel() > 0 and 0 <= labelled.min() and labelled.max() < vocab
    x2, y2 = make_task(name, num_examples=50, seed=3, **settings)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    x3, _ = make_task(name, num_examples=50, seed=4, **settings)
    assert not torch.equal(x, x3)


def test_generators_leave_global_rng_alone():
    torch.manual_seed(0)
    np.random.seed(0)
    expected_torch, expected_np = torch.rand(3), np.random.rand(3)
    torch.manual_seed(0)
    np.random.seed(0)
    for name, settings in SMALL.items():
        make_task(name, num_examples=4, seed=1, **settings)
    assert torch.equal(torch.rand(3), expected_torch)
    assert np.array_equal(np.random.rand(3), expected_np)


# ------------------------------------------------------------------------------------------- MQAR


@pytest.mark.parametrize("random_non_queries", [True, False])
def test_mqar_layout_and_labels(random_non_queries):
    v, length, kv = 256, 128, 16
    x, y = np_pair(mqar(v, length, kv, 300, seed=0, random_non_queries=random_non_queries))
    keys, values = x[:, 0 : 2 * kv : 2], x[:, 1 : 2 * kv : 2]
    assert ((keys >= 1) & (keys < v // 2)).all()
    assert ((values >= v // 2) & (values < v)).all()
    for row in (np.sort(keys, axis=1), np.sort(values, axis=1)):
        assert (row[:, 1:] != row[:, :-1]).all()  # distinct within each example
    assert ((y != IGNORE_INDEX).sum(axis=1) == kv).all()
    assert (y[:, : 2 * kv] == IGNORE_INDEX).all()
    for i in range(len(x)):
        bound = dict(zip(keys[i], values[i], strict=True))
        positions = np.flatnonzero(y[i] != IGNORE_INDEX)
        assert ((positions - 2 * kv) % 2 == 0).all()
        queried = x[i, positions]
        assert sorted(queried) == sorted(keys[i])  # every key queried exactly once
        assert [bound[k] for k in queried] == list(y[i, positions])
        filler = np.ones(length, dtype=bool)
        filler[: 2 * kv] = False
        filler[positions] = False
        if not random_non_queries:
            assert (x[i, filler] == 0).all()
    if random_non_queries:
        filler_tokens = x[:, 2 * kv :][y[:, 2 * kv :] == IGNORE_INDEX]
        assert (filler_tokens != 0).mean() > 0.95 and filler_tokens.max() >= v // 2


def test_mqar_gaps_follow_zoology_power_law():
    length, kv, n = 256, 16, 2000
    space = (length - 2 * kv) // 2

    def gaps(power_a: float) -> np.ndarray:
        _, y = np_pair(mqar(512, length, kv, n, seed=1, power_a=power_a))
        return (np.nonzero(y != IGNORE_INDEX)[1] - 2 * kv) // 2

    skewed, flat = gaps(0.01), gaps(1.0)
    assert skewed.min() >= 0 and skewed.max() < space
    uniform_median = (space - 1) / 2
    assert abs(np.median(flat) - uniform_median) < 0.1 * space
    assert np.median(skewed) < 0.4 * uniform_median
    # same marginals as Zoology's sampler: numpy choice without replacement, p(i) ∝ a i^(a-1)
    p = 0.01 * np.arange(1, space + 1) ** (0.01 - 1)
    rng = np.random.default_rng(0)
    reference = np.concatenate([rng.choice(space, kv, replace=False, p=p / p.sum()) for _ in range(n)])
    ours_hist = np.bincount(skewed, minlength=space) / skewed.size
    ref_hist = np.bincount(reference, minlength=space) / reference.size
    assert np.abs(ours_hist - ref_hist).max() < 0.01


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(vocab_size=8, seq_len=16, num_kv_pairs=4), "too small"),
        (dict(vocab_size=100, seq_len=33, num_kv_pairs=4), "even"),
        (dict(vocab_size=100, seq_len=30, num_kv_pairs=8), "4 \\* num_kv_pairs"),
        (dict(vocab_size=64, seq_len=64, num_kv_pairs=4), "vocab_size must be > seq_len"),
        (dict(vocab_size=64, seq_len=32, num_kv_pairs=0), "num_kv_pairs must be >= 1"),
        (dict(vocab_size=64, seq_len=32, num_kv_pairs=4, power_a=0.0), "power_a"),
        (dict(vocab_size=64, seq_len=32, num_kv_pairs=4, num_examples=0), "num_examples"),
    ],
)
def test_mqar_constraints(kwargs, message):
    kwargs = {"num_examples": 4, "seed": 0, **kwargs}
    with pytest.raises(ValueError, match=message):
        mqar(**kwargs)


# ------------------------------------------------------------------------------ in-context recall


@pytest.mark.parametrize(
    "vocab_size, noise_vocab_size, frac_noise", [(16, 0, 0.0), (32, 16, 0.2), (32, 16, 0.8)]
)
def test_in_context_recall_labels(vocab_size, noise_vocab_size, frac_noise):
    length, n = 128, 200
    x, y = np_pair(in_context_recall(vocab_size, length, n, 5, noise_vocab_size, frac_noise))
    clean = vocab_size - noise_vocab_size
    n_keys = clean // 2
    noise_pairs = 0
    assert (y[:, -1] == IGNORE_INDEX).all()
    assert ((y == IGNORE_INDEX) | ((y >= n_keys) & (y < clean))).all()  # only values are scored
    for i in range(n):
        bound: dict[int, int] = {}
        for t in range(0, length, 2):
            key, value = x[i, t], x[i, t + 1]
            if key >= clean:  # noise pair: both tokens noise, neither position scored
                assert t < length - 2 and value >= clean
                assert y[i, t] == y[i, t + 1] == IGNORE_INDEX
                noise_pairs += 1
                continue
            assert key < n_keys and n_keys <= value < clean
            assert y[i, t + 1] == IGNORE_INDEX
            if key in bound:
                assert value == bound[key] and y[i, t] == value
            else:
                assert y[i, t] == IGNORE_INDEX and t < length - 2  # the final key was shown before
                bound[key] = value
    context_pairs = n * (length // 2 - 1)
    assert abs(noise_pairs / context_pairs - frac_noise) < 0.05


def test_in_context_recall_training_labels_are_next_tokens():
    x_test, _ = in_context_recall(seq_len=64, num_examples=20, seed=2)
    x, y = in_context_recall(seq_len=64, num_examples=20, seed=2, is_training=True)
    assert torch.equal(x, x_test)
    assert torch.equal(y[:, :-1], x[:, 1:]) and (y[:, -1] == IGNORE_INDEX).all()


def test_noisy_recall_is_in_context_recall_with_noise():
    a = noisy_recall(32, 64, 10, 7, noise_vocab_size=16, frac_noise=0.6)
    b = in_context_recall(32, 64, 10, 7, noise_vocab_size=16, frac_noise=0.6)
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert (a[0] >= 16).any()


# ----------------------------------------------------------------------------------- fuzzy recall


def parse_fuzzy(raw: np.ndarray, vocab_size: int, noise_vocab_size: int) -> tuple[int, list, list]:
    """Split one unshifted stream into (pad count, [(key, value, start of value)], noise positions)."""
    n = vocab_size - 1 - noise_vocab_size
    n_keys = n // 2
    pad = int(np.argmax(raw != vocab_size - 1))
    assert (raw[pad:] != vocab_size - 1).all()
    pairs, noise, t = [], [], pad
    while t < len(raw):
        if raw[t] >= n:
            noise.append(t)
            t += 1
            continue
        start = t
        while t < len(raw) and raw[t] < n_keys:
            t += 1
        value_start = t
        while t < len(raw) and n_keys <= raw[t] < n:
            t += 1
        assert value_start > start and t > value_start, "every key is followed by a value"
        pairs.append((tuple(raw[start:value_start]), tuple(raw[value_start:t]), value_start))
    return pad, pairs, noise


@pytest.mark.parametrize("noise_vocab_size, frac_noise", [(0, 0.0), (6, 0.5)])
def test_fuzzy_recall_labels(noise_vocab_size, frac_noise):
    vocab, length, n, k_max, v_max = 16 + noise_vocab_size, 96, 150, 3, 3
    x, y = np_pair(fuzzy_recall(vocab, length, n, 11, k_max, v_max, noise_vocab_size, frac_noise))
    noise_tokens = 0
    for i in range(n):
        raw = np.append(x[i], y[i, -1])  # the final label is the stream's last token
        pad, pairs, noise = parse_fuzzy(raw, vocab, noise_vocab_size)
        assert pad >= 2
        expected = np.full(length + 1, IGNORE_INDEX)
        bound: dict[tuple, tuple] = {}
        for key, value, at in pairs:
            assert len(key) == k_max and len(set(key)) == k_max  # test keys: largest size, distinct tokens
            assert 1 <= len(value) <= v_max and len(set(value)) == len(value)
            if key in bound:
                assert bound[key] == value
                expected[at : at + len(value)] = value
            bound[key] = value
        assert expected[-1] != IGNORE_INDEX  # the final query repeats a presented key
        assert np.array_equal(y[i], expected[1:])  # noise, keys, first presentations: never scored
        noise_tokens += len(noise)
    assert (noise_tokens > 0) == (frac_noise > 0)


def test_fuzzy_recall_training_mode():
    x, y = np_pair(fuzzy_recall(seq_len=96, num_examples=100, seed=4, is_training=True))
    assert np.array_equal(y, np.append(x[:, 1:], y[:, -1:], axis=1))
    sizes = set()
    for i in range(len(x)):
        _, pairs, _ = parse_fuzzy(np.append(x[i], y[i, -1]), 16, 0)
        sizes |= {len(key) for key, _, _ in pairs}
        keys = [key for key, _, _ in pairs]
        assert keys[-1] in keys[:-1]
    assert sizes == {1, 2, 3}


# ------------------------------------------------------------------------- copying and induction


def test_selective_copying_layout():
    vocab, length, m, n = 16, 64, 8, 300
    x, y = np_pair(selective_copying(vocab, length, m, n, seed=0))
    blank, copy = vocab - 2, vocab - 1
    assert (x[:, length - m - 1] == copy).all() and ((x == copy).sum(axis=1) == 1).all()
    assert (x[:, length - m :] == blank).all()
    assert (y[:, : length - m] == IGNORE_INDEX).all()
    head = x[:, : length - m - 1]
    data_mask = head != blank
    assert (data_mask.sum(axis=1) == m).all()
    assert data_mask[:, -1].all()  # MAD: no blank between the last data token and the copy token
    data = head[data_mask].reshape(n, m)
    assert (data < blank).all()
    assert np.array_equal(y[:, length - m :], data)  # copy targets: the data tokens, in order
    first_positions = data_mask.argmax(axis=1)
    assert len(np.unique(first_positions)) > 5  # data tokens are spread at random


def test_induction_heads_layout():
    vocab, length, n = 16, 32, 300
    x, y = np_pair(induction_heads(vocab, length, n, seed=0))
    trigger = vocab - 1
    assert ((x == trigger).sum(axis=1) == 2).all() and (x[:, -1] == trigger).all()
    first = (x == trigger).argmax(axis=1)
    assert (first <= length - 3).all() and len(np.unique(first)) > 10
    assert ((y != IGNORE_INDEX).sum(axis=1) == 1).all()
    assert np.array_equal(y[:, -1], x[np.arange(n), first + 1])


@pytest.mark.parametrize(
    "generator, kwargs, message",
    [
        (in_context_recall, dict(seq_len=63), "even"),
        (in_context_recall, dict(frac_noise=1.0, noise_vocab_size=4, vocab_size=20), "frac_noise"),
        (in_context_recall, dict(frac_noise=0.3), "noise_vocab_size must be > 0"),
        (noisy_recall, dict(vocab_size=16, noise_vocab_size=15), ">= 2"),
        (fuzzy_recall, dict(vocab_size=6), "vocab too small"),
        (fuzzy_recall, dict(seq_len=17), "seq_len must be >= 3"),
        (selective_copying, dict(seq_len=33, num_tokens_to_copy=16), "seq_len must be >"),
        (selective_copying, dict(vocab_size=2), "vocab_size must be >= 3"),
        (induction_heads, dict(vocab_size=2, seq_len=16), "vocab_size must be >= 3"),
        (induction_heads, dict(vocab_size=16, seq_len=2), "seq_len must be >= 3"),
        (long_recall, dict(vocab_size=16, num_kv_pairs=5), "need num_kv_pairs <= vocab_size//4"),
        (long_recall, dict(seq_len=30, num_kv_pairs=8), "seq_len=30 too short: need >= 4 \\* num_kv_pairs = 32"),
        (regime_recall, dict(seq_len=80, num_kv_pairs=8), "seq_len=80 too short for num_kv_pairs=8.*seq_len >= 88"),
        (regime_recall, dict(vocab_size=4, num_kv_pairs=1), "vocab_size >= 8"),
    ],
)
def test_task_constraints(generator, kwargs, message):
    with pytest.raises(ValueError, match=message):
        generator(**{"num_examples": 4, "seed": 0, **kwargs})


# ------------------------------------------------------------------------ registry and helpers


def test_registry_and_make_task():
    assert set(TASKS) == set(SMALL)
    x, y = make_task("mqar", vocab_size=256, seq_len=64, num_kv_pairs=8, num_examples=5, seed=9)
    x2, y2 = mqar(256, 64, 8, 5, 9)
    assert torch.equal(x, x2) and torch.equal(y, y2)
    with pytest.raises(ValueError) as error:
        make_task("copying", num_examples=5, seed=0)
    assert all(name in str(error.value) for name in TASKS)


def test_task_vocab_size():
    assert task_vocab_size("noisy_recall") == 32
    assert task_vocab_size("selective_copying", vocab_size=64) == 64
    assert task_vocab_size("in_context_recall") == 16
    with pytest.raises(ValueError, match="vocab_size"):
        task_vocab_size("mqar")
    with pytest.raises(ValueError, match="valid names"):
        task_vocab_size("nope")


@pytest.mark.parametrize("name", sorted(SMALL))
def test_train_test_split_has_no_leakage(name):
    (train_x, train_y), (test_x, test_y) = train_test_split(name, 500, 200, 0, **SMALL[name])
    assert train_x.shape[0] == 500 and test_x.shape[0] == 200
    assert check_leakage(train_x, test_x) == 0
    assert check_leakage(train_x, train_x) == 500
    assert check_leakage(torch.cat([train_x[:7], test_x]), train_x) == 7
    assert ((test_y != IGNORE_INDEX).sum(axis=1) < test_y.shape[1] // 2).all()  # test labels sparse
    (again_x, _), _ = train_test_split(name, 500, 200, 0, **SMALL[name])
    assert torch.equal(again_x, train_x)


@pytest.mark.parametrize("name", ["mqar", "in_context_recall"])
def test_validation_split_is_a_third_disjoint_draw_and_leaves_train_and_test_unchanged(name):
    (train_x, _), (test_x, test_y) = train_test_split(name, 500, 200, 0, **SMALL[name])
    val_x, val_y = validation_split(name, 200, 0, **SMALL[name])
    assert check_leakage(train_x, val_x) == 0 and check_leakage(test_x, val_x) == 0
    assert not torch.equal(val_x, test_x) and (val_y == IGNORE_INDEX).float().mean() > 0.5  # evaluation labels
    seeds = np.random.SeedSequence(0).spawn(3)
    train_seed, test_seed = (int(s.generate_state(1)[0]) for s in seeds[:2])
    gen = {"mqar": mqar, "in_context_recall": in_context_recall}[name]
    extra = {} if name == "mqar" else {"is_training": False}
    assert torch.equal(test_x, gen(num_examples=200, seed=test_seed, **SMALL[name], **extra)[0])
    assert torch.equal(val_x, gen(num_examples=200, seed=int(seeds[2].generate_state(1)[0]), **SMALL[name],
                                  **extra)[0])


def test_train_split_uses_mad_training_labels():
    (train_x, train_y), (_, test_y) = train_test_split("in_context_recall", 20, 20, 1, seq_len=64)
    assert torch.equal(train_y[:, :-1], train_x[:, 1:])
    (_, masked_y), _ = train_test_split("in_context_recall", 20, 20, 1, seq_len=64, is_training=False)
    assert (masked_y == IGNORE_INDEX).float().mean() > 0.5


def test_accuracy_exact():
    labels = torch.tensor([[5, IGNORE_INDEX, 7], [IGNORE_INDEX, 3, IGNORE_INDEX]])
    predictions = torch.tensor([[5, 0, 1], [9, 3, 9]])  # unlabelled positions are wrong on purpose
    assert accuracy(predictions, labels) == pytest.approx(2 / 3)
    logits = torch.nn.functional.one_hot(predictions, num_classes=10).float()
    assert accuracy(logits, labels) == pytest.approx(2 / 3)
    assert isinstance(accuracy(logits, labels), float)
    with pytest.raises(ValueError, match="no labelled"):
        accuracy(predictions, torch.full_like(labels, IGNORE_INDEX))
    with pytest.raises(ValueError, match="match"):
        accuracy(predictions[:, :2], labels)


def test_sample_distinct_is_uniform_and_distinct():
    rng = np.random.default_rng(0)
    for n, k in [(4, 2), (4, 4)]:  # rejection path and permutation path
        draws = tasks._sample_distinct(rng, 24_000, n, k)
        ordered = np.sort(draws, axis=1)
        assert (ordered[:, 1:] != ordered[:, :-1]).all()
        counts = np.unique(draws[:, :2], axis=0, return_counts=True)[1]
        assert len(counts) == n * (n - 1) and counts.min() > 0.85 * counts.mean()


def test_long_recall_layout_and_labels():
    """Pairs first, filler from the top half of the vocabulary, every key queried once at the end, the target its value;
    a longer sequence only adds filler."""
    n, V = 6, 64
    x, y = np_pair(long_recall(V, 100, n, 50, seed=3))
    for row_x, row_y in zip(x, y, strict=True):
        keys, values = row_x[0 : 2 * n : 2], row_x[1 : 2 * n : 2]
        assert len(set(keys)) == n and keys.min() >= 1 and keys.max() <= V // 4
        assert values.min() > V // 4 and values.max() <= V // 2
        assert (row_x[2 * n : 100 - 2 * n] >= V // 2).all()  # filler
        queries, answers = row_x[100 - 2 * n :: 2], row_x[100 - 2 * n + 1 :: 2]
        assert sorted(queries) == sorted(keys)
        assert all(dict(zip(keys, values, strict=True))[q] == a for q, a in zip(queries, answers, strict=True))
        scored = np.flatnonzero(row_y != IGNORE_INDEX)
        assert list(scored) == list(range(100 - 2 * n, 100, 2)) and (row_y[scored] == answers).all()
    long_x, _ = np_pair(long_recall(V, 400, n, 50, seed=3))
    assert (long_x[:, : 2 * n] == x[:, : 2 * n]).all()  # the same pairs, further from their queries


def test_long_recall_without_answers_asks_the_keys_last_and_never_shows_a_value_after_the_pairs():
    """show_answers=False: the same pairs and filler, the last n positions every key once in a random order, the
    target its value; no value token after the pairs, so no query can be answered by elimination."""
    n, V, L = 6, 64, 100
    x, y = np_pair(long_recall(V, L, n, 50, seed=3, show_answers=False))
    shown, _ = np_pair(long_recall(V, L, n, 50, seed=3))
    assert (x[:, : 2 * n] == shown[:, : 2 * n]).all()  # the same pairs as with the answers shown
    for row_x, row_y in zip(x, y, strict=True):
        keys, values = row_x[0 : 2 * n : 2], row_x[1 : 2 * n : 2]
        after = row_x[2 * n :]
        assert not ((after > V // 4) & (after < V // 2)).any()  # no value after the pairs (V // 2 is filler too)
        assert (row_x[2 * n : L - n] >= V // 2).all()  # filler
        assert sorted(row_x[L - n :]) == sorted(keys)
        scored = np.flatnonzero(row_y != IGNORE_INDEX)
        assert list(scored) == list(range(L - n, L))
        assert all(dict(zip(keys, values, strict=True))[q] == a for q, a in zip(row_x[scored], row_y[scored],
                                                                                strict=True))
    with pytest.raises(ValueError, match="seq_len=17 too short: need >= 3 \\* num_kv_pairs = 18"):
        long_recall(V, 17, n, 5, show_answers=False)


def test_long_recall_lead_moves_the_pairs_after_filler_and_keeps_every_draw():
    """lead=k: the same pairs at positions k .. k + 2n - 1 with filler before them, the same queries and targets; the
    filler elsewhere unchanged (the same draws). A lead that leaves no room is refused."""
    n, V, L, k = 4, 64, 60, 20
    x, y = np_pair(long_recall(V, L, n, 30, seed=5, show_answers=False))
    moved, moved_y = np_pair(long_recall(V, L, n, 30, seed=5, show_answers=False, lead=k))
    assert (moved[:, k : k + 2 * n] == x[:, : 2 * n]).all() and (moved_y == y).all()
    assert (moved[:, :k] >= V // 2).all() and (moved[:, : 2 * n] != x[:, : 2 * n]).any()
    assert (moved[:, k + 2 * n :] == x[:, k + 2 * n :]).all()
    with pytest.raises(ValueError, match="seq_len=60 too short: need >= lead \\+ 3 \\* num_kv_pairs = 61"):
        long_recall(V, L, n, 5, show_answers=False, lead=49)
    with pytest.raises(ValueError, match="lead must be >= 0"):
        long_recall(V, L, n, 5, lead=-1)


@pytest.mark.parametrize("show_answers", [True, False])
def test_long_recall_random_lead_puts_each_examples_pairs_anywhere_before_its_queries(show_answers):
    """random_lead=True: each row holds the pairs of the fixed-lead data (the same draws before the lead's) at its own
    lead, every lead from 0 to the last that leaves room for the queries, filler elsewhere; the same queries and
    targets. It cannot be combined with a fixed lead."""
    n, V, L = 3, 48, 24
    per_key = 4 if show_answers else 3
    x, y = np_pair(long_recall(V, L, n, 400, seed=2, show_answers=show_answers))
    r, ry = np_pair(long_recall(V, L, n, 400, seed=2, show_answers=show_answers, random_lead=True))
    assert (ry == y).all() and (r[:, L - (per_key - 2) * n :] == x[:, L - (per_key - 2) * n :]).all()
    leads = []
    for row, fixed in zip(r[:, : L - (per_key - 2) * n], x, strict=True):
        starts = [k for k in range(L - per_key * n + 1) if (row[k : k + 2 * n] == fixed[: 2 * n]).all()]
        assert len(starts) == 1
        (k,) = starts
        rest = np.concatenate([row[:k], row[k + 2 * n :]])
        assert (rest >= V // 2).all()
        leads.append(k)
    assert sorted(set(leads)) == list(range(L - per_key * n + 1))
    with pytest.raises(ValueError, match="lead=2 and random_lead=True: choose one"):
        long_recall(V, L, n, 5, lead=2, random_lead=True)


@pytest.mark.parametrize("shift", [True, False])
def test_regime_recall_rebinds_every_key_and_asks_for_the_fresh_value(shift):
    """First pairs, uniform filler, from L // 2 one filler token repeated (uniform with shift=False), the same keys
    with new values at L // 2 + L // 8, then every key queried with its new value as the target."""
    n, V, L = 4, 64, 96
    x, y = np_pair(regime_recall(V, L, n, 50, seed=3, shift=shift))
    second, start = L // 2 + L // 8, L - 2 * n
    for row_x, row_y in zip(x, y, strict=True):
        first = dict(zip(row_x[0 : 2 * n : 2], row_x[1 : 2 * n : 2], strict=True))
        fresh = dict(zip(row_x[second : second + 2 * n : 2], row_x[second + 1 : second + 2 * n : 2], strict=True))
        assert sorted(first) == sorted(fresh) and len(first) == n and min(first) >= 1 and max(first) <= V // 4
        assert all(V // 4 < fresh[k] <= V // 2 and fresh[k] != first[k] for k in first)
        filler = np.concatenate([row_x[2 * n : second], row_x[second + 2 * n : start]])
        assert (filler >= V // 2).all()
        assert (len(set(row_x[L // 2 : second])) == 1) == shift  # one token repeated after the shift
        queries, answers = row_x[start::2], row_x[start + 1 :: 2]
        assert sorted(queries) == sorted(first) and all(fresh[q] == a for q, a in zip(queries, answers, strict=True))
        scored = np.flatnonzero(row_y != IGNORE_INDEX)
        assert list(scored) == list(range(start, L, 2)) and (row_y[scored] == answers).all()


def test_regime_recall_with_the_answers_hidden_asks_the_keys_alone_after_the_same_stream():
    """show_answers=False: the same draws as with the answers shown up to the queries; the last n positions hold every
    key once, in a random order, nothing after them, each scored with its fresh value; no value appears after the
    second pairs, so the shortcut by elimination is closed."""
    n, V, L = 4, 64, 96
    shown, _ = np_pair(regime_recall(V, L, n, 50, seed=3))
    x, y = np_pair(regime_recall(V, L, n, 50, seed=3, show_answers=False))
    second = L // 2 + L // 8
    assert (x[:, : L - 2 * n] == shown[:, : L - 2 * n]).all()
    for row_x, row_y in zip(x, y, strict=True):
        fresh = dict(zip(row_x[second : second + 2 * n : 2], row_x[second + 1 : second + 2 * n : 2], strict=True))
        queries = row_x[L - n :]
        assert sorted(queries) == sorted(fresh)
        assert list(np.flatnonzero(row_y != IGNORE_INDEX)) == list(range(L - n, L))
        assert all(fresh[q] == a for q, a in zip(queries, row_y[L - n :], strict=True))
        after = row_x[second + 2 * n : L - n]
        assert (after >= V // 2).all()  # filler only between the second pairs and the queries
    with pytest.raises(ValueError, match=r"seq_len=60 too short for num_kv_pairs=8.*the last 8 tokens"):
        regime_recall(V, 60, 8, 5, show_answers=False)
