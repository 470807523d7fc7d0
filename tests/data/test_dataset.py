"""bmojo.data.dataset: packing documents into blocks, and `build_lm_dataset` (byte items, builtin splits)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bmojo.data import BPETokenizer, Document, LMDataset, build_lm_dataset, pack, split_documents


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


def test_lm_dataset_with_document_boundaries() -> None:
    """With the separator, items carry seq_idx (a separator ends its document) and no label crosses a boundary;
    the model then gives each document the logits it has alone."""
    blocks = torch.tensor([[5, 6, 0, 7, 8, 9, 0, 4], [3, 0, 0, 2, 2, 2, 2, 2]])
    item = LMDataset(blocks, sep_id=0)[0]
    assert item["seq_idx"].tolist() == [0, 0, 0, 1, 1, 1, 1, 2]
    assert item["labels"].tolist() == [5, 6, 0, -100, 8, 9, 0, -100]
    assert LMDataset(blocks, sep_id=0)[1]["seq_idx"].tolist() == [0, 0, 1, 2, 2, 2, 2, 2]
    assert set(LMDataset(blocks)[0]) == {"input_ids", "labels"}
