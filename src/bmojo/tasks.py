"""Synthetic recall tasks: MQAR (Zoology), the MAD recall/copy tasks (Poli et al. 2024), induction heads.

Every generator is a pure function of its arguments (all randomness comes from
``numpy.random.default_rng(seed)``) and returns ``(inputs, targets)``: two ``torch.long`` tensors
of shape ``(num_examples, seq_len)``. Targets are pre-shifted (nanoGPT's convention): ``targets[:, t]`` is
the token the model must output at position ``t``, having seen ``inputs[:, :t+1]``; unscored positions
hold ``IGNORE_INDEX`` (-100). So ``model(inputs, targets=targets).loss``,
``bmojo.ops.loss.token_cross_entropy(logits, targets)`` and :func:`accuracy` apply with no further
shifting. They are not HF ``labels`` (which ``forward(labels=...)`` shifts once more): pass them as
``targets``; a training dataset of task data yields ``{"input_ids": ..., "targets": ...}``.

``vocab_size`` always counts every token id the model sees (MAD's convention: special and noise
tokens are carved out of the top of the vocabulary), so :func:`task_vocab_size` is the size of the
embedding a model needs.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import torch

from .ops.loss import IGNORE_INDEX

Batch = tuple[torch.Tensor, torch.Tensor]


def _require(condition: bool, message: str) -> None:
    if not condition:
        raise ValueError(message)


def _check_count(num_examples: int) -> None:
    _require(num_examples >= 1, f"num_examples must be >= 1, got {num_examples}")


def _to_torch(inputs: np.ndarray, targets: np.ndarray) -> Batch:
    return tuple(torch.from_numpy(a.astype(np.int64, copy=False)) for a in (inputs, targets))


def _sample_distinct(rng: np.random.Generator, rows: int, n: int, k: int) -> np.ndarray:
    """``(rows, k)``: each row an ordered sample of ``k`` distinct ints from ``[0, n)``, uniform."""
    accept = np.prod(1.0 - np.arange(k) / n)  # chance that k draws with replacement are distinct
    if accept < 0.25:
        return rng.permuted(np.broadcast_to(np.arange(n), (rows, n)), axis=1)[:, :k]
    out = rng.integers(0, n, size=(rows, k))
    pending = np.arange(rows)
    while pending.size:  # redraw whole rows until they hold no repeat: exact rejection sampling
        rows_now = out[pending]
        repeated = np.zeros(pending.size, dtype=bool)
        for j in range(1, k):
            repeated |= (rows_now[:, :j] == rows_now[:, j : j + 1]).any(axis=1)
        pending = pending[repeated]
        out[pending] = rng.integers(0, n, size=(pending.size, k))
    return out


def _first_index(ids: np.ndarray) -> np.ndarray:
    """``(B, N)`` -> ``(B, N)``: index of the first occurrence of ``ids[b, n]`` within row ``b``."""
    b, n = ids.shape
    order = np.argsort(ids, axis=1, kind="stable")
    ordered = np.take_along_axis(ids, order, axis=1)
    new_group = np.ones((b, n), dtype=bool)
    new_group[:, 1:] = ordered[:, 1:] != ordered[:, :-1]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0), axis=1)
    first = np.empty_like(order)
    np.put_along_axis(first, order, np.take_along_axis(order, group_start, axis=1), axis=1)
    return first


def _shift(raw: np.ndarray, answers: np.ndarray, seq_len: int, is_training: bool) -> Batch:
    """Turn an unshifted stream ``raw`` (length ``seq_len`` or ``seq_len + 1``) and its per-token
    answers into ``(inputs, targets)`` with ``targets[:, t] = src[:, t + 1]`` (``src`` = ``raw`` when
    ``is_training``, MAD's plain LM targets, else ``answers``); a missing last target is ignored."""
    src = raw if is_training else answers
    targets = np.full((raw.shape[0], seq_len), IGNORE_INDEX, dtype=np.int64)
    targets[:, : src.shape[1] - 1] = src[:, 1 : seq_len + 1]
    return _to_torch(raw[:, :seq_len], targets)


def mqar(
    vocab_size: int,
    seq_len: int,
    num_kv_pairs: int,
    num_examples: int,
    seed: int,
    power_a: float = 0.01,
    random_non_queries: bool = True,
) -> Batch:
    """Multi-query associative recall, the Zoology protocol (Arora et al. 2023, ``multiquery_ar``).

    Layout, ``kv = num_kv_pairs``: ``inputs[:, :2kv] = k_1 v_1 ... k_kv v_kv`` with keys distinct in
    ``[1, V//2)`` and values distinct in ``[V//2, V)``. Each key is queried once, at position
    ``2kv + 2g`` where the gaps ``g`` are drawn without replacement from ``[0, (seq_len - 2kv)//2)``
    with ``p(g) ∝ a (g+1)^(a-1)``, ``a = power_a`` (small ``a`` favours short gaps). The target at a
    query is the key's value; all other targets are -100 (``num_kv_pairs`` targets per row). Other
    positions hold uniform tokens from ``[0, V)`` if ``random_non_queries`` else 0.
    """
    _require(num_kv_pairs >= 1, f"num_kv_pairs must be >= 1, got {num_kv_pairs}")
    half = vocab_size // 2
    _require(
        num_kv_pairs <= half - 1 and num_kv_pairs <= vocab_size - half,
        f"vocab_size={vocab_size} too small for num_kv_pairs={num_kv_pairs}: need "
        f"num_kv_pairs <= vocab_size//2 - 1 distinct keys and <= vocab_size - vocab_size//2 values",
    )
    _require(seq_len % 2 == 0, f"seq_len must be even (Zoology), got {seq_len}")
    _require(
        seq_len >= 4 * num_kv_pairs,
        f"seq_len={seq_len} too short: need seq_len >= 4 * num_kv_pairs = {4 * num_kv_pairs} "
        "(kv pairs plus one query per key, Zoology)",
    )
    _require(vocab_size > seq_len, f"vocab_size must be > seq_len (Zoology), got {vocab_size} <= {seq_len}")
    _require(power_a > 0, f"power_a must be > 0, got {power_a}")
    _check_count(num_examples)
    rng = np.random.default_rng(seed)
    context = 2 * num_kv_pairs
    keys = 1 + _sample_distinct(rng, num_examples, half - 1, num_kv_pairs)
    values = half + _sample_distinct(rng, num_examples, vocab_size - half, num_kv_pairs)
    space = (seq_len - context) // 2
    log_p = (power_a - 1) * np.log(np.arange(1, space + 1))
    # Gumbel top-k == successive weighted draws without replacement (numpy's choice(p=..., replace=False))
    scores = log_p + rng.gumbel(size=(num_examples, space))
    gaps = np.argsort(-scores, axis=1)[:, :num_kv_pairs]
    inputs = np.zeros((num_examples, seq_len), dtype=np.int64)
    targets = np.full((num_examples, seq_len), IGNORE_INDEX, dtype=np.int64)
    inputs[:, 0:context:2] = keys
    inputs[:, 1:context:2] = values
    queries = context + 2 * gaps
    np.put_along_axis(inputs, queries, keys, axis=1)
    np.put_along_axis(targets, queries, values, axis=1)
    if random_non_queries:
        inputs = np.where(inputs == 0, rng.integers(0, vocab_size, size=inputs.shape), inputs)
    return _to_torch(inputs, targets)


def in_context_recall(
    vocab_size: int = 16,
    seq_len: int = 128,
    num_examples: int = 12_800,
    seed: int = 0,
    noise_vocab_size: int = 0,
    frac_noise: float = 0.0,
    is_training: bool = False,
) -> Batch:
    """MAD in-context recall (multi-query, MAD's benchmark setting); no special tokens.

    Tokens: ``n = vocab_size - noise_vocab_size``; keys ``[0, n//2)``, values ``[n//2, n)``, noise
    ``[n, vocab_size)``. The stream is ``seq_len // 2`` pairs: the first ``seq_len//2 - 1`` are
    ``key value`` (key uniform; a key's value drawn uniformly on its first use, then fixed) or, with
    probability ``frac_noise`` each (never all of them), two uniform noise tokens; the last pair
    re-presents a uniformly chosen key already shown, with its value. Test targets
    (``is_training=False``): the value after every repeated key (so always the last pair's value),
    -100 elsewhere; noise is never scored. ``is_training=True`` gives MAD's training targets, the next
    token at every position. MAD drops the final value from the inputs (length ``seq_len - 1``);
    here it is the last input, whose target is -100.
    """
    _require(seq_len % 2 == 0 and seq_len >= 4, f"seq_len must be even and >= 4, got {seq_len}")
    _require(noise_vocab_size >= 0, f"noise_vocab_size must be >= 0, got {noise_vocab_size}")
    n = vocab_size - noise_vocab_size
    _require(n >= 2, f"vocab_size - noise_vocab_size must be >= 2 (one key, one value), got {n}")
    _require(0 <= frac_noise < 1, f"frac_noise must be in [0, 1), got {frac_noise}")
    _require(frac_noise == 0 or noise_vocab_size > 0, "noise_vocab_size must be > 0 when frac_noise > 0")
    _check_count(num_examples)
    rng = np.random.default_rng(seed)
    rows, pairs = np.arange(num_examples), seq_len // 2 - 1
    n_keys = n // 2
    keys = rng.integers(0, n_keys, size=(num_examples, pairs))
    drawn_values = rng.integers(n_keys, n, size=(num_examples, pairs))
    noise = np.zeros((num_examples, pairs), dtype=bool)
    if frac_noise > 0:
        noise = rng.random((num_examples, pairs)) < frac_noise
        noise[rows, rng.integers(0, pairs, size=num_examples)] = False
    first = _first_index(np.where(noise, n_keys + np.arange(pairs), keys))  # noise pairs match nothing
    values = np.take_along_axis(drawn_values, first, axis=1)
    repeat = first != np.arange(pairs)
    pick = np.where(noise | repeat, -1.0, rng.random((num_examples, pairs))).argmax(axis=1)
    probe_key, probe_value = keys[rows, pick], values[rows, pick]
    raw = np.empty((num_examples, seq_len), dtype=np.int64)
    raw[:, 0:-2:2], raw[:, 1:-2:2] = keys, values
    raw[:, -2], raw[:, -1] = probe_key, probe_value
    noise_at = np.repeat(noise, 2, axis=1)
    raw[:, :-2][noise_at] = rng.integers(n, vocab_size, size=int(noise_at.sum()))
    answers = np.full_like(raw, IGNORE_INDEX)
    answers[:, 1:-2:2] = np.where(repeat, values, IGNORE_INDEX)
    answers[:, -1] = probe_value
    return _shift(raw, answers, seq_len, is_training)


def noisy_recall(
    vocab_size: int = 32,
    seq_len: int = 128,
    num_examples: int = 12_800,
    seed: int = 0,
    noise_vocab_size: int = 16,
    frac_noise: float = 0.2,
    is_training: bool = False,
) -> Batch:
    """MAD noisy in-context recall: :func:`in_context_recall` with noise pairs (MAD sweeps
    ``frac_noise`` over 0.2..0.8; ``vocab_size`` includes the ``noise_vocab_size`` noise tokens)."""
    return in_context_recall(
        vocab_size, seq_len, num_examples, seed, noise_vocab_size, frac_noise, is_training
    )


def fuzzy_recall(
    vocab_size: int = 16,
    seq_len: int = 128,
    num_examples: int = 12_800,
    seed: int = 0,
    k_motif_size: int = 3,
    v_motif_size: int = 3,
    noise_vocab_size: int = 0,
    frac_noise: float = 0.0,
    is_training: bool = False,
) -> Batch:
    """MAD fuzzy in-context recall (multi-query): keys and values are multi-token motifs.

    Tokens: pad ``vocab_size - 1``; ``n = vocab_size - 1 - noise_vocab_size``; key tokens
    ``[0, n//2)``, value tokens ``[n//2, n)``, noise ``[n, vocab_size - 1)``. A key is an ordered
    tuple of distinct key tokens, of uniform size in ``1..k_motif_size`` when ``is_training`` and
    exactly ``k_motif_size`` otherwise (MAD tests at the largest key size); a value likewise of size
    ``1..v_motif_size``, bound to its key on first use. The stream is: left padding, then
    ``key value`` segments (or, with probability ``frac_noise``, as many noise tokens) until the
    length reaches ``seq_len - |probe| - (k_motif_size + v_motif_size)``, then the probe pair again.
    The probe pair is inserted once at a uniform point of the stream (a pair that already drew the
    probe key takes the probe's value, and then no insertion is made); unlike MAD, the insertion
    point is drawn so the probe is always presented before the final query. Test targets: every token
    of the value after a repeated key (the final query included), -100 elsewhere; ``is_training``
    gives MAD's next-token targets everywhere (pads included).
    """
    _require(k_motif_size >= 1 and v_motif_size >= 1, "k_motif_size and v_motif_size must be >= 1")
    _require(noise_vocab_size >= 0, f"noise_vocab_size must be >= 0, got {noise_vocab_size}")
    n = vocab_size - 1 - noise_vocab_size
    n_keys, n_values = n // 2, n - n // 2
    _require(
        n_keys >= k_motif_size and n_values >= v_motif_size,
        f"vocab too small for the motifs: {n_keys} key tokens and {n_values} value tokens, need "
        f">= k_motif_size={k_motif_size} and >= v_motif_size={v_motif_size} distinct tokens",
    )
    motif = k_motif_size + v_motif_size
    _require(seq_len >= 3 * motif, f"seq_len must be >= 3 * (k_motif_size + v_motif_size) = {3 * motif}")
    _require(0 <= frac_noise < 1, f"frac_noise must be in [0, 1), got {frac_noise}")
    _require(frac_noise == 0 or noise_vocab_size > 0, "noise_vocab_size must be > 0 when frac_noise > 0")
    _require((n_keys + 1) ** k_motif_size < 2**62, "k_motif_size too large for int64 key ids")
    _check_count(num_examples)
    rng = np.random.default_rng(seed)
    k_min = 1 if is_training else k_motif_size
    b = num_examples
    pk_size = rng.integers(k_min, k_motif_size + 1, size=b)
    pv_size = rng.integers(1, v_motif_size + 1, size=b)
    pk_tok = _sample_distinct(rng, b, n_keys, k_motif_size)
    pv_tok = n_keys + _sample_distinct(rng, b, n_values, v_motif_size)
    stop = seq_len - (pk_size + pv_size) - motif  # a segment is added while the stream is shorter
    probe_at = rng.integers(0, stop - motif + 1)  # so the probe's segment starts before `stop`
    k_size = rng.integers(k_min, k_motif_size + 1, size=(b, seq_len // (k_min + 1) + 1))
    # segment i starts at >= sum_{j<i} (k_size_j + 1) - (k_motif_size - 1) (the probe may shorten one
    # segment): keep only the segments that can start before `stop` in some row
    low = np.cumsum(k_size + 1, axis=1) - k_size - 1
    s = int((low < (stop + k_motif_size - 1)[:, None]).sum(axis=1).max())
    k_size = k_size[:, :s]
    rows, segs = np.arange(b), np.arange(s)
    v_size = rng.integers(1, v_motif_size + 1, size=(b, s))
    k_tok = _sample_distinct(rng, b * s, n_keys, k_motif_size).reshape(b, s, k_motif_size)
    v_tok = n_keys + _sample_distinct(rng, b * s, n_values, v_motif_size).reshape(b, s, v_motif_size)
    noise = rng.random((b, s)) < frac_noise

    digit = (n_keys + 1) ** np.arange(k_motif_size)

    def key_id(size: np.ndarray, tok: np.ndarray) -> np.ndarray:
        return (np.where(np.arange(k_motif_size) < size[..., None], tok + 1, 0) * digit).sum(-1)

    def layout() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        first = _first_index(np.where(noise, -1 - segs, kid))
        length = k_size + np.where(noise, v_size, np.take_along_axis(v_size, first, axis=1))
        return first, length, np.cumsum(length, axis=1) - length

    kid, pid = key_id(k_size, k_tok), key_id(pk_size, pk_tok)
    hit = (kid == pid[:, None]) & ~noise
    v_size = np.where(hit, pv_size[:, None], v_size)
    v_tok = np.where(hit[..., None], pv_tok[:, None], v_tok)
    _, _, start = layout()
    at = (start >= probe_at[:, None]).argmax(axis=1)
    insert = ~(hit & (segs < at[:, None])).any(axis=1)
    r, c = rows[insert], at[insert]
    noise[r, c], k_size[r, c], k_tok[r, c], kid[r, c] = False, pk_size[r], pk_tok[r], pid[r]
    v_size[r, c], v_tok[r, c] = pv_size[r], pv_tok[r]
    first, length, start = layout()
    kept = start < stop[:, None]

    # the final query is one more segment; dropped segments get length 0 (kept ones are a prefix)
    def with_final(per_seg: np.ndarray, final: np.ndarray) -> np.ndarray:
        return np.concatenate([per_seg, final[:, None]], axis=1)

    length = with_final(np.where(kept, length, 0), pk_size + pv_size)
    end = np.cumsum(length, axis=1)
    k_size = with_final(k_size, pk_size)
    k_tok = with_final(k_tok, pk_tok).reshape(b, -1)
    v_tok = with_final(np.take_along_axis(v_tok, first[..., None], axis=1), pv_tok).reshape(b, -1)
    scored = with_final(first != segs, np.ones(b, dtype=bool))
    noise = with_final(noise, np.zeros(b, dtype=bool))
    # per stream position: its segment (= number of segments ending at or before it) and offset
    width = seq_len + 1
    ends_at = np.bincount((rows[:, None] * (width + 1) + end).ravel(), minlength=b * (width + 1))
    seg = np.minimum(np.cumsum(ends_at.reshape(b, width + 1)[:, :width], axis=1), s)
    offset = np.arange(width) - np.take_along_axis(end - length, seg, axis=1)
    seg_k_size = np.take_along_axis(k_size, seg, axis=1)
    in_key = offset < seg_k_size
    key_tok = np.take_along_axis(k_tok, seg * k_motif_size + np.minimum(offset, k_motif_size - 1), axis=1)
    value_at = seg * v_motif_size + np.clip(offset - seg_k_size, 0, v_motif_size - 1)
    stream = np.where(in_key, key_tok, np.take_along_axis(v_tok, value_at, axis=1))
    if frac_noise > 0:
        noise_tok = rng.integers(n, n + noise_vocab_size, size=stream.shape)
        stream = np.where(np.take_along_axis(noise, seg, axis=1), noise_tok, stream)
    stream_answers = np.where(np.take_along_axis(scored, seg, axis=1) & ~in_key, stream, IGNORE_INDEX)
    # right-align the stream (total length end[:, -1] <= seq_len - 1) behind the left padding
    pad = width - end[:, -1:]
    source = np.maximum(np.arange(width) - pad, 0)
    is_pad = np.arange(width) < pad
    raw = np.where(is_pad, vocab_size - 1, np.take_along_axis(stream, source, axis=1))
    answers = np.where(is_pad, IGNORE_INDEX, np.take_along_axis(stream_answers, source, axis=1))
    return _shift(raw, answers, seq_len, is_training)


def selective_copying(
    vocab_size: int = 16,
    seq_len: int = 256,
    num_tokens_to_copy: int = 16,
    num_examples: int = 12_800,
    seed: int = 0,
) -> Batch:
    """MAD selective copying.

    Tokens: data ``[0, vocab_size - 2)``, blank ``vocab_size - 2``, copy ``vocab_size - 1``. With
    ``m = num_tokens_to_copy``: the first ``seq_len - m - 1`` inputs hold ``m`` uniform data tokens
    (with replacement) in order, with the ``seq_len - 2m - 1`` blanks spread multinomially over the
    ``m`` gaps *before* each data token (as MAD's ``np.insert`` at indices in ``[0, m)``: the last data
    token always directly precedes the copy token); then the copy token; then ``m`` blanks. Targets:
    the data tokens in order on the ``m`` final (blank) positions, -100 elsewhere.
    """
    _require(num_tokens_to_copy >= 1, f"num_tokens_to_copy must be >= 1, got {num_tokens_to_copy}")
    _require(vocab_size >= 3, f"vocab_size must be >= 3 (data, blank and copy tokens), got {vocab_size}")
    _require(
        seq_len > 2 * num_tokens_to_copy + 1,
        f"seq_len must be > 2 * num_tokens_to_copy + 1 = {2 * num_tokens_to_copy + 1} (MAD), got {seq_len}",
    )
    _check_count(num_examples)
    rng = np.random.default_rng(seed)
    m, blank = num_tokens_to_copy, vocab_size - 2
    data = rng.integers(0, blank, size=(num_examples, m))
    blanks_before = rng.multinomial(seq_len - 2 * m - 1, np.full(m, 1.0 / m), size=num_examples)
    inputs = np.full((num_examples, seq_len), blank, dtype=np.int64)
    np.put_along_axis(inputs, np.cumsum(blanks_before, axis=1) + np.arange(m), data, axis=1)
    inputs[:, seq_len - m - 1] = vocab_size - 1
    targets = np.full_like(inputs, IGNORE_INDEX)
    targets[:, seq_len - m :] = data
    return _to_torch(inputs, targets)


def induction_heads(vocab_size: int = 64, seq_len: int = 256, num_examples: int = 12_800, seed: int = 0) -> Batch:
    """Induction heads (the H3 layout): recall the token that followed a trigger.

    Tokens: content ``[0, vocab_size - 1)``, trigger ``vocab_size - 1``. Inputs are uniform content
    tokens except the trigger at a uniform position ``p in [0, seq_len - 3]`` and at ``seq_len - 1``
    (exactly two triggers); the target is ``inputs[p + 1]``. One target per row: the target at
    position ``seq_len - 1``; -100 elsewhere.
    """
    _require(vocab_size >= 3, f"vocab_size must be >= 3 (two content tokens, trigger), got {vocab_size}")
    _require(seq_len >= 3, f"seq_len must be >= 3 (trigger, target, trigger), got {seq_len}")
    _check_count(num_examples)
    rng = np.random.default_rng(seed)
    rows, trigger = np.arange(num_examples), vocab_size - 1
    inputs = rng.integers(0, trigger, size=(num_examples, seq_len))
    first = rng.integers(0, seq_len - 2, size=num_examples)
    inputs[rows, first] = trigger
    inputs[:, -1] = trigger
    targets = np.full_like(inputs, IGNORE_INDEX)
    targets[:, -1] = inputs[rows, first + 1]
    return _to_torch(inputs, targets)


def long_recall(vocab_size: int = 256, seq_len: int = 256, num_kv_pairs: int = 8, num_examples: int = 1000,
                seed: int = 0, show_answers: bool = True, lead: int = 0, random_lead: bool = False) -> Batch:
    """Long-context multi-key recall (the storage tier's benchmark, docs/recall.md): ``num_kv_pairs`` key-value
    pairs at the start, filler, then every key again (shuffled), each followed by its value.

    Layout, ``n = num_kv_pairs``, ``V = vocab_size``: ``inputs[:, :2n] = k_1 v_1 ... k_n v_n`` with keys distinct in
    ``[1, V//4]`` and values (drawn with replacement) in ``[V//4 + 1, V//2]``; then uniform filler from ``[V//2, V)``
    (as unpredictable as the pairs, so an innovation test cannot single the pairs out); the last ``2n`` positions
    hold the keys in a random order, each followed by its value. The target at each of those ``n`` queries is its
    value; all other targets are -100. Growing ``seq_len`` only adds filler: the pairs sit ``seq_len - 4n`` to
    ``seq_len - 2n`` tokens before their queries.

    Shown answers leave a shortcut: the i-th query's value is one of the ``n - i + 1`` values not yet answered, so a
    model that only learns "some value of the pairs not shown yet" scores (1/n + 1/(n-1) + ... + 1) / n (0.52 for
    n = 4) without reading any key. ``show_answers=False`` closes it: the last ``n`` positions hold the keys in a
    random order with no value after them (a value never appears after the pairs), the same targets; that shortcut
    scores 1/n. The default keeps the data of the documented experiments.

    ``lead`` > 0 puts the pairs after that many filler tokens instead of at the start (the same draws, so the same
    pairs, filler and queries): a check that a model reads the pairs for what they are, not for where they sit.
    ``random_lead=True`` draws each example's lead uniformly from ``0 .. seq_len - 3n`` (``4n`` with the answers
    shown), after every other draw: the pairs anywhere before the queries, so that neither their place nor the
    innovation test's first picks can stand in for reading them.
    """
    quarter = vocab_size // 4
    _require(quarter >= 1 and num_kv_pairs <= quarter,
             f"vocab_size={vocab_size} too small for num_kv_pairs={num_kv_pairs}: need num_kv_pairs <= vocab_size//4 "
             "distinct keys")
    _require(num_kv_pairs >= 1, f"num_kv_pairs must be >= 1, got {num_kv_pairs}")
    per_key = 4 if show_answers else 3
    _require(lead >= 0, f"lead must be >= 0 (filler tokens before the pairs), got {lead}")
    _require(not (lead and random_lead), f"lead={lead} and random_lead=True: choose one (a fixed lead or a random one)")
    _require(seq_len >= lead + per_key * num_kv_pairs, f"seq_len={seq_len} too short: need >= "
             f"{'lead + ' if lead else ''}{per_key} * num_kv_pairs = {lead + per_key * num_kv_pairs} "
             f"({'the lead, ' if lead else ''}the pairs, then one query{' and its value' if show_answers else ''} "
             "per key)")
    _check_count(num_examples)
    rng = np.random.default_rng(seed)
    n = num_kv_pairs
    keys = 1 + _sample_distinct(rng, num_examples, quarter, n)
    values = 1 + quarter + rng.integers(0, quarter, size=(num_examples, n))
    inputs = rng.integers(2 * quarter, vocab_size, size=(num_examples, seq_len))
    targets = _ask_every_key(rng, inputs, keys, values, show_answers)  # the last n (2n) positions: never a pair's
    leads = rng.integers(0, seq_len - per_key * n + 1, size=(num_examples, 1)) if random_lead else lead
    at = leads + np.arange(0, 2 * n, 2)  # (rows, n) or (n,): each key's position
    rows = np.arange(num_examples)[:, None]
    inputs[rows, at], inputs[rows, at + 1] = keys, values
    return _to_torch(inputs, targets)


def _in_random_order(rng: np.random.Generator, keys: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's keys and values (rows, n) in one random order per row, the same for both."""
    order = rng.permuted(np.broadcast_to(np.arange(keys.shape[1]), keys.shape), axis=1)
    return np.take_along_axis(keys, order, axis=1), np.take_along_axis(values, order, axis=1)


def _pairs_in_random_order(rng: np.random.Generator, inputs: np.ndarray, start: int, keys: np.ndarray,
                           values: np.ndarray) -> None:
    """In place: positions start .. start + 2n - 1 of every row hold its n keys (keys, values: (rows, n)) in a random
    order, each followed by its value."""
    n = keys.shape[1]
    inputs[:, start : start + 2 * n : 2], inputs[:, start + 1 : start + 2 * n : 2] = _in_random_order(rng, keys, values)


def _ask_every_key(rng: np.random.Generator, inputs: np.ndarray, keys: np.ndarray, values: np.ndarray,
                   show_answers: bool) -> np.ndarray:
    """In place: the end of `inputs` asks for every key once, in a random order per row: the last 2n positions, each
    key followed by its value (`_pairs_in_random_order`), or without `show_answers` the last n, the keys alone.
    Returns the targets: each query's value, IGNORE_INDEX elsewhere."""
    n = keys.shape[1]
    targets = np.full(inputs.shape, IGNORE_INDEX, dtype=np.int64)
    if not show_answers:
        inputs[:, -n:], targets[:, -n:] = _in_random_order(rng, keys, values)
        return targets
    start = inputs.shape[1] - 2 * n
    _pairs_in_random_order(rng, inputs, start, keys, values)
    targets[:, start::2] = inputs[:, start + 1 :: 2]
    return targets


def regime_recall(vocab_size: int = 256, seq_len: int = 512, num_kv_pairs: int = 4, num_examples: int = 1000,
                  seed: int = 0, shift: bool = True, show_answers: bool = True) -> Batch:
    """Recall after a change of regime (the storage tier's retention, docs/recall.md): :func:`long_recall` whose
    key-value bindings are re-drawn mid-stream, so that a model must answer with the fresh binding, not the stale
    one.

    Layout, ``n = num_kv_pairs``, ``V = vocab_size``, ``L = seq_len``: the first pairs ``k_1 v_1 ... k_n v_n`` at the
    start (as :func:`long_recall`); uniform filler from ``[V/2, V)`` up to ``L // 2``; from there the filler is one
    token of that range repeated (the generating mechanism changes; with ``shift=False`` it stays uniform); at
    ``L // 2 + L // 8`` the same keys again, each with a new value (never its first one); the last ``2n`` positions
    hold the keys in a random order, each followed by its new value, the targets. ``show_answers=False``: the last
    ``n`` positions hold the keys alone, as :func:`long_recall`'s (no answering by elimination); the same draws, so
    everything before the last ``2n`` positions is the same as with the answers shown.
    """
    quarter = vocab_size // 4
    n = num_kv_pairs
    _require(quarter >= 2 and 1 <= n <= quarter, f"vocab_size={vocab_size} too small for num_kv_pairs={n}: need "
             "1 <= num_kv_pairs <= vocab_size//4 distinct keys and vocab_size >= 8 (two values per key)")
    second = seq_len // 2 + seq_len // 8
    asked = 2 * n if show_answers else n
    _require(seq_len // 2 >= 2 * n and second + 2 * n <= seq_len - asked,
             f"seq_len={seq_len} too short for num_kv_pairs={n}: the first pairs must end by seq_len // 2 and the "
             f"second ones (at seq_len // 2 + seq_len // 8) before the queries (the last {asked} tokens); "
             f"use seq_len >= {11 * n}")
    _check_count(num_examples)
    rng = np.random.default_rng(seed)
    keys = 1 + _sample_distinct(rng, num_examples, quarter, n)
    first = rng.integers(0, quarter, size=(num_examples, n))
    fresh = (first + rng.integers(1, quarter, size=(num_examples, n))) % quarter  # never the first value
    inputs = rng.integers(2 * quarter, vocab_size, size=(num_examples, seq_len))
    if shift:
        inputs[:, seq_len // 2 :] = rng.integers(2 * quarter, vocab_size, size=(num_examples, 1))
    inputs[:, 0 : 2 * n : 2], inputs[:, 1 : 2 * n : 2] = keys, 1 + quarter + first
    fresh_values = 1 + quarter + fresh
    _pairs_in_random_order(rng, inputs, second, keys, fresh_values)
    return _to_torch(inputs, _ask_every_key(rng, inputs, keys, fresh_values, show_answers))


TASKS: dict[str, Callable[..., Batch]] = {
    "mqar": mqar,
    "in_context_recall": in_context_recall,
    "fuzzy_recall": fuzzy_recall,
    "noisy_recall": noisy_recall,
    "selective_copying": selective_copying,
    "induction_heads": induction_heads,
    "long_recall": long_recall,
    "regime_recall": regime_recall,
}


def _task(name: str) -> Callable[..., Batch]:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; valid names: {', '.join(TASKS)}")
    return TASKS[name]


def make_task(name: str, **kwargs) -> Batch:
    """Run the generator registered as ``name`` with ``kwargs``; ValueError for an unknown name."""
    return _task(name)(**kwargs)


def _setting(name: str, key: str, settings: dict) -> int:
    """``settings[key]`` or, where absent, the default of task ``name``'s generator for ``key``."""
    value = settings.get(key, inspect.signature(_task(name)).parameters[key].default)
    _require(value is not inspect.Parameter.empty, f"task {name!r} needs {key}")
    return int(value)


def task_vocab_size(name: str, **settings) -> int:
    """Embedding size a model needs for task ``name`` with ``settings``: every token id produced is
    in ``[0, task_vocab_size)``. Special and noise tokens lie inside ``vocab_size`` (MAD's
    convention), so this is ``settings['vocab_size']`` or the generator's default."""
    return _setting(name, "vocab_size", settings)


def task_seq_len(name: str, **settings) -> int:
    """Length of the sequences task ``name`` generates with ``settings`` (the setting or the generator's default)."""
    return _setting(name, "seq_len", settings)


def train_test_split(name: str, num_train: int, num_test: int, seed: int, **settings) -> tuple[Batch, Batch]:
    """``((train_inputs, train_targets), (test_inputs, test_targets))`` for task ``name``.

    The two splits use distinct seeds derived from ``seed`` (``numpy.random.SeedSequence``). As in
    MAD, the recall tasks that take ``is_training`` get ``is_training=True`` (next-token targets
    everywhere) for the train split unless ``settings`` set it; the test split never gets it.
    """
    generator = _task(name)
    train_seed, test_seed = (int(s.generate_state(1)[0]) for s in np.random.SeedSequence(seed).spawn(2))
    train_settings = dict(settings)
    if "is_training" in inspect.signature(generator).parameters:
        train_settings.setdefault("is_training", True)
        settings = {**settings, "is_training": False}
    train = generator(num_examples=num_train, seed=train_seed, **train_settings)
    test = generator(num_examples=num_test, seed=test_seed, **settings)
    return train, test


def validation_split(name: str, num_examples: int, seed: int, **settings) -> Batch:
    """A validation split for task ``name`` (evaluation settings, like the test split), from a third seed derived
    from ``seed``: ``SeedSequence(seed).spawn(3)[2]``, so ``train_test_split``'s two splits stay as they are. Choose
    learning rates and stop early on it, never on the test split."""
    generator = _task(name)
    val_seed = int(np.random.SeedSequence(seed).spawn(3)[2].generate_state(1)[0])
    if "is_training" in inspect.signature(generator).parameters:
        settings = {**settings, "is_training": False}
    return generator(num_examples=num_examples, seed=val_seed, **settings)


def check_leakage(train_inputs: torch.Tensor, test_inputs: torch.Tensor) -> int:
    """Number of rows of ``test_inputs`` ``(N_test, L)`` that occur verbatim in ``train_inputs``
    ``(N_train, L')`` (0 when ``L != L'``)."""
    _require(train_inputs.dim() == 2 and test_inputs.dim() == 2, "inputs must be 2-D (examples, seq_len)")
    if train_inputs.shape[1] != test_inputs.shape[1]:
        return 0
    train = np.ascontiguousarray(train_inputs.cpu().numpy().astype(np.int64))
    test = np.ascontiguousarray(test_inputs.cpu().numpy().astype(np.int64))
    seen = {row.tobytes() for row in train}
    return sum(row.tobytes() in seen for row in test)


def accuracy(logits_or_predictions: torch.Tensor, targets: torch.Tensor) -> float:
    """Fraction of scored positions (``targets != -100``) predicted right.

    Takes logits ``(B, L, V)`` (argmax over ``V``) or predictions ``(B, L)``; ``targets`` is
    ``(B, L)``. ValueError on a shape mismatch or if no position is scored.
    """
    predictions = logits_or_predictions
    if predictions.dim() == targets.dim() + 1:
        predictions = predictions.argmax(dim=-1)
    _require(
        predictions.shape == targets.shape,
        f"predictions {tuple(logits_or_predictions.shape)} do not match targets {tuple(targets.shape)}",
    )
    mask = targets != IGNORE_INDEX
    _require(bool(mask.any()), "no labelled positions (every target is -100)")
    return (predictions[mask] == targets[mask]).float().mean().item()
