"""bmojo.inspection and `bmojo inspect`: what the report says the memory held is what the forward used."""

import json
import shutil
import subprocess

import pytest
import torch

from bmojo import tasks
from bmojo.data.tokenizers import ByteTokenizer
from bmojo.inspection import KEPT_COLOUR, LOCATIONS, inspect_memory, recall_locations, task_marks
from bmojo.ops.memory import EMPTY, fading_positions

VOCAB = 61  # the tiny models' vocab_size (TINY in tests/conftest.py)
MQAR = dict(vocab_size=VOCAB, seq_len=48, num_kv_pairs=4)  # an MQAR setting the tiny models can read


def test_kept_positions_are_the_brute_force_top_and_what_decoding_holds(tiny_model, brute_force_eidetic):
    """Every chunk's reported eidetic memory is the top m_e of its history by the reported scores (the rule by its
    definition) and is exactly what the recurrent cache holds on entering that chunk (what the forward reads)."""
    model = tiny_model("bmojo", num_eidetic_tokens=6)
    w, m_e, n = 8, 6, 61
    ids = torch.randint(0, VOCAB, (1, n))
    layers = inspect_memory(model, ids)
    assert [layer.layer for layer in layers] == [0, 1]
    cache = model.new_cache(1)
    with torch.no_grad():
        for t in range(n):
            model(ids[:, t : t + 1], cache=cache)
            if t % w == 0 and t > 0:  # the step that entered chunk c = t // w
                for layer in layers:
                    reported = sorted(p for p in layer.eidetic[t // w].tolist() if p != EMPTY)
                    held = sorted(p for p in cache.states[layer.layer].eidetic.pos[0].tolist() if p != EMPTY)
                    assert reported == held == brute_force_eidetic(layer.score, w, m_e, t // w), (layer.layer, t)
    assert layers[0].kept == sorted({p for row in layers[0].eidetic.tolist() for p in row if p != EMPTY})


def test_attention_mass_sums_to_one_and_splits_by_memory_part(tiny_model):
    """Each query's attention fractions (window, fading, eidetic) sum to 1; chunk 0 has no memory (all window)."""
    model = tiny_model("bmojo")
    (layer, _) = inspect_memory(model, torch.randint(0, VOCAB, (45,)))
    assert layer.mass.shape == (45, 3)
    torch.testing.assert_close(layer.mass.sum(1), torch.ones(45))
    torch.testing.assert_close(layer.mass[:8, 0], torch.ones(8))  # chunk 0: every memory slot is empty


def test_attention_mass_counts_the_fading_span_as_fading(tiny_model):
    """With `fading_span` the blocked keys grow by 2w (the span): still three parts summing to 1; the span is empty
    in chunk 0 and read after it."""
    (layer, _) = inspect_memory(tiny_model("bmojo", fading_span=8), torch.randint(0, VOCAB, (45,)))
    torch.testing.assert_close(layer.mass.sum(1), torch.ones(45))
    torch.testing.assert_close(layer.mass[:8, 0], torch.ones(8))
    assert (layer.mass[8:, 1] > 0).all()
    assert torch.equal(layer.mass[:8, 1:], torch.zeros(8, 2))
    assert (layer.mass[16:, 2] > 0).all()  # from chunk 2 on, the eidetic memory holds tokens and is read


def test_fading_only_layers_report_fading_positions_and_no_score(tiny_model):
    model = tiny_model("bmojo_f")
    layers = inspect_memory(model, torch.randint(0, VOCAB, (45,)))
    for layer in layers:
        assert layer.score is None and layer.eidetic is None and layer.kept == []
        assert torch.equal(layer.fading, fading_positions(torch.arange(6), 8, 3))
        assert torch.equal(layer.mass[:, 2], torch.zeros(45))


def test_models_without_bmojo_layers_have_nothing_to_show(tiny_model):
    assert inspect_memory(tiny_model("hybrid"), torch.randint(0, VOCAB, (20,))) == []


def test_task_marks_find_each_querys_key_and_value():
    """A repeat of the key with another successor (the 5 at position 4) is filler, not the key."""
    inputs = torch.tensor([5, 40, 7, 41, 5, 9, 7, 3, 5])
    targets = torch.tensor([-100] * 6 + [41, -100, 40])
    assert task_marks(inputs, targets) == [{"query": 6, "keys": [2], "values": [3]},
                                           {"query": 8, "keys": [0], "values": [1]}]


def test_recall_locations_count_window_eidetic_and_lost(tiny_model):
    (layer, _) = inspect_memory(tiny_model("bmojo"), torch.randint(0, VOCAB, (45,)))
    kept_old = next(p for p in layer.eidetic[5].tolist() if p != EMPTY)  # held by chunk 5 (queries 40..44)
    lost = next(p for p in range(0, 32) if p not in layer.eidetic[5].tolist())
    marks = [{"query": 44, "keys": [kept_old, lost], "values": [40, 35]}]  # 35: beyond the window, after 5 w - w
    assert recall_locations(layer, marks) == {"window": 1, "gap": 1, "eidetic": 1, "lost": 1, "held_fraction": 0.5,
                                              "eidetic_by_chance": round(2 * 5 / 33, 3)}  # m_e 5 of 33 positions


# ---------------------------------------------------------------- the command


@pytest.fixture(scope="module")
def saved_bmojo(tmp_path_factory):
    """A tiny bmojo model saved as `bmojo compare --save-models` saves one (with task.json)."""
    import bmojo

    folder = tmp_path_factory.mktemp("inspect") / "model"
    torch.manual_seed(0)
    config = bmojo.BMojoConfig.from_preset("bmojo", vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=4, window_size=8, ssm_state_size=8, ssm_head_dim=16,
                                           num_fading_tokens=3, num_eidetic_tokens=5, intermediate_size=48)
    bmojo.BMojoForCausalLM(config).save_pretrained(folder)
    (folder / "task.json").write_text(json.dumps({"task": "mqar", "settings": MQAR}))
    return folder


def test_inspect_writes_a_png_per_layer_html_and_json_for_a_task(cli, saved_bmojo, tmp_path, png_signature):
    import bmojo

    model = bmojo.BMojoForCausalLM.from_pretrained(saved_bmojo).eval()
    out = tmp_path / "out"
    assert cli("inspect", saved_bmojo, "--task", "mqar", "--seed", "3", "--examples", "3", "--out", out) == 0
    assert all((out / f"layer{i}.png").read_bytes().startswith(png_signature) for i in (0, 1))
    report = json.loads((out / "inspect.json").read_text())
    inputs, targets = tasks.make_task("mqar", num_examples=3, seed=3, **MQAR)
    assert report["tokens"] == inputs[0].tolist()
    assert report["task_marks"] == task_marks(inputs[0], targets[0])
    layer = report["layers"][1]
    assert layer["layer"] == 1 and len(layer["innovation_score"]) == 48
    locations = layer["recall_locations"]
    kv_tokens = sum(len(m["keys"]) + len(m["values"]) for m in report["task_marks"])
    assert sum(locations[where] for where in LOCATIONS) == kv_tokens
    over = [recall_locations(inspect_memory(model, x)[1], task_marks(x, t))
            for x, t in zip(inputs, targets, strict=True)]
    summed = {where: sum(o[where] for o in over) for where in LOCATIONS}
    assert {k: layer["recall_locations_over_examples"][k] for k in summed} == summed
    html = (out / "inspect.html").read_text()
    assert html.count("class='t kept") == len(report["layers"][0]["kept"]) + len(layer["kept"])
    assert "http" not in html  # self-contained: nothing to fetch


def test_inspect_on_a_model_without_memory_says_so(cli, tiny_model, tmp_path, capsys):
    folder = tmp_path / "mamba"
    tiny_model("mamba").save_pretrained(folder)
    assert cli("inspect", folder, "--text", "hello", "--out", tmp_path / "out") == 0
    assert "no B'MOJO layer (kinds: ssm): no memory to show" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--task", "mqar", "--layer", "2"], "--layer 2 is out of range: the model has 2 layers (0-1)"),
    (["--task", "mqar", "--set", "vocab_size=80"], "uses 80 token ids but the model has vocab_size=61"),
    (["--task", "mqar", "--set", "num_kv_pairs"], "--set 'num_kv_pairs': write NAME=VALUE"),
    (["--task", "in_context_recall"], "was trained on 'mqar', not 'in_context_recall'"),
    (["--task", "mqar", "--examples", "0"], "--examples must be >= 1 and needs --task, got 0"),
    (["--text", "abc", "--examples", "2"], "--examples must be >= 1 and needs --task, got 2"),
])
def test_inspect_bad_input_is_one_clear_error(cli, saved_bmojo, tmp_path, capsys, argv, message):
    assert cli("inspect", saved_bmojo, *argv, "--out", tmp_path / "out") == 2
    assert message in capsys.readouterr().err


def test_inspect_refuses_a_folder_without_a_model_and_a_long_text(cli, tiny_model, tmp_path, capsys):
    assert cli("inspect", tmp_path, "--text", "x", "--out", tmp_path / "out") == 2
    assert "holds no model" in capsys.readouterr().err
    folder = tmp_path / "bytes"
    tiny_model("bmojo", vocab_size=ByteTokenizer().vocab_size).save_pretrained(folder)
    long_text = "abc " * 600
    with pytest.warns(UserWarning, match="no tokenizer files; assuming the byte tokenizer"):
        assert cli("inspect", folder, "--text", long_text, "--out", tmp_path / "out") == 2
    assert "the input is 2400 tokens, more than the limit of 2048; pass --max-tokens N" in capsys.readouterr().err
    with pytest.warns(UserWarning, match="no tokenizer files"):
        assert cli("inspect", folder, "--text", long_text, "--max-tokens", "100", "--out", tmp_path / "out") == 0
    assert len(json.loads((tmp_path / "out" / "inspect.json").read_text())["tokens"]) == 100


def test_html_page_renders_in_a_headless_browser_with_highlighted_tokens(cli, saved_bmojo, tmp_path):
    """Chromium (installed by scripts/test.sh where it is missing) opens the page: its DOM holds the kept tokens
    and a screenshot shows the highlight colour."""
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium is not installed (scripts/test.sh installs it where it can: root and apt-get)")
    out = tmp_path / "out"
    assert cli("inspect", saved_bmojo, "--task", "mqar", "--out", out) == 0
    page = (out / "inspect.html").as_uri()
    flags = [browser, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1200,800"]
    dom = subprocess.run([*flags, "--dump-dom", page], capture_output=True, text=True, timeout=60, check=True).stdout
    kept = sum(len(layer["kept"]) for layer in json.loads((out / "inspect.json").read_text())["layers"])
    assert kept > 0 and dom.count('class="t kept') == kept
    shot = tmp_path / "shot.png"
    subprocess.run([*flags, f"--screenshot={shot}", page], capture_output=True, timeout=60, check=True)
    from matplotlib.image import imread

    pixels = torch.from_numpy(imread(shot)[..., :3] * 255).round().reshape(-1, 3)
    highlight = torch.tensor([int(KEPT_COLOUR[i : i + 2], 16) for i in (1, 3, 5)], dtype=pixels.dtype)
    assert (pixels == highlight).all(1).sum() > 100  # the highlighted tokens' background, not a stray pixel
