"""`bmojo generate`: sample text from a run folder (HF `generate`, the model's recurrent cache)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

from ..models.cache import DECODINGS
from .common import load_run, number


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of `bmojo generate`."""
    parser.add_argument("run", type=Path, metavar="DIR", help="run folder written by `bmojo train`")
    parser.add_argument("--prompt", default="", help="text to continue (default: empty = start of a document)")
    parser.add_argument("--max-new-tokens", type=number(int, ge=1), default=200, help="default 200")
    parser.add_argument("--temperature", type=number(float, ge=0), default=0.8, help="0 = greedy (default 0.8)")
    parser.add_argument("--top-k", type=number(int, ge=0), default=0, help="keep the k most likely tokens (0 = off)")
    parser.add_argument("--top-p", type=number(float, gt=0, le=1), default=1.0,
                        help="nucleus sampling mass (1 = off)")
    parser.add_argument("--repetition-penalty", type=number(float, gt=0), default=1.0, help="1 = off (default)")
    parser.add_argument("--num-samples", type=number(int, ge=1), default=1)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-doc-start", action="store_true",
                        help="do not put the end-of-document token before the prompt (default: it is there, as "
                             "after every document in training)")
    parser.add_argument("--ignore-eos", action="store_true", help="keep going past an end-of-document token")
    parser.add_argument("--decoding", choices=("auto", *DECODINGS), default="auto",
                        help="how the one-token steps run (default auto: compiled when long enough to repay it)")


def generate_text(model, tokenizer, prompt: str = "", max_new_tokens: int = 200, temperature: float = 0.8,
                  top_k: int = 0, top_p: float = 1.0, repetition_penalty: float = 1.0, num_samples: int = 1,
                  seed: int = 0, doc_start: bool = True, stop_at_eos: bool = True, decoding: str = "auto") -> list[str]:
    """Continuations of `prompt` (the new text only, one string per sample)."""
    ids = ([tokenizer.eos_id] if doc_start else []) + tokenizer.encode(prompt)
    if not ids:
        raise ValueError("the prompt is empty and --no-doc-start leaves no token to start from; give a --prompt")
    device = next(model.parameters()).device
    input_ids = torch.tensor([ids] * num_samples, device=device)
    torch.manual_seed(seed)
    sample = temperature > 0
    kwargs = dict(do_sample=sample, max_new_tokens=max_new_tokens, repetition_penalty=repetition_penalty,
                  pad_token_id=tokenizer.eos_id, eos_token_id=tokenizer.eos_id if stop_at_eos else None,
                  decoding=decoding)
    if sample:
        kwargs.update(temperature=temperature, top_k=top_k or None, top_p=top_p)
    with torch.no_grad():
        out = model.generate(input_ids, attention_mask=torch.ones_like(input_ids), **kwargs)
    texts = []
    for row in out[:, len(ids):].tolist():
        if stop_at_eos and tokenizer.eos_id in row:
            row = row[: row.index(tokenizer.eos_id)]
        texts.append(tokenizer.decode(row))
    return texts


def run(args: argparse.Namespace) -> int:
    """Print the samples `args` ask for (a separator line on stderr between several)."""
    model, tok, _ = load_run(args.run)
    texts = generate_text(model, tok, args.prompt, args.max_new_tokens, args.temperature, args.top_k, args.top_p,
                          args.repetition_penalty, args.num_samples, args.seed, not args.no_doc_start,
                          not args.ignore_eos, args.decoding)
    for i, text in enumerate(texts):
        if len(texts) > 1:
            print(f"--- sample {i + 1}", file=sys.stderr)
        print(args.prompt + text, flush=True)
    return 0
