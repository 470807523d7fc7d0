"""The `bmojo` command line. Each subcommand lives in its own module, which provides
`add_arguments(parser)` and `run(args) -> int`; a module is imported only when its command runs."""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from .allocator import tune_cpu_allocator

COMMANDS = {
    "compare": ("bmojo.compare", "train presets on recall tasks at matched memory; results table and plots"),
    "train": ("bmojo.lm.train", "train a language model on a corpus (single process, torchrun or accelerate launch)"),
    "eval": ("bmojo.lm.evaluate", "perplexity and the length-generalization sweep of a trained run"),
    "generate": ("bmojo.lm.generate", "sample text from a trained run"),
    "bench": ("bmojo.bench", "speed and memory benchmarks against peers and the machine's ceiling"),
}


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network at run time
    argv = sys.argv[1:] if argv is None else argv
    tune_cpu_allocator()  # large CPU tensors reuse freed memory instead of fresh page-faulted mmaps
    if not argv or argv[0] not in COMMANDS:
        top = argparse.ArgumentParser(prog="bmojo", description="B'MOJO model family: recall, language modeling, benchmarks.")
        sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
        for name, (_, help_text) in COMMANDS.items():
            sub.add_parser(name, help=help_text, add_help=False)
        top.parse_args(argv)  # prints usage, or an error naming the valid commands
        return 2
    module_name, description = COMMANDS[argv[0]]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"bmojo {argv[0]}", description=description)
    module.add_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError) as err:  # bad input: one clear line, no traceback
        print(f"bmojo {argv[0]}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
