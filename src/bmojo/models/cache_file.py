"""A decoding cache on disk: `save_cache` writes every state tensor of a `BMojoCache` (the storage tier included) to
one safetensors file with what wrote it; `load_cache` reads it back for the same model, so decoding continues
exactly where it stopped. A file from another config or other weights, or a damaged one, is refused with a
ValueError naming the difference.

Tensor names follow the state's structure: `layers.3.window.k`, `layers.3.store.blocks.0.pos`, `positions`.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..ops.memory import KVSlots
from ..ops.store import TokenStore
from .cache import BMojoCache
from .configuration import FIELD_TYPES

FORMAT = "bmojo-cache/1"
# config fields that do not shape the model's computation (a cache stays valid when they differ)
NOT_MODEL_FIELDS = frozenset({"use_cache", "pad_token_id", "bos_token_id", "eos_token_id", "ssm_chunk_size",
                              "store_backend", "store_nprobe"})


def weights_fingerprint(model) -> str:
    """A digest of the model's parameters (names, shapes and the first and last 256 values of each): two models
    that differ in training give different digests."""
    digest = hashlib.sha256()
    for name, p in sorted(model.state_dict().items()):
        flat = p.detach().reshape(-1).float().cpu()
        digest.update(f"{name}{tuple(p.shape)}".encode())
        digest.update(torch.cat([flat[:256], flat[-256:]]).numpy().tobytes())
    return digest.hexdigest()


def _model_fields(config) -> dict:
    return {name: getattr(config, name) for name in FIELD_TYPES if name not in NOT_MODEL_FIELDS}


def _flatten(obj, prefix: str, out: dict) -> None:
    if obj is None:
        return
    if isinstance(obj, torch.Tensor):
        out[prefix] = obj.detach().contiguous()
    elif isinstance(obj, list):
        for i, item in enumerate(obj):
            _flatten(item, f"{prefix}.{i}", out)
    else:
        for f in dataclasses.fields(obj):
            _flatten(getattr(obj, f.name), f"{prefix}.{f.name}", out)


def save_cache(cache: BMojoCache, model, path: str | Path) -> None:
    """Write `cache` (built by `model`) to `path` (safetensors, written to a temporary name then renamed)."""
    tensors: dict[str, torch.Tensor] = {}
    _flatten(cache.states, "layers", tensors)
    tensors["positions"], tensors["seq_idx"] = cache.positions.contiguous(), cache.seq_idx.contiguous()
    metadata = {"format": FORMAT, "config": json.dumps(_model_fields(model.config)),
                "weights": weights_fingerprint(model), "seen_tokens": str(cache.seen_tokens),
                "aligned": str(cache.aligned)}
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    save_file({k: t.cpu() for k, t in tensors.items()}, str(tmp), metadata=metadata)
    tmp.replace(path)


def load_cache(model, path: str | Path) -> BMojoCache:
    """The cache saved at `path` for `model`, on the model's device (reference decoding)."""
    path = Path(path)
    try:
        with safe_open(str(path), framework="pt") as f:
            metadata = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118 (safe_open has no __iter__)
    except SafetensorError as err:
        raise ValueError(f"{path} is not a complete bmojo cache file (truncated or damaged: {err})") from None
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path} is not a bmojo cache file (format {metadata.get('format')!r}, expected {FORMAT!r})")
    saved, ours = json.loads(metadata["config"]), _model_fields(model.config)
    differ = [f"{k}={saved.get(k)!r} (this model: {v!r})" for k, v in ours.items() if saved.get(k) != v]
    if differ:
        raise ValueError(f"{path} was written by a model with another config: {', '.join(differ)}")
    if metadata["weights"] != weights_fingerprint(model):
        raise ValueError(f"{path} was written by a model with the same config but other weights: a cache is only "
                         "valid for the weights that wrote it")
    p = next(model.parameters())
    cache = model.new_cache(tensors["positions"].shape[0])
    cache.states = [_restore(s, tensors, f"layers.{i}", path, p.device) for i, s in enumerate(cache.states)]
    cache.positions, cache.seq_idx = tensors["positions"].to(p.device), tensors["seq_idx"].to(p.device)
    cache.seen_tokens, cache.aligned = int(metadata["seen_tokens"]), metadata["aligned"] == "True"
    return cache


def _restore(template, tensors: dict, name: str, path: Path, device):
    """`template` (a fresh state) with every tensor read from `tensors`, onto `device`; a size of 0 in the template
    (the growing KV of full attention) takes any size, every other must match."""
    if template is None:
        return None
    if isinstance(template, torch.Tensor):
        if name not in tensors:
            raise ValueError(f"{path} lacks the tensor {name}: it was written by another model, or is damaged")
        t = tensors[name]
        fits = t.dim() == template.dim() and all(a == b or b == 0 for a, b in zip(t.shape, template.shape, strict=True))
        if not fits:
            raise ValueError(f"{path}: {name} has shape {tuple(t.shape)}, this model's cache {tuple(template.shape)}")
        return t.to(template.device, template.dtype)
    if isinstance(template, TokenStore):  # its blocks: as many as the file holds
        blocks, i = [], 0
        while f"{name}.blocks.{i}.pos" in tensors:
            fields = [tensors.get(f"{name}.blocks.{i}.{f}") for f in ("k", "v", "pos")]
            if any(t is None for t in fields):
                raise ValueError(f"{path} lacks part of {name}.blocks.{i}: the file is damaged")
            blocks.append(KVSlots(*(t.to(device) for t in fields)))
            i += 1
        return TokenStore(blocks)
    return type(template)(**{f.name: _restore(getattr(template, f.name), tensors, f"{name}.{f.name}", path, device)
                             for f in dataclasses.fields(template)})
