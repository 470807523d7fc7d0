"""See what a model remembers: per B'MOJO layer, the innovation score of every token, each chunk's fading and
eidetic memory, and how much attention each query puts on its raw window, fading and eidetic slots
(docs/inspect.md). Everything comes from the model's own parallel forward: `inspect_memory` sets each B'MOJO
mixer's `recorder`, which receives what `BMojoMixer._read_memory` used (`bmojo.layers.bmojo.MemoryRecord`).

`bmojo inspect RUN_DIR --text TEXT | --file PATH | --task NAME --out DIR` writes a PNG per layer, a
self-contained HTML page with the kept tokens highlighted, and inspect.json with the numbers.
"""

from __future__ import annotations

import argparse
import html
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from .layers.bmojo import BMojoMixer, MemoryRecord
from .ops.memory import history_end

DEFAULT_MAX_TOKENS = 2048  # the attention weights take O(L (M + 2w)) floats per head: keep inspection cheap
KEPT_COLOUR = "#ffb000"  # highlight of tokens the eidetic memory kept (the HTML page and the plots)
FADING_COLOUR = "#6aa5d8"
MASS_PARTS = ("window", "fading", "eidetic")


@dataclass
class LayerMemory:
    """What one B'MOJO layer held while reading one sequence of L tokens (nc = ceil(L / w) chunks).

    score (L,): innovation scores (None when the layer has no eidetic memory: the bmojo_f kind).
    fading (nc, m_f), eidetic (nc, m_e): the positions in each chunk's memory, -1 = a free slot (None when m = 0).
    mass (L, 3): the fraction of each query's attention (mean over heads) on its raw window, its fading tokens (the
    chunk's, and its own span with `fading_span`) and its eidetic tokens; each row sums to 1.
    """

    layer: int
    kind: str
    window: int
    num_fading: int
    num_eidetic: int
    score: torch.Tensor | None
    fading: torch.Tensor | None
    eidetic: torch.Tensor | None
    mass: torch.Tensor

    @property
    def kept(self) -> list[int]:
        """Sorted positions that were in the eidetic memory of at least one chunk."""
        if self.eidetic is None:
            return []
        return sorted({int(p) for p in self.eidetic.flatten() if p >= 0})

    def chunks_holding(self, position: int) -> list[int]:
        """The chunks whose eidetic memory holds `position`."""
        if self.eidetic is None:
            return []
        return [c for c in range(self.eidetic.shape[0]) if bool((self.eidetic[c] == position).any())]

    def location(self, position: int, query: int) -> str:
        """Where query `query` finds the token at `position` (< query) verbatim: 'window'; 'gap' (outside the
        window but not yet in its chunk's history, p > c w - w: no memory rule can hold it, docs/design.md 4.3);
        'eidetic'; or 'lost' (in the history, not kept; the fading tokens are SSM outputs, not the token itself)."""
        if query - position < self.window:
            return "window"
        chunk = query // self.window
        if position > history_end(chunk, self.window):
            return "gap"
        if self.eidetic is not None and bool((self.eidetic[chunk] == position).any()):
            return "eidetic"
        return "lost"

    def occupancy(self, length: int) -> torch.Tensor:
        """(nc, L) int8: 2 where the chunk's eidetic memory holds the position, 1 where its fading tokens come from
        the position, 0 elsewhere."""
        grid = torch.zeros(-(-length // self.window), length, dtype=torch.int8)
        for memory, value in ((self.fading, 1), (self.eidetic, 2)):
            if memory is not None:
                for c, row in enumerate(memory):
                    grid[c, row[row >= 0]] = value
        return grid

    def to_json(self) -> dict:
        as_list = lambda t: None if t is None else t.tolist()  # noqa: E731
        return {"layer": self.layer, "kind": self.kind, "window": self.window, "num_fading_tokens": self.num_fading,
                "num_eidetic_tokens": self.num_eidetic, "kept": self.kept, "innovation_score": as_list(self.score),
                "fading_positions": as_list(self.fading), "eidetic_positions": as_list(self.eidetic),
                "attention_mass": {part: self.mass[:, i].tolist() for i, part in enumerate(MASS_PARTS)}}


def memory_layers(model) -> list[int]:
    """Indices of the model's B'MOJO layers (kinds bmojo and bmojo_f)."""
    return [i for i, block in enumerate(model.model.layers) if isinstance(block.mixer, BMojoMixer)]


@torch.no_grad()
def inspect_memory(model, input_ids: torch.Tensor, layers: list[int] | None = None) -> list[LayerMemory]:
    """Run `model` (a BMojoForCausalLM) once on `input_ids` (L,) or (1, L) and return what each B'MOJO layer in
    `layers` (default: all of them) held. A model without B'MOJO layers gives []."""
    ids = input_ids.reshape(1, -1)
    chosen = memory_layers(model) if layers is None else layers
    records: dict[int, MemoryRecord] = {}
    mixers = {i: model.model.layers[i].mixer for i in chosen}
    for i, mixer in mixers.items():
        mixer.recorder = lambda record, i=i: records.__setitem__(i, record)
    try:
        model(ids.to(next(model.parameters()).device))
    finally:
        for mixer in mixers.values():
            mixer.recorder = None
    out = []
    for i, mixer in mixers.items():
        r = records[i]
        m_f = mixer.num_fading
        probs = r.weights[0].mean(0)  # (L, M + 2w (+ 2w: the per-query fading span))
        M, window_end = m_f + mixer.num_eidetic, m_f + mixer.num_eidetic + 2 * mixer.window
        fading = probs[:, :m_f].sum(1) + probs[:, window_end:].sum(1)
        mass = torch.stack([probs[:, M:window_end].sum(1), fading, probs[:, m_f:M].sum(1)], dim=1)
        out.append(LayerMemory(
            layer=i, kind=model.model.layers[i].kind, window=mixer.window, num_fading=m_f,
            num_eidetic=mixer.num_eidetic, score=None if r.score is None else r.score[0].cpu(),
            fading=None if r.fading is None else r.fading.cpu(),
            eidetic=None if r.eidetic is None else r.eidetic[0].cpu(),
            mass=mass.cpu()))
    return out


def task_marks(inputs: torch.Tensor, targets: torch.Tensor) -> list[dict]:
    """The recall structure of one task example, inputs and pre-shifted targets (L,): for every scored position
    (a query), the earlier positions of the same token followed by the token the query must output (its key
    occurrences; a filler token that repeats the key with another successor is not one) and the positions of those
    successors (the values). Returns [{query, keys, values}] in query order."""
    marks = []
    for q in torch.nonzero(targets >= 0).flatten().tolist():
        keys = torch.nonzero((inputs[: q - 1] == inputs[q]) & (inputs[1:q] == targets[q])).flatten().tolist()
        marks.append({"query": q, "keys": keys, "values": [p + 1 for p in keys]})
    return marks


LOCATIONS = ("window", "gap", "eidetic", "lost")  # LayerMemory.location's answers


def recall_locations(layer: LayerMemory, marks: list[dict]) -> dict:
    """Where each query finds its key and value tokens in `layer`: counts of each of LOCATIONS over all (query, key
    or value token) pairs; the fraction held verbatim (window or eidetic); and 'eidetic_by_chance', the expected
    eidetic count had each chunk kept m_e of its history's positions uniformly at random (over the pairs in the
    history, chunk c's holding c w - w + 1 positions)."""
    counts = dict.fromkeys(LOCATIONS, 0)
    chance = 0.0
    for m in marks:
        for p in m["keys"] + m["values"]:
            where = layer.location(p, m["query"])
            counts[where] += 1
            if where in ("eidetic", "lost"):
                history = history_end(m["query"] // layer.window, layer.window) + 1
                chance += min(layer.num_eidetic, history) / history
    return _summary(counts, chance)


def _summary(counts: dict, chance: float) -> dict:
    total = sum(counts[where] for where in LOCATIONS)
    return {**counts, "held_fraction": (counts["window"] + counts["eidetic"]) / total if total else None,
            "eidetic_by_chance": round(chance, 3)}


# ---------------------------------------------------------------- outputs


def plot_layer(layer: LayerMemory, labels: list[str], marks: list[dict], path: Path) -> None:
    """A PNG: the innovation score over tokens with the kept tokens marked (task key/value positions shaded), the
    memory occupancy over chunks (heat map), and the attention mass per query on window / fading / eidetic."""
    import numpy
    from matplotlib.colors import ListedColormap

    from .plotting import pyplot

    plt = pyplot()
    L = len(labels)
    fig, axes = plt.subplots(3, 1, figsize=(min(4 + L / 12, 24), 8), sharex=True,
                             gridspec_kw={"height_ratios": [2, 2, 1]})
    title = (f"layer {layer.layer} ({layer.kind}): window {layer.window}, {layer.num_fading} fading, "
             f"{layer.num_eidetic} eidetic tokens; {len(layer.kept)} tokens kept")
    axes[0].set_title(title + ("; green: task key/value tokens" if marks else ""))
    for m in marks:
        for p in m["keys"] + m["values"]:
            for ax in axes:
                ax.axvspan(p - 0.5, p + 0.5, color="#c8e6c9", lw=0, zorder=0)
    if layer.score is not None:
        x = torch.arange(L)
        axes[0].semilogy(x, layer.score.clamp(min=1e-12), color="#444444", lw=1, label="innovation score")
        kept = torch.tensor(layer.kept, dtype=torch.long)
        axes[0].scatter(kept, layer.score[kept].clamp(min=1e-12), color=KEPT_COLOUR, s=18, zorder=3,
                        label="kept (eidetic)")
        axes[0].legend(loc="upper right", fontsize=8)
    else:
        axes[0].text(0.5, 0.5, "no eidetic memory (bmojo_f): no innovation test", ha="center",
                     transform=axes[0].transAxes)
    axes[0].set_ylabel("innovation score")
    occupancy = numpy.ma.masked_equal(layer.occupancy(L).numpy(), 0)  # free cells show the background
    axes[1].imshow(occupancy, aspect="auto", interpolation="nearest", origin="lower",
                   cmap=ListedColormap([FADING_COLOUR, KEPT_COLOUR]), vmin=1, vmax=2,
                   extent=(-0.5, L - 0.5, -0.5, occupancy.shape[0] - 0.5))
    axes[1].set_ylabel("chunk")
    axes[1].set_title("memory of each chunk (blue: fading sources, amber: eidetic)", fontsize=9)
    axes[2].stackplot(range(L), *layer.mass.T.numpy(), labels=MASS_PARTS,
                      colors=["#bbbbbb", FADING_COLOUR, KEPT_COLOUR])
    axes[2].set_ylim(0, 1)
    axes[2].set_ylabel("attention mass")
    axes[2].legend(loc="upper right", fontsize=8, ncol=3)
    axes[2].set_xlabel("token position")
    axes[2].set_xlim(-0.5, L - 0.5)
    if L <= 96:
        axes[2].set_xticks(range(L), labels, fontsize=6, rotation=90)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


_STYLE = f"""
body {{ font-family: sans-serif; margin: 1.5em; }}
.tokens {{ font-family: monospace; white-space: pre-wrap; line-height: 1.9; }}
.ids .t {{ margin-right: 0.6em; }}
.kept {{ background: {KEPT_COLOUR}; }}
.key {{ border-bottom: 3px solid #2e7d32; }}
.value {{ border-bottom: 3px solid #1565c0; }}
.query {{ outline: 2px solid #c62828; }}
.legend span {{ margin-right: 1.5em; }}
"""


def write_html(layers: list[LayerMemory], labels: list[str], marks: list[dict], title: str, path: Path,
               token_ids: bool = False) -> None:
    """A self-contained page (inline CSS, no script, no network): the text once per layer, kept tokens highlighted,
    position, innovation score and memory chunks on hover (each token's title). `token_ids`: the labels are token
    ids (task inputs), shown spaced apart."""
    roles: dict[int, set[str]] = {}
    for m in marks:
        roles.setdefault(m["query"], set()).add("query")
        for role in ("keys", "values"):
            for p in m[role]:
                roles.setdefault(p, set()).add(role[:-1])
    parts = [f"<!doctype html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
             f"<style>{_STYLE}</style></head><body><h1>{html.escape(title)}</h1>",
             "<p class='legend'><span class='kept'>kept by the eidetic memory</span>"
             + ("<span class='key'>key</span><span class='value'>value</span><span class='query'>query</span>"
                if marks else "") + "</p>"]
    for layer in layers:
        kept = set(layer.kept)
        parts.append(f"<h2>layer {layer.layer} ({layer.kind})</h2><p>window {layer.window}, {layer.num_fading} "
                     f"fading, {layer.num_eidetic} eidetic tokens; {len(kept)} of {len(labels)} tokens kept</p>"
                     f"<div class='tokens{' ids' if token_ids else ''}'>")
        for p, label in enumerate(labels):
            classes = ["t"] + (["kept"] if p in kept else []) + sorted(roles.get(p, ()))
            hover = f"position {p}"
            if layer.score is not None:
                hover += f" · innovation score {float(layer.score[p]):.4g}"
            if p in kept:
                chunks = layer.chunks_holding(p)
                hover += f" · in the eidetic memory of chunks {chunks[0]}-{chunks[-1]}"
            parts.append(f"<span class='{' '.join(classes)}' title='{html.escape(hover)}'>{html.escape(label)}</span>")
        parts.append("</div>")
    parts.append("</body></html>")
    path.write_text("".join(parts), encoding="utf-8")


# ---------------------------------------------------------------- command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `bmojo inspect`."""
    parser.add_argument("run_dir", type=Path, help="a run folder with a model (bmojo train --out, bmojo compare "
                                                   "--save-models, or any save_pretrained folder)")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--text", help="the text to read (tokenized with the run's tokenizer)")
    source.add_argument("--file", type=Path, help="a text file to read")
    source.add_argument("--task", help="an example of a recall task (bmojo.tasks), e.g. mqar; its settings come "
                                       "from the run's task.json and --set")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="a task setting, e.g. --set num_kv_pairs=8 (repeatable)")
    parser.add_argument("--seed", type=int, default=12345, help="seed of the task examples (default 12345)")
    parser.add_argument("--examples", type=int, default=1,
                        help="with --task: count where queries find their key/value tokens over this many examples "
                             "(the pictures show the first; default 1)")
    parser.add_argument("--max-tokens", type=int, help=f"inspect at most this many tokens, the first ones (without "
                                                       f"it, a longer input than {DEFAULT_MAX_TOKENS} is refused)")
    parser.add_argument("--layer", type=int, action="append", help="a layer index to show (repeatable; default: "
                                                                   "every B'MOJO layer)")
    parser.add_argument("--out", type=Path, required=True, help="folder for the PNGs, inspect.html, inspect.json")


def _task_examples(args, model) -> tuple[torch.Tensor, torch.Tensor]:
    """`args.examples` examples (inputs, targets), each (n, L), of the task `args` names with the run's settings."""
    from . import tasks

    settings_file = args.run_dir / "task.json"
    saved = json.loads(settings_file.read_text()) if settings_file.is_file() else {}
    if saved and saved.get("task") != args.task:
        raise ValueError(f"{args.run_dir} was trained on {saved.get('task')!r}, not {args.task!r}")
    settings = dict(saved.get("settings", {}))
    for item in args.set:
        name, sep, value = item.partition("=")
        if not sep:
            raise ValueError(f"--set {item!r}: write NAME=VALUE, e.g. --set num_kv_pairs=8")
        settings[name] = json.loads(value) if value not in ("True", "False") else value == "True"
    if args.task not in tasks.TASKS:
        raise ValueError(f"unknown task {args.task!r}; choose one of {', '.join(tasks.TASKS)}")
    vocab = tasks.task_vocab_size(args.task, **settings)
    if vocab != model.config.vocab_size:
        raise ValueError(f"the task {args.task} with settings {settings} uses {vocab} token ids but the model has "
                         f"vocab_size={model.config.vocab_size}; pass the settings it was trained with (--set)")
    return tasks.make_task(args.task, num_examples=args.examples, seed=args.seed, **settings)


def _text_example(args, tokenizer) -> tuple[torch.Tensor, list[str], list[dict]]:
    if args.file is not None and not args.file.is_file():
        raise FileNotFoundError(f"--file {str(args.file)!r} does not exist")
    text = args.text if args.text is not None else args.file.read_text(encoding="utf-8", errors="replace")
    ids = tokenizer.encode(text)
    if not ids:
        raise ValueError("the text is empty: nothing to inspect")
    labels = [tokenizer.decode([i]) for i in ids]
    return torch.tensor(ids), labels, []


def _locations_over_examples(model, inputs, targets, layer_ids: list[int]) -> dict[int, dict]:
    """`recall_locations` summed over task examples inputs, targets (n, L): {layer index: the same summary}."""
    totals = {i: dict.fromkeys((*LOCATIONS, "eidetic_by_chance"), 0) for i in layer_ids}
    for x, t in zip(inputs, targets, strict=True):
        marks = task_marks(x, t)
        for layer in inspect_memory(model, x, layer_ids):
            summary = recall_locations(layer, marks)
            for key in totals[layer.layer]:
                totals[layer.layer][key] += summary[key]
    return {i: _summary(total, total["eidetic_by_chance"]) for i, total in totals.items()}


def run(args: argparse.Namespace) -> int:
    """Inspect the memory of the run's model on one input; write the PNGs, the HTML page and the JSON."""
    from .cli import check_writable
    from .lm.common import load_model, run_tokenizer

    if args.max_tokens is not None and args.max_tokens < 1:
        raise ValueError(f"--max-tokens must be >= 1, got {args.max_tokens}")
    if args.examples < 1 or (args.examples > 1 and not args.task):
        raise ValueError(f"--examples must be >= 1 and needs --task, got {args.examples}")
    model = load_model(args.run_dir).eval()
    n_layers = len(model.model.layers)
    bmojo_layers = memory_layers(model)
    for i in args.layer or []:
        if not 0 <= i < n_layers:
            raise ValueError(f"--layer {i} is out of range: the model has {n_layers} layers (0-{n_layers - 1}); "
                             f"its B'MOJO layers are {bmojo_layers or 'none'}")
        if i not in bmojo_layers:
            raise ValueError(f"--layer {i} is a {model.model.layers[i].kind!r} layer, which has no memory to show; "
                             f"the B'MOJO layers are {bmojo_layers or 'none'}")
    if not bmojo_layers:
        kinds = sorted({block.kind for block in model.model.layers})
        print(f"bmojo inspect: the model in {args.run_dir} has no B'MOJO layer (kinds: {', '.join(kinds)}): "
              "no memory to show")
        return 0
    if args.task:
        inputs, targets = _task_examples(args, model)
        ids, labels, marks = inputs[0], [str(t) for t in inputs[0].tolist()], task_marks(inputs[0], targets[0])
    else:
        ids, labels, marks = _text_example(args, run_tokenizer(args.run_dir, model.config.vocab_size))
    limit = args.max_tokens or DEFAULT_MAX_TOKENS
    if len(ids) > limit:
        if args.max_tokens is None:
            raise ValueError(f"the input is {len(ids)} tokens, more than the limit of {DEFAULT_MAX_TOKENS}; pass "
                             f"--max-tokens N to inspect its first N tokens (memory grows with N), or a shorter input")
        ids, labels = ids[:limit], labels[:limit]
        marks = [m for m in marks if m["query"] < limit]
    check_writable(args.out)
    layers = inspect_memory(model, ids, args.layer)
    source = f"task {args.task} (seed {args.seed})" if args.task else (str(args.file) if args.file else "--text")
    title = f"bmojo inspect: {args.run_dir} on {source}, {len(ids)} tokens"
    report = {"run_dir": str(args.run_dir), "source": source, "tokens": ids.tolist(), "labels": labels,
              "task_marks": marks, "layers": []}
    over_examples = _locations_over_examples(model, inputs, targets, [m.layer for m in layers]) if args.task else {}
    for layer in layers:
        entry = layer.to_json()
        if marks:
            entry["recall_locations"] = recall_locations(layer, marks)
        if over_examples:
            entry["recall_locations_over_examples"] = over_examples[layer.layer]
        report["layers"].append(entry)
        plot_layer(layer, labels, marks, args.out / f"layer{layer.layer}.png")
        line = f"layer {layer.layer} ({layer.kind}): {len(layer.kept)} of {len(ids)} tokens kept"
        if over_examples:
            loc = over_examples[layer.layer]
            line += (f"; key/value tokens at query time over {args.examples} example(s): {loc['window']} in the "
                     f"window, {loc['gap']} in the gap, {loc['eidetic']} in the eidetic memory (by chance: "
                     f"{loc['eidetic_by_chance']:.1f}), {loc['lost']} lost ({loc['held_fraction']:.1%} held verbatim)")
        print(line)
    write_html(layers, labels, marks, title, args.out / "inspect.html", token_ids=bool(args.task))
    (args.out / "inspect.json").write_text(json.dumps(report, indent=1))
    print(f"wrote {args.out}/inspect.html, inspect.json and {len(layers)} PNG(s)")
    return 0
