"""Tokenizers behind one small interface: byte-level (default), locally trained BPE, local HF.

Every tokenizer maps ``str -> list[int]`` and back, reports ``vocab_size`` (ids lie in
``[0, vocab_size)``), names an end-of-document id ``eos_id`` used as the packing separator,
and can ``save(directory)`` so that ``load_tokenizer(directory)`` rebuilds it. Nothing is
downloaded: BPE is trained locally and HF tokenizers are read from local paths only.
"""

from __future__ import annotations

import json
import os
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

if TYPE_CHECKING:
    import tokenizers
    from transformers import PreTrainedTokenizerBase

META_FILE = "bmojo_tokenizer.json"
"""Small JSON file written by ``save``; ``{"kind": "byte" | "bpe" | "hf", ...}``."""
EOS_TOKEN = "<|endoftext|>"
"""End-of-document special token added by ``train_bpe``."""

TokenIds = Sequence[int] | np.ndarray | torch.Tensor


def _to_list(ids: TokenIds) -> list[int]:
    if isinstance(ids, (torch.Tensor, np.ndarray)):
        return ids.tolist()
    return list(ids)


def _write_meta(directory: str | os.PathLike, **meta: Any) -> Path:
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    (path / META_FILE).write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
    return path


class Tokenizer(ABC):
    """Common interface. ``encode``/``decode`` are inverse on valid text (see subclasses)."""

    kind: str

    @property
    @abstractmethod
    def vocab_size(self) -> int:
        """Number of ids; every id is in ``[0, vocab_size)``."""

    @property
    @abstractmethod
    def eos_id(self) -> int:
        """Id placed after every document when packing (see ``bmojo.data.pack``)."""

    @abstractmethod
    def encode(self, text: str) -> list[int]:
        """Text -> ids. Adds no special tokens."""

    @abstractmethod
    def decode(self, ids: TokenIds) -> str:
        """Ids -> text. Special tokens are kept, not skipped."""

    @abstractmethod
    def save(self, directory: str | os.PathLike) -> None:
        """Write ``bmojo_tokenizer.json`` (+ tokenizer files) so ``load_tokenizer(directory)`` reloads it."""

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Encode many texts; one 1-D integer array per text (same ids as ``encode``)."""
        return [np.asarray(self.encode(t), dtype=np.int64) for t in texts]


class ByteTokenizer(Tokenizer):
    """UTF-8 bytes as ids: vocab 256, no special tokens.

    ``eos_id`` is byte 0x00 (NUL), so the vocabulary stays 256; a literal NUL inside a
    document is therefore indistinguishable from a document boundary once packed.
    ``encode`` raises ``UnicodeEncodeError`` on lone surrogates (not valid Unicode text).
    ``decode`` uses ``errors="replace"``: invalid UTF-8 (e.g. sampled ids cut mid-character)
    becomes U+FFFD instead of raising. Use ``encode_bytes``/``decode_bytes`` for exact bytes.
    """

    kind = "byte"

    @property
    def vocab_size(self) -> int:
        return 256

    @property
    def eos_id(self) -> int:
        return 0

    def encode(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))

    def decode(self, ids: TokenIds) -> str:
        return self.decode_bytes(ids).decode("utf-8", errors="replace")

    def encode_bytes(self, data: bytes) -> list[int]:
        """Raw bytes -> ids (identity on byte values)."""
        return list(data)

    def decode_bytes(self, ids: TokenIds) -> bytes:
        """Ids -> raw bytes; exact inverse of ``encode_bytes``. Raises ValueError outside 0..255."""
        if isinstance(ids, (torch.Tensor, np.ndarray)):
            ids = ids.tolist()
        return bytes(ids)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        """Zero-copy ``uint8`` views of each text's UTF-8 bytes (fast path, no Python loop per char)."""
        return [np.frombuffer(t.encode("utf-8"), dtype=np.uint8) for t in texts]

    def save(self, directory: str | os.PathLike) -> None:
        """The meta file, plus the same tokenizer as an HF one (`bmojo.BMojoByteTokenizer`), so that the folder
        also serves `AutoTokenizer` and `pipeline("text-generation", model=folder)`."""
        from ..models.tokenization import BMojoByteTokenizer

        _write_meta(directory, kind=self.kind)
        BMojoByteTokenizer().save_pretrained(directory)

    def __repr__(self) -> str:
        return "ByteTokenizer()"


class BPETokenizer(Tokenizer):
    """Wraps a ``tokenizers.Tokenizer`` (``train_bpe`` makes a byte-level BPE one).

    Text that spells a special token (e.g. ``"<|endoftext|>"``) is encoded as ordinary text,
    so ``decode(encode(s)) == s`` for every string with a byte-level BPE.
    ``eos_id`` is the id of ``eos_token``; ValueError if the vocabulary lacks it.
    """

    kind = "bpe"

    def __init__(self, tokenizer: tokenizers.Tokenizer, eos_token: str = EOS_TOKEN) -> None:
        self.tokenizer = tokenizer
        self.tokenizer.encode_special_tokens = True
        self.eos_token = eos_token

    @property
    def vocab_size(self) -> int:
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def eos_id(self) -> int:
        eos = self.tokenizer.token_to_id(self.eos_token)
        if eos is None:
            raise ValueError(f"tokenizer has no end-of-document token {self.eos_token!r}; "
                             "pass eos_token=<a token in its vocabulary>")
        return eos

    def encode(self, text: str) -> list[int]:
        return self.tokenizer.encode(text, add_special_tokens=False).ids

    def decode(self, ids: TokenIds) -> str:
        return self.tokenizer.decode(_to_list(ids), skip_special_tokens=False)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        encodings = self.tokenizer.encode_batch_fast(list(texts), add_special_tokens=False)
        return [np.asarray(e.ids, dtype=np.int64) for e in encodings]

    def save(self, directory: str | os.PathLike) -> None:
        path = _write_meta(directory, kind=self.kind, eos_token=self.eos_token)
        self.tokenizer.save(str(path / "tokenizer.json"))

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, eos_token={self.eos_token!r})"


class HFTokenizer(Tokenizer):
    """Wraps a ``transformers`` tokenizer (e.g. from ``AutoTokenizer.from_pretrained(local_dir)``).

    Encodes with ``add_special_tokens=False, split_special_tokens=True`` and decodes with
    ``skip_special_tokens=False, clean_up_tokenization_spaces=False``, so round-trips are as
    exact as the underlying tokenizer allows. ``vocab_size`` counts added tokens.
    ``eos_id`` is ``eos_token_id``, else ``sep_token_id``, else ValueError.
    """

    kind = "hf"

    def __init__(self, tokenizer: PreTrainedTokenizerBase) -> None:
        self.tokenizer = tokenizer

    @property
    def vocab_size(self) -> int:
        return len(self.tokenizer)

    @property
    def eos_id(self) -> int:
        for eos in (self.tokenizer.eos_token_id, self.tokenizer.sep_token_id):
            if eos is not None:
                return eos
        raise ValueError("HF tokenizer has neither eos_token nor sep_token; set tokenizer.eos_token "
                         "to a token in its vocabulary")

    def encode(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"]

    def decode(self, ids: TokenIds) -> str:
        return self.tokenizer.decode(_to_list(ids), skip_special_tokens=False,
                                     clean_up_tokenization_spaces=False)

    def encode_batch(self, texts: Sequence[str]) -> list[np.ndarray]:
        out = self.tokenizer(list(texts), add_special_tokens=False, split_special_tokens=True)
        return [np.asarray(ids, dtype=np.int64) for ids in out["input_ids"]]

    def save(self, directory: str | os.PathLike) -> None:
        path = _write_meta(directory, kind=self.kind)
        self.tokenizer.save_pretrained(str(path))

    def __repr__(self) -> str:
        return f"HFTokenizer({type(self.tokenizer).__name__}, vocab_size={self.vocab_size})"


def train_bpe(texts: Iterable[str], vocab_size: int, *, min_frequency: int = 2,
              eos_token: str = EOS_TOKEN) -> BPETokenizer:
    """Train a byte-level BPE locally (deterministic for the same texts and arguments).

    The vocabulary holds ``eos_token`` (id 0), the 256 byte symbols and learned merges;
    its size is ``<= vocab_size`` (smaller when the texts run out of merges).
    Round-trip ``decode(encode(s)) == s`` is exact for any string.
    """
    from tokenizers import Tokenizer as RawTokenizer
    from tokenizers import decoders, models, pre_tokenizers, trainers

    if vocab_size < 257:
        raise ValueError(f"vocab_size={vocab_size} is too small for byte-level BPE: need >= 257 "
                         "(256 byte symbols + the end-of-document token)")
    tokenizer = RawTokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency,
                                  special_tokens=[eos_token], show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tokenizer.train_from_iterator(texts, trainer)
    return BPETokenizer(tokenizer, eos_token=eos_token)


_SPEC_HELP = ("expected 'byte', a directory written by Tokenizer.save / save_pretrained "
              "(bmojo_tokenizer.json, tokenizer_config.json or tokenizer.json), or a tokenizer.json "
              "file; train a BPE first with train_bpe(texts, vocab_size) and save it")


def _load_hf(path: Path) -> HFTokenizer:
    from transformers import AutoTokenizer

    return HFTokenizer(AutoTokenizer.from_pretrained(str(path), local_files_only=True))


def _load_tokenizers_file(path: Path, eos_token: str = EOS_TOKEN) -> BPETokenizer:
    from tokenizers import Tokenizer as RawTokenizer

    return BPETokenizer(RawTokenizer.from_file(str(path)), eos_token=eos_token)


def load_tokenizer(spec: str | os.PathLike) -> Tokenizer:
    """``"byte"`` -> ``ByteTokenizer``; a saved directory or ``tokenizer.json`` path -> that tokenizer.

    Directory resolution: ``bmojo_tokenizer.json`` (its ``kind``) first, else
    ``tokenizer_config.json`` (HF, via ``AutoTokenizer``), else ``tokenizer.json`` (``tokenizers``).
    ``"bpe"`` alone is a ValueError: a BPE must be trained (``train_bpe``) and saved first.
    """
    if isinstance(spec, str) and spec == "byte":
        return ByteTokenizer()
    if isinstance(spec, str) and spec == "bpe":
        raise ValueError("tokenizer 'bpe' must be trained first: tok = train_bpe(texts, vocab_size); "
                         "tok.save(directory); then load_tokenizer(directory)")
    path = Path(spec)
    if path.is_file() and path.suffix == ".json":
        return _load_tokenizers_file(path)
    if not path.is_dir():
        raise ValueError(f"unknown tokenizer {str(spec)!r}: {_SPEC_HELP}")
    meta_path = path / META_FILE
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        kind = meta.get("kind")
        if kind == ByteTokenizer.kind:
            return ByteTokenizer()
        if kind == BPETokenizer.kind:
            return _load_tokenizers_file(path / "tokenizer.json", meta.get("eos_token", EOS_TOKEN))
        if kind == HFTokenizer.kind:
            return _load_hf(path)
        raise ValueError(f"{meta_path} names unknown kind {kind!r}; valid kinds: 'byte', 'bpe', 'hf'")
    if (path / "tokenizer_config.json").is_file():
        return _load_hf(path)
    if (path / "tokenizer.json").is_file():
        return _load_tokenizers_file(path / "tokenizer.json")
    raise ValueError(f"no tokenizer found in directory {str(path)!r}: {_SPEC_HELP}")
