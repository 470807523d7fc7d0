"""bmojo.layers.bmojo: the B'MOJO mixer's decoding state keeps the eidetic memory of the parallel rule.
(The special cases of docs/design.md section 4.6, whole models with copied weights, are in
tests/models/test_modeling.py.)"""

import torch

from bmojo.ops.memory import EMPTY, innovation_score

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
