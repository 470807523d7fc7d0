"""Results files that survive an interruption: a file written whole or not at all, and an append-only journal of
finished work (JSON lines), each line on disk before the next piece of work starts. `bmojo compare` journals its runs,
`bmojo longrecall` its batches; `--resume` reads the journal back and does only what it lacks."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path


def write_atomically(path: Path, write: Callable[[Path], object]) -> None:
    """Write `path` through `write(temporary path)`, flushed to disk, then renamed over `path`: a reader finds the
    old file or the new one, never a part."""
    tmp = path.with_name(f".{path.name}.tmp")
    write(tmp)
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    os.replace(tmp, path)


def append_record(path: Path, record: dict) -> None:
    """Append one finished piece of work to the JSON-lines journal `path`, flushed to disk before returning."""
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")
        f.flush()
        os.fsync(f.fileno())


def read_records(path: Path) -> list[dict]:
    """The records of the journal `path` (none if it is absent). A damaged last line (the command died while writing
    it) is dropped, so that piece of work is done again; a damaged line before it raises ValueError."""
    lines = path.read_text(encoding="utf-8").splitlines() if path.is_file() else []
    records = []
    for i, line in enumerate(lines, 1):
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError as err:
            if i < len(lines):
                raise ValueError(f"{path}: line {i} is not valid JSON ({err}); remove that line to resume") from err
    return records


def reopen_records(path: Path) -> list[dict]:
    """`read_records(path)`, with the journal rewritten (atomically) to hold just them, so that what is appended next
    starts on a line of its own even where the last run died mid-line."""
    records = read_records(path)
    write_atomically(path, lambda tmp: tmp.write_text("".join(json.dumps(r) + "\n" for r in records)))
    return records
