"""The matplotlib set-up every command's figures share: the file-only Agg backend."""

from __future__ import annotations


def pyplot():
    """`matplotlib.pyplot` on the Agg backend (PNG files, no display needed); matplotlib is imported here,
    only when a figure is drawn."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
