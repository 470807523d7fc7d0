"""The documentation runs: every ```python block of README.md and docs/*.md is executed, each in a fresh
interpreter (only what the block imports is imported) in its own temporary folder, so a snippet cannot go
stale silently.

An HTML comment on the line before a block changes how it runs:
- `<!-- needs-run: PATH -->`: a short trained run folder (a copy of the reference run of tests/conftest.py)
  is put at PATH first, for snippets that load a run written by `bmojo train`;
- `<!-- not-run: REASON -->`: the block is skipped, for REASON (keep these few).
"""

import re
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
BLOCK = re.compile(r"(?:^[ \t]*<!--\s*(?P<marker>not-run|needs-run):\s*(?P<arg>.*?)\s*-->[ \t]*\n)?"
                   r"^(?P<indent>[ \t]*)```python[ \t]*\n(?P<code>.*?)^(?P=indent)```", re.S | re.M)
SNIPPET_TIMEOUT_S = 600  # generous: the README's model example takes ~10 s on one idle core


def snippets() -> list:
    """pytest params (marker, argument, code), one per ```python block, named FILE:LINE."""
    params = []
    for doc in DOCS:
        text = doc.read_text(encoding="utf-8")
        for m in BLOCK.finditer(text):
            line = text.count("\n", 0, m.start("indent")) + 1
            params.append(pytest.param(m["marker"], m["arg"], textwrap.dedent(m["code"]),
                                       id=f"{doc.relative_to(ROOT)}:{line}"))
    return params


def test_the_docs_have_snippets():
    names = {p.id.split(":")[0] for p in snippets()}
    assert {"README.md", "docs/language_modeling.md", "docs/benchmarks.md"} <= names


@pytest.mark.parametrize("marker, arg, code", snippets())
def test_snippet_runs(marker, arg, code, request, tmp_path, subprocess_env):
    if marker == "not-run":
        pytest.skip(arg)
    if marker == "needs-run":
        shutil.copytree(request.getfixturevalue("reference_run"), tmp_path / arg)
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=subprocess_env, capture_output=True,
                          text=True, timeout=SNIPPET_TIMEOUT_S)
    assert proc.returncode == 0, proc.stderr[-3000:]
