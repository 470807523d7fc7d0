"""Property-based (Hypothesis): every combination of config overrides on every preset either builds a model
whose token-by-token decoding equals its parallel forward, holding exactly what was asked, or raises ValueError
naming a config field. Never another exception, never a silent change."""

import re

import torch
from hypothesis import HealthCheck, given, note, settings
from hypothesis import strategies as st

import bmojo
from bmojo.models.configuration import MAX_MEMORY_TOKENS, MIXER_KINDS

DECODE_TOL = 1e-4  # decoding token by token vs the parallel forward, max abs difference (tests/models/)
BATCH, LENGTH = 2, 23  # w <= 12 here, so 23 tokens span several B'MOJO chunks
# Tiny sizes every preset builds with; the overrides below change any of them.
BASE = dict(vocab_size=29, hidden_size=16, num_hidden_layers=2, num_attention_heads=2, window_size=4,
            ssm_state_size=4, ssm_head_dim=8, ssm_chunk_size=8, intermediate_size=32)
# B'MOJO presets and kinds count twice: their memory rules are where decoding and the parallel form can part.
PRESETS = st.sampled_from([*bmojo.PRESETS, "bmojo_f", "bmojo"])
KINDS = st.sampled_from([*MIXER_KINDS, "bmojo_f", "bmojo"])
# Values that are each valid alone; combinations can still clash (heads vs width, SSM heads vs groups, ...).
SIZES = st.fixed_dictionaries({}, optional={
    "hidden_size": st.sampled_from([8, 12, 16, 24, 32]),
    "num_attention_heads": st.integers(1, 4),
    "num_key_value_heads": st.none() | st.integers(1, 4),
    "pos_encoding": st.sampled_from(["rope", "none"]),
    "window_size": st.integers(1, 12),
    "num_fading_tokens": st.integers(0, 6),
    "num_eidetic_tokens": st.integers(0, 8),
    "innovation_span": st.integers(1, 5),
    "tie_fading_projections": st.booleans(),
    "fading_residual": st.booleans(),
    "ssm_state_size": st.integers(1, 8),
    "ssm_expand": st.integers(1, 2),
    "ssm_head_dim": st.sampled_from([4, 6, 8, 16]),
    "ssm_n_groups": st.integers(1, 2),
    "ssm_conv_kernel": st.integers(1, 4),
    "ssm_chunk_size": st.integers(1, 16),
})


@st.composite
def overrides(draw) -> dict:
    """SIZES, and half the time a depth with a layer pattern: one kind, or a list of one kind per layer."""
    chosen = draw(SIZES)
    if draw(st.booleans()):
        chosen["num_hidden_layers"] = num_layers = draw(st.integers(1, 3))
        chosen["layer_pattern"] = draw(KINDS | st.lists(KINDS, min_size=num_layers, max_size=num_layers))
    return chosen


# One invalid value on top: out of range, of the wrong type, or a field name with a typo.
FAULTS = st.sampled_from([
    ("window_size", 0), ("window_size", -3), ("num_fading_tokens", -1), ("num_eidetic_tokens", MAX_MEMORY_TOKENS + 1),
    ("innovation_span", 0), ("num_attention_heads", 0), ("num_attention_heads", 3), ("num_key_value_heads", 0),
    ("hidden_size", 0), ("hidden_size", -16), ("hidden_size", "sixty"), ("hidden_size", 16.0), ("hidden_size", True),
    ("ssm_state_size", 0), ("ssm_head_dim", 7), ("ssm_expand", -1), ("ssm_chunk_size", 0), ("ssm_conv_kernel", 0),
    ("pos_encoding", "alibi"), ("tie_fading_projections", "yes"), ("fading_residual", 1), ("layer_pattern", "lstm"),
    ("layer_pattern", ["ssm", "lstm"]), ("layer_pattern", []), ("layer_pattern", 5), ("num_hidden_layers", 0),
    ("layer_pattern", ["ssm", "swa", "attn", "bmojo"]),  # one more kind than layers (at most 3 here)
    ("num_hidden_layers", 2.0), ("windowsize", 8), ("num_eidetic_token", 4), ("hiddensize", 16),
])
TYPOS = {"windowsize": "window_size", "num_eidetic_token": "num_eidetic_tokens", "hiddensize": "hidden_size"}


def expected_fields(overrides: dict, config: bmojo.BMojoConfig) -> dict:
    """What the config must hold for `overrides`: the values given, a kind as a string repeated to every layer, and
    num_key_value_heads=None as the query heads."""
    expected = dict(overrides)
    if isinstance(expected.get("layer_pattern"), str):
        expected["layer_pattern"] = [expected["layer_pattern"]] * config.num_hidden_layers
    if "num_key_value_heads" in expected and expected["num_key_value_heads"] is None:
        expected["num_key_value_heads"] = config.num_attention_heads
    return expected


# one_thread is set up once for all examples, as intended (tiny tensors: a second thread only slows them down)
@settings(max_examples=40, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(preset=PRESETS, overrides=overrides(), fault=st.none() | FAULTS)
def test_overrides_build_a_consistent_model_or_name_a_field(preset, overrides, fault, one_thread):
    if fault:
        overrides = {**overrides, fault[0]: fault[1]}
    note(f"from_preset({preset!r}, **{overrides})")
    try:
        config = bmojo.BMojoConfig.from_preset(preset, **{**BASE, **overrides})
    except ValueError as err:
        message = str(err)
        typo = next((name for name in overrides if name in TYPOS), None)
        if typo:
            assert message == f"unknown BMojoConfig field {typo!r}; did you mean {TYPOS[typo]!r}?"
            return
        named = re.match(r"BMojoConfig\.(\w+)=", message)
        assert named and named[1] in set(BASE) | set(overrides), message  # a field that was set
        return
    assert fault is None or fault[0] not in TYPOS  # a misspelt field never passes
    expected = expected_fields(overrides, config)
    held = {name: getattr(config, name) for name in expected}
    assert held == expected and all(type(held[k]) is type(v) for k, v in expected.items())  # nothing changed
    assert len(config.layer_pattern) == config.num_hidden_layers
    torch.manual_seed(0)
    model = bmojo.BMojoForCausalLM(config).eval()
    ids = torch.randint(0, config.vocab_size, (BATCH, LENGTH), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        parallel = model(ids).logits
        cache = model.new_cache(BATCH)
        decoded = torch.cat([model(ids[:, t : t + 1], past_key_values=cache).logits for t in range(LENGTH)], dim=1)
    assert (decoded - parallel).abs().max() <= DECODE_TOL
