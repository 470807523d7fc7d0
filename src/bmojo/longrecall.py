"""Recall far beyond the training length, through the recurrent form (docs/recall.md, "Long recall").

`bmojo longrecall MODEL_DIR... --lengths 8192,32768 --out DIR` reads each model saved by `bmojo compare
--save-models` (its task.json names the task, its settings and the seed), regenerates that task's test examples
at each length (the test split's seed, as `bmojo compare`'s `eval_lengths`), and reads them through the model's
decoding cache in pieces (chunked prefill: equal to the parallel forward, in memory bounded by the cache), so
bounded models reach lengths whose parallel forward would not fit. A model with a storage tier is evaluated with
each search backend of `--backends`; for "faiss" the recall of its searches against the exact search is measured
on the keys the model stores. `--task` reads another task than the one trained on (with the model's task settings
and `--task-set`), `--variant` reads each model with an eidetic memory again with other settings that hold no weights
(`READ_FIELDS`: the storage tier's, e.g. its retention, and `eidetic_position`). Writes results.json, results.md and
recall_vs_length.png, and, as each batch of examples ends, its counts to batches.jsonl, from which `--resume` goes on
after an interruption. `--jobs N` reads N batches side by side in one-thread processes.
"""

from __future__ import annotations

import argparse
import contextlib
import inspect
import json
import multiprocessing
import os
import sys
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from pathlib import Path

import torch
from tqdm.auto import tqdm

from . import tasks as task_lib
from .accounting import stored_bytes_per_token
from .allocator import cpu_allocator_tuned, tune_cpu_allocator
from .cli import check_writable, parse_assignments, sigterm_interrupts
from .models import BMojoConfig, BMojoForCausalLM
from .models.configuration import READ_FIELDS, STORE_BACKENDS
from .ops.ann import measuring_recall
from .ops.loss import IGNORE_INDEX
from .plotting import pyplot
from .records import append_record, reopen_records, write_atomically

BATCHES_FILE = "batches.jsonl"  # in the output folder: one finished batch per line, appended as each ends


@torch.no_grad()
def read_through_cache(model, inputs: torch.Tensor, piece: int,
                       batch: int | None = None) -> Iterator[tuple[torch.Tensor, torch.Tensor, dict]]:
    """Batches of inputs (n, L) read `batch` rows at a time (default: all n), each through a cache of its own in
    pieces of `piece` tokens, made once the batch before has let its cache go (memory holds one batch's cache).
    Yields, per batch: (its row numbers, its greedy predictions (rows, L), its cache's bytes after its last token:
    {"working_bytes", "stored_bytes"}); nothing for no rows. Rows never interact: the batch size changes memory, not
    predictions."""
    device = next(model.parameters()).device
    for rows in torch.arange(inputs.shape[0]).split(batch or inputs.shape[0]) if len(inputs) else ():
        cache = None  # the last batch's cache goes before this batch's is made
        cache = model.new_cache(len(rows))
        preds = torch.full_like(inputs[rows], -1)
        for a in range(0, inputs.shape[1], piece):
            e = min(inputs.shape[1], a + piece)
            preds[:, a:e] = model(inputs[rows, a:e].to(device), cache=cache).logits.argmax(-1).cpu()
        yield rows, preds, dict(working_bytes=cache.working_nbytes, stored_bytes=cache.stored_nbytes)


def count_right(preds: torch.Tensor, targets: torch.Tensor) -> tuple[int, int]:
    """(right, scored): how many scored positions (targets != IGNORE_INDEX) of targets (n, L) preds (n, L) predicts
    right, and how many there are."""
    scored = targets != IGNORE_INDEX
    return int((preds == targets)[scored].sum()), int(scored.sum())


# A store's blocks merge by copying (ops.store.TokenStore.append): while the merged block is made, its parts are held
# too. Measured (docs/recall.md, 262,144 tokens): two batches of 5 x 262,144 tokens, the first kept by mistake (4.1 GB
# of store and indexes estimated each), peaked at 10.2 GB resident: the second batch at about 1.5x its estimate.
MERGE_PEAK = 1.5
MEMORY_SHARE = 0.9  # of the machine's physical memory, for the batches read at once


def check_memory(config: BMojoConfig, backend: str | None, length: int, batch: int, where: str,
                 jobs: int = 1, examples: int | None = None) -> None:
    """ValueError when the storage tiers of the batches read at once (one per --jobs process, `jobs` of them, or fewer
    where `examples` make fewer batches), at their merge peak, would pass MEMORY_SHARE of this machine's physical
    memory, naming the largest --batch that fits with the same --jobs. Checked only where the store's size is known
    in advance: store_write="window" (every token that leaves the window is stored) without retention (store_horizon,
    store_regime_threshold: they bound it); "evicted" stores what the data decides. Other commands run side by side
    share the memory too."""
    store, index = stored_bytes_per_token(config, backend)
    if config.store_write != "window" or config.store_horizon or config.store_regime_threshold or not store:
        return
    try:
        memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):  # no sysconf (Windows) or no such name: memory unknown, not checked
        return
    per_example = (MERGE_PEAK * store + index) * length

    def at_once(b: int) -> int:  # examples held together with --batch b: one batch in each of the processes in use
        return b * min(jobs, -(-(examples or jobs * b) // b))

    if at_once(batch) * per_example > MEMORY_SHARE * memory:
        fits = max((b for b in range(1, batch) if at_once(b) * per_example <= MEMORY_SHARE * memory), default=0)
        half = " or a float16 store (--variant half:store_dtype=float16)" if config.store_dtype == "model" else ""
        n = at_once(batch) // batch  # processes holding a batch
        processes = f" ({batch} in each of {n} processes)" if n > 1 else ""
        hint = f"pass --batch {fits} (about {at_once(fits) * per_example / 1e9:.1f} GB)" if fits else \
            f"no batch fits: read a shorter length{half}" + (" or pass fewer --jobs" if jobs > 1 else "")
        indexes = " and the faiss indexes" if index else ""
        raise ValueError(f"{where}: {at_once(batch)} examples of {length:,} tokens at once{processes} would hold "
                         f"about {at_once(batch) * per_example / 1e9:.1f} GB ({per_example / 1e9:.2f} GB per example: "
                         f"the keys and values of every storing layer at their merge peak{indexes}), more than "
                         f"{MEMORY_SHARE:.0%} of this machine's {memory / 1e9:.1f} GB: {hint}")


def read_task(model_dir: Path) -> dict:
    """The task.json that `bmojo compare --save-models` writes beside a model: its task, settings, seed, preset."""
    settings_file = model_dir / "task.json"
    if not settings_file.is_file():
        raise FileNotFoundError(f"{model_dir} has no task.json: pass a model folder written by `bmojo compare "
                                "--save-models`")
    return json.loads(settings_file.read_text())


def load_recall_model(model_dir: Path, backend: str | None, **overrides) -> BMojoForCausalLM:
    """The model saved in `model_dir`, with store_backend set to `backend` when it has a store, and `overrides` of
    its READ_FIELDS."""
    overrides = {**overrides, "store_backend": backend} if backend else overrides
    return BMojoForCausalLM.from_pretrained(model_dir, config=BMojoConfig.from_saved(model_dir, **overrides)).eval()


def parse_variant(text: str) -> tuple[str, dict]:
    """`NAME` or `NAME:FIELD=VALUE[,FIELD=VALUE...]` -> (NAME, {FIELD: VALUE}), values JSON where they parse (else
    strings); ValueError for a field outside READ_FIELDS (one that shapes weights cannot change after training)."""
    name, _, body = text.partition(":")
    if not name:
        raise ValueError(f"--variant {text!r}: write NAME or NAME:FIELD=VALUE,..., e.g. horizon:store_horizon=512")
    items = [x.strip() for x in body.split(",") if x.strip()]
    for item in items:
        if item.partition("=")[0] not in READ_FIELDS or "=" not in item:
            raise ValueError(f"--variant {text!r}: {item!r} is not FIELD=VALUE with FIELD one of "
                             f"{', '.join(READ_FIELDS)} (settings that hold no weights)")
    return name, parse_assignments(items, "--variant")


def read_batch(model, inputs: torch.Tensor, targets: torch.Tensor, piece: int, measure: bool) -> dict:
    """One batch of (inputs, targets) (rows, L), read through one cache (`read_through_cache`), which is gone when this
    returns: {rows, correct, scored, working_bytes, stored_bytes, seconds, search_found, search_total} (the last two
    count the faiss searches' exact top-r slots found, when `measure`; else 0)."""
    tick = time.perf_counter()
    with measuring_recall() if measure else contextlib.nullcontext() as meter:
        ((rows, preds, sizes),) = read_through_cache(model, inputs, piece)  # the generator ends: its cache goes
    right, scored = count_right(preds, targets)
    return dict(rows=len(rows), correct=right, scored=scored, **sizes, seconds=time.perf_counter() - tick,
                search_found=meter.found if measure else 0, search_total=meter.total if measure else 0)


_WORKER_MODELS: dict = {}  # in a --jobs worker: the model of each (folder, backend, overrides) read so far


def _init_worker(tune_allocator: bool) -> None:
    """A --jobs worker computes on one thread (faiss's searches too: ops.ann follows torch's thread count), with the
    allocator tuned as in the parent (`bmojo` tunes it at start), so a batch is read in the same setting whatever
    --jobs is."""
    torch.set_num_threads(1)
    if tune_allocator:
        tune_cpu_allocator()


def _read_batch_in_worker(task: tuple) -> tuple[int, dict]:
    """`read_batch` in a --jobs worker, which loads the model once: task (i, (model_dir, backend, overrides), inputs,
    targets, piece, measure) -> (i, the batch's entry)."""
    i, load, inputs, targets, piece, measure = task
    name = json.dumps([str(load[0]), load[1], load[2]], sort_keys=True)
    if name not in _WORKER_MODELS:
        _WORKER_MODELS[name] = load_recall_model(load[0], load[1], **load[2])
    return i, read_batch(_WORKER_MODELS[name], inputs, targets, piece, measure)


def read_batches(model, inputs: torch.Tensor, targets: torch.Tensor, piece: int, batch: int, measure: bool,
                 key: dict, earlier: list[dict], journal: Path | None = None,
                 log: Callable[[str], None] | None = None, jobs: int = 1, load: tuple | None = None) -> list[dict]:
    """The batches of (inputs, targets) (n, L), `batch` rows each, read by `read_batch`, one entry each ({key, ...}).
    `earlier`: the entries of `key` a run before this one finished (a prefix: batches are journaled in order), kept;
    only the rows after them are read. Each new entry is appended to `journal` in batch order as soon as it and the
    batches before it have ended, and `log` gets the running count. `jobs` > 1: that many one-thread processes read
    batches side by side, each loading the model from `load` = (model_dir, backend, READ_FIELDS overrides) (`model`
    is then not used); the entries equal those of a one-process run on one thread but for their seconds, and an
    interruption loses the batches after the first one not yet ended. A worker that dies (e.g. killed for memory)
    stops the reading with an error."""
    batches, start = list(earlier), sum(entry["rows"] for entry in earlier)
    whole = [min(batch, len(inputs) - i) for i in range(0, len(inputs), batch)][:len(earlier)]
    if [entry["rows"] for entry in earlier] != whole:
        raise ValueError(f"the journal's batches of this reading hold {[e['rows'] for e in earlier]} rows, not the "
                         f"first batches of {len(inputs)} examples read {batch} at a time {whole}: it was edited or "
                         "written by two runs at once; choose a new --out")
    firsts = range(start, len(inputs), batch)

    def finished(entry: dict) -> None:
        batches.append(dict(key=key, **entry))
        if journal:
            append_record(journal, batches[-1])
        if log:
            log(f"rows {sum(e['rows'] for e in batches)}/{len(inputs)}: {sum(e['correct'] for e in batches)}/"
                f"{sum(e['scored'] for e in batches)} right ({sum(e['seconds'] for e in batches):,.0f} s)")

    if jobs == 1 or len(firsts) < 2:
        for a in firsts:
            finished(read_batch(model, inputs[a:a + batch], targets[a:a + batch], piece, measure))
        return batches
    tasks = [(i, load, inputs[a:a + batch], targets[a:a + batch], piece, measure) for i, a in enumerate(firsts)]
    pool = ProcessPoolExecutor(min(jobs, len(tasks)), mp_context=multiprocessing.get_context("spawn"),
                               initializer=_init_worker, initargs=(cpu_allocator_tuned(),))
    ended: dict[int, dict] = {}
    with sigterm_interrupts():
        try:
            for future in as_completed([pool.submit(_read_batch_in_worker, task) for task in tasks]):
                try:
                    i, entry = future.result()
                except BrokenProcessPool as error:
                    raise RuntimeError("a --jobs worker died while reading (killed for memory? each process holds "
                                       "one batch's store: pass a smaller --batch or fewer --jobs); the batches "
                                       "journaled so far are kept: run again with --resume") from error
                ended[i] = entry
                while len(batches) - len(earlier) in ended:  # in batch order, so that the journal stays a prefix
                    finished(ended.pop(len(batches) - len(earlier)))
        except BaseException:
            for process in list((getattr(pool, "_processes", None) or {}).values()):
                process.terminate()  # the batches in flight (ProcessPoolExecutor has no terminate before Python 3.14)
            raise
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
    return batches


def batch_totals(batches: list[dict]) -> dict:
    """The record fields of a length's batches (`read_batches`): accuracy = correct / scored over all of them, the
    first batch's cache bytes, the seconds they took together, and the faiss search's recall (None when no search was
    measured: unmeasured batches count 0 searched slots)."""
    correct, scored = sum(e["correct"] for e in batches), sum(e["scored"] for e in batches)
    if not scored:
        raise ValueError("no position is scored: every target is -100")
    total = sum(e["search_total"] for e in batches)
    return dict(accuracy=correct / scored, correct=correct, scored=scored,
                working_bytes=batches[0]["working_bytes"], stored_bytes=batches[0]["stored_bytes"],
                seconds=sum(e["seconds"] for e in batches), batches=len(batches),
                search_recall=sum(e["search_found"] for e in batches) / total if total else None)


def evaluate(model_dirs: list[Path], lengths: list[int], backends: list[str], examples: int, piece: int,
             search_recall: bool = True, progress: bool = True, task: str | None = None,
             task_settings: dict | None = None, variants: list[tuple[str, dict]] | None = None,
             batch: int | None = None, journal: Path | None = None, jobs: int = 1) -> list[dict]:
    """One record per (model, variant, backend, length): accuracy, cache bytes (working, stored), seconds, and for
    "faiss" with `search_recall` the recall of its searches against the exact search, which then runs beside each of
    them (None when no search went through an index). `task` (default: each model's own) is generated with the
    model's task settings updated by `task_settings`; `variants` [(name, READ_FIELDS overrides)] (default: one, the
    model as trained) apply to the models with an eidetic memory (the 'bmojo' kind, the only one with a store).
    `batch`: examples read at a time (default all); the bytes recorded are one batch's. `journal`: a JSON-lines file
    to which each finished batch is appended; the batches it already holds for the same reading are not read again
    (a record's `resumed_batches` counts them). `jobs`: processes reading batches side by side (`read_batches`); the
    memory check counts the batches held at once (`jobs` of them, or fewer where there are fewer batches)."""
    batch = min(batch or examples, examples)
    records = []
    plan = []  # (model folder, task.json, variant, backend): every folder and variant checked before the first run
    for model_dir in model_dirs:
        saved, config = read_task(model_dir), BMojoConfig.from_pretrained(model_dir)
        stores, eidetic = config.stores_tokens, any(map(config.eidetic_tokens, range(config.num_hidden_layers)))
        for variant in (variants or [(None, {})]) if eidetic else [(None, {})]:
            read = BMojoConfig.from_saved(model_dir, **variant[1])  # a bad value: ValueError naming it, before any run
            for backend in backends if stores else [None]:
                check_memory(read, backend, max(lengths), batch, f"{model_dir.name} {variant[0] or ''}".rstrip(),
                             jobs, examples)
                plan.append((model_dir, saved, variant, backend))
        check_task(task or saved["task"], {**saved["settings"], **(task_settings or {})}, lengths)
    finished = reopen_records(journal) if journal and journal.is_file() else []
    bar = tqdm(total=len(plan) * len(lengths), desc="longrecall", disable=not progress)
    for model_dir, saved, (variant, overrides), backend in plan:
        model = load_recall_model(model_dir, backend, **overrides)
        measure = search_recall and backend == "faiss"
        name, settings = task or saved["task"], {**saved["settings"], **(task_settings or {})}
        for n in lengths:
            bar.set_postfix_str(f"{model_dir.name[-40:]} {variant or ''} {backend or ''} L={n}")
            _, (inputs, targets) = task_lib.train_test_split(name, 1, examples, saved["seed"],
                                                             **{**settings, "seq_len": n})
            key = json.loads(json.dumps(dict(model_dir=str(model_dir.resolve()), variant=variant, overrides=overrides,
                                             backend=backend, task=name, settings=settings, length=n,
                                             examples=examples, batch=batch, piece=piece, search_recall=measure)))
            earlier = [entry for entry in finished if entry["key"] == key]
            label = f"{model_dir.name} {variant or ''} {backend or ''} L={n:,}"
            log = None
            if progress and batch < examples:  # to stderr beside the bar: unbuffered, so a redirected log shows it
                log = lambda line, label=label: bar.write(f"  {label}: {line}", file=sys.stderr)  # noqa: E731
            if earlier and progress:
                bar.write(f"  {label}: kept {len(earlier)} batch(es) of {sum(e['rows'] for e in earlier)} rows "
                          f"from {journal}", file=sys.stderr)
            batches = read_batches(model, inputs, targets, piece, batch, measure, key, earlier, journal, log, jobs,
                                   (model_dir, backend, overrides))
            finished += batches[len(earlier):]  # a reading asked for twice is read once
            records.append(dict(model=saved.get("preset", model_dir.name), model_dir=str(model_dir), task=name,
                                settings=settings, variant=variant, overrides=overrides, backend=backend, length=n,
                                examples=examples, batch=batch, **batch_totals(batches),
                                resumed_batches=len(earlier)))
            bar.update()
    bar.close()
    return records


def check_task(name: str, settings: dict, lengths: list[int]) -> None:
    """ValueError, before any run, for a setting the task's generator does not take or a length it refuses."""
    taken = [p for p in inspect.signature(task_lib.TASKS[name]).parameters if p not in ("num_examples", "seed")]
    unknown = sorted(set(settings) - set(taken))
    if unknown:
        raise ValueError(f"task {name!r} takes no setting {', '.join(unknown)} (from the model's task.json or "
                         f"--task-set); its settings: {', '.join(taken)}")
    for n in lengths:
        task_lib.make_task(name, num_examples=1, seed=0, **{**settings, "seq_len": n})


def row_label(record: dict) -> str:
    variant = f" {record['variant']}" if record.get("variant") else ""
    return record["model"] + variant + (f" ({record['backend']})" if record["backend"] else "")


def results_markdown(records: list[dict]) -> str:
    """A table: a row per model (and backend), accuracy per length; then the counts behind it, bytes, seconds and
    search recall."""
    lengths = sorted({r["length"] for r in records})
    rows = list(dict.fromkeys(row_label(r) for r in records))
    by = {(row_label(r), r["length"]): r for r in records}
    first = records[0]
    batch = first.get("batch") or first["examples"]
    lines = [f"# Long recall: {first['task']} {first['settings']}, {first['examples']} test examples per length, "
             f"read {batch} at a time", "",
             "Test accuracy on the scored positions, read through the decoding cache.", "",
             "| model | " + " | ".join(f"L {n:,}" for n in lengths) + " |",
             "|---|" + "---:|" * len(lengths)]
    lines += [f"| {row} | " + " | ".join(f"{by[row, n]['accuracy']:.3f}" if (row, n) in by else "-" for n in lengths)
              + " |" for row in rows]
    lines += ["", f"Working and stored bytes: one batch's cache ({batch} examples).", "",
              "| model | L | right / scored | working MB | stored MB | seconds | faiss search recall vs exact |",
              "|---|---:|---:|---:|---:|---:|---:|"]
    for r in records:
        recall = "-" if r["search_recall"] is None else f"{r['search_recall']:.3f}"
        lines.append(f"| {row_label(r)} | {r['length']:,} | {r['correct']} / {r['scored']} | "
                     f"{r['working_bytes'] / 1e6:.2f} | "
                     f"{r['stored_bytes'] / 1e6:.2f} | {r['seconds']:.1f} | {recall} |")
    return "\n".join(lines) + "\n"


def plot(records: list[dict], path: Path) -> None:
    """Accuracy vs context length (log axis), a line per model (and backend)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in dict.fromkeys(row_label(r) for r in records):
        points = sorted((r["length"], r["accuracy"]) for r in records if row_label(r) == row)
        ax.plot(*zip(*points, strict=True), marker="o", label=row)
    ax.set_xscale("log")
    ax.set_xlabel("context length (tokens, log)")
    ax.set_ylabel("test accuracy")
    ax.set_ylim(-0.02, 1.02)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110, format="png")
    plt.close(fig)


def _int_list(text: str) -> list[int]:
    try:
        values = [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: write comma-separated integers, e.g. 8192,32768") from None
    if not values or min(values) < 1:
        raise argparse.ArgumentTypeError(f"{text!r}: every length must be >= 1")
    return values


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `bmojo longrecall`."""
    parser.add_argument("model_dirs", type=Path, nargs="+", metavar="MODEL_DIR",
                        help="model folders written by `bmojo compare --save-models` (with their task.json)")
    parser.add_argument("--lengths", type=_int_list, required=True, help="context lengths, e.g. 8192,32768")
    parser.add_argument("--backends", default="exact",
                        help=f"search backends for models with a store, comma-separated, of {','.join(STORE_BACKENDS)} "
                             "(default exact)")
    parser.add_argument("--examples", type=int, default=20, help="test examples per length (default 20)")
    parser.add_argument("--batch", type=int, default=None,
                        help="examples read at a time, each batch through its own cache (default: all at once); "
                             "the same accuracies in less memory")
    parser.add_argument("--jobs", type=int, default=1,
                        help="read N batches side by side in N one-thread processes (default 1): the records of a "
                             "one-thread run but for their seconds (summed over the processes), and N batches' memory "
                             "at once")
    parser.add_argument("--piece", type=int, default=2048, help="tokens per call while reading (default 2048)")
    parser.add_argument("--no-search-recall", action="store_true",
                        help="do not measure the faiss search's recall (it runs the exact search beside every faiss "
                             "search, which costs what the exact backend costs)")
    parser.add_argument("--task", choices=sorted(task_lib.TASKS), default=None,
                        help="the task to read (default: each model's own), with the model's task settings")
    parser.add_argument("--task-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a setting of --task's generator (JSON value), e.g. shift=false; repeatable")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME[:FIELD=VALUE,...]",
                        help="read each model with an eidetic memory again with these settings, which hold no "
                             f"weights (fields of {', '.join(READ_FIELDS)}), a row each, e.g. "
                             "regime:store_regime_threshold=2 or edge:eidetic_position=edge; repeatable; NAME alone: "
                             "the model as trained")
    parser.add_argument("--out", type=Path, required=True,
                        help=f"folder for results.json, results.md, the plot and {BATCHES_FILE} (each finished "
                             "batch, as it ends)")
    parser.add_argument("--resume", action="store_true",
                        help=f"go on from the batches that --out's {BATCHES_FILE} holds (an interrupted run of the "
                             "same command): only the others are read")


def run(args: argparse.Namespace) -> int:
    backends = [b.strip() for b in args.backends.split(",") if b.strip()]
    unknown = [b for b in backends if b not in STORE_BACKENDS]
    if unknown or not backends:
        raise ValueError(f"--backends {args.backends!r}: choose from {', '.join(STORE_BACKENDS)} (faiss needs "
                         "pip install 'bmojo[ann]')")
    if args.examples < 1 or args.piece < 1 or args.jobs < 1 or (args.batch is not None and args.batch < 1):
        raise ValueError(f"--examples, --piece, --jobs and --batch must be >= 1, got {args.examples}, {args.piece}, "
                         f"{args.jobs} and {args.batch}")
    for model_dir in args.model_dirs:
        if not model_dir.is_dir():
            raise FileNotFoundError(f"model folder {str(model_dir)!r} does not exist")
    variants = [parse_variant(text) for text in args.variant]
    task_settings = parse_assignments(args.task_set, "--task-set")
    check_writable(args.out)
    journal = args.out / BATCHES_FILE
    if journal.is_file() and not args.resume:
        raise ValueError(f"{args.out} already holds the batches of a longrecall run ({BATCHES_FILE}): pass --resume "
                         "to go on from them, or choose a new --out")
    records = evaluate(args.model_dirs, args.lengths, backends, args.examples, args.piece, not args.no_search_recall,
                       task=args.task, task_settings=task_settings, variants=variants, batch=args.batch,
                       journal=journal, jobs=args.jobs)
    write_atomically(args.out / "results.json", lambda tmp: tmp.write_text(json.dumps(records, indent=1)))
    table = results_markdown(records)
    write_atomically(args.out / "results.md", lambda tmp: tmp.write_text(table))
    plot(records, args.out / "recall_vs_length.png")
    print(table)
    return 0
