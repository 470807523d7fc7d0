"""Packing token streams into fixed-length blocks and the in-memory causal-LM dataset.

Convention (HF causal-LM style): each item is ``{"input_ids": (seq_len,), "labels": (seq_len,)}``
with ``labels`` equal to ``input_ids``; the model shifts internally (position ``t`` predicts
``labels[t + 1]``), so an item yields ``seq_len - 1`` next-token targets. With document boundaries
(``LMDataset(blocks, sep_id)``), items also carry ``seq_idx`` (the model restarts every state at each
document) and ``labels`` hold -100 at each document's first token, which nothing in its document predicts.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from ..ops.loss import IGNORE_INDEX
from .corpus import SPLITS, Document, load_corpus, split_documents
from .tokenizers import TokenIds, Tokenizer, load_tokenizer


def pack(token_ids_per_doc: Iterable[TokenIds], seq_len: int, sep_id: int) -> torch.Tensor:
    """Concatenate documents into one stream and cut it into blocks: LongTensor ``(N, seq_len)``.

    Stream = ``doc_0, sep_id, doc_1, sep_id, ..., doc_last, sep_id`` (every document, the last
    included, is followed by one ``sep_id``; callers pass ``tokenizer.eos_id``: byte 0x00 for
    ``ByteTokenizer``, the EOS token otherwise). Block ``i`` is ``stream[i*seq_len:(i+1)*seq_len]``;
    the trailing ``len(stream) % seq_len`` tokens are dropped, so ``N = len(stream) // seq_len``.
    Blocks may start or end mid-document. ValueError if the stream is shorter than ``seq_len``.
    """
    if seq_len < 2:
        raise ValueError(f"seq_len must be >= 2 (one next-token target needs two tokens), got {seq_len}")
    sep = np.array([sep_id], dtype=np.int64)
    pieces = []
    for ids in token_ids_per_doc:
        pieces += [np.asarray(ids).reshape(-1), sep]
    total = sum(len(p) for p in pieces)
    if total < seq_len:
        raise ValueError(f"corpus too small: {total} tokens (including {len(pieces) // 2} separators) "
                         f"but one sequence needs seq_len={seq_len}; use more text or a smaller seq_len")
    stream = np.concatenate(pieces, dtype=np.int64)
    n = total // seq_len
    return torch.from_numpy(stream[: n * seq_len].reshape(n, seq_len))


def document_index(blocks: torch.Tensor, sep_id: int) -> torch.Tensor:
    """seq_idx (N, seq_len) of packed blocks: the document index of each token, counted from 0 in every block;
    a separator belongs to the document it ends."""
    ends = (blocks == sep_id).long()
    return torch.cumsum(ends, dim=1) - ends


class LMDataset(Dataset):
    """In-memory fixed-length LM blocks. Item ``i``: ``{"input_ids", "labels"}``, LongTensors ``(seq_len,)``.

    ``labels`` is a copy of ``input_ids`` (the model shifts internally; see module docstring). With ``sep_id``
    (the packing separator), items also hold ``seq_idx`` and no label crosses a document boundary.
    """

    def __init__(self, blocks: torch.Tensor, sep_id: int | None = None) -> None:
        if blocks.ndim != 2 or blocks.dtype != torch.long:
            raise ValueError(f"blocks must be a 2-D LongTensor (N, seq_len), got {blocks.dtype} "
                             f"{tuple(blocks.shape)}")
        self.blocks = blocks
        self.seq_idx = None if sep_id is None else document_index(blocks, sep_id)

    @property
    def seq_len(self) -> int:
        return self.blocks.shape[1]

    @property
    def num_tokens(self) -> int:
        return self.blocks.numel()

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        row = self.blocks[index]
        if self.seq_idx is None:
            return {"input_ids": row, "labels": row.clone()}
        seq_idx = self.seq_idx[index]
        first = torch.zeros_like(row, dtype=torch.bool)
        first[1:] = seq_idx[1:] != seq_idx[:-1]
        return {"input_ids": row, "labels": row.masked_fill(first, IGNORE_INDEX), "seq_idx": seq_idx}


def build_lm_dataset(corpus: str | os.PathLike | Sequence[Document], tokenizer: str | os.PathLike | Tokenizer,
                     seq_len: int, split: str = "train", seed: int = 0,
                     fractions: Sequence[float] = (0.98, 0.01, 0.01), text_column: str = "text") -> LMDataset:
    """Load ``corpus`` (a ``load_corpus`` spec or documents), keep ``split`` of
    ``split_documents(docs, fractions, seed)``, tokenize it and ``pack`` it with ``tokenizer.eos_id``.

    ``tokenizer`` is a ``Tokenizer`` or a ``load_tokenizer`` spec. Tokens live in memory only
    (nothing is cached on disk). ValueError if ``split`` is unknown or its text is shorter than
    ``seq_len`` tokens.
    """
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; valid splits: {', '.join(SPLITS)}")
    docs = load_corpus(corpus, text_column) if isinstance(corpus, (str, os.PathLike)) else corpus
    tok = tokenizer if isinstance(tokenizer, Tokenizer) else load_tokenizer(tokenizer)
    part = split_documents(docs, fractions, seed)[split]
    try:
        blocks = pack(tok.encode_batch([d.text for d in part]), seq_len, tok.eos_id)
    except ValueError as e:
        raise ValueError(f"{split} split ({len(part)} documents): {e}") from e
    return LMDataset(blocks)
