"""Fixtures of tests/data/: the builtin corpus and a small BPE tokenizer trained on it (built once)."""

from __future__ import annotations

import pytest

from bmojo.data import BPETokenizer, Document, builtin_corpus, train_bpe


@pytest.fixture(scope="session")
def builtin() -> list[Document]:
    return builtin_corpus()


@pytest.fixture(scope="session")
def bpe(builtin: list[Document]) -> BPETokenizer:
    by_id = {d.doc_id: d.text for d in builtin}
    texts = [by_id[i][:3000] for i in ("os.py", "json/decoder.py", "collections/__init__.py", "pydoc:if")]
    return train_bpe(texts, vocab_size=400)
