from .cache import BMojoCache
from .configuration import MIXER_KINDS, PRESETS, BMojoConfig
from .modeling import BMojoForCausalLM, BMojoModel
from .tokenization import BMojoByteTokenizer

__all__ = [
    "BMojoByteTokenizer", "BMojoCache", "BMojoConfig", "BMojoForCausalLM", "BMojoModel", "MIXER_KINDS", "PRESETS",
]
