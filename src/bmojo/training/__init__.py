"""One training loop for every job (recall tasks and language modeling), on `accelerate`.

- `loop`: `Trainer` (AdamW groups, deterministic batches that are a pure function of (seed, step), single
  process or DDP, a divergence guard), `TrainConfig`, `TrainResult`; `RUN_FIELDS`, the settings a resumed
  run must keep.
- `schedule`: the cosine learning-rate schedule with linear warmup and a floor.
- `checkpoint`: atomic, manifest-verified checkpoints (`out_dir/checkpoints/step-N/`), the manifest
  functions (also used for the final model of `bmojo train`) and the checks that make a resumed run
  continue exactly.
"""

from .checkpoint import (
    MANIFEST_FILE,
    RESUME_CONFIG_KEYS,
    check_resume_config,
    latest_valid_checkpoint,
    list_checkpoints,
    load_checkpoint,
    quiet_hf_progress,
    save_checkpoint,
    verify_manifest,
    write_manifest,
)
from .loop import (
    RUN_FIELDS,
    TrainConfig,
    Trainer,
    TrainResult,
    batch_indices,
    collate,
    force_cpu,
    param_groups,
    resume_conflicts,
)
from .schedule import cosine_with_warmup, lr_factor

__all__ = [
    "MANIFEST_FILE",
    "RESUME_CONFIG_KEYS",
    "RUN_FIELDS",
    "TrainConfig",
    "TrainResult",
    "Trainer",
    "batch_indices",
    "check_resume_config",
    "collate",
    "cosine_with_warmup",
    "force_cpu",
    "latest_valid_checkpoint",
    "list_checkpoints",
    "load_checkpoint",
    "lr_factor",
    "param_groups",
    "quiet_hf_progress",
    "resume_conflicts",
    "save_checkpoint",
    "verify_manifest",
    "write_manifest",
]
