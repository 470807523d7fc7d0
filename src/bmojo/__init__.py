"""bmojo: B'MOJO hybrid state-space models with eidetic and fading memory.

`import bmojo` registers the model with `transformers`' Auto classes, so
`AutoModelForCausalLM.from_config(bmojo.BMojoConfig.from_preset("bmojo"))` builds it.
"""

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
__all__ = [
    "BMojoByteTokenizer", "BMojoCache", "BMojoConfig", "BMojoForCausalLM", "BMojoModel", "MIXER_KINDS", "PRESETS",
]
