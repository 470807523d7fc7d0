"""bmojo.layers.documents: document positions from starts, the chunk-aligned layout of packed documents."""

import torch

from bmojo.layers.documents import align_documents, documents_from_starts


def test_documents_from_starts_continue_the_cached_document():
    """Until a token starts a document, positions continue the cached one (next position 7, index 3)."""
    starts = torch.tensor([[False, False, True, False], [True, False, False, False]])
    docs = documents_from_starts(starts, torch.tensor([3, 5]), torch.tensor([7, 0]))
    assert docs.seq_idx.tolist() == [[3, 3, 4, 4], [6, 6, 6, 6]]
    assert docs.positions.tolist() == [[7, 8, 0, 1], [0, 1, 2, 3]]


def test_align_documents_starts_each_document_at_a_multiple_of_the_window():
    seq_idx = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 2], [0] * 9])
    index, aligned_seq, positions = align_documents(seq_idx, 4)
    assert index.tolist() == [[0, 1, 2, 4, 5, 6, 7, 8, 12], list(range(9))]
    assert aligned_seq.tolist() == [[0] * 4 + [1] * 8 + [2] * 4, [0] * 16]  # filler joins the document before it
    assert positions.tolist() == [[0, 1, 2, 3, 0, 1, 2, 3, 4, 5, 6, 7, 0, 1, 2, 3], list(range(16))]
