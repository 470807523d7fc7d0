"""The `bmojo` command line. Each subcommand lives in its own module, which provides
`add_arguments(parser)` and `run(args) -> int`; a module is imported only when its command runs.

What every command shares lives here: the runtime options (`--threads`, added to every command and applied
by `main`), the hub-offline setting, and the output-folder check (`check_writable`)."""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import signal
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path

import torch

from .allocator import tune_cpu_allocator

COMMANDS = {
    "compare": ("bmojo.compare", "train presets on recall tasks at matched memory; results table and plots"),
    "train": ("bmojo.lm.train", "train a language model on a corpus (single process, torchrun or accelerate launch)"),
    "eval": ("bmojo.lm.evaluate", "perplexity and the length-generalization sweep of a trained run"),
    "generate": ("bmojo.lm.generate", "sample text from a trained run"),
    "longrecall": ("bmojo.longrecall", "recall of saved recall models far beyond their training length, through the "
                                       "decoding cache (store backends side by side)"),
    "inspect": ("bmojo.inspection", "what a model's B'MOJO layers keep: innovation scores, memory, attention"),
    "bench": ("bmojo.bench", "speed and memory benchmarks against peers and the machine's ceiling"),
}


def add_runtime_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of every command that set up the process rather than the work: --threads."""
    parser.add_argument("--threads", type=int, default=None,
                        help="torch CPU (intra-op) threads per process (default: torch's default)")


def apply_runtime_arguments(args: argparse.Namespace) -> None:
    """Apply what `add_runtime_arguments` parsed; ValueError on an invalid value."""
    if args.threads is not None:
        if args.threads < 1:
            raise ValueError(f"--threads must be >= 1, got {args.threads}")
        torch.set_num_threads(args.threads)


def check_device(name: str) -> torch.device:
    """The torch device a command's --device names; ValueError unless it is cpu or an available cuda[:N]."""
    try:
        device = torch.device(name)
    except RuntimeError:
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise ValueError(f"--device {name}: only cpu and cuda[:N] are supported")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {name}: this machine has no CUDA GPU (torch.cuda.is_available() is False)")
    return device


def check_writable(directory: Path) -> None:
    """Create the output folder `directory` if needed and prove a file can be written there; ValueError
    otherwise."""
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        probe = directory / f".write-test-{uuid.uuid4().hex[:8]}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as err:
        raise ValueError(f"output folder {str(directory)!r} is not writable ({err.strerror or err}); "
                         "choose another --out") from err


def parse_assignments(items: list[str], option: str) -> dict:
    """KEY=VALUE items (of the command-line option `option`) as a dict, values JSON where they parse, else bare
    strings (e.g. pos_encoding=none); ValueError naming the option for an item that is not KEY=VALUE."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"{option} expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value
    return out


@contextlib.contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """While active, a SIGTERM raises KeyboardInterrupt, so that a command stops its worker processes as on Ctrl-C
    (in the main thread; elsewhere signals are left alone)."""

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, interrupt)
    except ValueError:  # not the main thread
        previous = None
    try:
        yield
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    """Run `bmojo COMMAND ...` (argv without the program name; default sys.argv[1:]); returns the exit code."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the network at run time
    argv = sys.argv[1:] if argv is None else argv
    tune_cpu_allocator()  # large CPU tensors reuse freed memory instead of fresh page-faulted mmaps
    if not argv or argv[0] not in COMMANDS:
        top = argparse.ArgumentParser(prog="bmojo",
                                      description="B'MOJO model family: recall, language modeling, benchmarks.")
        sub = top.add_subparsers(dest="command", metavar="COMMAND", required=True)
        for name, (_, help_text) in COMMANDS.items():
            sub.add_parser(name, help=help_text, add_help=False)
        top.parse_args(argv)  # prints usage, or an error naming the valid commands
        return 2
    module_name, description = COMMANDS[argv[0]]
    module = importlib.import_module(module_name)
    parser = argparse.ArgumentParser(prog=f"bmojo {argv[0]}", description=description)
    module.add_arguments(parser)
    add_runtime_arguments(parser)
    args = parser.parse_args(argv[1:])
    try:
        apply_runtime_arguments(args)
        return int(module.run(args) or 0)
    except (ValueError, FileNotFoundError) as err:  # bad input: one clear line, no traceback
        print(f"bmojo {argv[0]}: error: {err}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

