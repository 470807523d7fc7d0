"""bmojo.layers.bmojo: the B'MOJO mixer's decoding state keeps the eidetic memory of the parallel rule.
(The special cases of docs/design.md section 4.6, whole models with copied weights, are in
tests/models/test_modeling.py.)"""

import pytest
import torch

from bmojo.layers.common import RotaryEmbedding
from bmojo.ops.memory import EMPTY, eidetic_positions, innovation_score, store_entry_chunks

VOCAB = 61  # the tiny models' vocab_size (TINY in tests/conftest.py)


def test_decoded_eidetic_memory_is_top_innovation_at_every_chunk(tiny_model, brute_force_eidetic):
    """At every chunk boundary the recurrent cache's eidetic memory holds exactly the m_e eligible
    positions (p <= c w - w) with the highest innovation, recomputed by brute force from the SSM outputs."""
    model = tiny_model("bmojo", num_hidden_layers=1, num_eidetic_tokens=6)
    mixer = model.model.layers[0].mixer
    w, m_e, n = 8, 6, 70
    ids = torch.randint(0, VOCAB, (1, n))
    with torch.no_grad():
        u = model.model.layers[0].input_norm(model.model.embed_tokens(ids))
        y, _ = mixer.ssm(u)
        eps = innovation_score(y, mixer.innovation_weights)[0]
        cache = model.new_cache(1)
        for t in range(n):
            model(ids[:, t : t + 1], cache=cache)
            if (t + 1) % w == 1 and t >= w:  # the step that entered chunk c = t // w
                c = t // w
                got = sorted(p for p in cache.states[0].eidetic.pos[0].tolist() if p != EMPTY)
                assert got == brute_force_eidetic(eps, w, m_e, c), (t, got)


def test_rotary_rotations_add():
    """The edge policy re-rotates keys already rotated at their own positions: rotating by p, then by d, equals
    rotating by p + d, to the rounding of an fp32 angle (p x 2^-24 rad: ~3e-4 at p = 5000)."""
    rope = RotaryEmbedding(16)
    x = torch.randn(2, 3, 10, 16)
    p, d = torch.randint(0, 5000, (2, 3, 10)), torch.randint(-5000, 5000, (2, 3, 10))
    torch.testing.assert_close(rope.rotate(rope.rotate(x, p), d), rope.rotate(x, p + d), rtol=0, atol=1e-3)


def test_edge_policy_reads_eidetic_keys_at_the_chunk_edge(tiny_model):
    """eidetic_position="edge": chunk c reads every eidetic key rotated to c w - w - m_f. The mixer's memory prefix
    for a decoded state equals the keys recomputed from the kept tokens' inputs at that position; and the model
    equals the "original" one until chunk 2 (before it the memory is empty or holds only position 0 ... c w - w)."""
    edge, original = tiny_model("bmojo", eidetic_position="edge"), tiny_model("bmojo")
    ids = torch.randint(0, VOCAB, (1, 45))
    with torch.no_grad():
        a, b = edge(ids).logits, original(ids).logits
        torch.testing.assert_close(a[:, :8], b[:, :8], rtol=0, atol=0)  # chunk 0: no memory
        assert (a[:, 16:] - b[:, 16:]).abs().amax(-1).min() > 1e-5
        cache = edge.new_cache(1)
        edge(ids[:, :41], cache=cache)  # the next token, at 41, is in chunk 5
        mixer, state = edge.model.layers[0].mixer, cache.states[0]
        memory = mixer._memory(state, torch.tensor([41]))
        kept = state.eidetic.pos[0]
        u = edge.model.layers[0].input_norm(edge.model.embed_tokens(ids[:, :41]))
        k = mixer.attn.split_heads(mixer.attn.k_proj(u[:, kept.clamp(min=0)]), None)  # unrotated
        at_edge = mixer.attn.rope.rotate(k, torch.tensor(5 * 8 - 8 - 3))
        m_f = mixer.num_fading
        valid = kept >= 0
        torch.testing.assert_close(memory.k[:, :, m_f:][:, :, valid], at_edge[:, :, valid], rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("write", ["window", "evicted"])
def test_decoded_store_holds_the_parallel_rule_at_every_chunk(write, tiny_model):
    """After every token, the recurrent cache's store holds exactly chunk c's store of the parallel form ({s : entry[s]
    <= c}, `store_entry_chunks`), and none of it is in the window or the eidetic memory (no duplicates)."""
    model = tiny_model("bmojo", num_hidden_layers=1, num_retrieved_tokens=3, store_write=write, num_eidetic_tokens=2)
    mixer = model.model.layers[0].mixer
    w, n = 8, 70
    ids = torch.randint(0, VOCAB, (1, n))
    with torch.no_grad():
        u = model.model.layers[0].input_norm(model.model.embed_tokens(ids))
        y, _ = mixer.ssm(u)
        entry = store_entry_chunks(eidetic_positions(innovation_score(y, mixer.innovation_weights), w, 2), n, w, write)
        cache = model.new_cache(1)
        sizes = []
        for t in range(n):
            model(ids[:, t : t + 1], cache=cache)
            state = cache.states[0]
            stored = sorted(p for block in state.store.blocks for p in block.pos[0].tolist() if p != EMPTY)
            assert stored == [s for s in range(n) if entry[0, s] <= t // w], t
            assert not set(stored) & set(state.window.pos[0].tolist() + state.eidetic.pos[0].tolist())
            sizes.append(len(stored))
    assert sizes[-1] > 0  # the rule was exercised


@pytest.mark.parametrize("policy", ["none", "original", "edge"])
def test_retrieved_logit_places_the_token_by_policy(policy, tiny_model):
    """retrieved_position: "none" is the content score q0 . k0 / sqrt(d); "original" the RoPE logit of the token at
    its own position; "edge" at the query's chunk edge (c w - w - m_f); EMPTY slots are masked."""
    mixer = tiny_model("bmojo", num_retrieved_tokens=3, retrieved_position=policy).model.layers[0].mixer
    h, T, r, d = 4, 5, 3, mixer.attn.head_dim
    q0, k0 = torch.randn(1, h, T, d), torch.randn(1, h, T, r, d)
    qpos = torch.tensor([[40, 41, 47, 48, 60]])
    pos = torch.randint(0, 30, (1, h, T, r))
    pos[0, 0, 0, 0] = EMPTY
    rope = mixer.attn.rope.rotate
    at = {"none": None, "original": pos, "edge": ((qpos // 8) * 8 - 8 - mixer.num_fading)[:, None, :, None]}[policy]
    q, k = (q0, k0) if at is None else (rope(q0, qpos[:, None, :]), rope(k0, at.expand(pos.shape)))
    expected = (q[..., None, :] * k).sum(-1) / d**0.5
    got = mixer._retrieved_logits(q0, k0, pos, qpos)
    assert got[0, 0, 0, 0] == float("-inf")
    torch.testing.assert_close(got.masked_fill(pos < 0, 0), expected.masked_fill(pos < 0, 0), rtol=1e-4, atol=1e-4)
