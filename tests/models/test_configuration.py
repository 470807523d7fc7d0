"""bmojo.models.configuration: BMojoConfig validation names the offending field (types, ranges, unknown names with
the closest valid one, one kind per layer, capped memory sizes), presets, and the same checks through `bmojo train`'s
--set and --config."""

import importlib.util
import inspect
import json
import re

import pytest
import torch

import bmojo
from bmojo.models.configuration import MAX_MEMORY_TOKENS


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


@pytest.mark.parametrize("span", [9, -1])
def test_fading_span_outside_the_window_is_refused(span):
    """A span longer than the window would need more SSM outputs than the decoding state keeps (w + s - 1)."""
    message = r"fading_span=-?\d+ is invalid: must be in \[0, window_size=8\]"
    with pytest.raises(ValueError, match=message):
        bmojo.BMojoConfig.from_preset("bmojo", window_size=8, fading_span=span)


def test_edge_eidetic_position_needs_rope():
    with pytest.raises(ValueError, match="eidetic_position='edge' is invalid: .* needs pos_encoding='rope'"):
        bmojo.BMojoConfig.from_preset("bmojo", pos_encoding="none", eidetic_position="edge")
    with pytest.raises(ValueError, match=r"eidetic_position='last' is invalid: must be one of \('original', 'edge'\)"):
        bmojo.BMojoConfig.from_preset("bmojo", eidetic_position="last")


def test_residual_gate_needs_the_residual():
    with pytest.raises(ValueError, match="fading_residual_gate=True is invalid: scales the SSM output that "
                                         "fading_residual=True adds"):
        bmojo.BMojoConfig.from_preset("bmojo", fading_residual=False, fading_residual_gate=True)
    assert bmojo.BMojoConfig.from_preset("mamba", fading_residual_gate=True).fading_residual_gate  # no B'MOJO layer
    with pytest.raises(ValueError, match="fading_residual_gate_scale=10.0 is invalid: scales the residual gate: set "
                                         "fading_residual_gate=True"):
        bmojo.BMojoConfig.from_preset("bmojo", fading_residual_gate_scale=10.0)
    with pytest.raises(ValueError, match="fading_residual_gate_scale=0.0 is invalid: must be > 0 and finite"):
        bmojo.BMojoConfig.from_preset("bmojo", fading_residual_gate=True, fading_residual_gate_scale=0.0)


def test_storage_tier_settings_are_checked():
    with pytest.raises(ValueError, match=r"num_retrieved_tokens=4 is invalid: needs num_eidetic_tokens >= 1"):
        bmojo.BMojoConfig.from_preset("bmojo", num_eidetic_tokens=0, num_retrieved_tokens=4)
    with pytest.raises(ValueError, match=r"store_write='all' is invalid: must be one of \('window', 'evicted'\)"):
        bmojo.BMojoConfig.from_preset("bmojo", num_retrieved_tokens=4, store_write="all")
    with pytest.raises(ValueError, match=r"num_retrieved_tokens=-1 is invalid: must be in \[0, 4096\]"):
        bmojo.BMojoConfig.from_preset("bmojo", num_retrieved_tokens=-1)
    with pytest.raises(ValueError, match=r"store_backend='hnsw' is invalid: must be one of \('exact', 'faiss'\) "
                       r"\(\"faiss\" needs pip install 'bmojo\[ann\]'"):
        bmojo.BMojoConfig.from_preset("bmojo", num_retrieved_tokens=4, store_backend="hnsw")
    with pytest.raises(ValueError, match=r"retrieved_position='edge' is invalid: 'edge' places retrieved tokens by "
                       r"RoPE: it needs pos_encoding='rope' \(got 'none'\)"):
        bmojo.BMojoConfig.from_preset("bmojo", num_retrieved_tokens=4, retrieved_position="edge", pos_encoding="none")
    with pytest.raises(ValueError, match=r"retrieved_position='clipped' is invalid: must be one of "
                       r"\('none', 'original', 'edge'\)"):
        bmojo.BMojoConfig.from_preset("bmojo", num_retrieved_tokens=4, retrieved_position="clipped")
    with pytest.raises(ValueError, match=r"store_horizon=64 is invalid: must be 0 \(keep every stored token\) or > "
                       r"window_size=64"):
        bmojo.BMojoConfig.from_preset("bmojo", num_retrieved_tokens=4, store_horizon=64)
    with pytest.raises(ValueError, match=r"store_regime_threshold=1.0 is invalid: must be 0 \(off\) or a finite "
                       r"number > 1"):
        bmojo.BMojoConfig.from_preset("bmojo", num_retrieved_tokens=4, store_regime_threshold=1.0)
    with pytest.raises(ValueError, match=r"store_regime_chunks=0 is invalid: must be >= 1"):
        bmojo.BMojoConfig.from_preset("bmojo", num_retrieved_tokens=4, store_regime_chunks=0)
    with pytest.raises(ValueError, match=r"store_nprobe=0 is invalid: must be >= 1 \(inverted lists each faiss"):
        bmojo.BMojoConfig.from_preset("bmojo", num_retrieved_tokens=4, store_nprobe=0)
    with pytest.raises(ValueError, match=r"store_dtype='int8' is invalid: must be one of \('model', 'bfloat16', "
                       r"'float16'\)"):
        bmojo.BMojoConfig.from_preset("bmojo", num_retrieved_tokens=4, store_dtype="int8")
    assert bmojo.BMojoConfig.from_preset("bmojo", num_retrieved_tokens=4).stores_tokens
    assert not bmojo.BMojoConfig.from_preset("bmojo_f", num_retrieved_tokens=4).stores_tokens


def test_unknown_preset_lists_valid_ones():
    with pytest.raises(ValueError, match="transformer.*bmojo"):
        bmojo.BMojoConfig.from_preset("gpt5")


@pytest.mark.parametrize(
    "preset, overrides, inert",
    [
        ("transformer", dict(num_fading_tokens=4, num_eidetic_tokens=3), ["num_fading_tokens", "num_eidetic_tokens"]),
        ("swa", dict(num_fading_tokens=4, fading_span=8), ["num_fading_tokens", "fading_span"]),
        ("bmojo_f", dict(num_eidetic_tokens=4, num_retrieved_tokens=2), ["num_eidetic_tokens", "num_retrieved_tokens"]),
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


# ---------------------------------------------------------------- strict configs (issue 17)


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(windowsize=32), "unknown BMojoConfig field 'windowsize'; did you mean 'window_size'?"),
        (dict(num_eidetic_token=4),
         "unknown BMojoConfig field 'num_eidetic_token'; did you mean 'num_eidetic_tokens'?"),
        (dict(zzz=1), "unknown BMojoConfig field 'zzz'; valid fields: vocab_size, hidden_size,"),
    ],
)
def test_from_preset_refuses_unknown_fields_with_the_closest_name(overrides, message):
    with pytest.raises(ValueError, match=re.escape(message)):
        bmojo.BMojoConfig.from_preset("bmojo", **overrides)


def test_hf_settings_and_saved_configs_are_accepted(tmp_path, tiny_config):
    """HF's own settings pass from_preset's check, and BMojoConfig(**kwargs) keeps accepting what HF writes
    (model_type, transformers_version, architectures, dtype, torch_dtype) so saved models load."""
    config = tiny_config("bmojo", output_hidden_states=True, dtype="float32")
    assert config.output_hidden_states
    saved = dict(tiny_config("bmojo").to_dict(), architectures=["BMojoForCausalLM"], torch_dtype="float32")
    assert bmojo.BMojoConfig(**saved).layer_pattern == config.layer_pattern
    config.save_pretrained(tmp_path)
    assert bmojo.BMojoConfig.from_pretrained(tmp_path).to_dict() == config.to_dict()


def test_layer_pattern_list_needs_one_kind_per_layer():
    """A string repeats to every layer; a list must name every layer (a 3-entry list with 2 layers was once cut)."""
    assert bmojo.BMojoConfig(num_hidden_layers=3, layer_pattern="ssm").layer_pattern == ["ssm"] * 3
    assert bmojo.BMojoConfig(num_hidden_layers=2, layer_pattern=["ssm", "swa"]).layer_pattern == ["ssm", "swa"]
    for pattern in (["ssm", "swa", "attn"], ["ssm"], []):
        with pytest.raises(ValueError, match=r"layer_pattern=.*one kind per layer, num_hidden_layers=2"):
            bmojo.BMojoConfig(num_hidden_layers=2, layer_pattern=pattern)
    with pytest.raises(ValueError, match="layer_pattern.*one kind per layer"):
        bmojo.BMojoConfig.from_preset("hybrid", num_hidden_layers=2, layer_pattern=["ssm", "swa", "attn"])


@pytest.mark.parametrize("layers, pattern", [(1, ["ssm"]), (2, ["ssm", "swa"]), (3, ["ssm", "swa", "ssm"]),
                                             (4, ["ssm", "swa", "ssm", "swa"])])
def test_a_preset_list_pattern_is_a_period(layers, pattern):
    """hybrid's ["ssm", "swa"] repeats to num_hidden_layers; a depth it does not divide ends on a partial period."""
    assert bmojo.BMojoConfig.from_preset("hybrid", num_hidden_layers=layers).layer_pattern == pattern


@pytest.mark.parametrize("field", ["num_fading_tokens", "num_eidetic_tokens"])
def test_memory_sizes_are_capped(field):
    cap = MAX_MEMORY_TOKENS
    assert getattr(bmojo.BMojoConfig.from_preset("bmojo", **{field: cap}), field) == cap
    for value in (cap + 1, 100_000, -1):
        with pytest.raises(ValueError, match=rf"BMojoConfig.{field}={value} is invalid: must be in \[0, {cap}\]"):
            bmojo.BMojoConfig.from_preset("bmojo", **{field: value})


@pytest.mark.parametrize(
    "field, value, expected",
    [
        ("hidden_size", "sixty", "int"), ("hidden_size", 32.0, "int"), ("num_hidden_layers", True, "int"),
        ("window_size", None, "int"), ("num_key_value_heads", "2", "int | None"), ("rms_norm_eps", "small", "float"),
        ("rope_theta", False, "float"), ("use_mlp", "yes", "bool"), ("fading_residual", 1, "bool"),
        ("pos_encoding", 0, "str"), ("layer_pattern", 5, "list | str | None"),
        ("innovation_weights", [0.5, "a"], "list[float] | None"),
    ],
)
def test_field_types_are_checked(field, value, expected):
    """The wrong type (a bool or float for an int, a string for a number or a flag) names the field and the type."""
    with pytest.raises(ValueError, match=re.escape(f"BMojoConfig.{field}={value!r} is invalid: must be {expected}")):
        bmojo.BMojoConfig.from_preset("bmojo", **{field: value})


@pytest.mark.parametrize(
    "overrides, field",
    [
        (dict(rms_norm_eps=0.0), "rms_norm_eps"), (dict(rope_theta=float("nan")), "rope_theta"),
        (dict(ssm_dt_min=-0.1), "ssm_dt_min"), (dict(ssm_dt_min=0.5, ssm_dt_max=0.1), "ssm_dt_max"),
        (dict(initializer_range=float("inf")), "initializer_range"),
        (dict(innovation_span=2, innovation_weights=[0.5, float("nan")]), "innovation_weights"),
    ],
)
def test_float_fields_are_finite_and_in_range(overrides, field):
    with pytest.raises(ValueError, match=f"BMojoConfig.{field}="):
        bmojo.BMojoConfig.from_preset("bmojo", **overrides)


# ---------------------------------------------------------------- the same checks from the command line


@pytest.mark.parametrize(
    "settings, message",
    [
        (["windowsize=32"], "--set: unknown BMojoConfig field 'windowsize'; did you mean 'window_size'?"),
        (["hidden_size=sixty"], "BMojoConfig.hidden_size='sixty' is invalid: must be int"),
        (["num_eidetic_tokens=100000"], "BMojoConfig.num_eidetic_tokens=100000 is invalid: must be in [0, 4096]"),
        (['layer_pattern=["ssm","swa","attn"]', "num_hidden_layers=2"],
         "layer_pattern=['ssm', 'swa', 'attn'] is invalid: a list needs one kind per layer, num_hidden_layers=2"),
    ],
)
def test_train_set_is_strict(settings, message, corpus, tmp_path, capsys, cli, tiny_run_args):
    capsys.readouterr()
    assert cli("train", *tiny_run_args, "--set", *settings, "--corpus", corpus, "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert err.startswith("bmojo train: error:") and message in err and "Traceback" not in err, err
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_train_config_file_is_strict(corpus, tmp_path, capsys, cli, tiny_run_args, tiny_config):
    """--config reads a saved config.json (HF's own records included) and refuses a misspelt field in it."""
    argv = list(tiny_run_args)
    i = argv.index("--preset")
    argv[i : i + 2] = ["--config", tmp_path / "config.json"]
    config = tiny_config("bmojo", vocab_size=256).to_dict()
    (tmp_path / "config.json").write_text(json.dumps({**config, "windowsize": 8, "window_size": 8}))
    capsys.readouterr()
    assert cli("train", *argv, "--corpus", corpus, "--out", tmp_path / "run") == 2
    err = capsys.readouterr().err
    assert f"{tmp_path / 'config.json'}: unknown BMojoConfig field 'windowsize'; did you mean 'window_size'?" in err
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert cli("train", *argv, "--max-steps", "1", "--save-every", "0", "--corpus", corpus, "--out",
               tmp_path / "run") == 0


def test_faiss_backend_without_faiss_says_how_to_install(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "faiss" else real(name, *a))
    with pytest.raises(ValueError, match=r"store_backend='faiss' is invalid: 'faiss' needs the faiss package, which "
                       r"is not installed: pip install 'bmojo\[ann\]'"):
        bmojo.BMojoConfig.from_preset("bmojo", num_retrieved_tokens=4, store_backend="faiss")
