"""`bmojo eval`: perplexity / bits per byte on a split, and the length-generalization sweep.

For a run trained at context L, the sweep scores the *same* tokens (the first `--eval-tokens` of the
split, packed) cut into independent windows of m*L tokens for each multiple m in `--lengths`; every
window starts from an empty state and every position of it is a target (position t sees the t tokens
before it). Windows up to `--max-parallel-len` tokens run the parallel form; longer ones run the
recurrent form, fed through the model's cache in blocks of `--block-size` tokens (exact: the cached
path continues the parallel computation), so memory stays bounded by the block, not the length.
"""

from __future__ import annotations

import argparse
import math
import re
import sys
import time
from pathlib import Path

import torch

from ..accounting import parameter_count
from ..cli import check_device, check_writable
from ..data import LMDataset
from ..models import BMojoConfig
from ..ops.loss import IGNORE_INDEX, next_token_cross_entropy, token_cross_entropy
from ..plotting import pyplot
from ..training import collate
from .common import (
    DEFAULT_FRACTIONS,
    EVAL_FILE,
    RUN_FILE,
    bits_per_byte,
    bytes_per_token,
    load_run,
    load_split,
    number,
    read_json,
    token_blocks,
    write_json,
)

PLOT_NAME = "length_generalization.png"
TABLE_NAME = "length_generalization.md"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `bmojo eval`."""
    parser.add_argument("runs", nargs="+", type=Path, metavar="DIR", help="run folder(s) written by `bmojo train`")
    parser.add_argument("--corpus", action="append",
                        help="corpus to evaluate on (default: the run's training corpus); repeat it to evaluate on "
                             "several, one table row per run and corpus (e.g. text the model did not train on)")
    parser.add_argument("--text-column", default=None)
    parser.add_argument("--split", default="test", choices=["train", "validation", "test"], help="default test")
    parser.add_argument("--lengths", default="1,2,4,8",
                        help="context lengths as multiples of the training length (default 1,2,4,8)")
    parser.add_argument("--seq-len", type=number(int, ge=2),
                        help="training length L the multiples refer to (default: the run's)")
    parser.add_argument("--eval-tokens", type=number(int, ge=1), default=65536,
                        help="tokens scored at every length (rounded up to whole windows of the longest length; "
                             "default 65536)")
    parser.add_argument("--batch-size", type=number(int, ge=1), default=4, help="windows per forward pass (default 4)")
    parser.add_argument("--max-parallel-len", type=number(int, ge=1), default=4096,
                        help="longest window run in the parallel form; longer ones use the recurrent form "
                             "(default 4096)")
    parser.add_argument("--block-size", type=number(int, ge=1), default=1024,
                        help="recurrent-form block length (default 1024)")
    parser.add_argument("--bf16", action="store_true", help="bf16 autocast (default fp32)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda[:N]")
    parser.add_argument("--doc-boundaries", action="store_true",
                        help="score each document of a window alone (the model restarts at every separator; a "
                             "document's first token is not scored); parallel form only. Default: the packed stream "
                             "as it comes, context running across documents")
    parser.add_argument("--retrieved-tokens", type=number(int, ge=0), metavar="R",
                        help="stored tokens each query reads (the config's num_retrieved_tokens), replacing the run's "
                             "own; 0 turns the storage tier off. B'MOJO runs with eidetic tokens only; rows and eval "
                             "files are then marked r=R. Default: the run's setting")
    parser.add_argument("--out", type=Path,
                        help="where the combined table and PNG go (default: the run folder; with several runs, "
                             "their common parent folder)")
    parser.add_argument("--plot-only", action="store_true",
                        help="do not evaluate: redraw the table and PNG from the runs' existing eval.json")


# ---------------------------------------------------------------- scoring

@torch.no_grad()
def window_nll(model, windows: torch.Tensor, batch_size: int = 4, max_parallel_len: int = 4096,
               block_size: int = 1024, bf16: bool = False, sep_id: int | None = None) -> tuple[float, int, str]:
    """Sum of next-token NLL (nats) over all targets of `windows` (n, T), each window scored from an empty
    state; returns (sum, number of targets, "parallel" | "recurrent"). With `sep_id` (the packing separator),
    each document inside a window is scored alone (seq_idx) and its first token, which nothing in its document
    predicts, is not scored (parallel form only)."""
    device = next(model.parameters()).device
    n, T = windows.shape
    form = "parallel" if T <= max_parallel_len else "recurrent"
    if sep_id is not None and form == "recurrent":
        raise ValueError(f"document boundaries are scored in the parallel form only: windows of {T} tokens exceed "
                         f"--max-parallel-len {max_parallel_len}")
    data = LMDataset(windows, sep_id)  # items: input_ids, labels (and seq_idx with the separator)
    total, count = 0.0, 0
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
        for i in range(0, n, batch_size):
            batch = {k: v.to(device) for k, v in collate(data, torch.arange(i, min(i + batch_size, n))).items()}
            x, labels = batch["input_ids"], batch["labels"]
            count += int((labels[:, 1:] != IGNORE_INDEX).sum())
            if form == "parallel":
                logits = model(x, seq_idx=batch.get("seq_idx")).logits
                total += next_token_cross_entropy(logits, labels, reduction="sum").item()
                continue
            cache = model.new_cache(x.shape[0])
            for a in range(0, T - 1, block_size):
                b = min(a + block_size, T - 1)  # inputs a..b-1 predict targets a+1..b
                logits = model(x[:, a:b], cache=cache).logits
                total += token_cross_entropy(logits, labels[:, a + 1 : b + 1], reduction="sum").item()
    return total, count, form


def parse_lengths(text: str) -> list[float]:
    """--lengths as sorted distinct positive multiples of the training length; ValueError otherwise."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise ValueError(f"--lengths must be comma-separated numbers (multiples of the training length), "
                         f"got {text!r}") from err
    if not values or any(v <= 0 for v in values):
        raise ValueError(f"--lengths must be positive multiples of the training length, got {text!r}")
    return sorted(set(values))


def length_sweep(model, stream_blocks: torch.Tensor, train_len: int, multiples: list[float], bytes_per_tok: float,
                 batch_size: int = 4, max_parallel_len: int = 4096, block_size: int = 1024, bf16: bool = False,
                 log=None, sep_id: int | None = None) -> list[dict]:
    """Score the tokens of `stream_blocks` (n, longest window) at every context length m * train_len (with
    `sep_id`: each document alone, see `window_nll`)."""
    stream = stream_blocks.reshape(-1)
    rows = []
    for m in multiples:
        length = int(round(m * train_len))
        if length < 2 or stream.numel() % length:
            raise ValueError(f"context length {m} x {train_len} = {length} tokens must be >= 2 and divide the "
                             f"{stream.numel()} evaluated tokens; use integer multiples or powers of two")
        t0 = time.perf_counter()
        nll, count, form = window_nll(model, stream.view(-1, length), batch_size, max_parallel_len, block_size, bf16,
                                      sep_id)
        loss = nll / count
        rows.append({"multiple": m, "context_length": length, "loss": loss, "perplexity": math.exp(min(loss, 50.0)),
                     "bits_per_byte": bits_per_byte(loss, bytes_per_tok), "targets": count, "form": form,
                     "seconds": time.perf_counter() - t0})
        if log:
            log(f"  L={length:6d} ({m:g}x): loss {loss:.4f}  ppl {rows[-1]['perplexity']:9.3f}  "
                f"bpb {rows[-1]['bits_per_byte']:.4f}  [{form}, {rows[-1]['seconds']:.1f}s]")
    return rows


def eval_file(run_dir: Path, corpus: str | None, info: dict, retrieved: int | None = None) -> Path:
    """Where the evaluation of a run on `corpus` goes: eval.json for the run's training corpus (or None), else
    eval.<corpus name>.json; eval[.<corpus name>].r<R>.json when --retrieved-tokens R replaced the run's setting."""
    parts = [] if corpus is None or corpus == info.get("corpus", "builtin") else [corpus_name(corpus)]
    parts += [] if retrieved is None else [f"r{retrieved}"]
    return run_dir / ".".join(["eval", *parts, "json"]) if parts else run_dir / EVAL_FILE


def check_retrieved(run_dir: Path, config) -> None:
    """ValueError unless the run's model can read a storage tier (some 'bmojo' layer, which has eidetic tokens):
    what --retrieved-tokens needs."""
    if "bmojo" not in config.layer_pattern:
        raise ValueError(f"--retrieved-tokens: {run_dir} has no 'bmojo' layer (layer_pattern "
                         f"{list(config.layer_pattern)}); only B'MOJO layers with eidetic tokens read a storage tier")


def corpus_name(corpus: str) -> str:
    """A short name for a corpus: 'builtin', or the file or folder name (characters other than letters, digits,
    '.', '_' and '-' replaced by '_')."""
    name = corpus if corpus == "builtin" else Path(corpus).name or "corpus"
    return re.sub(r"[^A-Za-z0-9._-]", "_", name)


def check_corpora(corpora: list[str] | None) -> None:
    """ValueError when two corpora given to --corpus would share a name (and an eval file)."""
    names = [corpus_name(c) for c in corpora or []]
    clash = sorted({n for n in names if names.count(n) > 1})
    if clash:
        raise ValueError(f"--corpus: several corpora are named {', '.join(clash)} (each run keeps one eval file per "
                         "corpus name); give them distinct file or folder names")


def evaluate_run(run_dir: Path, args: argparse.Namespace, corpus: str | None = None, log=print) -> dict:
    """Evaluate one run folder on `corpus` (default: its training corpus); writes and returns the content of its
    eval file (see `eval_file`)."""
    retrieved = args.retrieved_tokens
    model, tok, info = load_run(run_dir, args.device,
                                **({} if retrieved is None else {"num_retrieved_tokens": retrieved}))
    if retrieved is not None:
        check_retrieved(run_dir, model.config)
    train_len = args.seq_len or info.get("seq_len")
    if not train_len:
        raise ValueError(f"{run_dir} has no run.json with seq_len; pass --seq-len (the training length)")
    multiples = parse_lengths(args.lengths)
    path = eval_file(run_dir, corpus, info, retrieved)
    corpus = corpus or info.get("corpus", "builtin")
    text_column = args.text_column or info.get("text_column", "text")
    fractions = info.get("fractions", DEFAULT_FRACTIONS)
    docs = load_split(corpus, args.split, fractions, info.get("split_seed", 0), text_column)
    longest = int(round(max(multiples) * train_len))
    blocks = token_blocks(docs, tok, longest, f"{args.split} split of {corpus}")
    n_blocks = min(len(blocks), max(1, math.ceil(args.eval_tokens / longest)))
    bpt = bytes_per_token(docs, tok)
    name, n_params = run_dir.resolve().name, parameter_count(model.config)
    name += "" if retrieved is None else f" r={retrieved}"
    log(f"{name}: {n_params:,} parameters, trained at L={train_len}; scoring {n_blocks * longest:,} "
        f"{args.split} tokens of {corpus} at {', '.join(f'{m:g}x' for m in multiples)}")
    rows = length_sweep(model, blocks[:n_blocks], train_len, multiples, bpt, args.batch_size,
                        args.max_parallel_len, args.block_size, args.bf16, log=log,
                        sep_id=tok.eos_id if args.doc_boundaries else None)
    result = {"run": str(run_dir), "name": name, "preset": info.get("preset"), "parameters": n_params,
              "corpus": corpus, "trained_on_corpus": corpus == info.get("corpus", "builtin"), "split": args.split,
              "doc_boundaries": args.doc_boundaries, "train_seq_len": train_len, "tokenizer": repr(tok),
              "evaluated_tokens": n_blocks * longest, "bytes_per_token": bpt,
              "num_retrieved_tokens": model.config.num_retrieved_tokens, "results": rows}
    write_json(path, result)
    return result


# ---------------------------------------------------------------- outputs

def _label(res: dict, several_corpora: bool) -> str:
    """A result's name in tables and legends: the run's, with its corpus when the results span several."""
    return f"{res['name']} / {corpus_name(res['corpus'])}" if several_corpora else res["name"]


def markdown_table(results: list[dict]) -> str:
    """Perplexity per model (rows; per model and corpus when there are several corpora, marked * where the model
    did not train on it) and context length (columns), with bits/byte at the training length."""
    lengths = sorted({(r["multiple"], r["context_length"]) for res in results for r in res["results"]})
    several = len({res["corpus"] for res in results}) > 1
    corpus_head = "corpus | " if several else ""
    head = f"| model | {corpus_head}params | " + " | ".join(f"ppl @ {L} ({m:g}x)" for m, L in lengths) + " | bpb @ 1x |"
    lines = [head, "|" + "---|" * (len(lengths) + 3 + several)]
    for res in results:
        by_len = {r["context_length"]: r for r in res["results"]}
        cells = [f"{by_len[L]['perplexity']:.3f}" if L in by_len else "-" for _, L in lengths]
        base = by_len.get(res["train_seq_len"])
        bpb = f"{base['bits_per_byte']:.4f}" if base else "-"
        unseen = "" if res.get("trained_on_corpus", True) else " *"
        corpus = f"{corpus_name(res['corpus'])}{unseen} | " if several else ""
        lines.append(f"| {res['name']} | {corpus}{res['parameters']:,} | " + " | ".join(cells) + f" | {bpb} |")
    if several:
        lines.append("\n\\* a corpus the model did not train on")
    return "\n".join(lines) + "\n"


def plot(results: list[dict], path: Path) -> Path:
    """Left: perplexity vs context length, one line per model. Right: the same relative to each model's
    perplexity at its training length (1.0 = no change). The training length is dashed."""
    plt = pyplot()
    fig, (ax, rel) = plt.subplots(1, 2, figsize=(11, 4.2))
    lengths = sorted({r["context_length"] for res in results for r in res["results"]})
    several = len({res["corpus"] for res in results}) > 1
    for res in results:
        rows = sorted(res["results"], key=lambda r: r["context_length"])
        xs, ys = [r["context_length"] for r in rows], [r["perplexity"] for r in rows]
        line, = ax.plot(xs, ys, marker="o", label=_label(res, several))
        base = next((r["perplexity"] for r in rows if r["context_length"] == res["train_seq_len"]), None)
        if base:
            rel.plot(xs, [y / base for y in ys], marker="o", color=line.get_color(), label=_label(res, several))
    for a in (ax, rel):
        for L in sorted({res["train_seq_len"] for res in results}):
            a.axvline(L, color="grey", linestyle="--", linewidth=0.8)
        a.set_xscale("log", base=2)
        a.set_xticks(lengths, [str(L) for L in lengths])
        a.minorticks_off()
        a.set_xlabel("evaluation context length (tokens); dashed: training length")
        a.grid(alpha=0.3)
    ax.set_yscale("log")
    ax.set_ylabel(f"perplexity ({results[0]['split']} split, log scale)")
    ax.set_title("perplexity vs context length")
    rel.axhline(1.0, color="black", linewidth=0.6)
    rel.set_ylabel("perplexity / perplexity at the training length")
    rel.set_title("relative to the training length")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def run(args: argparse.Namespace) -> int:
    """Evaluate every run folder of `args` (or reread their eval.json) and write the combined table and plot."""
    parse_lengths(args.lengths)
    check_corpora(args.corpus)
    check_device(args.device)
    for d in args.runs:
        if not d.is_dir():
            raise FileNotFoundError(f"run folder {str(d)!r} does not exist")
        if args.retrieved_tokens is not None and (d / "config.json").is_file():  # every run checked before the first
            check_retrieved(d, BMojoConfig.from_saved(d, num_retrieved_tokens=args.retrieved_tokens))
    out = args.out or (args.runs[0] if len(args.runs) == 1 else common_parent(args.runs))
    check_writable(out)
    log = lambda msg: print(msg, file=sys.stderr, flush=True)  # noqa: E731
    results, files = [], []
    for d in args.runs:
        info = read_json(d / RUN_FILE) if (d / RUN_FILE).is_file() else {}
        for corpus in args.corpus or [None]:
            path = eval_file(d, corpus, info, args.retrieved_tokens)
            if args.plot_only:
                if not path.is_file():
                    raise FileNotFoundError(f"--plot-only: {path} does not exist; run `bmojo eval {d}` first")
                results.append(read_json(path))
            else:
                results.append(evaluate_run(d, args, corpus, log))
                files.append(str(path))
    table = markdown_table(results)
    (out / TABLE_NAME).write_text(table)
    png = plot(results, out / PLOT_NAME)
    print(table)
    evals = "" if args.plot_only else ", ".join(files) + ", "
    print(f"wrote {evals}{out / TABLE_NAME} and {png}")
    return 0


def common_parent(paths: list[Path]) -> Path:
    """The deepest folder that holds all `paths` (the current folder if they share none)."""
    parts = [p.resolve().parts for p in paths]
    common = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return Path(*common) if common else Path(".")
