"""Shared fixtures. Test modules never import from here: they take these fixtures as arguments.

Layout: tests/X/test_Y.py tests src/bmojo/X/Y.py (tests/test_Y.py tests src/bmojo/Y.py).

- `tiny_config(preset, **overrides)` / `tiny_model(preset, seed=0, **overrides)`: factories for the tiny models
  (sizes in TINY, memory sizes in MEMORY); `knob`: a (preset, overrides) pair of KNOBS, one test per entry.
- `rel(a, b)`: relative Frobenius error ||a - b|| / ||b||; `one_thread`: run a test with one torch thread.
- `cli(*argv)`: run the `bmojo` command in-process (arguments str()-ed), returns its exit code;
  `subprocess_env`: the environment for `bmojo` in a child process.
- `corpus`, `tiny_run_args`, `reference_run`, `losses`: a toy corpus, a short `bmojo train` run on it and its
  loss history (shared by tests/lm/ and tests/training/).
- `png_signature`: the first eight bytes of every PNG file.
- `brute_force_eidetic(eps_row, w, m_e, chunk)`: the eidetic memory of a chunk by its definition (the one
  brute-force reference of the memory rule).

Tolerances for bf16 autocast (the BF16_* constants of tests/ops/ and tests/models/). bf16 keeps 8 significant
bits, a unit roundoff of 2^-8 = 3.9e-3 per rounding. Under autocast the matmuls take bf16 inputs (rounded once)
and accumulate in fp32, while norm and softmax statistics, the SSD decays (cumsum, exp) and the carried scan
state stay fp32; so an output is off by a few roundoffs, not by a growing amount. We compare relative Frobenius
errors ||a - b|| / ||b||:
  logits: <= 2e-2 (5 roundoffs; measured 3e-3 .. 9e-3 on the tiny models),
  loss: <= 1e-3 relative (a mean over many tokens averages the rounding; measured ~3e-5),
  all gradients together: <= 5e-2 (a gradient passes through twice as many bf16 matmuls as the forward;
  measured <= 1.2e-2), and cosine similarity >= 0.999 (the update direction is the same; measured >= 0.99993).
Kernels in bf16 (SSD, short conv, blocked attention) against their fp32 reference twins, values and gradients:
<= 2e-2 relative.
Compiled and CUDA paths compute the same fp32 arithmetic in another order: 1e-4 .. 1e-3.
"""

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub (kernels, weights) in tests

import json  # noqa: E402
import random  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402

import bmojo  # noqa: E402

# Odd sizes on purpose: w = 8 does not divide L = 45 (5 chunks + 5), m_f = 3 and m_e = 5 do not divide w.
TINY = dict(
    vocab_size=61, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
    window_size=8, ssm_state_size=8, ssm_head_dim=16, ssm_chunk_size=16, intermediate_size=48,
)
MEMORY = {"bmojo_f": dict(num_fading_tokens=3), "bmojo": dict(num_fading_tokens=3, num_eidetic_tokens=5)}

# Config knobs beyond the presets, each with the preset it changes (name: (preset, overrides on top of TINY and
# MEMORY)). Every test that takes a `knob` argument runs once per entry (pytest_generate_tests below): causality,
# decoding == parallel forward, packed documents, the static step (refused with a store), the bounded cache (its working
# memory, with a store).
KNOBS = {
    "fading_span=w": ("bmojo", dict(fading_span=8)),
    "fading_span=3,m_f=0": ("bmojo_f", dict(fading_span=3, num_fading_tokens=0)),
    "fading_span=w,odd_w": ("bmojo", dict(window_size=7, ssm_chunk_size=5, fading_span=7)),
    "eidetic_position=edge": ("bmojo", dict(eidetic_position="edge")),
    "edge,m_f=0,fading_span=5": ("bmojo", dict(eidetic_position="edge", num_fading_tokens=0, fading_span=5)),
    "store,r=4": ("bmojo", dict(num_retrieved_tokens=4)),
    "store,r=2,evicted,odd_w": ("bmojo", dict(num_retrieved_tokens=2, store_write="evicted", window_size=7)),
    "store,r=3,no_rope,kv_heads=4": ("bmojo", dict(num_retrieved_tokens=3, pos_encoding="none", num_key_value_heads=4)),
    "store,r=4,retrieved_original": ("bmojo", dict(num_retrieved_tokens=4, retrieved_position="original")),
    "store,r=2,retrieved_edge,odd_w": ("bmojo", dict(num_retrieved_tokens=2, retrieved_position="edge", window_size=7)),
    "store,horizon=20,bf16": ("bmojo", dict(num_retrieved_tokens=4, store_horizon=20, store_dtype="bfloat16")),
    "store,regime,R=2": ("bmojo", dict(num_retrieved_tokens=4, store_regime_threshold=1.1, store_regime_chunks=2)),
    "store,regime,horizon,evicted,fp16,retrieved_original,odd_w": (
        "bmojo", dict(num_retrieved_tokens=2, store_write="evicted", window_size=7, store_regime_threshold=1.05,
                      store_regime_chunks=1, store_horizon=30, store_dtype="float16", retrieved_position="original")),
    "fading_residual_gate": ("bmojo", dict(fading_residual_gate=True)),
    "fading_residual_gate,scale,bmojo_f,odd_w": (
        "bmojo_f", dict(fading_residual_gate=True, fading_residual_gate_scale=10.0, window_size=7)),
}


def pytest_generate_tests(metafunc):
    if "knob" in metafunc.fixturenames:
        metafunc.parametrize("knob", list(KNOBS.values()), ids=list(KNOBS))


# `bmojo train --set` overrides for a tiny model (close to TINY; vocab_size comes from the tokenizer).
TINY_TRAIN_SETTINGS = [
    "hidden_size=32", "num_hidden_layers=2", "num_attention_heads=4", "window_size=8", "ssm_state_size=8",
    "ssm_head_dim=16", "ssm_chunk_size=16", "intermediate_size=48", "num_fading_tokens=3", "num_eidetic_tokens=4",
]
# A short run on the toy corpus: 12 steps of 8 x 32 tokens, every step logged, checkpoints every 4 steps.
TINY_RUN_ARGS = (
    "--preset", "bmojo", "--seq-len", "32", "--batch-size", "8", "--max-steps", "12", "--lr", "3e-3",
    "--log-every", "1", "--save-every", "4", "--keep-checkpoints", "3", "--eval-sequences", "8", "--threads", "1",
    "--no-progress", "--set", *TINY_TRAIN_SETTINGS,
)


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(1234)


@pytest.fixture(autouse=True, scope="session")
def _compiled_step_dir(tmp_path_factory):
    """Compiled decode steps go to a folder of the test session, not the user's cache (bmojo.models.static)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("BMOJO_CACHE_DIR", str(tmp_path_factory.mktemp("bmojo_cache")))
        yield


# ---------------------------------------------------------------- tiny models


@pytest.fixture(scope="session")
def brute_force_eidetic():
    """`brute_force_eidetic(eps_row, w, m_e, chunk)`: sorted positions of the top m_e of chunk c's history
    H_c = {p <= c w - w} by (innovation score, position), descending: the eidetic rule by its definition."""

    def top(eps_row, w: int, m_e: int, chunk: int) -> list[int]:
        hist = [(float(eps_row[p]), p) for p in range(0, chunk * w - w + 1) if p < len(eps_row)]
        return sorted(p for _, p in sorted(hist, reverse=True)[:m_e])

    return top


@pytest.fixture(scope="session")
def tiny_config():
    """`tiny_config(preset, **overrides)`: the preset at the TINY sizes (and MEMORY sizes for B'MOJO presets)."""

    def make(preset: str, **overrides) -> bmojo.BMojoConfig:
        return bmojo.BMojoConfig.from_preset(preset, **{**TINY, **MEMORY.get(preset, {}), **overrides})

    return make


@pytest.fixture(scope="session")
def tiny_model(tiny_config):
    """`tiny_model(preset, seed=0, **overrides)`: a tiny model in eval mode, weights drawn after manual_seed(seed);
    the residual gates (`fading_residual_gate`, zero at init) drawn too, so that the tests exercise their path."""

    def make(preset: str, seed: int = 0, **overrides) -> bmojo.BMojoForCausalLM:
        torch.manual_seed(seed)
        model = bmojo.BMojoForCausalLM(tiny_config(preset, **overrides)).eval()
        with torch.no_grad():
            for name, param in model.named_parameters():
                if name.endswith("residual_gate"):
                    param.normal_()
        return model

    return make


# ---------------------------------------------------------------- numerics


@pytest.fixture(scope="session")
def rel():
    """`rel(a, b)`: the relative Frobenius error ||a - b|| / ||b||, computed in float64."""

    def rel(a: torch.Tensor, b: torch.Tensor) -> float:
        a, b = a.double(), b.double()
        return ((a - b).norm() / b.norm()).item()

    return rel


@pytest.fixture
def one_thread():
    """Tiny tensors: one thread is as fast, and immune to a busy machine descheduling the second one."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def png_signature() -> bytes:
    return b"\x89PNG\r\n\x1a\n"


# ---------------------------------------------------------------- the bmojo command


@pytest.fixture(scope="session")
def cli():
    """`cli(*argv)`: `bmojo ARGV...` in this process (each argument str()-ed); returns the exit code."""
    from bmojo.cli import main

    def run(*argv) -> int:
        return main([str(a) for a in argv])

    return run


@pytest.fixture
def cli_exit(cli):
    """`cli_exit(*argv)`: like `cli`, with argparse's SystemExit for a flag it rejects returned as the exit code."""

    def run(*argv) -> int:
        try:
            return cli(*argv)
        except SystemExit as stop:
            return stop.code

    return run


@pytest.fixture
def subprocess_env() -> dict:
    """Environment for a `bmojo` child process: offline, one thread, and this checkout's bmojo importable."""
    src = str(Path(bmojo.__file__).resolve().parents[1])
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1", TOKENIZERS_PARALLELISM="false")
    env["PYTHONPATH"] = src + os.pathsep + env.get("PYTHONPATH", "")
    return env


# ---------------------------------------------------------------- a short training run


@pytest.fixture(scope="session")
def tiny_run_args() -> tuple[str, ...]:
    """`bmojo train` arguments of the short reference run (add --corpus and --out)."""
    return TINY_RUN_ARGS


@pytest.fixture(scope="session")
def losses():
    """`losses(run_dir)`: the per-step training losses of a run (checks that every step was logged)."""

    def read(run_dir: Path) -> list[float]:
        history = json.loads((run_dir / "metrics.json").read_text())["history"]
        assert [h["step"] for h in history] == list(range(1, len(history) + 1))
        return [h["loss"] for h in history]

    return read


@pytest.fixture(scope="session")
def corpus(tmp_path_factory) -> Path:
    """Eight documents of word salad with some structure (about 5 KB each)."""
    root = tmp_path_factory.mktemp("corpus")
    rng = random.Random(0)
    words = "the cat sat on a mat while dogs ran far away and birds sang loudly in tall green trees".split()
    for i in range(8):
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 12))) + "." for _ in range(120)]
        (root / f"doc{i}.txt").write_text("\n".join(lines), encoding="utf-8")
    return root


@pytest.fixture(scope="session")
def reference_run(cli, corpus, tiny_run_args, tmp_path_factory) -> Path:
    """An uninterrupted run (single process) that the resume and DDP tests compare against."""
    out = tmp_path_factory.mktemp("reference") / "run"
    assert cli("train", *tiny_run_args, "--corpus", corpus, "--out", out) == 0
    return out
