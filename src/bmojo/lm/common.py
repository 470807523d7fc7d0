"""What `bmojo train`, `bmojo eval` and `bmojo generate` share: the run folder, corpus splits, token
streams, bits-per-byte accounting and the unigram baseline.

A run folder (`bmojo train --out DIR`) holds:

- `config.json`, `model.safetensors`: the final model (`AutoModelForCausalLM.from_pretrained(DIR)` after
  `import bmojo`); written when training ends.
- `bmojo_tokenizer.json` (+ `tokenizer.json` for BPE, HF files for an HF tokenizer): the tokenizer,
  written before training starts (`bmojo.data.load_tokenizer(DIR)`).
- `run.json`: the data settings (corpus, text column, tokenizer, seq_len, split seed and fractions), the
  unigram baseline, the parameter count; written before training starts.
- `metrics.json`: training history, evaluations, timing; written when training ends.
- `checkpoints/step-N/`: resumable checkpoints (see `bmojo.training`).
- `eval.json`, `length_generalization.{md,png}`: written by `bmojo eval`.
"""

from __future__ import annotations

import json
import math
import os
import uuid
import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from ..data import ByteTokenizer, Document, Tokenizer, load_corpus, load_tokenizer, pack, split_documents
from ..data.tokenizers import META_FILE

RUN_FILE = "run.json"
METRICS_FILE = "metrics.json"
EVAL_FILE = "eval.json"
DEFAULT_FRACTIONS = (0.98, 0.01, 0.01)


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

def model_weights_dir(run_dir: Path) -> Path:
    """Where the weights of a run live: the run folder itself once training finished, else its newest
    valid checkpoint (an interrupted run can still be evaluated or sampled)."""
    from ..training import latest_valid_checkpoint

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run folder {str(run_dir)!r} does not exist")
    if (run_dir / "config.json").is_file() and any(run_dir.glob("model*.safetensors")):
        return run_dir
    ckpt = latest_valid_checkpoint(run_dir)
    if ckpt is None:
        raise FileNotFoundError(f"{run_dir} holds no model: neither config.json + model.safetensors nor a valid "
                                "checkpoint; point at a folder written by `bmojo train --out`")
    warnings.warn(f"{run_dir} has no final model (training did not finish); using checkpoint {ckpt.name}",
                  stacklevel=2)
    return ckpt


def load_run(run_dir: str | os.PathLike, device: str | torch.device = "cpu"):
    """(model in eval mode, tokenizer, run info) of a run folder; ValueError on a vocabulary mismatch."""
    from transformers import AutoModelForCausalLM

    import bmojo  # noqa: F401  (registers the model with the Auto classes)

    run_dir = Path(run_dir)
    weights = model_weights_dir(run_dir)
    from ..training import quiet_hf_progress

    with quiet_hf_progress():
        model = AutoModelForCausalLM.from_pretrained(str(weights)).to(device).eval()
    if any((run_dir / name).is_file() for name in (META_FILE, "tokenizer.json", "tokenizer_config.json")):
        tokenizer = load_tokenizer(run_dir)
    else:
        warnings.warn(f"{run_dir} has no tokenizer files; assuming the byte tokenizer", stacklevel=2)
        tokenizer = ByteTokenizer()
    check_vocab(tokenizer, model.config.vocab_size, f"the model in {run_dir}")
    info = read_json(run_dir / RUN_FILE) if (run_dir / RUN_FILE).is_file() else {}
    return model, tokenizer, info


def check_vocab(tokenizer: Tokenizer, vocab_size: int, what: str) -> None:
    """ValueError if the tokenizer's vocabulary size differs from `what`'s `vocab_size`."""
    if tokenizer.vocab_size != vocab_size:
        raise ValueError(f"vocabulary mismatch: the tokenizer ({tokenizer!r}) has {tokenizer.vocab_size} ids but "
                         f"{what} has vocab_size={vocab_size}; use the tokenizer the model was trained with "
                         "(or a model config with the tokenizer's vocab_size)")

