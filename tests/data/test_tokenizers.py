"""bmojo.data.tokenizers: byte, BPE and Hugging Face tokenizers round-trip (tricky and random Unicode, invalid
UTF-8), save and reload; `load_tokenizer` specs (all offline)."""

from __future__ import annotations

import json
import random

import pytest
import torch

from bmojo.data import (
    EOS_TOKEN,
    BPETokenizer,
    ByteTokenizer,
    Document,
    HFTokenizer,
    load_tokenizer,
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
