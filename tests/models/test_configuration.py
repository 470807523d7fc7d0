"""bmojo.models.configuration: BMojoConfig validation names the offending field; presets."""

import inspect
import re

import pytest
import torch

import bmojo


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(window_size=0), "window_size"),
        (dict(num_fading_tokens=-1), "num_fading_tokens"),
        (dict(num_eidetic_tokens=-2), "num_eidetic_tokens"),
        (dict(num_attention_heads=5), "num_attention_heads"),
        (dict(num_key_value_heads=3), "num_key_value_heads"),
        (dict(layer_pattern=["bmojo", "lstm"]), "layer_pattern"),
        (dict(pos_encoding="alibi"), "pos_encoding"),
        (dict(ssm_head_dim=7), "ssm_head_dim"),
    ],
)
def test_invalid_config_names_the_field(overrides, field):
    with pytest.raises(ValueError, match=field):
        bmojo.BMojoConfig(**{**dict(hidden_size=32, num_attention_heads=4, ssm_head_dim=16), **overrides})


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match="transformer.*bmojo"):
        bmojo.BMojoConfig.from_preset("gpt5")


@pytest.mark.parametrize(
    "preset, overrides, inert",
    [
        ("transformer", dict(num_fading_tokens=4, num_eidetic_tokens=3), ["num_fading_tokens", "num_eidetic_tokens"]),
        ("swa", dict(num_fading_tokens=4), ["num_fading_tokens"]),
        ("bmojo_f", dict(num_eidetic_tokens=4), ["num_eidetic_tokens"]),
        ("bmojo", dict(num_fading_tokens=4, num_eidetic_tokens=3), []),
    ],
)
def test_memory_sizes_without_a_layer_are_inert(preset, overrides, inert, tiny_config):
    """One set of memory overrides serves every preset: sizes no layer reads are accepted, reported in
    inert_fields, and change nothing (same parameters, same logits)."""
    config = tiny_config(preset, **overrides)
    assert config.inert_fields == inert
    if inert:
        torch.manual_seed(0)
        with_inert = bmojo.BMojoForCausalLM(config).eval()
        torch.manual_seed(0)
        without = bmojo.BMojoForCausalLM(tiny_config(preset, **{k: 0 for k in inert})).eval()
        ids = torch.randint(0, config.vocab_size, (1, 20))
        assert torch.equal(with_inert(ids).logits, without(ids).logits)


def test_every_field_has_a_comment():
    """Each field of BMojoConfig carries a comment on its line (meaning, unit, kinds that read it)."""
    source = inspect.getsource(bmojo.BMojoConfig).splitlines()
    fields = [line for line in source if re.match(r"    [a-z_]+: .* = ", line)]
    assert len(fields) >= 30
    assert [f for f in fields if "#" not in f] == []
