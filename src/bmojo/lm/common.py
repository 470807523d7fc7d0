"""What `bmojo train`, `bmojo eval` and `bmojo generate` share: the run folder, corpus splits, token
streams, bits-per-byte accounting, the unigram baseline and the range checks of numeric flags (`number`).

A run folder (`bmojo train --out DIR`) holds:

- `config.json`, `model.safetensors`, `manifest.json` (their sizes and sha256): the final model; written
  when training ends (not after a diverged run). `load_run(DIR)` is the safe way to load it: it checks the
  manifest and falls back to the newest valid checkpoint when the final model is missing or damaged;
  `AutoModelForCausalLM.from_pretrained(DIR)` (after `import bmojo`) loads it without those checks.
- `bmojo_tokenizer.json` (+ `tokenizer.json` for BPE, HF files for an HF tokenizer): the tokenizer,
  written before training starts (`bmojo.data.load_tokenizer(DIR)`).
- `run.json`: the data settings (corpus, text column, tokenizer, seq_len, split seed and fractions), the
  unigram baseline, the parameter count; written before training starts.
- `metrics.json`: training history, evaluations, timing, the settings that ran (`train_config`) and their
  changes on resume (`changes`), non-finite steps; written when training ends (also when it diverged).
- `checkpoints/step-N/`: resumable checkpoints (see `bmojo.training`).
- `eval.json`, `length_generalization.{md,png}`: written by `bmojo eval`.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import uuid
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors import SafetensorError

from ..data import ByteTokenizer, Document, Tokenizer, load_corpus, load_tokenizer, pack, split_documents
from ..data.tokenizers import META_FILE

RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
EVAL_FILE = "eval.json"
DEFAULT_FRACTIONS = (0.98, 0.01, 0.01)


# ---------------------------------------------------------------- flags

def number(kind: type, *, gt: float | None = None, ge: float | None = None, lt: float | None = None,
           le: float | None = None) -> Callable[[str], int | float]:
    """An argparse `type`: the text as `kind` (int or float), finite and within the given bounds; otherwise an
    argparse error that states the allowed range."""
    bounds = [f"{op} {b:g}" for op, b in ((">", gt), (">=", ge), ("<", lt), ("<=", le)) if b is not None]
    allowed = f"{'an integer' if kind is int else 'a finite number'}{' ' if bounds else ''}{' and '.join(bounds)}"

    def parse(text: str) -> int | float:
        try:
            value = kind(text)
        except ValueError:
            value = None
        if (value is None or not math.isfinite(value) or (gt is not None and value <= gt)
                or (ge is not None and value < ge) or (lt is not None and value >= lt)
                or (le is not None and value > le)):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        return value
    return parse


# ---------------------------------------------------------------- files

def write_json(path: Path, obj) -> None:
    """Write JSON atomically (temp file + fsync + rename)."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=1)
        f.write("\n")
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_json(path: Path) -> dict:
    """The JSON content of `path`; ValueError naming the file if it is not valid JSON."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err})") from err


# ---------------------------------------------------------------- corpus and tokens

def corpus_splits(docs: Sequence[Document], fractions: Sequence[float] = DEFAULT_FRACTIONS,
                  seed: int = 0) -> dict[str, list[Document]]:
    """`split_documents`, except that a corpus of 1 or 2 documents (too few to split by document) is all
    train, with a warning: training works, validation and test are empty."""
    if len(docs) < 3:
        warnings.warn(f"the corpus has {len(docs)} document(s), too few to split by document: all of it is "
                      "training data, and there is no validation or test split (use a folder of >= 3 files)",
                      stacklevel=2)
        return {"train": list(docs), "validation": [], "test": []}
    return split_documents(docs, fractions, seed)


def load_split(corpus: str, split: str, fractions: Sequence[float] = DEFAULT_FRACTIONS, seed: int = 0,
               text_column: str = "text") -> list[Document]:
    """The documents of one split (train | validation | test) of a corpus, as `corpus_splits` cuts it."""
    return corpus_splits(load_corpus(corpus, text_column), fractions, seed)[split]


def token_blocks(docs: Sequence[Document], tokenizer: Tokenizer, seq_len: int, what: str) -> torch.Tensor:
    """`pack` the documents into (N, seq_len) blocks; ValueError naming `what` when there is too little text."""
    if not docs:
        raise ValueError(f"the {what} is empty (no documents); use a larger corpus or another split")
    try:
        return pack(tokenizer.encode_batch([d.text for d in docs]), seq_len, tokenizer.eos_id)
    except ValueError as err:
        raise ValueError(f"{what} ({len(docs)} documents): {err}") from err


def bytes_per_token(docs: Sequence[Document], tokenizer: Tokenizer) -> float:
    """UTF-8 bytes of the packed stream per token (each separator counts as one byte).

    Bits per byte = (nats per token) * (tokens per byte) / ln 2; with the byte tokenizer this is exactly
    loss / ln 2."""
    if isinstance(tokenizer, ByteTokenizer) or not docs:
        return 1.0
    n_bytes = sum(len(d.text.encode("utf-8")) + 1 for d in docs)
    n_tokens = sum(len(ids) + 1 for ids in tokenizer.encode_batch([d.text for d in docs]))
    return n_bytes / n_tokens


def bits_per_byte(loss_nats_per_token: float, bytes_per_tok: float) -> float:
    """A loss in nats per token as bits per UTF-8 byte of text."""
    return loss_nats_per_token / math.log(2) / bytes_per_tok


def unigram_entropy(blocks: torch.Tensor, vocab_size: int) -> float:
    """Entropy (nats/token) of the token distribution of `blocks`: the loss of the best context-free model."""
    counts = np.bincount(blocks.reshape(-1).numpy(), minlength=vocab_size).astype(np.float64)
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


# ---------------------------------------------------------------- run folders

def _try_load(folder: Path, **overrides) -> tuple[torch.nn.Module | None, str | None]:
    """(the model saved in `folder`, its config fields replaced by `overrides`, None), or (None, why it does not
    load, in one line) when its files are damaged: truncated weights, a config.json that is not valid JSON or not a
    valid config."""
    from transformers import AutoModelForCausalLM

    import bmojo  # noqa: F401  (registers the model with the Auto classes)

    from ..training import quiet_hf_progress

    try:
        with quiet_hf_progress():
            config = bmojo.BMojoConfig.from_saved(folder, **overrides) if overrides else None
            return AutoModelForCausalLM.from_pretrained(str(folder), config=config), None
    except (OSError, ValueError, RuntimeError, SafetensorError) as err:
        return None, f"{type(err).__name__}: {' '.join(str(err).split())}"


def load_model(run_dir: str | os.PathLike, **overrides) -> torch.nn.Module:
    """The model of a run folder: its final model if that matches its manifest and loads; else its newest valid
    checkpoint, with a warning saying why (an interrupted run can still be evaluated or sampled). `overrides`
    replace config fields that hold no weights (e.g. num_retrieved_tokens=0: the storage tier off).
    FileNotFoundError if the folder holds no model; ValueError in one line if the only model is damaged."""
    from ..training import MANIFEST_FILE, latest_valid_checkpoint, verify_manifest

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist")
    finished = (run_dir / "config.json").is_file() and any(run_dir.glob("model*.safetensors"))
    if not finished:
        problem = "has no final model (training did not finish)"
    else:
        damage = verify_manifest(run_dir) if (run_dir / MANIFEST_FILE).is_file() else None
        if damage is None:
            model, damage = _try_load(run_dir, **overrides)
            if model is not None:
                return model
        problem = f"has a damaged final model ({damage})"
    ckpt = latest_valid_checkpoint(run_dir)
    if ckpt is None:
        if not finished:
            raise FileNotFoundError(f"{run_dir} holds no model: neither config.json + model.safetensors nor a "
                                    "valid checkpoint; point at a folder written by `bmojo train --out`")
        raise ValueError(f"{run_dir} {problem}, and no valid checkpoint to fall back to")
    warnings.warn(f"{run_dir} {problem}; using checkpoint {ckpt.name}", stacklevel=2)
    model, damage = _try_load(ckpt, **overrides)
    if model is None:
        raise ValueError(f"{run_dir} {problem}, and checkpoint {ckpt.name} does not load either ({damage})")
    return model


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu", **overrides):
    """(model in eval mode, tokenizer, run info) of a run folder, the model as `load_model(run_dir, **overrides)`
    finds it; ValueError on a vocabulary mismatch or a damaged run (one line)."""
    run_dir = Path(run_dir)
    model = load_model(run_dir, **overrides).to(device).eval()
    tokenizer = run_tokenizer(run_dir, model.config.vocab_size)
    info = read_json(run_dir / RUN_FILE) if (run_dir / RUN_FILE).is_file() else {}
    return model, tokenizer, info


def run_tokenizer(run_dir: str | os.PathLike, vocab_size: int) -> Tokenizer:
    """The tokenizer saved in a run folder (the byte tokenizer, with a warning, if it has none); ValueError if its
    vocabulary is not the model's `vocab_size`."""
    run_dir = Path(run_dir)
    if any((run_dir / name).is_file() for name in (META_FILE, "tokenizer.json", "tokenizer_config.json")):
        tokenizer = load_tokenizer(run_dir)
    else:
        warnings.warn(f"{run_dir} has no tokenizer files; assuming the byte tokenizer", stacklevel=3)
        tokenizer = ByteTokenizer()
    check_vocab(tokenizer, vocab_size, f"the model in {run_dir}")
    return tokenizer


def check_vocab(tokenizer: Tokenizer, vocab_size: int, what: str) -> None:
    """ValueError if the tokenizer's vocabulary size differs from `what`'s `vocab_size`."""
    if tokenizer.vocab_size != vocab_size:
        raise ValueError(f"vocabulary mismatch: the tokenizer ({tokenizer!r}) has {tokenizer.vocab_size} ids but "
                         f"{what} has vocab_size={vocab_size}; use the tokenizer the model was trained with "
                         "(or a model config with the tokenizer's vocab_size)")

