"""bmojo.data.corpus: the builtin corpus, loading folders, files and `datasets` formats, and the document split
(deterministic, pinned to SHA-256, by document, stable under removal)."""

from __future__ import annotations

import json
import sys

import pytest

from bmojo.data import Document, load_corpus, split_documents


def test_builtin_corpus_contents(builtin: list[Document]) -> None:
    ids = [d.doc_id for d in builtin]
    assert len(ids) == len(set(ids)) > 300
    assert {"os.py", "json/decoder.py", "pydoc:if"} <= set(ids)
    sources = [i for i in ids if not i.startswith("pydoc:")]
    topics = [i for i in ids if i.startswith("pydoc:")]
    assert sources == sorted(sources) and topics == sorted(topics) and ids == sources + topics
    for doc_id in sources:
        dirs = doc_id.split("/")[:-1]
        assert not {"test", "tests", "idle_test", "site-packages"} & set(dirs), doc_id
    assert all(d.text.strip() for d in builtin)
    assert "def makedirs" in dict(builtin)["os.py"]
    assert sum(len(d.text) for d in builtin) > 1_000_000
    assert load_corpus("builtin") == builtin


def test_load_corpus_folder_and_file(tmp_path) -> None:
    (tmp_path / "sub" / "deeper").mkdir(parents=True)
    (tmp_path / ".hidden").mkdir()
    (tmp_path / "b.txt").write_text("bee", encoding="utf-8")
    (tmp_path / "a.md").write_text("# ay ✓", encoding="utf-8")
    (tmp_path / "sub" / "c.py").write_text("x = 1\n", encoding="utf-8")
    (tmp_path / "sub" / "deeper" / "d.rst").write_text("dee", encoding="utf-8")
    (tmp_path / "sub" / "blank.txt").write_text("  \n", encoding="utf-8")
    (tmp_path / "ignored.bin").write_bytes(b"\x00\x01")
    (tmp_path / ".hidden" / "e.txt").write_text("hidden", encoding="utf-8")
    docs = load_corpus(tmp_path)
    assert docs == [("a.md", "# ay ✓"), ("b.txt", "bee"), ("sub/c.py", "x = 1\n"),
                    ("sub/deeper/d.rst", "dee")]
    assert load_corpus(tmp_path / "sub" / "c.py") == [("c.py", "x = 1\n")]


def test_load_corpus_datasets_formats(tmp_path, monkeypatch) -> None:
    datasets = pytest.importorskip("datasets")
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", tmp_path / "hf_cache")
    rows = ["first row", "", "second ✓ row", "third"]
    expected = [("0", "first row"), ("2", "second ✓ row"), ("3", "third")]

    saved = tmp_path / "saved"
    datasets.Dataset.from_dict({"text": rows, "n": [1, 2, 3, 4]}).save_to_disk(str(saved))
    assert load_corpus(saved) == expected
    with pytest.raises(ValueError, match="no text column 'body'.*'text'"):
        load_corpus(saved, text_column="body")
    with pytest.raises(ValueError, match="not text"):
        load_corpus(saved, text_column="n")

    both = tmp_path / "dict"
    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["t0", "t1"]}),
                          "test": datasets.Dataset.from_dict({"text": ["s0"]})}).save_to_disk(str(both))
    assert load_corpus(both) == [("test/0", "s0"), ("train/0", "t0"), ("train/1", "t1")]

    jsonl = tmp_path / "rows.jsonl"
    jsonl.write_text("".join(json.dumps({"body": r}) + "\n" for r in rows), encoding="utf-8")
    assert load_corpus(jsonl, text_column="body") == expected


def test_load_corpus_errors(tmp_path, monkeypatch) -> None:
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_corpus(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="no .txt/.md/.py/.rst files"):
        load_corpus(empty)
    (empty / "blank.txt").write_text("\n\n", encoding="utf-8")
    with pytest.raises(ValueError, match="empty"):
        load_corpus(empty)
    odd = tmp_path / "data.xlsx"
    odd.write_bytes(b"PK")
    with pytest.raises(ValueError, match="unsupported corpus file type '.xlsx'"):
        load_corpus(odd)
    latin = tmp_path / "latin.txt"
    latin.write_bytes("café".encode("latin-1"))
    with pytest.raises(ValueError, match="UTF-8"):
        load_corpus(latin)
    table = tmp_path / "rows.jsonl"
    table.write_text('{"text": "x"}\n', encoding="utf-8")
    monkeypatch.setitem(sys.modules, "datasets", None)
    with pytest.raises(ImportError, match=r"pip install bmojo\[datasets\]"):
        load_corpus(table)


# --- split -------------------------------------------------------------------------------------


def make_docs(n: int) -> list[Document]:
    return [Document(f"doc-{i:04d}", f"text {i}") for i in range(n)]


def ids_by_split(parts: dict[str, list[Document]]) -> dict[str, list[str]]:
    return {k: [d.doc_id for d in v] for k, v in parts.items()}


def test_split_is_a_deterministic_partition() -> None:
    docs = make_docs(500)
    parts = split_documents(docs, (0.8, 0.1, 0.1), seed=3)
    assert list(parts) == ["train", "validation", "test"]
    assert ids_by_split(parts) == ids_by_split(split_documents(list(docs), (0.8, 0.1, 0.1), seed=3))
    flat = [d for v in parts.values() for d in v]
    assert sorted(flat) == sorted(docs) and len(flat) == len(docs)  # disjoint, union = all
    for split in parts.values():
        assert split == [d for d in docs if d in split]  # input order kept
    sizes = {k: len(v) for k, v in parts.items()}
    assert 350 < sizes["train"] < 450 and 20 < sizes["validation"] < 80 and 20 < sizes["test"] < 80
    assert ids_by_split(split_documents(docs, (0.8, 0.1, 0.1), seed=4)) != ids_by_split(parts)


def test_split_assignment_is_pinned_to_sha256() -> None:
    """Golden values: the split must not depend on the process (e.g. Python's salted ``hash``)."""
    parts = ids_by_split(split_documents(make_docs(12), (0.5, 0.25, 0.25), seed=0))
    suffixes = {k: [i[-2:] for i in v] for k, v in parts.items()}
    assert suffixes == {"train": ["02", "04", "06", "07", "08", "09", "10"],
                        "validation": ["01", "03", "05", "11"], "test": ["00"]}


def test_split_is_by_document_and_stable_under_removal() -> None:
    docs = make_docs(300)
    parts = split_documents(docs, (0.8, 0.1, 0.1))
    where = {d.doc_id: k for k, v in parts.items() for d in v}
    assert len(where) == len(docs)  # each document in exactly one split
    for removed in (docs[0], parts["test"][0], parts["validation"][-1]):
        rest = split_documents([d for d in docs if d != removed], (0.8, 0.1, 0.1))
        assert {d.doc_id: k for k, v in rest.items() for d in v} == {
            i: k for i, k in where.items() if i != removed.doc_id}


def test_split_small_corpus_rule_and_validation() -> None:
    for n in (3, 4, 10):
        for seed in range(20):
            parts = split_documents(make_docs(n), seed=seed)
            assert all(parts[k] for k in ("train", "validation", "test")), (n, seed)
            assert sum(map(len, parts.values())) == n
    assert sorted(d for v in split_documents(make_docs(2)).values() for d in v) == make_docs(2)
    assert split_documents(make_docs(50), (1.0, 0.0, 0.0)) == {
        "train": make_docs(50), "validation": [], "test": []}
    with pytest.raises(ValueError, match="summing to 1"):
        split_documents(make_docs(5), (0.5, 0.2, 0.2))
