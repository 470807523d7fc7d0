"""bmojo: B'MOJO hybrid state-space models with eidetic and fading memory.

`import bmojo` registers the model with `transformers`' Auto classes, so
`AutoModelForCausalLM.from_config(bmojo.BMojoConfig.from_preset("bmojo"))` builds it.
"""

import importlib

from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

from .models import (
    MIXER_KINDS,
    PRESETS,
    BMojoByteTokenizer,
    BMojoCache,
    BMojoConfig,
    BMojoForCausalLM,
    BMojoModel,
)

AutoConfig.register("bmojo", BMojoConfig, exist_ok=True)
AutoModelForCausalLM.register(BMojoConfig, BMojoForCausalLM, exist_ok=True)
AutoTokenizer.register(BMojoConfig, slow_tokenizer_class=BMojoByteTokenizer, exist_ok=True)

__version__ = "0.1.0"

# Subpackages imported on first use as attributes, so `import bmojo; bmojo.data.load_tokenizer(...)` works
# while `import bmojo` stays light.
_SUBMODULES = ("accounting", "allocator", "bench", "cli", "compare", "data", "lm", "plotting", "tasks", "training")


def __getattr__(name: str):
    """Import the subpackage `bmojo.<name>` on first attribute access."""
    if name in _SUBMODULES:
        return importlib.import_module(f".{name}", __name__)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
__all__ = [
    "BMojoByteTokenizer", "BMojoCache", "BMojoConfig", "BMojoForCausalLM", "BMojoModel", "MIXER_KINDS", "PRESETS",
]
