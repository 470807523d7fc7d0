"""Tests for bmojo.data: tokenizers, corpora, splits, packing, datasets (all offline)."""

from __future__ import annotations

import json
import random
import sys

import numpy as np
import pytest
import torch

from bmojo.data import (
    EOS_TOKEN,
    BPETokenizer,
    ByteTokenizer,
    Document,
    HFTokenizer,
    LMDataset,
    build_lm_dataset,
    builtin_corpus,
    load_corpus,
    load_tokenizer,
    pack,
    split_documents,
    train_bpe,
)

TRICKY = [
    "",
    "plain ascii",
    "emoji 🙂👩‍👩‍👧‍👦 flags 🇫🇷",
    "CJK 中文字符 日本語 한국어",
    "combining e\u0301 a\u0308\u0323 zalgo t\u0336\u0335",
    "NUL\x00inside\x00",
    "tabs\tand\r\nnewlines\n\n  trailing  ",
    "RTL עברית العربية",
    f"literal special token {EOS_TOKEN} in text",
]


def random_unicode(rng: random.Random, n: int) -> str:
    """Random code points across all planes, surrogates excluded."""
    out = []
    while len(out) < n:
        cp = rng.randrange(0x110000)
        if not 0xD800 <= cp <= 0xDFFF:
            out.append(chr(cp))
    return "".join(out)


@pytest.fixture(scope="module")
def builtin() -> list[Document]:
    return builtin_corpus()


@pytest.fixture(scope="module")
def bpe(builtin: list[Document]) -> BPETokenizer:
    by_id = {d.doc_id: d.text for d in builtin}
    texts = [by_id[i][:3000] for i in ("os.py", "json/decoder.py", "collections/__init__.py", "pydoc:if")]
    return train_bpe(texts, vocab_size=400)


# --- tokenizers --------------------------------------------------------------------------------


def test_byte_tokenizer_roundtrips_unicode() -> None:
    tok = ByteTokenizer()
    rng = random.Random(1234)
    for text in TRICKY + [random_unicode(rng, 500) for _ in range(20)]:
        ids = tok.encode(text)
        assert ids == list(text.encode("utf-8"))
        assert all(0 <= i < tok.vocab_size for i in ids)
        assert tok.decode(ids) == text
        assert tok.decode(torch.tensor(ids, dtype=torch.long)) == text
    assert tok.vocab_size == 256 and tok.eos_id == 0


def test_byte_tokenizer_roundtrips_bytes_and_tolerates_invalid_utf8() -> None:
    tok = ByteTokenizer()
    rng = random.Random(99)
    for n in (0, 1, 17, 4096):
        data = bytes(rng.randrange(256) for _ in range(n))
        assert tok.decode_bytes(tok.encode_bytes(data)) == data
    assert tok.decode([0x66, 0xFF, 0xC3]) == "f\ufffd\ufffd"  # invalid UTF-8 -> U+FFFD
    with pytest.raises(ValueError):
        tok.decode_bytes([256])


def test_byte_encode_batch_matches_encode() -> None:
    tok = ByteTokenizer()
    batch = tok.encode_batch(TRICKY)
    assert [b.tolist() for b in batch] == [tok.encode(t) for t in TRICKY]


def test_bpe_roundtrip_vocab_and_eos(bpe: BPETokenizer, builtin: list[Document]) -> None:
    assert 256 < bpe.vocab_size <= 400
    assert bpe.decode([bpe.eos_id]) == EOS_TOKEN
    rng = random.Random(7)
    texts = TRICKY + [random_unicode(rng, 200), builtin[5].text[:5000]]
    for text in texts:
        ids = bpe.encode(text)
        assert all(0 <= i < bpe.vocab_size for i in ids)
        assert bpe.decode(ids) == text
    assert bpe.eos_id not in bpe.encode(TRICKY[-1])  # literal special-token text stays text
    code = builtin[5].text[:5000]
    assert len(bpe.encode(code)) < 0.8 * len(code.encode("utf-8"))  # merges were learned
    assert [a.tolist() for a in bpe.encode_batch(texts)] == [bpe.encode(t) for t in texts]


def test_bpe_save_and_reload(bpe: BPETokenizer, builtin: list[Document], tmp_path) -> None:
    bpe.save(tmp_path)
    assert json.loads((tmp_path / "bmojo_tokenizer.json").read_text())["kind"] == "bpe"
    for loaded in (load_tokenizer(tmp_path), load_tokenizer(tmp_path / "tokenizer.json")):
        assert isinstance(loaded, BPETokenizer)
        assert loaded.vocab_size == bpe.vocab_size and loaded.eos_id == bpe.eos_id
        for text in TRICKY + [builtin[3].text[:3000]]:
            assert loaded.encode(text) == bpe.encode(text)


def test_train_bpe_rejects_tiny_vocab() -> None:
    with pytest.raises(ValueError, match="257"):
        train_bpe(["abc"], vocab_size=100)


def test_hf_tokenizer_from_local_path(bpe: BPETokenizer, builtin: list[Document], tmp_path) -> None:
    from transformers import PreTrainedTokenizerFast

    hf_dir, resaved = tmp_path / "hf", tmp_path / "resaved"
    PreTrainedTokenizerFast(tokenizer_object=bpe.tokenizer, eos_token=EOS_TOKEN).save_pretrained(hf_dir)
    hf = load_tokenizer(hf_dir)
    assert isinstance(hf, HFTokenizer)
    assert hf.eos_id == bpe.eos_id and hf.vocab_size == bpe.vocab_size
    texts = TRICKY + [builtin[7].text[:3000]]
    for text in texts:
        assert hf.encode(text) == bpe.encode(text)
        assert hf.decode(hf.encode(text)) == text
    assert [a.tolist() for a in hf.encode_batch(texts)] == [bpe.encode(t) for t in texts]
    hf.save(resaved)
    again = load_tokenizer(resaved)
    assert isinstance(again, HFTokenizer) and again.encode(texts[-1]) == bpe.encode(texts[-1])


def test_load_tokenizer_specs(tmp_path) -> None:
    assert isinstance(load_tokenizer("byte"), ByteTokenizer)
    ByteTokenizer().save(tmp_path)
    assert isinstance(load_tokenizer(tmp_path), ByteTokenizer)
    with pytest.raises(ValueError, match="train_bpe"):
        load_tokenizer("bpe")
    with pytest.raises(ValueError, match="'byte'"):
        load_tokenizer("gpt-17")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no tokenizer found"):
        load_tokenizer(tmp_path / "empty")


# --- corpora -----------------------------------------------------------------------------------


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


# --- packing and datasets ----------------------------------------------------------------------


def test_pack_exact_layout() -> None:
    docs = [[1, 2, 3], np.array([4, 5], dtype=np.uint8), torch.tensor([6, 7, 8, 9])]
    blocks = pack(docs, seq_len=4, sep_id=0)
    # stream: 1 2 3 0 | 4 5 0 6 | 7 8 9 0  (12 tokens -> 3 blocks, nothing dropped)
    assert blocks.dtype == torch.long
    assert blocks.tolist() == [[1, 2, 3, 0], [4, 5, 0, 6], [7, 8, 9, 0]]
    assert pack(docs, seq_len=5, sep_id=99).tolist() == [[1, 2, 3, 99, 4], [5, 99, 6, 7, 8]]


def test_pack_too_small_corpus() -> None:
    with pytest.raises(ValueError, match=r"5 tokens \(including 2 separators\).*seq_len=8"):
        pack([[1, 2], [3]], seq_len=8, sep_id=0)
    with pytest.raises(ValueError, match="0 tokens"):
        pack([], seq_len=8, sep_id=0)


def test_build_lm_dataset_byte_items() -> None:
    docs = [Document("a", "hello"), Document("b", "wörld"), Document("c", "!")]
    ds = build_lm_dataset(docs, "byte", seq_len=4, split="train", fractions=(1.0, 0.0, 0.0))
    stream = b"hello\x00w\xc3\xb6rld\x00!\x00"
    assert isinstance(ds, LMDataset) and len(ds) == len(stream) // 4 and ds.seq_len == 4
    assert torch.cat([ds[i]["input_ids"] for i in range(len(ds))]).tolist() == list(stream[:12])
    item = ds[1]
    assert torch.equal(item["input_ids"], item["labels"]) and item["labels"] is not item["input_ids"]
    batch = next(iter(torch.utils.data.DataLoader(ds, batch_size=2)))
    assert batch["input_ids"].shape == (2, 4) and batch["input_ids"].dtype == torch.long
    with pytest.raises(ValueError, match="unknown split 'dev'"):
        build_lm_dataset(docs, "byte", seq_len=4, split="dev")
    with pytest.raises(ValueError, match="train split.*seq_len=64"):
        build_lm_dataset(docs, "byte", seq_len=64, fractions=(1.0, 0.0, 0.0))


def test_build_lm_dataset_builtin_splits_are_disjoint(builtin: list[Document], bpe: BPETokenizer) -> None:
    val = build_lm_dataset("builtin", "byte", seq_len=256, split="validation")
    parts = split_documents(builtin)
    expected = b"".join(d.text.encode("utf-8") + b"\x00" for d in parts["validation"])
    assert val.num_tokens == len(expected) // 256 * 256
    assert bytes(val.blocks.flatten().tolist()) == expected[: val.num_tokens]
    small = build_lm_dataset(builtin[:40], bpe, seq_len=128, split="train", fractions=(0.5, 0.25, 0.25))
    assert small.blocks.max() < bpe.vocab_size and (small.blocks == bpe.eos_id).any()
