"""`bmojo train`: train a preset or config file as a causal LM on a corpus.

Built on `bmojo.training.Trainer` (accelerate): one process, or several under `torchrun` /
`accelerate launch` (DDP; `--batch-size` is the global batch, split over the processes). Every input
error (missing/empty/too-small corpus, vocabulary mismatch, unwritable output, incompatible resume)
is raised as ValueError/FileNotFoundError before the first training step; numeric flags out of range are
refused by argparse, with the range.

`--resume` continues the saved run: the model config from the checkpoint, the data settings from run.json
(DATA_KEYS), the training settings from the checkpoint's TrainConfig. Omitted flags take the saved values;
a given one that differs is refused if the saved optimizer state, schedule or batch order assume it
(`RUN_FIELDS`), else applied and recorded in metrics.json ("changes"). A run that diverges saves no final
model and exits non-zero.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..accounting import parameter_count
from ..cli import check_writable, parse_assignments
from ..data import ByteTokenizer, LMDataset, Tokenizer, load_corpus, load_tokenizer, train_bpe
from ..data.tokenizers import META_FILE
from ..models import PRESETS, BMojoConfig, BMojoForCausalLM
from ..training import (
    MANIFEST_FILE,
    TrainConfig,
    Trainer,
    TrainResult,
    check_resume_config,
    force_cpu,
    latest_valid_checkpoint,
    list_checkpoints,
    quiet_hf_progress,
    resume_conflicts,
    write_manifest,
)
from .common import (
    DEFAULT_FRACTIONS,
    METRICS_FILE,
    RUN_FILE,
    bits_per_byte,
    bytes_per_token,
    check_vocab,
    corpus_splits,
    number,
    read_json,
    token_blocks,
    unigram_entropy,
    write_json,
)
from .evaluate import window_nll

# run.json fields that define the data a step reads and the validation set: a resumed run must agree on all
# of them. DATA_DEFAULTS: their values in a fresh run where not given.
DATA_KEYS = ("corpus", "text_column", "tokenizer", "bpe_vocab_size", "seq_len", "split_seed", "fractions",
             "eval_sequences", "doc_boundaries")
DATA_DEFAULTS = {"corpus": "builtin", "text_column": "text", "tokenizer": "byte", "bpe_vocab_size": 4096,
                 "seq_len": 256, "split_seed": 0, "fractions": list(DEFAULT_FRACTIONS), "eval_sequences": 64,
                 "doc_boundaries": True}
# Defaults of `bmojo train` where they differ from TrainConfig's.
TRAIN_DEFAULTS = {"batch_size": 16, "bf16": True, "save_every": 200}
# The TrainConfig fields set by flags (each flag's dest is the field's name). A resumed run takes the
# checkpoint's value of an omitted one, except for INVOCATION_FIELDS (settings of one invocation).
FLAG_FIELDS = ("max_steps", "batch_size", "lr", "ssm_lr", "weight_decay", "warmup_ratio", "min_lr_ratio", "grad_clip",
               "bf16", "seed", "save_every", "keep_checkpoints", "eval_every", "log_every", "time_budget_s",
               "max_nonfinite_steps", "tensorboard", "cpu", "progress")
INVOCATION_FIELDS = ("time_budget_s",)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `bmojo train`."""
    model = parser.add_argument_group("model")
    src = model.add_mutually_exclusive_group()
    src.add_argument("--preset", choices=list(PRESETS), help="architecture preset")
    src.add_argument("--config", type=Path, metavar="FILE",
                     help="model config: a config.json file or a folder holding one")
    model.add_argument("--set", nargs="+", default=[], metavar="KEY=VALUE",
                       help="override model config fields, e.g. --set hidden_size=128 num_hidden_layers=6 "
                            "(values are JSON: numbers, true/false, lists)")
    model.add_argument("--target-params", type=number(float, gt=0), metavar="N",
                       help="choose num_hidden_layers so the parameter count is closest to N (e.g. 1.3e6)")

    data = parser.add_argument_group("data", "on --resume, omitted data flags take the run's values (run.json) and "
                                             "given ones must equal them")
    data.add_argument("--corpus", default=None,
                      help="'builtin' (default: this Python's stdlib sources + pydoc topics), a text file, a folder, "
                           "a datasets save_to_disk folder or a .jsonl/.json/.parquet/.csv file")
    data.add_argument("--text-column", default=None, help="text column of a table/datasets corpus (default: text)")
    data.add_argument("--tokenizer", default=None,
                      help="'byte' (default, vocab 256), 'bpe' (train a byte-level BPE on the train split, saved in "
                           "--out), or a path to a saved tokenizer / HF tokenizer folder / tokenizer.json")
    data.add_argument("--bpe-vocab-size", type=number(int, ge=1), default=None,
                      help=f"vocabulary of a trained BPE (default {DATA_DEFAULTS['bpe_vocab_size']})")
    data.add_argument("--seq-len", type=number(int, ge=2), default=None,
                      help=f"training context length (default {DATA_DEFAULTS['seq_len']})")
    data.add_argument("--split-seed", type=int, default=None, help="seed of the document split (default 0)")
    data.add_argument("--val-fraction", type=number(float, ge=0, lt=1), default=None,
                      help=f"validation fraction (default {DEFAULT_FRACTIONS[1]})")
    data.add_argument("--test-fraction", type=number(float, ge=0, lt=1), default=None,
                      help=f"test fraction (default {DEFAULT_FRACTIONS[2]})")
    data.add_argument("--doc-boundaries", action=argparse.BooleanOptionalAction, default=None,
                      help="packed documents with boundaries: every state restarts at each document and no target "
                           "crosses one (default on; --no-doc-boundaries: one stream across documents)")
    data.add_argument("--eval-sequences", type=number(int, ge=0), default=None,
                      help=f"validation sequences scored each evaluation (default {DATA_DEFAULTS['eval_sequences']}; "
                           "0 = none)")

    fresh = dataclasses.asdict(TrainConfig(**TRAIN_DEFAULTS))
    opt = parser.add_argument_group(
        "optimization", "on --resume, omitted flags take the checkpoint's values, and a given one that differs is "
                        "refused (the saved optimizer state, schedule and batch order assume them), except "
                        "--max-steps/--max-tokens, which may extend or shorten the run")
    steps = opt.add_mutually_exclusive_group()
    steps.add_argument("--max-steps", type=number(int, ge=1), default=None,
                       help=f"optimizer steps (default {fresh['max_steps']}; on --resume it may change: it extends "
                            "or shortens the run and its cosine schedule, recorded in metrics.json)")
    steps.add_argument("--max-tokens", type=number(float, gt=0), default=None,
                       help="token budget instead of --max-steps: steps = ceil(N / (batch_size * seq_len))")
    opt.add_argument("--batch-size", type=number(int, ge=1), default=None,
                     help=f"global batch in sequences (default {fresh['batch_size']})")
    opt.add_argument("--lr", type=number(float, gt=0), default=None,
                     help=f"peak lr of non-SSM parameters (default {fresh['lr']:g})")
    opt.add_argument("--ssm-lr", type=number(float, gt=0), default=None,
                     help="peak lr of SSM parameters (default: --lr); the paper uses Mamba's lr (5x GPT-3's) here")
    opt.add_argument("--weight-decay", type=number(float, ge=0), default=None,
                     help=f"AdamW weight decay of matrices (default {fresh['weight_decay']:g})")
    opt.add_argument("--warmup-ratio", type=number(float, ge=0, le=1), default=None,
                     help=f"linear warmup, as a fraction of the steps (default {fresh['warmup_ratio']:g})")
    opt.add_argument("--min-lr-ratio", type=number(float, ge=0, le=1), default=None,
                     help=f"cosine floor as a fraction of the peak (default {fresh['min_lr_ratio']:g})")
    opt.add_argument("--grad-clip", type=number(float, ge=0), default=None,
                     help=f"gradient-norm clipping (default {fresh['grad_clip']:g}; 0 = off)")
    opt.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=None,
                     help="bf16 autocast (default on; fp32 master weights)")
    opt.add_argument("--seed", type=int, default=None,
                     help=f"seed of the initial weights and the batch order (default {fresh['seed']})")

    run = parser.add_argument_group(
        "run", "on --resume, omitted flags take the checkpoint's values (except --time-budget, which is this "
               "invocation's), and given ones that differ are applied and recorded in metrics.json ('changes')")
    run.add_argument("--out", type=Path, required=True, help="run folder (model, tokenizer, checkpoints, logs)")
    run.add_argument("--resume", action="store_true",
                     help="continue the run in --out from its newest valid checkpoint, with its settings")
    run.add_argument("--save-every", type=number(int, ge=0), default=None,
                     help=f"checkpoint every N steps (0 = never; default {fresh['save_every']})")
    run.add_argument("--keep-checkpoints", type=number(int, ge=1), default=None,
                     help=f"newest checkpoints kept (default {fresh['keep_checkpoints']})")
    run.add_argument("--eval-every", type=number(int, ge=0), default=None,
                     help="validation every N steps (0 = only at the end; default 0)")
    run.add_argument("--log-every", type=number(int, ge=1), default=None,
                     help=f"log line every N steps (default {fresh['log_every']})")
    run.add_argument("--time-budget", dest="time_budget_s", type=number(float, ge=0), default=None,
                     metavar="SECONDS", help="stop (and checkpoint) once training has taken this many seconds in all")
    run.add_argument("--max-nonfinite-steps", type=number(int, ge=0), default=None,
                     help="steps in a row whose loss or gradient norm is not finite that are skipped (no update) "
                          "before the run stops as diverged (default 0: stop at the first)")
    run.add_argument("--tensorboard", action=argparse.BooleanOptionalAction, default=None,
                     help="write TensorBoard logs to OUT/tensorboard (default off)")
    run.add_argument("--cpu", action=argparse.BooleanOptionalAction, default=None,
                     help="train on CPU even if a GPU is visible (default off)")
    run.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                     help="progress bar (default on; --no-progress: one log line per --log-every steps instead)")


# ---------------------------------------------------------------- pieces

def parse_overrides(items: list[str]) -> dict:
    """--set KEY=VALUE items as a dict (`parse_assignments`). An unknown KEY raises ValueError with the closest
    config field (the values' types are checked by BMojoConfig)."""
    out = parse_assignments(items, "--set")
    BMojoConfig.check_field_names(out, "--set: ")
    return out


def _config_from_file(path: Path, overrides: dict) -> BMojoConfig:
    """A BMojoConfig from a config.json file (or a folder holding one), plus `overrides`."""
    if not path.exists():
        raise FileNotFoundError(f"model config {str(path)!r} does not exist")
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path} has no config.json")
    raw = read_json(file)
    if not isinstance(raw, dict):
        raise ValueError(f"{file} is not a model config (a JSON object of field: value)")
    if raw.get("model_type", "bmojo") != "bmojo":
        raise ValueError(f"{file} is a {raw['model_type']!r} config, not a bmojo one")
    for key in ("model_type", "transformers_version", "architectures", "_name_or_path", "auto_map"):  # HF's records
        raw.pop(key, None)
    BMojoConfig.check_field_names(raw, f"{file}: ")
    return BMojoConfig(**{**raw, **overrides})


def build_config(preset: str | None, config_file: Path | None, overrides: dict, vocab_size: int,
                 target_params: float | None = None) -> BMojoConfig:
    """The model config: preset (vocab_size = the tokenizer's unless overridden) or file, plus overrides;
    with `target_params`, num_hidden_layers is chosen to bring the parameter count closest to it."""
    def make(extra: dict) -> BMojoConfig:
        if preset:
            return BMojoConfig.from_preset(preset, **{"vocab_size": vocab_size, **overrides, **extra})
        return _config_from_file(config_file, {**overrides, **extra})

    config = make({})
    if target_params:
        if "num_hidden_layers" in overrides:
            raise ValueError("--target-params chooses num_hidden_layers: do not also --set it")
        count = lambda n: parameter_count(make({"num_hidden_layers": n}))  # noqa: E731  (grows with n)
        lo, hi = 1, 1
        while count(hi) < target_params and hi < 1024:  # first depth at or above the target: double, then bisect
            lo, hi = hi, hi * 2
        while lo < hi:
            mid = (lo + hi) // 2
            lo, hi = (mid + 1, hi) if count(mid) < target_params else (lo, mid)
        best = min((n for n in (hi - 1, hi) if n >= 1), key=lambda n: abs(count(n) - target_params))
        config = make({"num_hidden_layers": best})
    return config


def _resolve_tokenizer(spec: str, out: Path, train_docs, bpe_vocab: int, resuming: bool, state) -> Tokenizer:
    """byte | bpe (trained on the train split by the main process, saved in `out`) | a saved tokenizer.
    A resumed run reloads the tokenizer saved in `out`."""
    if resuming:
        if not (out / META_FILE).is_file():
            raise ValueError(f"--resume: {out / META_FILE} is missing; cannot tell which tokenizer the run used")
        return load_tokenizer(out)
    if spec == "byte":
        return ByteTokenizer()
    if spec == "bpe":
        if state.is_main_process:
            train_bpe((d.text for d in train_docs), bpe_vocab).save(out)
        state.wait_for_everyone()
        return load_tokenizer(out)
    path = Path(spec)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer {spec!r} does not exist; use 'byte', 'bpe' or a saved tokenizer path")
    return load_tokenizer(path)


def _lm_evaluator(blocks: torch.Tensor, batch_size: int, bpt: float, sep_id: int | None = None):
    """evaluate(model) -> {val_loss, val_ppl, val_bpb} on fixed validation blocks (mean over all targets; with
    `sep_id`, documents scored alone, as the training data is read)."""
    def evaluate(model) -> dict:
        total, count, _ = window_nll(model, blocks, batch_size, max_parallel_len=blocks.shape[1], sep_id=sep_id)
        loss = total / count
        return {"val_loss": loss, "val_ppl": math.exp(min(loss, 50.0)), "val_bpb": bits_per_byte(loss, bpt)}
    return evaluate


def _log_line(start_step: int, max_steps: int):
    """Plain log lines (for --no-progress): step, loss, lr, tokens/s, ETA; or the validation metrics."""
    start = time.perf_counter()

    def log(rec: dict) -> None:
        if "loss" not in rec:
            print(f"step {rec['step']}: " + ", ".join(f"{k} {v:.4f}" for k, v in rec.items() if k != "step"),
                  file=sys.stderr, flush=True)
            return
        eta = (time.perf_counter() - start) / max(1, rec["step"] - start_step) * (max_steps - rec["step"])
        print(f"step {rec['step']}/{max_steps}: loss {rec['loss']:.4f}, lr {rec['lr']:.2e}, "
              f"{rec['tokens_per_s']:.0f} tok/s, ETA {eta / 60:.1f} min", file=sys.stderr, flush=True)
    return log


def _log(state, msg: str) -> None:
    """Print `msg` to stderr on the main process."""
    if state.is_main_process:
        print(msg, file=sys.stderr, flush=True)


# ---------------------------------------------------------------- the command

def run(args: argparse.Namespace) -> int:
    """Train as `args` say; every input error is raised before the first training step. A run that diverges
    writes metrics.json but no final model, and ends in a ValueError saying at which step."""
    from accelerate import PartialState

    out: Path = args.out
    settings, ckpt, saved_run = _settle_run_settings(args, out)
    cfg = _train_config(args, settings["seq_len"], ckpt)
    state = PartialState(cpu=force_cpu(cfg.cpu))
    if state.is_main_process:
        check_writable(out)
    state.wait_for_everyone()
    t0 = time.perf_counter()
    splits, tok = _load_corpus_and_tokenizer(settings, out, ckpt, state)
    config = _model_config(args, tok, ckpt)
    train, evaluate = _load_datasets(settings, cfg.batch_size, splits, tok, state)
    model = _build_model(config, cfg.seed)
    info = _run_info(args, settings, saved_run, config, train, splits, tok)
    if state.is_main_process and ckpt is None:
        tok.save(out)
        write_json(out / RUN_FILE, info)
    _log(state, f"{_describe_model(config)}: {info['parameters']:,} parameters; {len(train):,} train sequences x "
                f"{settings['seq_len']} tokens ({tok!r}); unigram baseline {info['unigram_entropy']:.3f} nats/token; "
                f"{cfg.max_steps} steps x {cfg.batch_size} sequences on {state.num_processes} process(es); "
                f"data ready in {time.perf_counter() - t0:.1f}s")
    trainer = _make_trainer(cfg, out, model, train, evaluate, settings["seq_len"], ckpt, state)
    result = trainer.fit()
    if state.is_main_process:
        _write_results(trainer, result, info, out)
    state.wait_for_everyone()
    if result.stopped == "diverged":
        raise ValueError(_divergence_message(result, cfg, out))
    return 0


def _given_data_settings(args: argparse.Namespace) -> dict:
    """The DATA_KEYS settings given on the command line (None where not given), paths made absolute."""
    given = {"corpus": args.corpus, "text_column": args.text_column, "tokenizer": args.tokenizer,
             "bpe_vocab_size": args.bpe_vocab_size, "seq_len": args.seq_len, "split_seed": args.split_seed,
             "fractions": None, "eval_sequences": args.eval_sequences, "doc_boundaries": args.doc_boundaries}
    if args.val_fraction is not None or args.test_fraction is not None:
        v = DEFAULT_FRACTIONS[1] if args.val_fraction is None else args.val_fraction
        t = DEFAULT_FRACTIONS[2] if args.test_fraction is None else args.test_fraction
        given["fractions"] = [1.0 - v - t, v, t]
    if given["tokenizer"] not in (None, "byte", "bpe"):
        given["tokenizer"] = str(Path(given["tokenizer"]).resolve())
    if given["corpus"] not in (None, "builtin") and Path(given["corpus"]).exists():
        given["corpus"] = str(Path(given["corpus"]).resolve())
    return given


def _settle_run_settings(args: argparse.Namespace, out: Path) -> tuple[dict, Path | None, dict | None]:
    """(data settings, checkpoint to resume or None, the saved run.json or None): a resumed run keeps its saved
    settings (ValueError if the command line contradicts them), a fresh one takes the given ones or defaults."""
    checkpoints = list_checkpoints(out)
    saved_run = read_json(out / RUN_FILE) if (out / RUN_FILE).is_file() else None
    given = {k: v for k, v in _given_data_settings(args).items() if v is not None}
    if not args.resume:
        if checkpoints or (out / "model.safetensors").is_file():
            raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose a new --out")
        return {**DATA_DEFAULTS, **given}, None, saved_run
    if not checkpoints:
        raise ValueError(f"--resume: {out} has no checkpoints to resume from; drop --resume to start a new run")
    ckpt = latest_valid_checkpoint(out)
    if ckpt is None:
        raise ValueError(f"--resume: every checkpoint in {out / 'checkpoints'} is damaged; nothing to resume")
    if saved_run is None:
        raise ValueError(f"--resume: {out / RUN_FILE} is missing; was {out} written by `bmojo train`?")
    saved_run = {"doc_boundaries": False, **saved_run}  # runs saved before the setting existed packed across documents
    clash = [k for k in given if k in saved_run and given[k] != saved_run[k]]
    if clash:
        raise ValueError(f"--resume: {', '.join(f'{k}={given[k]!r} (saved {saved_run[k]!r})' for k in clash)} "
                         f"differ from the run in {out}; a resumed run must read the same data")
    return {**DATA_DEFAULTS, **given, **{k: saved_run[k] for k in DATA_KEYS if k in saved_run}}, ckpt, saved_run


def _train_config(args: argparse.Namespace, seq_len: int, ckpt: Path | None) -> TrainConfig:
    """The training settings: each flag given, else (resuming) the checkpoint's value (except for
    INVOCATION_FIELDS), else the default; --max-tokens sets max_steps. ValueError naming every given flag that a
    resumed run must keep (RUN_FIELDS) but changes, and for --tensorboard without the tensorboard package."""
    saved = read_json(ckpt / "trainer_state.json").get("config", {}) if ckpt is not None else {}
    inherited = {k: v for k, v in saved.items() if k in FLAG_FIELDS and k not in INVOCATION_FIELDS}
    given = {k: getattr(args, k) for k in FLAG_FIELDS if getattr(args, k) is not None}
    cfg = TrainConfig(**{**TRAIN_DEFAULTS, **inherited, **given})
    if args.max_tokens is not None:
        cfg.max_steps = max(1, math.ceil(args.max_tokens / (cfg.batch_size * seq_len)))
    conflicts = resume_conflicts(saved, cfg)
    if conflicts:
        flags = ", ".join(f"{_flag(k, getattr(cfg, k))} (the run has {_flag(k, saved[k])})" for k in conflicts)
        raise ValueError(f"--resume: {flags}: the checkpoint's optimizer state, learning-rate schedule and batch "
                         f"order assume the run's values; drop {'them' if len(conflicts) > 1 else 'it'} to continue "
                         f"the run, or start a new run with {'them' if len(conflicts) > 1 else 'it'} "
                         "(another --out, without --resume)")
    if cfg.tensorboard:
        try:
            importlib.import_module("torch.utils.tensorboard")
        except ImportError as err:
            raise ValueError("--tensorboard needs the tensorboard package (pip install tensorboard)") from err
    return cfg


def _flag(field: str, value) -> str:
    """The command-line form of a TrainConfig field's value, e.g. `--lr 0.003`, `--no-bf16`."""
    name = "time-budget" if field == "time_budget_s" else field.replace("_", "-")
    if isinstance(value, bool):
        return f"--{'' if value else 'no-'}{name}"
    return f"--{name} {value}" if value is not None else f"no --{name}"


def _load_corpus_and_tokenizer(settings: dict, out: Path, ckpt: Path | None,
                               state) -> tuple[dict[str, list], Tokenizer]:
    """(document splits, tokenizer); a missing or empty corpus raises here."""
    docs = load_corpus(settings["corpus"], settings["text_column"])
    splits = corpus_splits(docs, settings["fractions"], settings["split_seed"])
    tok = _resolve_tokenizer(settings["tokenizer"], out, splits["train"], settings["bpe_vocab_size"],
                             resuming=ckpt is not None, state=state)
    return splits, tok


def _model_config(args: argparse.Namespace, tok: Tokenizer, ckpt: Path | None) -> BMojoConfig:
    """The model config from --preset/--config/--set (or the checkpoint's); a vocabulary mismatch or a config
    the checkpoint cannot resume into raises here."""
    overrides = parse_overrides(args.set)
    if args.preset is None and args.config is None:
        if ckpt is None:
            raise ValueError("pass --preset NAME or --config FILE "
                             "(only --resume can take the model from the checkpoint)")
        config = _config_from_file(ckpt, overrides)
    else:
        config = build_config(args.preset, args.config, overrides, tok.vocab_size, args.target_params)
    check_vocab(tok, config.vocab_size, "the model config")
    if config.eos_token_id is None:
        config.eos_token_id = tok.eos_id
    if ckpt is not None:
        check_resume_config(ckpt, read_json(ckpt / "config.json"), config.to_dict())
    return config


def _load_datasets(settings: dict, batch_size: int, splits: dict[str, list], tok: Tokenizer,
                   state) -> tuple[LMDataset, Callable | None]:
    """(train set, validation evaluator or None); a train split smaller than one batch raises here."""
    seq_len, eval_sequences = settings["seq_len"], settings["eval_sequences"]
    sep_id = tok.eos_id if settings["doc_boundaries"] else None
    train = LMDataset(token_blocks(splits["train"], tok, seq_len, "train split"), sep_id)
    if len(train) < batch_size:
        raise ValueError(f"the train split packs into {len(train)} sequences of seq_len={seq_len}, fewer than one "
                         f"batch of {batch_size}; use more text, a smaller --seq-len or --batch-size")
    if not (eval_sequences and splits["validation"]):
        return train, None
    try:
        val_blocks = token_blocks(splits["validation"], tok, seq_len, "validation split")
    except ValueError as err:
        _log(state, f"note: no validation during training ({err})")
        return train, None
    if len(val_blocks) > eval_sequences:  # evenly spread over the split, not just its first document
        val_blocks = val_blocks[torch.linspace(0, len(val_blocks) - 1, eval_sequences).round().long()]
    bpt = bytes_per_token(splits["validation"], tok)
    return train, _lm_evaluator(val_blocks, max(1, min(batch_size, 16)), bpt, sep_id)


def _build_model(config: BMojoConfig, seed: int) -> BMojoForCausalLM:
    """The model, initialised from `seed`."""
    torch.manual_seed(seed)
    return BMojoForCausalLM(config)


def _run_info(args: argparse.Namespace, settings: dict, saved_run: dict | None, config: BMojoConfig,
              train: LMDataset, splits: dict[str, list], tok: Tokenizer) -> dict:
    """run.json's content: the data settings, the preset, the parameter count, the data sizes, the unigram
    baseline."""
    return {**settings, "preset": args.preset or (saved_run or {}).get("preset"),
            "parameters": parameter_count(config), "train_sequences": len(train),
            "train_tokens": train.num_tokens, "unigram_entropy": unigram_entropy(train.blocks, tok.vocab_size),
            "documents": {k: len(v) for k, v in splits.items()}}


def _describe_model(config: BMojoConfig) -> str:
    """The layer kind of a uniform model, else its whole layer pattern."""
    return config.layer_pattern[0] if len(set(config.layer_pattern)) == 1 else str(config.layer_pattern)


def _make_trainer(cfg: TrainConfig, out: Path, model: BMojoForCausalLM, train: LMDataset, evaluate: Callable | None,
                  seq_len: int, ckpt: Path | None, state) -> Trainer:
    """The Trainer of this run, resumed from `ckpt` if given (the settings it changed logged), with plain log lines
    when the progress bar is off."""
    trainer = Trainer(model, train, cfg, out_dir=out, evaluate=evaluate, tokens_per_example=seq_len)
    if ckpt is not None:
        path = trainer.resume(ckpt)
        changed = [c for c in trainer.result.changes if c["step"] == trainer.step]
        note = "; changed: " + ", ".join(f"{c['flag']} {c['from']} -> {c['to']}" for c in changed) if changed else ""
        _log(state, f"resumed from {path} (step {trainer.step}){note}")
    if not cfg.progress:
        trainer.on_log = _log_line(trainer.step, cfg.max_steps)
    return trainer


def _write_results(trainer: Trainer, result: TrainResult, info: dict, out: Path) -> None:
    """Write metrics.json (what ran: history, evaluations, the settings, their changes on resume, the non-finite
    steps); unless the run diverged, save the final model first and print the one-line summary after."""
    cfg, diverged = trainer.cfg, result.stopped == "diverged"
    if not diverged:
        save_final(trainer.unwrapped, out)
    final = result.evals[-1] if result.evals else {}
    unigram = info["unigram_entropy"]
    write_json(out / METRICS_FILE, {
        "steps": result.steps, "seconds": result.seconds, "stopped": result.stopped,
        "tokens": result.steps * cfg.batch_size * info["seq_len"], "parameters": info["parameters"],
        "unigram_entropy": unigram, "final": final, "history": result.history, "evals": result.evals,
        "train_config": dataclasses.asdict(cfg), "changes": result.changes, "nonfinite": result.nonfinite,
    })
    if diverged:
        return
    last = result.history[-1]["loss"] if result.history else float("nan")
    val = (f", val loss {final['val_loss']:.4f} (ppl {final['val_ppl']:.2f}, {final['val_bpb']:.3f} bits/byte)"
           if final else "")
    print(f"trained {result.steps} steps in {result.seconds:.0f}s ({result.stopped}): train loss {last:.4f}{val}; "
          f"unigram baseline {unigram:.4f}; model saved to {out}", flush=True)


def _divergence_message(result: TrainResult, cfg: TrainConfig, out: Path) -> str:
    """The one-line error of a diverged run: at which step, what was kept, what to do."""
    bad = result.nonfinite[-1]
    kept = list_checkpoints(out)
    return (f"training diverged at step {bad['step']}: loss {bad['loss']}, gradient norm {bad['grad_norm']} "
            f"({cfg.max_nonfinite_steps + 1} non-finite step(s) in a row, --max-nonfinite-steps "
            f"{cfg.max_nonfinite_steps}); the diverged state was not saved (no checkpoint, no final model), the "
            f"newest checkpoint is {kept[0] if kept else 'none'}, {out / METRICS_FILE} records the run; start a new "
            "run with a lower --lr, or --resume with a larger --max-nonfinite-steps to skip such steps")


def save_final(model, out: Path) -> None:
    """Save the final model at the top of the run folder with its manifest.json (sizes, sha256): written to a
    temp folder, then each file renamed into place, the manifest last, so that a crash in between leaves files
    that do not match their manifest (which `load_run` detects) rather than a silently mixed model."""
    tmp = out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with quiet_hf_progress():
        model.save_pretrained(tmp)
    write_manifest(tmp)
    for f in sorted(tmp.iterdir(), key=lambda f: f.name == MANIFEST_FILE):
        f.replace(out / f.name)
    tmp.rmdir()
