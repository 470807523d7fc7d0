"""Checkpoints of a training run: `out_dir/checkpoints/step-N/`.

A checkpoint holds the model (safetensors, loadable with `from_pretrained`), optimizer, scheduler, RNG
states and trainer state (step = data position, history). It is written to a temporary folder, fsync-ed,
listed with its files' sizes and sha256 in `manifest.json` (`write_manifest`), then renamed into place; a
crash mid-write leaves only a `.tmp-step-N` folder, removed by the next save. `verify_manifest` checks a
folder against its manifest (checkpoints, and the final model of `bmojo train`); `latest_valid_checkpoint`
takes the newest checkpoint that verifies and warns about each one it skipped; `check_resume_config`
refuses a checkpoint whose model config differs from the model being trained.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import warnings
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

# Model-config fields that fix the parameter shapes or the computation: a checkpoint is resumable only
# into a model that agrees on all of them.
RESUME_CONFIG_KEYS = ("layer_pattern", "hidden_size", "num_hidden_layers", "vocab_size", "num_attention_heads",
                      "num_key_value_heads", "window_size", "num_fading_tokens", "num_eidetic_tokens", "fading_span",
                      "eidetic_position", "ssm_state_size", "ssm_expand", "ssm_head_dim", "ssm_n_groups",
                      "ssm_conv_kernel", "intermediate_size", "use_mlp", "pos_encoding", "tie_word_embeddings",
                      "tie_fading_projections", "fading_residual", "fading_residual_gate",
                      "fading_residual_gate_scale", "innovation_span")
MANIFEST_FILE = "manifest.json"


def _sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _rng_state() -> dict:
    """The state of every random generator a run draws from: Python, NumPy, torch CPU and CUDA."""
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict) -> None:
    """Restore what `_rng_state` returned (CUDA only on a machine with the same number of devices)."""
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


@contextlib.contextmanager
def quiet_hf_progress():
    """Silence transformers' own progress bars (weight saving/loading) inside a training run."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def _fsync_file(path: Path) -> None:
    """Flush a written file to disk."""
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def _fsync_dir(path: Path) -> None:
    """Make a rename/creation inside `path` durable (no-op where directories cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def check_resume_config(path: Path, saved: dict, ours: dict) -> None:
    """ValueError naming every RESUME_CONFIG_KEYS field where the checkpoint's model config `saved`
    differs from the model being trained (`ours`); both are `config.to_dict()`-style dicts."""
    diff = [k for k in RESUME_CONFIG_KEYS if saved.get(k) != ours.get(k)]
    if diff:
        raise ValueError(f"cannot resume from {path}: its model config differs in {', '.join(diff)} "
                         f"(saved {[saved.get(k) for k in diff]}, now {[ours.get(k) for k in diff]}); "
                         "use the same preset/config or a new --out folder")


def save_checkpoint(out_dir: Path, step: int, model, optimizer, scheduler, trainer_state: dict, keep: int) -> Path:
    """Write checkpoint `step` atomically (temp folder + manifest + rename); keep the newest `keep`."""
    root = Path(out_dir) / "checkpoints"
    tmp, final = root / f".tmp-step-{step}", root / f"step-{step}"
    for stale in (*root.glob(".tmp-step-*"), *root.glob(".old-step-*")):  # left by an earlier crash
        shutil.rmtree(stale, ignore_errors=True)
    tmp.mkdir(parents=True)
    with quiet_hf_progress():
        model.save_pretrained(tmp)
    torch.save(optimizer.state_dict(), tmp / "optimizer.pt")
    torch.save(scheduler.state_dict(), tmp / "scheduler.pt")
    torch.save(_rng_state(), tmp / "rng.pt")
    (tmp / "trainer_state.json").write_text(json.dumps(trainer_state))
    write_manifest(tmp)
    if final.exists():  # re-saving the same step (e.g. a resumed run): move the old copy aside first
        stale = root / f".old-step-{step}"
        shutil.rmtree(stale, ignore_errors=True)
        os.replace(final, stale)
        os.replace(tmp, final)
        shutil.rmtree(stale, ignore_errors=True)
    else:
        os.replace(tmp, final)
    _fsync_dir(root)
    for old in list_checkpoints(out_dir)[keep:]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def load_checkpoint(path: Path, model, optimizer, scheduler) -> None:
    """Load checkpoint `path`'s weights, optimizer, scheduler and RNG states; ValueError if the weights do not
    fit `model` (a tied weight missing from the file is expected)."""
    missing, unexpected = model.load_state_dict(load_file(path / "model.safetensors"), strict=False)
    tied = set(getattr(model, "_tied_weights_keys", None) or ())
    missing = [k for k in missing if k not in tied]
    if missing or unexpected:
        raise ValueError(f"checkpoint {path} does not fit the model: missing {missing[:5]}, "
                         f"unexpected {unexpected[:5]}")
    optimizer.load_state_dict(torch.load(path / "optimizer.pt", weights_only=False))
    scheduler.load_state_dict(torch.load(path / "scheduler.pt", weights_only=False))
    _set_rng_state(torch.load(path / "rng.pt", weights_only=False))


def list_checkpoints(out_dir: Path) -> list[Path]:
    """Checkpoint folders, newest first."""
    root = Path(out_dir) / "checkpoints"
    found = [p for p in root.glob("step-*") if p.is_dir() and p.name[5:].isdigit()] if root.is_dir() else []
    return sorted(found, key=lambda p: int(p.name[5:]), reverse=True)


def write_manifest(folder: Path) -> None:
    """List every file of `folder` with its size and sha256 in `folder/manifest.json`; the files are fsync-ed
    before the manifest is written, and the manifest before the folder."""
    folder = Path(folder)
    files = sorted(p for p in folder.iterdir() if p.is_file() and p.name != MANIFEST_FILE)
    for p in files:
        _fsync_file(p)
    manifest = {p.name: {"sha256": _sha256(p), "bytes": p.stat().st_size} for p in files}
    (folder / MANIFEST_FILE).write_text(json.dumps(manifest, indent=1))
    _fsync_file(folder / MANIFEST_FILE)
    _fsync_dir(folder)


def verify_manifest(folder: Path) -> str | None:
    """None if every file listed in `folder/manifest.json` is present with its size and hash; else what is
    wrong, in a few words."""
    manifest_path = Path(folder) / MANIFEST_FILE
    if not manifest_path.is_file():
        return f"{MANIFEST_FILE} is missing (the write did not finish)"
    try:
        manifest = json.loads(manifest_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        return f"{MANIFEST_FILE} is unreadable ({err})"
    if not isinstance(manifest, dict):
        return f"{MANIFEST_FILE} is not a file listing"
    for name, meta in manifest.items():
        f = Path(folder) / name
        if not f.is_file():
            return f"{name} is missing"
        if f.stat().st_size != meta["bytes"]:
            return f"{name} has {f.stat().st_size} bytes, the manifest says {meta['bytes']} (truncated?)"
        if _sha256(f) != meta["sha256"]:
            return f"{name} does not match its sha256 (corrupted)"
    return None


def latest_valid_checkpoint(out_dir: Path) -> Path | None:
    """Newest checkpoint that verifies; warns about each newer one that does not."""
    for path in list_checkpoints(out_dir):
        problem = verify_manifest(path)
        if problem is None:
            return path
        warnings.warn(f"checkpoint {path} is unusable: {problem}; trying the previous one", stacklevel=2)
    return None
