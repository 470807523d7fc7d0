"""`bmojo train`: train a preset or config file as a causal LM on a corpus.

Built on `bmojo.training.Trainer` (accelerate): one process, or several under `torchrun` /
`accelerate launch` (DDP; `--batch-size` is the global batch, split over the processes). Every input
error (missing/empty/too-small corpus, vocabulary mismatch, unwritable output, incompatible resume)
is raised as ValueError/FileNotFoundError before the first training step.
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import shutil
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from ..accounting import parameter_count
from ..cli import check_writable
from ..data import ByteTokenizer, LMDataset, Tokenizer, load_corpus, load_tokenizer, train_bpe
from ..data.tokenizers import META_FILE
from ..models import PRESETS, BMojoConfig, BMojoForCausalLM
from ..ops.loss import next_token_cross_entropy
from ..training import (
    TrainConfig,
    Trainer,
    TrainResult,
    check_resume_config,
    force_cpu,
    latest_valid_checkpoint,
    list_checkpoints,
    quiet_hf_progress,
)
from .common import (
    DEFAULT_FRACTIONS,
    METRICS_FILE,
    RUN_FILE,
    bits_per_byte,
    bytes_per_token,
    check_vocab,
    corpus_splits,
    read_json,
    token_blocks,
    unigram_entropy,
    write_json,
)

# run.json fields that define the data a step reads: a resumed run must agree on all of them.
DATA_KEYS = ("corpus", "text_column", "tokenizer", "seq_len", "split_seed", "fractions")


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
    model.add_argument("--target-params", type=float, metavar="N",
                       help="choose num_hidden_layers so the parameter count is closest to N (e.g. 1.3e6)")

    data = parser.add_argument_group("data")
    data.add_argument("--corpus", default=None,
                      help="'builtin' (default: this Python's stdlib sources + pydoc topics), a text file, a folder, "
                           "a datasets save_to_disk folder or a .jsonl/.json/.parquet/.csv file")
    data.add_argument("--text-column", default=None, help="text column of a table/datasets corpus (default: text)")
    data.add_argument("--tokenizer", default=None,
                      help="'byte' (default, vocab 256), 'bpe' (train a byte-level BPE on the train split, saved in "
                           "--out), or a path to a saved tokenizer / HF tokenizer folder / tokenizer.json")
    data.add_argument("--bpe-vocab-size", type=int, default=4096, help="vocabulary of a trained BPE (default 4096)")
    data.add_argument("--seq-len", type=int, default=None, help="training context length (default 256)")
    data.add_argument("--split-seed", type=int, default=None, help="seed of the document split (default 0)")
    data.add_argument("--val-fraction", type=float, default=None, help="validation fraction (default 0.01)")
    data.add_argument("--test-fraction", type=float, default=None, help="test fraction (default 0.01)")

    opt = parser.add_argument_group("optimization")
    opt.add_argument("--max-steps", type=int, default=1000, help="optimizer steps (default 1000)")
    opt.add_argument("--max-tokens", type=float, default=None,
                     help="token budget instead of --max-steps: steps = ceil(N / (batch_size * seq_len))")
    opt.add_argument("--batch-size", type=int, default=16, help="global batch in sequences (default 16)")
    opt.add_argument("--lr", type=float, default=1e-3, help="peak lr of non-SSM parameters (default 1e-3)")
    opt.add_argument("--ssm-lr", type=float, default=None,
                     help="peak lr of SSM parameters (default: --lr); the paper uses Mamba's lr (5x GPT-3's) here")
    opt.add_argument("--weight-decay", type=float, default=0.1)
    opt.add_argument("--warmup-ratio", type=float, default=0.05)
    opt.add_argument("--min-lr-ratio", type=float, default=0.1, help="cosine floor as a fraction of the peak")
    opt.add_argument("--grad-clip", type=float, default=1.0)
    opt.add_argument("--bf16", action=argparse.BooleanOptionalAction, default=True,
                     help="bf16 autocast (default on; fp32 master weights)")
    opt.add_argument("--seed", type=int, default=0)

    run = parser.add_argument_group("run")
    run.add_argument("--out", type=Path, required=True, help="run folder (model, tokenizer, checkpoints, logs)")
    run.add_argument("--resume", action="store_true", help="continue from the newest valid checkpoint in --out")
    run.add_argument("--save-every", type=int, default=200, help="checkpoint every N steps (0 = never; default 200)")
    run.add_argument("--keep-checkpoints", type=int, default=2)
    run.add_argument("--eval-every", type=int, default=0, help="validation every N steps (0 = only at the end)")
    run.add_argument("--eval-sequences", type=int, default=64,
                     help="validation sequences scored each evaluation (default 64; 0 = none)")
    run.add_argument("--log-every", type=int, default=10)
    run.add_argument("--time-budget", type=float, default=None, metavar="SECONDS",
                     help="stop (and checkpoint) after this many seconds of training")
    run.add_argument("--tensorboard", action="store_true", help="write TensorBoard logs to OUT/tensorboard")
    run.add_argument("--cpu", action="store_true", help="train on CPU even if a GPU is visible")
    run.add_argument("--no-progress", action="store_true", help="no progress bar")


# ---------------------------------------------------------------- pieces

def parse_overrides(items: list[str]) -> dict:
    """--set KEY=VALUE items as a dict; values are JSON where they parse, else bare strings."""
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        try:
            out[key] = json.loads(value)
        except json.JSONDecodeError:
            out[key] = value  # a bare string, e.g. pos_encoding=none
    return out


def _config_from_file(path: Path, overrides: dict) -> BMojoConfig:
    """A BMojoConfig from a config.json file (or a folder holding one), plus `overrides`."""
    if not path.exists():
        raise FileNotFoundError(f"model config {str(path)!r} does not exist")
    file = path / "config.json" if path.is_dir() else path
    if not file.is_file():
        raise FileNotFoundError(f"{path} has no config.json")
    raw = read_json(file)
    if raw.get("model_type", "bmojo") != "bmojo":
        raise ValueError(f"{file} is a {raw['model_type']!r} config, not a bmojo one")
    for key in ("model_type", "transformers_version", "architectures"):
        raw.pop(key, None)
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


def _lm_evaluator(blocks: torch.Tensor, batch_size: int, bpt: float):
    """evaluate(model) -> {val_loss, val_ppl, val_bpb} on fixed validation blocks (mean over all targets)."""
    def evaluate(model) -> dict:
        device = next(model.parameters()).device
        total, count = 0.0, 0
        for i in range(0, len(blocks), batch_size):
            x = blocks[i : i + batch_size].to(device)
            total += next_token_cross_entropy(model(x).logits, x, reduction="sum").item()
            count += x[:, 1:].numel()
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
    """Train as `args` say; every input error is raised before the first training step."""
    from accelerate import PartialState

    _check_arguments(args)
    out: Path = args.out
    state = PartialState(cpu=force_cpu(args.cpu))
    if state.is_main_process:
        check_writable(out)
    state.wait_for_everyone()
    settings, ckpt, saved_run = _settle_run_settings(args, out)
    t0 = time.perf_counter()
    splits, tok = _load_corpus_and_tokenizer(args, settings, out, ckpt, state)
    config = _model_config(args, tok, ckpt)
    train, evaluate = _load_datasets(args, splits, tok, settings["seq_len"], state)
    max_steps = _max_steps(args, settings["seq_len"])
    model = _build_model(args, config)
    info = _run_info(args, settings, saved_run, config, train, splits, tok)
    if state.is_main_process and ckpt is None:
        tok.save(out)
        write_json(out / RUN_FILE, info)
    _log(state, f"{_describe_model(config)}: {info['parameters']:,} parameters; {len(train):,} train sequences x "
                f"{settings['seq_len']} tokens ({tok!r}); unigram baseline {info['unigram_entropy']:.3f} nats/token; "
                f"{max_steps} steps x {args.batch_size} sequences on {state.num_processes} process(es); "
                f"data ready in {time.perf_counter() - t0:.1f}s")
    trainer = _make_trainer(args, model, train, evaluate, max_steps, settings["seq_len"], ckpt, state)
    result = trainer.fit()
    if state.is_main_process:
        _write_results(trainer, result, info, out)
    state.wait_for_everyone()
    return 0


def _check_arguments(args: argparse.Namespace) -> None:
    """ValueError for a size below its minimum or --tensorboard without the tensorboard package."""
    for name in ("max_steps", "batch_size", "bpe_vocab_size"):
        if getattr(args, name) is not None and getattr(args, name) < 1:
            raise ValueError(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.seq_len is not None and args.seq_len < 2:
        raise ValueError(f"--seq-len must be >= 2, got {args.seq_len}")
    if args.tensorboard:
        try:
            importlib.import_module("torch.utils.tensorboard")
        except ImportError as err:
            raise ValueError("--tensorboard needs the tensorboard package (pip install tensorboard)") from err


def _given_data_settings(args: argparse.Namespace) -> dict:
    """The DATA_KEYS settings given on the command line (None where not given)."""
    given = {"corpus": args.corpus, "text_column": args.text_column, "tokenizer": args.tokenizer,
             "seq_len": args.seq_len, "split_seed": args.split_seed, "fractions": None}
    if args.val_fraction is not None or args.test_fraction is not None:
        v = DEFAULT_FRACTIONS[1] if args.val_fraction is None else args.val_fraction
        t = DEFAULT_FRACTIONS[2] if args.test_fraction is None else args.test_fraction
        given["fractions"] = [1.0 - v - t, v, t]
    return given


def _settle_run_settings(args: argparse.Namespace, out: Path) -> tuple[dict, Path | None, dict | None]:
    """(data settings, checkpoint to resume or None, the saved run.json or None): a resumed run keeps its saved
    settings (ValueError if the command line contradicts them), a fresh one takes the given ones or defaults."""
    checkpoints = list_checkpoints(out)
    saved_run = read_json(out / RUN_FILE) if (out / RUN_FILE).is_file() else None
    given = _given_data_settings(args)
    if not args.resume:
        if checkpoints or (out / "model.safetensors").is_file():
            raise ValueError(f"{out} already holds a run; pass --resume to continue it or choose a new --out")
        settings = {"corpus": "builtin", "text_column": "text", "tokenizer": "byte", "seq_len": 256,
                    "split_seed": 0, "fractions": list(DEFAULT_FRACTIONS)}
        settings.update({k: v for k, v in given.items() if v is not None})
        if settings["tokenizer"] not in ("byte", "bpe"):
            settings["tokenizer"] = str(Path(settings["tokenizer"]).resolve())
        if settings["corpus"] != "builtin" and Path(settings["corpus"]).exists():
            settings["corpus"] = str(Path(settings["corpus"]).resolve())
        return settings, None, saved_run
    if not checkpoints:
        raise ValueError(f"--resume: {out} has no checkpoints to resume from; drop --resume to start a new run")
    ckpt = latest_valid_checkpoint(out)
    if ckpt is None:
        raise ValueError(f"--resume: every checkpoint in {out / 'checkpoints'} is damaged; nothing to resume")
    if saved_run is None:
        raise ValueError(f"--resume: {out / RUN_FILE} is missing; was {out} written by `bmojo train`?")
    clash = [k for k in DATA_KEYS if given[k] is not None and given[k] != saved_run.get(k)]
    if clash:
        raise ValueError(f"--resume: {', '.join(f'{k}={given[k]!r} (saved {saved_run.get(k)!r})' for k in clash)} "
                         f"differ from the run in {out}; a resumed run must read the same data")
    return {k: saved_run[k] for k in DATA_KEYS}, ckpt, saved_run


def _load_corpus_and_tokenizer(args: argparse.Namespace, settings: dict, out: Path, ckpt: Path | None,
                               state) -> tuple[dict[str, list], Tokenizer]:
    """(document splits, tokenizer); a missing or empty corpus raises here."""
    docs = load_corpus(settings["corpus"], settings["text_column"])
    splits = corpus_splits(docs, settings["fractions"], settings["split_seed"])
    tok = _resolve_tokenizer(settings["tokenizer"], out, splits["train"], args.bpe_vocab_size,
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


def _load_datasets(args: argparse.Namespace, splits: dict[str, list], tok: Tokenizer, seq_len: int,
                   state) -> tuple[LMDataset, Callable | None]:
    """(train set, validation evaluator or None); a train split smaller than one batch raises here."""
    train = LMDataset(token_blocks(splits["train"], tok, seq_len, "train split"))
    if len(train) < args.batch_size:
        raise ValueError(f"the train split packs into {len(train)} sequences of seq_len={seq_len}, fewer than one "
                         f"batch of {args.batch_size}; use more text, a smaller --seq-len or --batch-size")
    if not (args.eval_sequences and splits["validation"]):
        return train, None
    try:
        val_blocks = token_blocks(splits["validation"], tok, seq_len, "validation split")
    except ValueError as err:
        _log(state, f"note: no validation during training ({err})")
        return train, None
    if len(val_blocks) > args.eval_sequences:  # evenly spread over the split, not just its first document
        val_blocks = val_blocks[torch.linspace(0, len(val_blocks) - 1, args.eval_sequences).round().long()]
    bpt = bytes_per_token(splits["validation"], tok)
    return train, _lm_evaluator(val_blocks, max(1, min(args.batch_size, 16)), bpt)


def _max_steps(args: argparse.Namespace, seq_len: int) -> int:
    """--max-steps, or the steps that --max-tokens takes at this batch size and sequence length."""
    if args.max_tokens:
        return max(1, math.ceil(args.max_tokens / (args.batch_size * seq_len)))
    return args.max_steps


def _build_model(args: argparse.Namespace, config: BMojoConfig) -> BMojoForCausalLM:
    """The model, initialised from --seed."""
    torch.manual_seed(args.seed)
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


def _make_trainer(args: argparse.Namespace, model: BMojoForCausalLM, train: LMDataset, evaluate: Callable | None,
                  max_steps: int, seq_len: int, ckpt: Path | None, state) -> Trainer:
    """The Trainer of this run, resumed from `ckpt` if given, with plain log lines under --no-progress."""
    cfg = TrainConfig(
        max_steps=max_steps, batch_size=args.batch_size, lr=args.lr, ssm_lr=args.ssm_lr,
        weight_decay=args.weight_decay, warmup_ratio=args.warmup_ratio, min_lr_ratio=args.min_lr_ratio,
        grad_clip=args.grad_clip, bf16=args.bf16, seed=args.seed, log_every=args.log_every,
        eval_every=args.eval_every, save_every=args.save_every, keep_checkpoints=args.keep_checkpoints,
        time_budget_s=args.time_budget, progress=not args.no_progress, tensorboard=args.tensorboard, cpu=args.cpu,
    )
    trainer = Trainer(model, train, cfg, out_dir=args.out, evaluate=evaluate, tokens_per_example=seq_len)
    if ckpt is not None:
        path = trainer.resume(ckpt)
        _log(state, f"resumed from {path} (step {trainer.step})")
    if args.no_progress:
        trainer.on_log = _log_line(trainer.step, max_steps)
    return trainer


def _write_results(trainer: Trainer, result: TrainResult, info: dict, out: Path) -> None:
    """Save the final model and metrics.json in the run folder and print the one-line summary."""
    save_final(trainer.unwrapped, out)
    cfg = trainer.cfg
    final = result.evals[-1] if result.evals else {}
    unigram = info["unigram_entropy"]
    write_json(out / METRICS_FILE, {
        "steps": result.steps, "seconds": result.seconds, "stopped": result.stopped,
        "tokens": result.steps * cfg.batch_size * info["seq_len"], "parameters": info["parameters"],
        "unigram_entropy": unigram, "final": final, "history": result.history, "evals": result.evals,
        "train_config": {k: getattr(cfg, k) for k in cfg.__dataclass_fields__},
    })
    last = result.history[-1]["loss"] if result.history else float("nan")
    val = (f", val loss {final['val_loss']:.4f} (ppl {final['val_ppl']:.2f}, {final['val_bpb']:.3f} bits/byte)"
           if final else "")
    print(f"trained {result.steps} steps in {result.seconds:.0f}s ({result.stopped}): train loss {last:.4f}{val}; "
          f"unigram baseline {unigram:.4f}; model saved to {out}", flush=True)


def save_final(model, out: Path) -> None:
    """Save the final model at the top of the run folder, atomically per file (temp folder, then renames)."""
    tmp = out / ".final.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    with quiet_hf_progress():
        model.save_pretrained(tmp)
    for f in sorted(tmp.iterdir()):
        f.replace(out / f.name)
    tmp.rmdir()
