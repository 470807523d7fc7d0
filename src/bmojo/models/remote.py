"""Loading a saved bmojo folder in a Python that has not imported bmojo.

`transformers` knows the model type "bmojo" only once `import bmojo` has registered it. For a fresh process
(a serving script, `pipeline(model=folder)`), every saved folder also carries `bmojo_auto.py`, a two-line module
that imports bmojo's classes, and `auto_map` entries pointing at it, so that
`AutoModelForCausalLM.from_pretrained(folder, trust_remote_code=True)` (and `AutoTokenizer`, `pipeline(...,
trust_remote_code=True)`) work with the installed bmojo package. No code is fetched from anywhere.
"""

from __future__ import annotations

import json
from pathlib import Path

SHIM = "bmojo_auto"
AUTO_MAP = {"AutoConfig": f"{SHIM}.BMojoConfig", "AutoModelForCausalLM": f"{SHIM}.BMojoForCausalLM"}
TOKENIZER_AUTO_MAP = {"AutoTokenizer": [f"{SHIM}.BMojoByteTokenizer", None]}
SHIM_SOURCE = '''"""Lets transformers' Auto classes load this folder without `import bmojo` (trust_remote_code=True):
it imports the installed bmojo package's classes (pip install bmojo). Written by bmojo; nothing else runs."""

from bmojo import BMojoByteTokenizer, BMojoConfig, BMojoForCausalLM  # noqa: F401
'''


def write_remote_code_shim(directory, tokenizer: bool = False) -> None:
    """Write `bmojo_auto.py` into `directory`; with `tokenizer`, add the AutoTokenizer entry to its
    tokenizer_config.json (the model's config.json gets its `auto_map` from `BMojoConfig`)."""
    directory = Path(directory)
    (directory / f"{SHIM}.py").write_text(SHIM_SOURCE, encoding="utf-8")
    if tokenizer:
        path = directory / "tokenizer_config.json"
        config = json.loads(path.read_text(encoding="utf-8"))
        config["auto_map"] = TOKENIZER_AUTO_MAP
        path.write_text(json.dumps(config, indent=2) + "\n", encoding="utf-8")
