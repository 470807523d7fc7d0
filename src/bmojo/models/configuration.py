"""`BMojoConfig`: one config for the whole family (docs/design.md, "The model family"), with presets."""

from __future__ import annotations

import dataclasses
import difflib
import importlib.util
import inspect
import math
import types
import typing
from collections.abc import Iterable

from transformers import PreTrainedConfig

from ..ops.ann import ANN_NPROBE, INSTALL_HINT

MIXER_KINDS = ("attn", "swa", "ssm", "bmojo_f", "bmojo")
POS_ENCODINGS = ("none", "rope")
EIDETIC_POSITIONS = ("original", "edge")  # where RoPE puts the eidetic tokens a chunk reads (see the field)
STORE_WRITES = ("window", "evicted")  # what the storage tier keeps (see the field store_write)
RETRIEVED_POSITIONS = ("none", "original", "edge")  # where RoPE puts retrieved tokens (see retrieved_position)
STORE_BACKENDS = ("exact", "faiss")  # how decoding searches the storage tier (see the field store_backend)
# the storage tier's fields: none shapes a weight, so a trained model can be read with other values of them
STORE_FIELDS = ("num_retrieved_tokens", "store_write", "store_backend", "store_nprobe", "retrieved_position",
                "store_horizon", "store_regime_threshold", "store_regime_chunks", "store_dtype")
# fields that hold no weights, so a trained model can be read with other values of them: the storage tier's, and
# where the eidetic tokens sit (their RoPE position)
READ_FIELDS = (*STORE_FIELDS, "eidetic_position")
STORE_DTYPES = ("model", "bfloat16", "float16")  # what the storage tier keeps keys and values in (see store_dtype)
ATTENTION_KINDS = frozenset({"attn", "swa", "bmojo_f", "bmojo"})  # kinds with q/k/v heads
WINDOW_KINDS = frozenset({"swa", "bmojo_f", "bmojo"})  # kinds that read window_size
SSM_KINDS = frozenset({"ssm", "bmojo_f", "bmojo"})  # kinds with a Mamba-2 mixer inside
BMOJO_KINDS = frozenset({"bmojo_f", "bmojo"})  # kinds with fading tokens and an innovation test
# memory-size fields -> the kinds that use them; a pattern without such a kind leaves the field inert
MEMORY_FIELDS = {"num_fading_tokens": BMOJO_KINDS, "num_eidetic_tokens": frozenset({"bmojo"}),
                 "fading_span": BMOJO_KINDS, "num_retrieved_tokens": frozenset({"bmojo"})}
# Cap on the memory sizes m_f and m_e [tokens]: their slots are allocated whether or not a sequence fills them
# (m_e = 100000 took 3.6 s and 1.6 GB on 40 tokens). 4096 slots hold as much as a 4096-token KV cache, 16 x the
# largest knob `bmojo compare` tries (256 eidetic tokens).
MAX_MEMORY_TOKENS = 4096
# HF settings a user may give besides BMojoConfig's own fields: PreTrainedConfig's dataclass fields, less the two HF
# writes when saving, plus the keywords its __post_init__ reads (properties and the old name of dtype).
HF_SETTINGS = frozenset(
    ({f.name for f in dataclasses.fields(PreTrainedConfig)} - {"transformers_version", "architectures"})
    | {"output_attentions", "num_labels", "torch_dtype"}
)

# A preset is only a set of config overrides. A string `layer_pattern` repeats to num_hidden_layers; a list is a
# period, repeated and cut to num_hidden_layers by `from_preset` (hybrid with 3 layers: ssm, swa, ssm).
PRESETS: dict[str, dict] = {
    "transformer": dict(layer_pattern="attn", use_mlp=True, pos_encoding="rope"),
    "swa": dict(layer_pattern="swa", use_mlp=True, pos_encoding="rope"),
    "mamba": dict(layer_pattern="ssm", use_mlp=False, pos_encoding="none"),
    "hybrid": dict(layer_pattern=["ssm", "swa"], use_mlp=True, pos_encoding="rope"),
    # Two departures from the paper, both measured on the builtin corpus (docs/language_modeling.md): RoPE (without
    # it attention inside the window has no order information: test perplexity 9.81 without vs 5.02 with), and
    # the SSM output added to the residual stream (`fading_residual`; through the fading keys/values alone the
    # SSM's computation is mostly discarded: 19-21% worse than Mamba at ~5M parameters, 1.7% with it). The
    # bmojo and bmojo_f presets differ only in m_e.
    "bmojo_f": dict(layer_pattern="bmojo_f", use_mlp=True, pos_encoding="rope", num_fading_tokens=16,
                    fading_residual=True),
    "bmojo": dict(layer_pattern="bmojo", use_mlp=True, pos_encoding="rope", num_fading_tokens=16,
                  num_eidetic_tokens=16, fading_residual=True),
}


def _need(ok: bool, field: str, allowed: str, value) -> None:
    if not ok:
        raise ValueError(f"BMojoConfig.{field}={value!r} is invalid: {allowed}")


def has_type(value, hint) -> bool:
    """Whether plain data `value` fits the type annotation `hint` (an int is a float; a bool is neither)."""
    args = typing.get_args(hint)
    if isinstance(hint, types.UnionType):
        return any(has_type(value, h) for h in args)
    if hint is type(None):
        return value is None
    if typing.get_origin(hint) is list:
        return isinstance(value, list) and all(has_type(v, args[0]) for v in value)
    if typing.get_origin(hint) is dict or hint is dict:
        return isinstance(value, dict)
    if isinstance(value, bool):
        return hint is bool
    return isinstance(value, (int, float)) if hint is float else isinstance(value, hint)


def type_name(hint) -> str:
    """A type annotation as a user would write it, e.g. `int`, `list[float]`, `float | None`."""
    return str(hint).replace("NoneType", "None") if typing.get_args(hint) else hint.__name__


def _check_types(values: dict) -> None:
    """ValueError naming the first of BMojoConfig's own fields in `values` whose value has the wrong type."""
    for name, value in values.items():
        if name in FIELD_TYPES:
            _need(has_type(value, FIELD_TYPES[name]), name, f"must be {type_name(FIELD_TYPES[name])}", value)


class BMojoConfig(PreTrainedConfig):
    """Configuration of a B'MOJO-family causal LM. Every field: meaning [unit] (kinds that read it).

    Memory sizes that no layer of the pattern uses (e.g. `num_fading_tokens` with only 'attn' layers) are
    accepted and ignored, as HF configs do; `inert_fields` names them. Invalid values (a wrong type included)
    raise ValueError naming the field and what is allowed. `BMojoConfig(**kwargs)` keeps any other keyword, as HF
    loading needs; `from_preset` and `check_field_names` refuse names that are not fields.
    """

    model_type = "bmojo"

    # -- shape of the network (all kinds)
    vocab_size: int = 256  # token ids lie in [0, vocab_size)
    hidden_size: int = 256  # d, width of the residual stream [channels]
    num_hidden_layers: int = 4  # number of blocks
    layer_pattern: list | str | None = None  # MIXER_KINDS: one per layer (a list), or a str for all; None = "bmojo"
    use_mlp: bool = True  # a SwiGLU MLP after each mixer (pre-norm residual)
    intermediate_size: int | None = None  # SwiGLU hidden width; None = 8/3 d rounded up to a multiple of 64
    rms_norm_eps: float = 1e-5  # epsilon of every RMSNorm
    initializer_range: float = 0.02  # std of the normal init of Linear and Embedding weights
    tie_word_embeddings: bool = True  # LM head shares the embedding matrix
    # -- attention (attn, swa, bmojo_f, bmojo)
    num_attention_heads: int = 4  # query heads; head_dim = hidden_size / num_attention_heads
    num_key_value_heads: int | None = None  # key/value heads (grouped queries), dividing the query heads; None = same
    pos_encoding: str = "rope"  # "rope" (rotary on queries and keys, memory tokens at their own positions) or "none"
    rope_theta: float = 10000.0  # RoPE base
    window_size: int = 64  # w: raw tokens a query sees, t - w < s <= t [tokens]; B'MOJO's chunk length (swa, bmojo*)
    # -- B'MOJO memory (bmojo_f, bmojo)
    num_fading_tokens: int = 0  # m_f <= MAX_MEMORY_TOKENS: per-chunk SSM outputs past the window, keys/values [tokens]
    num_eidetic_tokens: int = 0  # m_e <= MAX_MEMORY_TOKENS: past raw tokens the innovation test keeps [tokens] (bmojo)
    innovation_span: int = 4  # k: past SSM outputs the fixed innovation predictor averages
    innovation_weights: list[float] | None = None  # predictor weights alpha_1..alpha_k, oldest-last; None = 1/k each
    eidetic_position: str = "original"  # RoPE position of eidetic tokens: "original" or "edge" (c w - w - m_f, chunk c)
    fading_span: int = 0  # s in [0, w]: query t also reads fading keys/values of outputs t-w-s+1..t-w; 0 = off [tokens]
    tie_fading_projections: bool = True  # fading keys/values use the attention's k/v projections (else their own)
    fading_residual: bool = False  # also add the SSM output to the mixer output (the paper: off)
    fading_residual_gate: bool = False  # with fading_residual: the added SSM output scaled per channel, learned from 0
    fading_residual_gate_scale: float = 1.0  # the gate is scale * p, p learned from 0: Adam moves it ~scale x faster
    # -- B'MOJO storage tier (bmojo; docs/design.md 4.10): past tokens the working memory dropped, searched per query
    num_retrieved_tokens: int = 0  # r <= MAX_MEMORY_TOKENS: stored tokens each query reads by content score; 0 = off
    store_write: str = "window"  # "window": every past token the eidetic memory lacks; "evicted": only its evictions
    store_backend: str = "exact"  # decoding's search of the store: "exact" or "faiss" (approximate; the extra "ann")
    store_nprobe: int = ANN_NPROBE  # "faiss": inverted lists a query scans per block (fewer: faster, may miss more)
    retrieved_position: str = "none"  # a retrieved token's RoPE position: "none" (content score), "original", "edge"
    store_horizon: int = 0  # H > w: chunk c's store forgets tokens older than c w - H (oldest first); 0 = keep [tokens]
    store_regime_threshold: float = 0.0  # kappa > 1: a shift of the mean innovation by kappa (either way) starts a
    #   regime and the store forgets what came before it (ops.memory.regime_shift); 0 = off
    store_regime_chunks: int = 8  # R >= 1: chunks whose mean innovation is the regime test's baseline [chunks]
    store_dtype: str = "model"  # stored keys/values in "model" (the layer's dtype), "bfloat16" or "float16" (half)
    # -- selective SSM, Mamba-2 (ssm, bmojo_f, bmojo)
    ssm_state_size: int = 64  # n: state size per head and group
    ssm_expand: int = 2  # inner width = ssm_expand * hidden_size
    ssm_head_dim: int = 32  # p: channels per SSM head; heads = inner width / p
    ssm_n_groups: int = 1  # g: groups sharing B and C; must divide the head count
    ssm_conv_kernel: int = 4  # width of the causal depthwise conv before the scan [tokens]
    ssm_chunk_size: int = 64  # Q: chunk of the chunked SSD scan in training [tokens] (numerics only, not the model)
    ssm_dt_min: float = 0.001  # lower end of the log-uniform initial step sizes dt
    ssm_dt_max: float = 0.1  # upper end of the log-uniform initial step sizes dt
    # -- generation (HF)
    use_cache: bool = True  # forward returns a decoding cache by default in generate()
    pad_token_id: int | None = None  # token id generate() pads finished rows with
    bos_token_id: int | None = None  # beginning-of-sequence token id, if the tokenizer has one
    eos_token_id: int | None = None  # end-of-sequence token id: generate() stops a row there

    def __post_init__(self, **kwargs):
        _check_types({name: getattr(self, name) for name in FIELD_TYPES})
        n = self.num_hidden_layers
        _need(n >= 1, "num_hidden_layers", "must be >= 1", n)
        pattern = "bmojo" if self.layer_pattern is None else self.layer_pattern
        for kind in [pattern] if isinstance(pattern, str) else pattern:
            _need(kind in MIXER_KINDS, "layer_pattern", f"each kind must be one of {MIXER_KINDS}", kind)
        pattern = [pattern] * n if isinstance(pattern, str) else list(pattern)
        _need(len(pattern) == n, "layer_pattern", f"a list needs one kind per layer, num_hidden_layers={n} "
              "(a single kind as a string repeats to every layer)", pattern)
        self.layer_pattern = pattern
        if self.num_key_value_heads is None:
            self.num_key_value_heads = self.num_attention_heads
        if self.intermediate_size is None:  # SwiGLU at ~8/3 d, rounded up to a multiple of 64
            self.intermediate_size = 64 * -(-(8 * self.hidden_size // 3) // 64)
        if self.innovation_weights is None:
            k = self.innovation_span
            self.innovation_weights = [1.0 / k] * k if k > 0 else []
        self._validate()
        super().__post_init__(**kwargs)

    def _validate(self) -> None:
        kinds = set(self.layer_pattern)
        for name in ("vocab_size", "hidden_size", "ssm_state_size", "ssm_expand", "ssm_head_dim", "ssm_n_groups",
                     "ssm_conv_kernel", "ssm_chunk_size", "intermediate_size"):
            _need(getattr(self, name) >= 1, name, "must be a positive integer", getattr(self, name))
        for name in ("rms_norm_eps", "rope_theta", "ssm_dt_min", "ssm_dt_max"):
            value = getattr(self, name)
            _need(math.isfinite(value) and value > 0, name, "must be a finite number > 0", value)
        _need(self.ssm_dt_min <= self.ssm_dt_max, "ssm_dt_max", f"must be >= ssm_dt_min={self.ssm_dt_min}",
              self.ssm_dt_max)
        _need(math.isfinite(self.initializer_range) and self.initializer_range >= 0, "initializer_range",
              "must be a finite number >= 0", self.initializer_range)
        _need(self.pos_encoding in POS_ENCODINGS, "pos_encoding", f"must be one of {POS_ENCODINGS}", self.pos_encoding)
        if kinds & ATTENTION_KINDS:
            h, hk = self.num_attention_heads, self.num_key_value_heads
            _need(h >= 1, "num_attention_heads", "must be >= 1", h)
            _need(self.hidden_size % h == 0, "num_attention_heads", f"must divide hidden_size={self.hidden_size}", h)
            _need(hk >= 1 and h % hk == 0, "num_key_value_heads", f"must divide num_attention_heads={h}", hk)
            if self.pos_encoding == "rope":
                _need((self.hidden_size // h) % 2 == 0, "num_attention_heads", "head_dim must be even for RoPE", h)
        if kinds & WINDOW_KINDS:
            _need(self.window_size >= 1, "window_size", "must be >= 1 (sliding-window and B'MOJO layers)",
                  self.window_size)
        for name in ("num_fading_tokens", "num_eidetic_tokens", "num_retrieved_tokens"):
            value = getattr(self, name)
            _need(0 <= value <= MAX_MEMORY_TOKENS, name, f"must be in [0, {MAX_MEMORY_TOKENS}] (MAX_MEMORY_TOKENS)",
                  value)
        if kinds & SSM_KINDS:
            inner = self.ssm_expand * self.hidden_size
            _need(inner % self.ssm_head_dim == 0, "ssm_head_dim", f"must divide ssm_expand*hidden_size={inner}",
                  self.ssm_head_dim)
            heads = inner // self.ssm_head_dim
            _need(heads % self.ssm_n_groups == 0, "ssm_n_groups", f"must divide the SSM head count {heads}",
                  self.ssm_n_groups)
        if kinds & BMOJO_KINDS:
            _need(self.eidetic_position in EIDETIC_POSITIONS, "eidetic_position",
                  f"must be one of {EIDETIC_POSITIONS}", self.eidetic_position)
            _need(self.eidetic_position == "original" or self.pos_encoding == "rope", "eidetic_position",
                  f"'edge' moves the eidetic tokens' rotary positions: it needs pos_encoding='rope' (got "
                  f"{self.pos_encoding!r}); use 'original' without RoPE", self.eidetic_position)
            _need(0 <= self.fading_span <= self.window_size, "fading_span",
                  f"must be in [0, window_size={self.window_size}] (a query's span of fading tokens just beyond its "
                  "window; the decoding state keeps w + s - 1 SSM outputs)", self.fading_span)
            _need(self.innovation_span >= 1, "innovation_span", "must be >= 1", self.innovation_span)
            _need(self.fading_residual or not self.fading_residual_gate, "fading_residual_gate",
                  "scales the SSM output that fading_residual=True adds: set fading_residual=True, or leave the gate "
                  "False", self.fading_residual_gate)
            _need(self.fading_residual_gate_scale == 1.0 or self.fading_residual_gate, "fading_residual_gate_scale",
                  "scales the residual gate: set fading_residual_gate=True, or leave the scale at 1.0",
                  self.fading_residual_gate_scale)
            _need(0 < self.fading_residual_gate_scale < math.inf, "fading_residual_gate_scale",
                  "must be > 0 and finite", self.fading_residual_gate_scale)
            _need(self.store_write in STORE_WRITES, "store_write", f"must be one of {STORE_WRITES}", self.store_write)
            _need(self.retrieved_position in RETRIEVED_POSITIONS, "retrieved_position",
                  f"must be one of {RETRIEVED_POSITIONS}", self.retrieved_position)
            _need(self.retrieved_position == "none" or self.pos_encoding == "rope", "retrieved_position",
                  f"{self.retrieved_position!r} places retrieved tokens by RoPE: it needs pos_encoding='rope' (got "
                  f"{self.pos_encoding!r}); use 'none' without RoPE", self.retrieved_position)
            _need(self.store_backend in STORE_BACKENDS, "store_backend", f"must be one of {STORE_BACKENDS} (\"faiss\" "
                  f"needs {INSTALL_HINT})", self.store_backend)
            _need(self.store_nprobe >= 1, "store_nprobe", "must be >= 1 (inverted lists each faiss search scans)",
                  self.store_nprobe)
            _need(self.store_backend != "faiss" or importlib.util.find_spec("faiss") is not None, "store_backend",
                  f"'faiss' needs the faiss package, which is not installed: {INSTALL_HINT}", self.store_backend)
            _need(len(self.innovation_weights) == self.innovation_span, "innovation_weights",
                  f"must have innovation_span={self.innovation_span} entries", self.innovation_weights)
            _need(all(math.isfinite(a) for a in self.innovation_weights), "innovation_weights",
                  "must be finite numbers", self.innovation_weights)
        if "bmojo" in kinds:
            _need(self.store_horizon == 0 or self.store_horizon > self.window_size, "store_horizon",
                  f"must be 0 (keep every stored token) or > window_size={self.window_size} (stored tokens are at "
                  "least w old when a chunk starts)", self.store_horizon)
            kappa = self.store_regime_threshold
            _need(kappa == 0 or (math.isfinite(kappa) and kappa > 1), "store_regime_threshold",
                  "must be 0 (off) or a finite number > 1 (the factor by which a chunk's mean innovation must leave "
                  "the baseline's)", kappa)
            _need(self.store_regime_chunks >= 1, "store_regime_chunks", "must be >= 1", self.store_regime_chunks)
            _need(self.store_dtype in STORE_DTYPES, "store_dtype", f"must be one of {STORE_DTYPES}", self.store_dtype)
        if "bmojo" in kinds and self.num_retrieved_tokens:
            _need(self.num_eidetic_tokens >= 1, "num_retrieved_tokens", "needs num_eidetic_tokens >= 1 (the store "
                  "receives what the eidetic memory's merge drops)", self.num_retrieved_tokens)

    @property
    def inert_fields(self) -> list[str]:
        """Memory-size fields set (> 0) that no layer of `layer_pattern` reads: accepted and ignored."""
        kinds = set(self.layer_pattern)
        return [name for name, users in MEMORY_FIELDS.items() if getattr(self, name) > 0 and not kinds & users]

    @property
    def stores_tokens(self) -> bool:
        """Whether some layer keeps a storage tier (a 'bmojo' layer with num_retrieved_tokens > 0)."""
        return self.num_retrieved_tokens > 0 and "bmojo" in self.layer_pattern

    @classmethod
    def from_saved(cls, folder, **overrides) -> BMojoConfig:
        """The config saved in `folder` with `overrides` (fields that hold no weights, e.g. STORE_FIELDS), checked as
        a new config is: ValueError naming a bad value (HF's from_pretrained(folder, **overrides) sets them
        unchecked)."""
        return cls(**{**cls.from_pretrained(folder).to_dict(), **overrides})

    def eidetic_tokens(self, layer_idx: int) -> int:
        """m_e used by layer `layer_idx` (0 unless its kind is 'bmojo')."""
        return self.num_eidetic_tokens if self.layer_pattern[layer_idx] == "bmojo" else 0

    @classmethod
    def check_field_names(cls, names: Iterable[str], where: str = "") -> None:
        """ValueError (its message starting with `where`) for the first of `names` that is neither a field of
        BMojoConfig nor an HF setting (HF_SETTINGS), with the closest valid name."""
        valid = [*FIELD_TYPES, *sorted(HF_SETTINGS)]
        for name in names:
            if name not in valid:
                close = difflib.get_close_matches(name, valid, n=1)
                hint = f"did you mean {close[0]!r}?" if close else f"valid fields: {', '.join(valid)}"
                raise ValueError(f"{where}unknown BMojoConfig field {name!r}; {hint}")

    @classmethod
    def from_preset(cls, name: str, **overrides) -> BMojoConfig:
        """A preset's config; `overrides` replace any field (e.g. hidden_size=512, window_size=32), and an unknown
        field raises with the closest valid name. A preset's list `layer_pattern` is a period, repeated to
        num_hidden_layers (see PRESETS). Memory sizes the preset has no layer for are accepted and inert, so one
        set of overrides can serve every preset."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; valid presets: {', '.join(PRESETS)}")
        cls.check_field_names(overrides)
        _check_types(overrides)  # num_hidden_layers is read below
        preset = dict(PRESETS[name])
        if isinstance(preset["layer_pattern"], list):
            period = preset["layer_pattern"]
            num_layers = overrides.get("num_hidden_layers", cls.num_hidden_layers)
            preset["layer_pattern"] = [period[i % len(period)] for i in range(num_layers)]
        return cls(**{**preset, **overrides})


# BMojoConfig's own fields and their types (PreTrainedConfig's are in HF_SETTINGS).
FIELD_TYPES: dict[str, type] = inspect.get_annotations(BMojoConfig, eval_str=True)
