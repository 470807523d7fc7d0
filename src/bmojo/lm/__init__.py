"""Language modeling on top of `bmojo.data` and `bmojo.training`: the `bmojo train`, `bmojo eval` and
`bmojo generate` commands (modules `train`, `evaluate`, `generate`) and what they share (`common`).

See docs/language_modeling.md for usage.
"""

from ..accounting import parameter_count
from .common import (
    bits_per_byte,
    bytes_per_token,
    corpus_splits,
    load_model,
    load_run,
    unigram_entropy,
)
from .evaluate import length_sweep, markdown_table, plot, window_nll
from .generate import generate_text
from .train import build_config

__all__ = [
    "bits_per_byte",
    "build_config",
    "bytes_per_token",
    "corpus_splits",
    "generate_text",
    "length_sweep",
    "load_model",
    "load_run",
    "markdown_table",
    "parameter_count",
    "plot",
    "unigram_entropy",
    "window_nll",
]
