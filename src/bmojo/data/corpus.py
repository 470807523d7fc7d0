"""Corpora (ordered lists of ``Document(doc_id, text)``) and the deterministic train/val/test split.

Documents whose text is empty or whitespace-only are dropped everywhere; a corpus with no
remaining document is a ValueError.
"""

from __future__ import annotations

import functools
import hashlib
import os
import sysconfig
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import NamedTuple

SPLITS = ("train", "validation", "test")
TEXT_SUFFIXES = (".txt", ".md", ".py", ".rst")
"""Files read as one document each (single files and folders)."""
TABLE_FORMATS = {".jsonl": "json", ".json": "json", ".parquet": "parquet", ".csv": "csv"}
"""File suffix -> ``datasets.load_dataset`` builder; one document per row."""
_DATASET_MARKERS = ("dataset_info.json", "state.json", "dataset_dict.json")
_EXCLUDED_STDLIB_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}


class Document(NamedTuple):
    """One corpus document; ``doc_id`` is unique within its corpus and drives the split."""

    doc_id: str
    text: str


def _non_empty(docs: list[Document], source: str) -> list[Document]:
    kept = [d for d in docs if d.text.strip()]
    if not kept:
        raise ValueError(f"corpus {source!r} is empty: {len(docs)} documents, none with non-blank "
                         "text; point it at files/rows that contain text")
    return kept


@functools.lru_cache(maxsize=1)
def _builtin_documents() -> tuple[Document, ...]:
    from pydoc_data.topics import topics

    root = Path(sysconfig.get_paths()["stdlib"])
    docs = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if _EXCLUDED_STDLIB_DIRS.intersection(rel.parts[:-1]):
            continue
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            continue
        docs.append(Document(rel.as_posix(), text))
    docs += [Document(f"pydoc:{name}", topics[name]) for name in sorted(topics)]
    return tuple(_non_empty(docs, "builtin"))


def builtin_corpus() -> list[Document]:
    """Download-free corpus: this interpreter's stdlib ``.py`` sources + ``pydoc_data`` topics.

    Sources under ``sysconfig.get_paths()["stdlib"]`` (ids: relative POSIX paths, e.g.
    ``"os.py"``, ``"json/decoder.py"``), sorted, excluding ``site-packages``/``dist-packages``,
    test suites (any ``test/``, ``tests/`` or ``idlelib/idle_test/`` directory), unreadable or
    non-UTF-8 files and blank files; then one document per help topic (ids ``"pydoc:TOPIC"``,
    sorted). CPython 3.11.7: 810 documents (731 sources + 79 topics), 12.58M characters,
    12.58M UTF-8 bytes (= byte-tokenizer tokens). Read once per process (cached in memory).
    """
    return list(_builtin_documents())


def _import_datasets() -> ModuleType:
    try:
        import datasets
    except ImportError as e:
        raise ImportError("loading this corpus needs the optional 'datasets' package: "
                          "pip install bmojo[datasets]") from e
    return datasets


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise ValueError(f"{path} is not valid UTF-8 text ({e}); convert it or remove it from the corpus") from e


def _table_documents(table, text_column: str, source: str, prefix: str = "") -> list[Document]:
    if text_column not in table.column_names:
        raise ValueError(f"{source} has no text column {text_column!r}; its columns are "
                         f"{table.column_names}; pass text_column=<one of them>")
    docs = []
    for i, text in enumerate(table[text_column]):
        if text is not None and not isinstance(text, str):
            raise ValueError(f"{source}: column {text_column!r} holds {type(text).__name__}, not text; "
                             "pass text_column=<a string column>")
        docs.append(Document(f"{prefix}{i}", text or ""))
    return docs


def _load_from_disk(path: Path, text_column: str) -> list[Document]:
    datasets = _import_datasets()
    loaded = datasets.load_from_disk(str(path))
    if isinstance(loaded, datasets.DatasetDict):
        return [doc for split in sorted(loaded)
                for doc in _table_documents(loaded[split], text_column, f"{path} [{split}]", f"{split}/")]
    return _table_documents(loaded, text_column, str(path))


def _load_folder(path: Path) -> list[Document]:
    files = sorted(
        (p.relative_to(path).as_posix(), p) for p in path.rglob("*")
        if p.suffix in TEXT_SUFFIXES and p.is_file()
        and not any(part.startswith(".") for part in p.relative_to(path).parts)
    )
    if not files:
        raise ValueError(f"corpus folder {path} contains no {'/'.join(TEXT_SUFFIXES)} files; "
                         "add some or point at another folder")
    return [Document(rel, _read_text(p)) for rel, p in files]


def load_corpus(spec: str | os.PathLike, text_column: str = "text") -> list[Document]:
    """Load a corpus; documents keep a deterministic order.

    ``spec`` is one of:

    * ``"builtin"``: ``builtin_corpus()``;
    * a ``.txt``/``.md``/``.py``/``.rst`` file: one document (id: file name);
    * a folder saved by ``datasets`` ``save_to_disk`` (has ``dataset_info.json``, ``state.json``
      or ``dataset_dict.json``): one document per row of ``text_column`` (ids: row index, or
      ``"split/index"`` for a DatasetDict, splits in sorted order);
    * any other folder: every ``.txt``/``.md``/``.py``/``.rst`` file below it, recursively,
      skipping hidden (``.``-prefixed) entries, sorted by relative path (ids: that path);
    * a ``.jsonl``/``.json``/``.parquet``/``.csv`` file: one document per row of
      ``text_column`` via ``datasets.load_dataset`` (ids: row index).

    Files are read as UTF-8. Blank documents are dropped. Raises FileNotFoundError for a
    missing path, ValueError for an empty corpus or unsupported file type, ImportError when
    ``datasets`` is needed but not installed.
    """
    if isinstance(spec, str) and spec == "builtin":
        return builtin_corpus()
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"corpus {str(spec)!r} does not exist; pass 'builtin', a text file, a "
                                "folder, a datasets save_to_disk folder or a .jsonl/.json/.parquet/.csv file")
    if path.is_dir():
        if any((path / marker).is_file() for marker in _DATASET_MARKERS):
            docs = _load_from_disk(path, text_column)
        else:
            docs = _load_folder(path)
    elif path.suffix in TEXT_SUFFIXES:
        docs = [Document(path.name, _read_text(path))]
    elif path.suffix in TABLE_FORMATS:
        table = _import_datasets().load_dataset(TABLE_FORMATS[path.suffix], data_files=str(path),
                                                split="train")
        docs = _table_documents(table, text_column, str(path))
    else:
        raise ValueError(f"unsupported corpus file type {path.suffix!r} ({path}); supported: "
                         f"{', '.join(TEXT_SUFFIXES)} (one document) and {', '.join(TABLE_FORMATS)} "
                         f"(one document per row of column {text_column!r})")
    return _non_empty(docs, str(spec))


def _score(seed: int, doc_id: str) -> float:
    digest = hashlib.sha256(f"{seed}\0{doc_id}".encode("utf-8", "surrogatepass")).digest()
    return int.from_bytes(digest[:8], "big") / 2.0**64


def split_documents(docs: Sequence[Document], fractions: Sequence[float] = (0.98, 0.01, 0.01),
                    seed: int = 0) -> dict[str, list[Document]]:
    """Split documents into ``{"train", "validation", "test"}`` by document, deterministically.

    Each document gets a score ``u`` in [0, 1) from ``sha256(f"{seed}\\0{doc_id}")`` (stable across
    processes and Python versions; independent of the other documents) and lands in train if
    ``u < f_train``, validation if ``u < f_train + f_validation``, else test. So adding or
    removing a document never moves another one, except for the small-corpus rule: with
    >= 3 documents, every split with a positive fraction is made non-empty by moving into it
    (checked in order test, validation, train) the document whose score is closest to that
    split's band, taken from a split holding >= 2 documents. Within a split, input order is kept.
    The splits partition ``docs``; ``fractions`` are three non-negative numbers summing to 1.
    """
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1.0) > 1e-6:
        raise ValueError(f"fractions must be three non-negative numbers (train, validation, test) "
                         f"summing to 1, got {tuple(fractions)}")
    scores = [_score(seed, d.doc_id) for d in docs]
    lo_val, lo_test = fractions[0], fractions[0] + fractions[1]
    bands = [(0.0, lo_val), (lo_val, lo_test), (lo_test, 1.0)]
    assign = [0 if u < lo_val else 1 if u < lo_test else 2 for u in scores]
    if len(docs) >= 3:
        for target in (2, 1, 0):
            counts = [assign.count(k) for k in range(3)]
            if fractions[target] > 0 and counts[target] == 0:
                lo, hi = bands[target]
                donors = [i for i, k in enumerate(assign) if counts[k] >= 2]
                assign[min(donors, key=lambda i: max(lo - scores[i], scores[i] - hi, 0.0))] = target
    return {name: [d for d, k in zip(docs, assign, strict=True) if k == s] for s, name in enumerate(SPLITS)}
