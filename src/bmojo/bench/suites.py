"""The benchmark suites: kernels, layers, models (training throughput, bf16, MFU, loss curve), packing, small
(the recall experiments' tiny models), decode, store (decoding with a storage tier of growing size).

Each suite takes a `Bench` and appends figures to it. Sizes come from `SIZES[quick]`; the full sizes are
the ones the targets in docs/benchmarks.md are stated at.
"""

from __future__ import annotations

import copy
import importlib.util
import statistics
import time

import torch
import torch.nn.functional as F

from .. import PRESETS
from ..layers.attention import Attention
from ..layers.bmojo import BMojoMixer
from ..layers.documents import align_documents
from ..layers.mamba2 import Mamba2Mixer
from ..models.configuration import BMojoConfig
from ..models.modeling import BMojoForCausalLM
from ..ops.attention import masked_attention, window_attention
from ..ops.memory import EMPTY, KVSlots, eidetic_positions
from ..ops.ssd import ssd_chunked, ssd_sequential
from ..plotting import pyplot
from .harness import Bench, measure, stats, sync
from .models import matched_configs, non_embedding_params, train_flops_per_token
from .peers import attention_peer, mamba2_lm_peer, mamba2_peer, mistral_lm_peer

TINY_WIDTH = dict(hidden_size=64, num_attention_heads=2, ssm_state_size=16, ssm_head_dim=16, window_size=16,
                  ssm_chunk_size=16, num_fading_tokens=4, num_eidetic_tokens=4)

SIZES = {
    False: dict(  # full
        kernel_L=2048, eidetic_L=(2048, 16384),
        layer=dict(d=256, L=2048, batch=2),
        width={}, anchor_layers=4,
        train_L=(1024, 4096, 16384), tokens_per_step=4096, bf16_L=4096, model_repeats=5, long_repeats=3,
        packed_docs=(64, 1024), packed_presets=("mamba", "hybrid", "bmojo"),
        mfu=dict(hidden_size=512, L=4096),
        curve=dict(L=512, batch=2, steps=40, lr=1e-3),
        decode_ctx=(1024, 4096, 16384, 32768, 131072), prefill_block=2048, decode_steps=16,
        decode_attn_max=32768,  # full attention's prefill is quadratic: its curve stops there
        generate_tokens=64, generate_repeats=3,
        store_sizes=(1024, 16384, 131072, 1048576),
    ),
    True: dict(  # --quick: tiny sizes, same code paths
        kernel_L=256, eidetic_L=(256,),
        layer=dict(d=64, L=128, batch=1),
        width=TINY_WIDTH, anchor_layers=4,
        train_L=(64, 128), tokens_per_step=256, bf16_L=128, model_repeats=2, long_repeats=2,
        packed_docs=(8, 48), packed_presets=("bmojo",),
        mfu=dict(hidden_size=128, L=128),
        curve=dict(L=64, batch=2, steps=4, lr=1e-3),
        decode_ctx=(32, 128), prefill_block=32, decode_steps=4, decode_attn_max=128,
        generate_tokens=4, generate_repeats=1,
        store_sizes=(256, 1024),
    ),
}


def _median_ms(xs: list[float]) -> float:
    """The median of samples in seconds, in milliseconds."""
    return statistics.median(xs) * 1e3


def _add_kernel_pair(bench: Bench, ours: str, peer: str, ours_s: list[float], peer_s: list[float], settings) -> None:
    """Record a kernel and the peer (reference twin) it was timed against; ours carries the ratio peer / ours."""
    bench.add("kernels", peer, _median_ms(peer_s), "ms", settings, spread=stats(peer_s, 1e3))
    bench.add("kernels", ours, _median_ms(ours_s), "ms", settings, spread=stats(ours_s, 1e3),
              peer=peer, ratio=_median_ms(peer_s) / _median_ms(ours_s))


def _fwd_bwd(fn, inputs):
    """A callable running fn() forward and backward (of a scalar of its output), then clearing the inputs' grads."""
    def run():
        out = fn()
        out = out[0] if isinstance(out, tuple) else out
        out.float().square().mean().backward()
        for t in inputs:
            t.grad = None
    return run


# ----------------------------------------------------------------------------------------------- kernels

def kernels(bench: Bench) -> None:
    """Our kernels against their reference twins: SSD, blocked window attention, the eidetic selection."""
    gen = torch.Generator(device="cpu").manual_seed(0)
    rnd = lambda *shape: torch.randn(*shape, generator=gen).to(bench.device)  # noqa: E731
    _ssd_kernels(bench, rnd)
    _window_attention_kernels(bench, rnd, gen)
    _eidetic_kernels(bench, gen)


def _ssd_kernels(bench: Bench, rnd) -> None:
    """Chunked SSD vs the sequential scan (forward), and the chunked form's fwd+bwd, at the SSM sizes of a
    d = 256 layer: 16 heads x 32, state 64, one group, chunk 64."""
    dev, L = bench.device, SIZES[bench.quick]["kernel_L"]
    b, h, p, n, g, Q = 2, 16, 32, 64, 1, 64
    x, B, C = rnd(b, L, h, p), rnd(b, L, g, n), rnd(b, L, g, n)
    dt = F.softplus(rnd(b, L, h) - 3)
    A = -torch.linspace(1, 16, h, device=dev)
    settings = dict(batch=b, L=L, heads=h, head_dim=p, state=n, groups=g, chunk=Q)
    fwd = {"ssd_chunked": lambda: ssd_chunked(x, dt, A, B, C, Q),
           "ssd_sequential": lambda: ssd_sequential(x, dt, A, B, C)}
    with torch.no_grad():
        s = measure(fwd, dev, bench.warmup, bench.repeats)
    _add_kernel_pair(bench, "ssd_chunked/fwd", "ssd_sequential/fwd", s["ssd_chunked"], s["ssd_sequential"], settings)
    leaves = [t.clone().requires_grad_() for t in (x, dt, B, C)]
    xl, dtl, Bl, Cl = leaves
    # fwd+bwd of the chunked form alone (the sequential twin's backward, L tiny steps, takes seconds)
    s = measure({"ssd_chunked": _fwd_bwd(lambda: ssd_chunked(xl, dtl, A, Bl, Cl, Q), leaves)}, dev, bench.warmup,
                bench.repeats)
    bench.add("kernels", "ssd_chunked/fwd_bwd", _median_ms(s["ssd_chunked"]), "ms", settings,
              spread=stats(s["ssd_chunked"], 1e3))


def _window_attention_kernels(bench: Bench, rnd, gen: torch.Generator) -> None:
    """Blocked sliding-window attention with a memory prefix vs one dense masked SDPA over all keys (fwd and
    fwd+bwd; the dense mask is built outside the timing)."""
    dev, L = bench.device, SIZES[bench.quick]["kernel_L"]
    b, hq, hd, w, M = 2, 4, 64, 64, 32
    nc = -(-L // w)
    q, k, v = rnd(b, hq, L, hd), rnd(b, hq, L, hd), rnd(b, hq, L, hd)
    mem_k, mem_v = rnd(b, hq, nc, M, hd), rnd(b, hq, nc, M, hd)
    mem_valid = (torch.rand(b, nc, M, generator=gen) > 0.2).to(dev)
    t = torch.arange(L, device=dev)
    raw = (t[None, :] <= t[:, None]) & (t[None, :] > t[:, None] - w)
    own = (t // w)[:, None] == torch.arange(nc, device=dev).repeat_interleave(M)[None, :]
    dense_mask = torch.cat([own[None] & mem_valid.reshape(b, 1, nc * M), raw.expand(b, L, L)], dim=2)[:, None]
    settings = dict(batch=b, L=L, heads=hq, head_dim=hd, window=w, memory_slots=M,
                    peer_mask="dense (L, nc*M + L), built outside the timing")
    leaves = [t_.clone().requires_grad_() for t_ in (q, k, v, mem_k, mem_v)]
    ql, kl, vl, mkl, mvl = leaves

    def dense():
        keys = torch.cat([mkl.flatten(2, 3), kl], dim=2)
        values = torch.cat([mvl.flatten(2, 3), vl], dim=2)
        return masked_attention(ql, keys, values, dense_mask)

    blocked = lambda: window_attention(ql, kl, vl, w, mkl, mvl, mem_valid)  # noqa: E731
    with torch.no_grad():
        fwd_samples = measure({"blocked": blocked, "dense": dense}, dev, bench.warmup, bench.repeats)
    fwd_bwd_samples = measure({"blocked": _fwd_bwd(blocked, leaves), "dense": _fwd_bwd(dense, leaves)},
                              dev, bench.warmup, bench.repeats)
    for direction, s in (("fwd", fwd_samples), ("fwd_bwd", fwd_bwd_samples)):
        _add_kernel_pair(bench, f"window_attention/{direction}", f"dense_masked_sdpa/{direction}", s["blocked"],
                         s["dense"], settings)


def _eidetic_kernels(bench: Bench, gen: torch.Generator) -> None:
    """Eidetic selection: the running top-m_e merge over chunks vs a brute-force top-m_e of each chunk's history."""
    b, w, m_e = 2, 64, 16
    for EL in SIZES[bench.quick]["eidetic_L"]:
        eps = torch.rand(b, EL, generator=gen).to(bench.device)
        settings = dict(batch=b, L=EL, window=w, num_eidetic=m_e)
        fns = {"running": lambda eps=eps: eidetic_positions(eps, w, m_e),
               "brute": lambda eps=eps: _eidetic_brute_force(eps, w, m_e)}
        s = measure(fns, bench.device, bench.warmup, bench.repeats)
        _add_kernel_pair(bench, f"eidetic_positions/L{EL}", f"eidetic_brute_force/L{EL}", s["running"], s["brute"],
                         settings)


def _eidetic_brute_force(eps: torch.Tensor, w: int, m_e: int) -> torch.Tensor:
    """Every chunk's top-m_e of its whole history H_c = {p <= c w - w} at once: O(L^2 / w) work and memory."""
    b, L = eps.shape
    nc = -(-L // w)
    pos = torch.arange(L, device=eps.device)
    eligible = pos[None, :] <= (torch.arange(nc, device=eps.device) * w - w)[:, None]  # (nc, L)
    scores = eps.float()[:, None, :].masked_fill(~eligible, float("-inf")).flip(-1)  # newest first: ties -> recent
    order = torch.sort(scores, dim=-1, descending=True, stable=True).indices[..., :m_e]
    top = (L - 1 - order).masked_fill(scores.gather(-1, order) == float("-inf"), EMPTY)
    return top


# ------------------------------------------------------------------------------------------------ layers

def layer_config(kind: str, d: int, quick: bool) -> BMojoConfig:
    """The config of a `kind` layer at width d: the bmojo/bmojo_f preset, else swa (rope attention, the SSM sizes
    of the family defaults)."""
    preset = kind if kind in ("bmojo", "bmojo_f") else "swa"
    return BMojoConfig.from_preset(preset, **{**SIZES[quick]["width"], "hidden_size": d})


def layers(bench: Bench) -> None:
    """Our mixer layers against the `transformers` layers at the same width, forward and fwd+bwd."""
    size = SIZES[bench.quick]["layer"]
    d, L, b, dev = size["d"], size["L"], size["batch"], bench.device
    torch.manual_seed(0)
    cfg = layer_config("swa", d, bench.quick)  # rope attention, the SSM sizes of the family defaults
    x = torch.randn(b, L, d, device=dev)
    cfg_b = layer_config("bmojo", d, bench.quick)
    ours = {
        "ssm": Mamba2Mixer(cfg),
        "swa": Attention(cfg, window=cfg.window_size),
        "attn": Attention(cfg, window=None),
        "bmojo_f": BMojoMixer(layer_config("bmojo_f", d, bench.quick), num_eidetic=0),
        "bmojo": BMojoMixer(cfg_b, num_eidetic=cfg_b.num_eidetic_tokens),
    }
    hf_mamba, mamba_fn = mamba2_peer(cfg)
    hf_swa, swa_fn = attention_peer(cfg, x, window=cfg.window_size)
    hf_attn, attn_fn = attention_peer(cfg, x, window=None)
    peers = {"hf_mamba2": (hf_mamba, mamba_fn), "hf_mistral_swa": (hf_swa, swa_fn), "hf_llama_attn": (hf_attn, attn_fn)}
    for m in list(ours.values()) + [m for m, _ in peers.values()]:
        m.to(dev)
    peer_of = {"ssm": "hf_mamba2", "swa": "hf_mistral_swa", "attn": "hf_llama_attn",
               "bmojo_f": "hf_mamba2+hf_mistral_swa", "bmojo": "hf_mamba2+hf_mistral_swa"}
    xg = x.clone().requires_grad_()
    for direction in ("fwd", "fwd_bwd"):
        fns = {}
        for name, m in ours.items():
            m.train(direction == "fwd_bwd")
            fns[name] = (lambda m=m: m(x)[0]) if direction == "fwd" else _fwd_bwd(lambda m=m: m(xg)[0], [xg])
        for name, (m, fn) in peers.items():
            m.train(direction == "fwd_bwd")
            fns[name] = (lambda fn=fn: fn(x)) if direction == "fwd" else _fwd_bwd(lambda fn=fn: fn(xg), [xg])
        with torch.set_grad_enabled(direction == "fwd_bwd"):
            s = measure(fns, dev, bench.warmup, bench.repeats)
        s["hf_mamba2+hf_mistral_swa"] = [a + c for a, c in zip(s["hf_mamba2"], s["hf_mistral_swa"], strict=True)]
        settings = dict(d=d, L=L, batch=b, heads=cfg.num_attention_heads, window=cfg.window_size,
                        ssm_heads=cfg.ssm_expand * d // cfg.ssm_head_dim, ssm_state=cfg.ssm_state_size, dtype="fp32")
        for name in ("hf_mamba2", "hf_mistral_swa", "hf_llama_attn", "hf_mamba2+hf_mistral_swa"):
            bench.add("layers", f"{name}/{direction}", _median_ms(s[name]), "ms", settings, spread=stats(s[name], 1e3))
        for name in ours:
            peer = peer_of[name]
            bench.add("layers", f"{name}/{direction}", _median_ms(s[name]), "ms", settings, spread=stats(s[name], 1e3),
                      peer=f"{peer}/{direction}", ratio=_median_ms(s[peer]) / _median_ms(s[name]))


# ------------------------------------------------------------------------------------------------ models

def model_configs(quick: bool) -> dict[str, BMojoConfig]:
    """Every preset at matched parameter count (the width of `SIZES[quick]`)."""
    size = SIZES[quick]
    return matched_configs(list(PRESETS), anchor_layers=size["anchor_layers"], **size["width"])


def _train_step(model: BMojoForCausalLM, ids: torch.Tensor, bf16: bool, device: torch.device,
                seq_idx: torch.Tensor | None = None):
    """A callable running one AdamW training step of `model` on `ids` (bf16 autocast if asked; packed documents
    if `seq_idx` is given)."""
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4)

    def step():
        opt.zero_grad(set_to_none=True)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = model(ids, labels=ids, seq_idx=seq_idx).loss
        loss.backward()
        opt.step()
        return loss
    return step


def _model(cfg: BMojoConfig, device: torch.device, seed: int = 0) -> BMojoForCausalLM:
    """A preset model on `device` in train mode, initialised from `seed`."""
    torch.manual_seed(seed)
    return BMojoForCausalLM(cfg).to(device).train()


def models(bench: Bench, ceiling: dict[str, float]) -> None:
    """Training throughput of every preset at matched parameters, bf16, MFU, compile, the loss curve."""
    size = SIZES[bench.quick]
    dev = bench.device
    configs = model_configs(bench.quick)
    bench.extra["model_configs"] = {
        name: dict(layers=c.num_hidden_layers, hidden_size=c.hidden_size, non_embedding_params=non_embedding_params(c),
                   pattern=c.layer_pattern, window=c.window_size, **_memory_sizes(c))
        for name, c in configs.items()
    }
    for L in size["train_L"]:
        batch = max(1, size["tokens_per_step"] // L)
        ids = torch.randint(0, 256, (batch, L), device=dev)
        variants = {(name, False): cfg for name, cfg in configs.items()}
        if L == size["bf16_L"]:
            variants.update({(name, True): cfg for name, cfg in configs.items()})
        fns = {key: _train_step(_model(cfg, dev), ids, key[1], dev) for key, cfg in variants.items()}
        repeats = size["model_repeats"] if L < 16384 else size["long_repeats"]
        s = measure(fns, dev, bench.warmup, repeats)
        tps = {key: batch * L / statistics.median(xs) for key, xs in s.items()}
        for (name, bf16), rate in tps.items():
            cfg = configs[name]
            flops = train_flops_per_token(cfg, L)
            settings = dict(L=L, batch=batch, dtype="bf16 autocast" if bf16 else "fp32", layers=cfg.num_hidden_layers,
                            hidden_size=cfg.hidden_size, non_embedding_params=non_embedding_params(cfg),
                            optimizer="AdamW")
            more = dict(train_flops_per_token=flops, mfu=rate * flops / ceiling["bf16" if bf16 else "fp32"],
                        mfu_vs_fp32_ceiling=rate * flops / ceiling["fp32"])
            spread = stats([batch * L / x for x in s[(name, bf16)]])
            if bf16:
                bench.add("models", f"train_bf16/{name}/L{L}", rate, "tokens/s", settings, better="higher",
                          spread=spread, peer=f"models/train/{name}/L{L}", ratio=rate / tps[(name, False)], **more)
            else:
                bench.add("models", f"train/{name}/L{L}", rate, "tokens/s", settings, better="higher", spread=spread,
                          peer=None if name == "transformer" else f"models/train/transformer/L{L}",
                          ratio=None if name == "transformer" else rate / tps[("transformer", False)], **more)
        del fns
    _mfu_point(bench, ceiling)
    if bench.compile:
        _compiled_point(bench, configs["bmojo"])
    _loss_curve(bench, configs["bmojo"])
    _plot_throughput(bench, configs)


def packing(bench: Bench) -> None:
    """Training on packed documents (seq_idx: every state restarts at each document) vs the same tokens as one
    stream, per preset at matched parameters, fp32, at the bf16 length; timed interleaved. Document lengths are
    drawn uniformly in [min_doc, max_doc] (the builtin corpus' files are mostly longer)."""
    size = SIZES[bench.quick]
    dev, L = bench.device, size["bf16_L"]
    batch = max(1, size["tokens_per_step"] // L)
    ids = torch.randint(0, 256, (batch, L), device=dev)
    gen = torch.Generator().manual_seed(0)
    lo, hi = size["packed_docs"]
    seq_idx = torch.stack([_packed_row(L, lo, hi, gen) for _ in range(batch)]).to(dev)
    for name in size["packed_presets"]:
        cfg = model_configs(bench.quick)[name]
        fns = {packed: _train_step(_model(cfg, dev), ids, False, dev, seq_idx if packed else None)
               for packed in (False, True)}
        s = measure(fns, dev, bench.warmup, size["model_repeats"])
        rates = {packed: batch * L / statistics.median(xs) for packed, xs in s.items()}
        settings = dict(L=L, batch=batch, dtype="fp32", documents_per_row=int(seq_idx[0, -1]) + 1,
                        doc_lengths=f"uniform {lo}..{hi}",
                        aligned_tokens=align_documents(seq_idx, cfg.window_size)[1].shape[1])
        bench.add("packing", f"train_unpacked/{name}/L{L}", rates[False], "tokens/s", settings, better="higher",
                  spread=stats([batch * L / x for x in s[False]]))
        bench.add("packing", f"train_packed/{name}/L{L}", rates[True], "tokens/s", settings, better="higher",
                  spread=stats([batch * L / x for x in s[True]]), peer=f"train_unpacked/{name}/L{L}",
                  ratio=rates[True] / rates[False])


def small(bench: Bench, ceiling: dict[str, float]) -> None:
    """Training step time of every preset at the size of `bmojo compare --preset quick` (its model and batch: the
    tiny models the recall experiments train thousands of times), in fp32 and, where the CPU multiplies bf16 faster
    than fp32 (`ceiling`), in bf16 autocast, all timed interleaved; the transformer of equal width and depth in the
    same dtype is the peer. Each sample is `SMALL_STEPS` steps (2 with --quick)."""
    from ..compare import SPECS

    spec = SPECS["quick"]
    task = spec.tasks[0]
    batch, L = spec.train["batch_size"], task["seq_len"]
    ids = torch.randint(0, task["vocab_size"], (batch, L), device=bench.device)
    steps = 2 if bench.quick else SMALL_STEPS
    dtypes = ["fp32", "bf16"] if ceiling["bf16"] > ceiling["fp32"] else ["fp32"]
    if len(dtypes) == 1:
        bench.notes.append("small: bf16 autocast not timed: bf16 matmuls are slower than fp32 on this device "
                           "(emulated; see the ceiling)")
    fns = {}
    for name in PRESETS:
        config = BMojoConfig.from_preset(name, vocab_size=task["vocab_size"], **spec.model)
        for dtype in dtypes:
            step = _train_step(_model(config, bench.device), ids, dtype == "bf16", bench.device)
            fns[name, dtype] = lambda step=step: [step() for _ in range(steps)]
    s = measure(fns, bench.device, bench.warmup, bench.repeats)
    for (name, dtype), xs in s.items():
        figure = "train_step" if dtype == "fp32" else f"train_step_{dtype}"
        settings = dict(L=L, batch=batch, dtype=dtype, steps_per_sample=steps, threads=torch.get_num_threads(),
                        **{k: spec.model[k] for k in ("hidden_size", "num_hidden_layers")})
        peer = {} if name == "transformer" else dict(
            peer=f"small/{figure}/transformer",
            ratio=statistics.median(s["transformer", dtype]) / statistics.median(xs))
        bench.add("small", f"{figure}/{name}", _median_ms(xs) / steps, "ms per step", settings, better="lower",
                  spread=stats(xs, 1e3 / steps), **peer)


SMALL_STEPS = 10  # training steps per timing sample of the small suite (one tiny step is a few ms)


def _packed_row(L: int, lo: int, hi: int, gen: torch.Generator) -> torch.Tensor:
    """seq_idx (L,) of documents with lengths uniform in [lo, hi] laid back to back (the last one cut)."""
    lengths = []
    while sum(lengths) < L:
        lengths.append(int(torch.randint(lo, hi + 1, (1,), generator=gen)))
    return torch.repeat_interleave(torch.arange(len(lengths)), torch.tensor(lengths))[:L]


def _memory_sizes(config: BMojoConfig) -> dict[str, int]:
    """m_f and m_e as the model uses them: 0 where no layer reads the field (the shared width sets them for
    every preset)."""
    inert = config.inert_fields
    return {"num_fading": 0 if "num_fading_tokens" in inert else config.num_fading_tokens,
            "num_eidetic": 0 if "num_eidetic_tokens" in inert else config.num_eidetic_tokens}


def _mfu_point(bench: Bench, ceiling: dict[str, float]) -> None:
    """bmojo at d_model 512 (or the quick width), L 4096: fp32 and bf16 training MFU."""
    size = SIZES[bench.quick]
    d, L = size["mfu"]["hidden_size"], size["mfu"]["L"]
    width = {**size["width"], "hidden_size": d, "num_attention_heads": max(1, d // 64)}
    cfg = BMojoConfig.from_preset("bmojo", num_hidden_layers=size["anchor_layers"], **width)
    ids = torch.randint(0, 256, (1, L), device=bench.device)
    model = _model(cfg, bench.device)
    fns = {bf16: _train_step(model, ids, bf16, bench.device) for bf16 in (False, True)}
    s = measure(fns, bench.device, bench.warmup, size["model_repeats"])
    flops = train_flops_per_token(cfg, L)
    for bf16, xs in s.items():
        rate = L / statistics.median(xs)
        settings = dict(L=L, batch=1, hidden_size=d, layers=cfg.num_hidden_layers,
                        dtype="bf16 autocast" if bf16 else "fp32", non_embedding_params=non_embedding_params(cfg))
        bench.add("models", f"mfu_bmojo_d{d}/L{L}/{'bf16' if bf16 else 'fp32'}", rate * flops / ceiling["fp32"],
                  "fraction of fp32 ceiling", settings, better="higher", tokens_per_s=rate, train_flops_per_token=flops,
                  mfu_vs_own_dtype_ceiling=rate * flops / ceiling["bf16" if bf16 else "fp32"])


def _compiled_point(bench: Bench, cfg: BMojoConfig) -> None:
    """`--compile`: torch.compile(model) vs eager, bmojo, fp32, at the bf16 length; compile time recorded."""
    L = SIZES[bench.quick]["bf16_L"]
    ids = torch.randint(0, 256, (max(1, SIZES[bench.quick]["tokens_per_step"] // L), L), device=bench.device)
    eager = _model(cfg, bench.device)
    compiled = _model(cfg, bench.device)
    step_c = _train_step(torch.compile(compiled), ids, False, bench.device)
    t0 = time.perf_counter()
    step_c()  # compiles forward and backward
    sync(bench.device)
    compile_s = time.perf_counter() - t0
    s = measure({"eager": _train_step(eager, ids, False, bench.device), "compiled": step_c}, bench.device,
                bench.warmup, SIZES[bench.quick]["model_repeats"])
    rates = {k: ids.numel() / statistics.median(v) for k, v in s.items()}
    settings = dict(L=L, batch=ids.shape[0], dtype="fp32", layers=cfg.num_hidden_layers, hidden_size=cfg.hidden_size)
    bench.add("models", f"train_eager_vs_compiled/bmojo/L{L}", rates["eager"], "tokens/s", settings, better="higher",
              spread=stats([ids.numel() / x for x in s["eager"]]))
    bench.add("models", f"train_compiled/bmojo/L{L}", rates["compiled"], "tokens/s", settings, better="higher",
              spread=stats([ids.numel() / x for x in s["compiled"]]), peer=f"models/train_eager_vs_compiled/bmojo/L{L}",
              ratio=rates["compiled"] / rates["eager"], compile_seconds=compile_s)


def _corpus_batches(L: int, batch: int, steps: int, seed: int = 0) -> list[torch.Tensor]:
    """`steps` batches of byte windows from the builtin corpus (the stdlib sources), fixed by `seed`."""
    from ..data import builtin_corpus

    text = "".join(doc.text for doc in builtin_corpus()[:200]).encode("utf-8")
    data = torch.frombuffer(bytearray(text), dtype=torch.uint8).long()
    gen = torch.Generator().manual_seed(seed)
    out = []
    for _ in range(steps):
        starts = torch.randint(0, data.numel() - L - 1, (batch,), generator=gen)
        out.append(torch.stack([data[s : s + L] for s in starts.tolist()]))
    return out


def _loss_curve(bench: Bench, cfg: BMojoConfig) -> None:
    """Train the `bmojo` model from the same init on the same batches in fp32 and in bf16 autocast."""
    size = SIZES[bench.quick]["curve"]
    batches = _corpus_batches(size["L"], size["batch"], size["steps"])
    curves, times = {}, {}
    for bf16 in (False, True):
        model = _model(cfg, bench.device, seed=1)
        opt = torch.optim.AdamW(model.parameters(), lr=size["lr"], weight_decay=0.1)
        losses, ts = [], []
        for ids in batches:
            ids = ids.to(bench.device)
            sync(bench.device)
            t0 = time.perf_counter()
            opt.zero_grad(set_to_none=True)
            with torch.autocast(bench.device.type, dtype=torch.bfloat16, enabled=bf16):
                loss = model(ids, labels=ids).loss
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
            ts.append(time.perf_counter() - t0)
        key = "bf16" if bf16 else "fp32"
        curves[key], times[key] = losses, ts
    half = len(batches) // 2
    fp, bf = curves["fp32"][half:], curves["bf16"][half:]
    rel = max(abs(a - c) / a for a, c in zip(fp, bf, strict=True))
    settings = dict(L=size["L"], batch=size["batch"], steps=size["steps"], lr=size["lr"], data="builtin corpus bytes",
                    layers=cfg.num_hidden_layers, hidden_size=cfg.hidden_size)
    bench.add("models", "loss_curve/bf16_vs_fp32_max_rel_diff", rel, "fraction", settings,
              final_loss_fp32=curves["fp32"][-1], final_loss_bf16=curves["bf16"][-1],
              first_loss=curves["fp32"][0],
              note="max over the second half of the steps of |loss_bf16 - loss_fp32| / loss_fp32")
    bench.extra["loss_curve"] = {"settings": settings, "loss": curves, "step_seconds": times}
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for key, ys in curves.items():
        ax.plot(range(1, len(ys) + 1), ys, label=key, linestyle="--" if key == "bf16" else "-")
    ax.set_xlabel("step")
    ax.set_ylabel("training loss (nats/byte)")
    ax.set_title(f"bmojo ({cfg.num_hidden_layers} layers, d {cfg.hidden_size}): fp32 vs bf16 autocast")
    ax.legend()
    fig.tight_layout()
    bench.save_plot(fig, "loss_curve.png", "training loss per step, fp32 vs bf16 autocast, same init and batches")


def _plot_throughput(bench: Bench, configs) -> None:
    """train_throughput.png: fp32 training tokens/s vs L, a line per preset."""
    lines = {}
    for name in configs:
        pts = [(f["settings"]["L"], f["value"]) for f in bench.figures if f["name"].startswith(f"models/train/{name}/")]
        if pts:
            lines[name] = tuple(zip(*sorted(pts), strict=True))
    _log_log_plot(bench, lines, "sequence length L", "training tokens/s (fp32)",
                  "training throughput at matched parameters", "train_throughput.png",
                  "training tokens/s vs sequence length, every preset, fp32")


def _log_log_plot(bench: Bench, lines: dict[str, tuple], xlabel: str, ylabel: str, title: str, file_name: str,
                  description: str) -> None:
    """Save a plot of `lines` ({label: (xs, ys)}) with markers on a base-2 log x axis and a log y axis."""
    fig, ax = pyplot().subplots(figsize=(6, 4))
    for label, (xs, ys) in lines.items():
        ax.plot(xs, ys, marker="o", label=label)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend()
    fig.tight_layout()
    bench.save_plot(fig, file_name, description)


# ------------------------------------------------------------------------------------------------ decode


def decode(bench: Bench, ceiling: dict[str, float]) -> None:
    """Decoding: latency and cache size per token at growing contexts; generate() against the HF peers at batch 1
    and 8; a ~100M-parameter bmojo's bytes read per second against the memory bandwidth."""
    _decode_contexts(bench)
    _decode_generate(bench)
    _decode_bandwidth(bench, ceiling["bandwidth"])


def fast_decoding(bench: Bench) -> str:
    """The static step our fast rows use: captured as a CUDA graph on CUDA; on a CPU compiled (full sizes), eager with
    --quick (compiling takes minutes)."""
    if bench.device.type == "cuda":
        return "cuda_graph"
    return "static" if bench.quick else "compiled"


def _decode_contexts(bench: Bench) -> None:
    """Latency and cache bytes per token of every preset (reference decoding) and of bmojo's static step, at each
    context (full attention only up to `decode_attn_max`: its prefill is quadratic)."""
    size = SIZES[bench.quick]
    dev = bench.device
    configs = model_configs(bench.quick)
    mods = {name: _model(cfg, dev).eval() for name, cfg in configs.items()}
    caches = {name: m.new_cache(1) for name, m in mods.items()}
    gen = torch.Generator().manual_seed(0)
    block = size["prefill_block"]
    fast = f"bmojo_{fast_decoding(bench)}"
    curves: dict[str, dict[str, list]] = {name: {"ctx": [], "ms": [], "bytes": []} for name in [*mods, fast]}
    # Prefill every preset to each context in turn, keeping a copy of the cache at each context; then time the
    # decode steps of all (preset, context) pairs interleaved, so that load drift cannot fake a growth with context.
    snapshots = {}
    with torch.no_grad():
        for ctx in size["decode_ctx"]:
            for name, m in mods.items():
                if name == "transformer" and ctx > size["decode_attn_max"]:
                    continue
                cache = caches[name]
                while cache.seen_tokens < ctx:
                    n = min(block, ctx - cache.seen_tokens)
                    m(torch.randint(0, 256, (1, n), generator=gen).to(dev), cache=cache, logits_to_keep=1)
                snapshots[(name, ctx)] = copy.deepcopy(cache)
                if name == "bmojo":
                    snapshots[(fast, ctx)] = copy.deepcopy(cache)
                    snapshots[(fast, ctx)].decoding = fast_decoding(bench)
        del caches
        token = torch.randint(0, 256, (1, 1), generator=gen).to(dev)
        model_of = {key: mods[key[0] if key[0] in mods else "bmojo"] for key in snapshots}
        fns = {key: (lambda m=model_of[key], c=c: m(token, cache=c, logits_to_keep=1)) for key, c in snapshots.items()}
        s = measure(fns, dev, warmup=2, repeats=size["decode_steps"])
    nbytes = {key: c.nbytes for key, c in snapshots.items()}  # after the steps: the static rows in their layout
    for (name, ctx), xs in s.items():
        cfg, ms = configs.get(name, configs["bmojo"]), _median_ms(xs)
        settings = dict(context=ctx, batch=1, layers=cfg.num_hidden_layers, hidden_size=cfg.hidden_size,
                        non_embedding_params=non_embedding_params(cfg), prefill_block=block,
                        decoding=fast_decoding(bench) if name == fast else "reference")
        bench.add("decode", f"latency/{name}/ctx{ctx}", ms, "ms/token", settings, spread=stats(xs, 1e3))
        bench.add("decode", f"cache_bytes/{name}/ctx{ctx}", nbytes[(name, ctx)], "bytes", settings)
        curves[name]["ctx"].append(ctx)
        curves[name]["ms"].append(ms)
        curves[name]["bytes"].append(nbytes[(name, ctx)])
    del snapshots, fns
    for name, c in curves.items():
        lo, hi = c["ctx"][0], c["ctx"][-1]
        settings, unit = dict(from_context=lo, to_context=hi), f"x (at {hi} / at {lo})"
        bench.add("decode", f"latency_growth/{name}", c["ms"][-1] / c["ms"][0], "latency " + unit, settings)
        bench.add("decode", f"cache_growth/{name}", c["bytes"][-1] / c["bytes"][0], "cache bytes " + unit, settings)
    bench.extra["decode_curves"] = curves
    for key, ylabel, fname in (("ms", "decode latency (ms/token)", "decode_latency.png"),
                               ("bytes", "cache size (bytes)", "decode_cache.png")):
        _log_log_plot(bench, {name: (c["ctx"], c[key]) for name, c in curves.items()}, "context length", ylabel,
                      f"decoding, batch 1, matched parameters: {ylabel.split(' (')[0]}", fname,
                      f"{ylabel} vs context length, every preset")


def _decode_generate(bench: Bench) -> None:
    """generate() tokens/s, greedy, a 16-token prompt, `generate_tokens` new tokens, batch 1 and 8: our bmojo (static
    step and reference), mamba and swa presets (static step) against HF `Mamba2ForCausalLM` (the sizes of our mamba
    preset) and `MistralForCausalLM` (sliding window, the sizes of our swa preset), all timed interleaved."""
    size = SIZES[bench.quick]
    dev, fast, n_new = bench.device, fast_decoding(bench), size["generate_tokens"]
    configs = model_configs(bench.quick)
    torch.manual_seed(0)
    models = {
        "hf_mamba2": (mamba2_lm_peer(configs["mamba"]).to(dev), None),
        "hf_mistral": (mistral_lm_peer(configs["swa"]).to(dev), None),
        "bmojo": (_model(configs["bmojo"], dev).eval(), fast),
        "bmojo_reference": (_model(configs["bmojo"], dev).eval(), "reference"),
        "mamba": (_model(configs["mamba"], dev).eval(), fast),
        "swa": (_model(configs["swa"], dev).eval(), fast),
    }
    params = {name: sum(p.numel() for p in m.parameters()) for name, (m, _) in models.items()}
    gen = torch.Generator().manual_seed(0)
    for batch in (1, 8):
        prompt = torch.randint(1, 256, (batch, 16), generator=gen).to(dev)

        def run(m, decoding, prompt=prompt):
            kwargs = {} if decoding is None else {"decoding": decoding}
            m.generate(prompt, attention_mask=torch.ones_like(prompt), max_new_tokens=n_new, min_new_tokens=n_new,
                       do_sample=False, pad_token_id=0, **kwargs)

        with torch.no_grad():
            s = measure({name: (lambda m=m, d=d: run(m, d)) for name, (m, d) in models.items()}, dev, warmup=1,
                        repeats=size["generate_repeats"])
        rate = {name: batch * n_new / statistics.median(xs) for name, xs in s.items()}
        for name, xs in s.items():
            settings = dict(batch=batch, new_tokens=n_new, prompt=16, params=params[name],
                            decoding=models[name][1] or "HF generate")
            spread = stats([batch * n_new / x for x in xs])
            if name.startswith("hf_"):
                bench.add("decode", f"generate/{name}/batch{batch}", rate[name], "tokens/s", settings, better="higher",
                          spread=spread)
                continue
            for peer in ("hf_mistral", "hf_mamba2"):
                bench.add("decode", f"generate/{name}/batch{batch}/vs_{peer}", rate[name], "tokens/s", settings,
                          better="higher", spread=spread, peer=f"generate/{peer}/batch{batch}",
                          ratio=rate[name] / rate[peer])


def bandwidth_config(quick: bool) -> BMojoConfig:
    """The bmojo preset at about 100M parameters (d 768, 9 layers, 12 heads); a tiny one with --quick."""
    if quick:
        return BMojoConfig.from_preset("bmojo", num_hidden_layers=2, **TINY_WIDTH)
    return BMojoConfig.from_preset("bmojo", hidden_size=768, num_hidden_layers=9, num_attention_heads=12,
                                   num_key_value_heads=12)


def _decode_bandwidth(bench: Bench, bandwidth: float) -> None:
    """A ~100M-parameter bmojo at batch 1 with the static step: bytes read per token (every weight, the LM head
    included, and the whole decoding state) / seconds per token, against the measured memory read bandwidth."""
    size = SIZES[bench.quick]
    dev, fast = bench.device, fast_decoding(bench)
    cfg = bandwidth_config(bench.quick)
    m = _model(cfg, dev).eval()
    cache = m.new_cache(1, decoding=fast)
    gen = torch.Generator().manual_seed(0)
    with torch.no_grad():
        m(torch.randint(0, 256, (1, size["prefill_block"]), generator=gen).to(dev), cache=cache, logits_to_keep=1)
        token = torch.randint(0, 256, (1, 1), generator=gen).to(dev)
        xs = measure({"step": lambda: m(token, cache=cache)}, dev, warmup=3, repeats=size["decode_steps"])["step"]
    weights = sum(p.numel() * p.element_size() for p in m.parameters())
    read = weights + cache.nbytes
    rate = read / statistics.median(xs)
    settings = dict(params=sum(p.numel() for p in m.parameters()), hidden_size=cfg.hidden_size,
                    layers=cfg.num_hidden_layers, weight_bytes=weights, state_bytes=cache.nbytes, decoding=fast,
                    ms_per_token=_median_ms(xs), bandwidth_GBps=bandwidth / 1e9)
    bench.add("decode", "bandwidth/bmojo_100m", rate / 1e9, "GB/s (weights + state read per token)", settings,
              better="higher", spread=stats([read / x / 1e9 for x in xs]), fraction_of_bandwidth=rate / bandwidth)


def store(bench: Bench) -> None:
    """Decode latency per token of the `bmojo` model (matched width) with a storage tier (r = 16) holding N stored
    tokens per layer, N in `store_sizes`, for each search backend ("exact"; "faiss" when installed), all timed
    interleaved; each ratio is against the same backend at the smallest N. After a prefill of the smallest N tokens
    the store is topped up with random keys and values (what the search costs depends on N, not on what the entries
    hold; the faiss indexes are built in the untimed warm-up). Working and stored bytes are recorded for each N."""
    size = SIZES[bench.quick]
    dev = bench.device
    cfg = copy.deepcopy(model_configs(bench.quick)["bmojo"])
    cfg.num_retrieved_tokens = 16
    backends = ["exact"] + (["faiss"] if importlib.util.find_spec("faiss") else [])
    models = {}
    for backend in backends:  # the same weights (seed 0), each searching its store its own way
        cfg.store_backend = backend
        models[backend] = _model(copy.deepcopy(cfg), dev).eval()
    gen = torch.Generator().manual_seed(0)
    caches = {}
    with torch.no_grad():
        base = models["exact"].new_cache(1)
        prefill = min(size["store_sizes"])  # the store then holds about that many tokens: topped up to each N below
        models["exact"](torch.randint(0, 256, (1, prefill), generator=gen).to(dev), cache=base, logits_to_keep=1)
        for n in size["store_sizes"]:
            cache = copy.deepcopy(base)
            for state in cache.states:
                have = state.store.size
                if n > have:
                    k = state.store.blocks[0].k if state.store.blocks else state.window.k
                    shape = (1, k.shape[1], n - have, k.shape[3])
                    state.store = state.store.append(KVSlots(torch.randn(shape, generator=gen).to(dev, k.dtype),
                                                             torch.randn(shape, generator=gen).to(dev, k.dtype),
                                                             torch.arange(n - have, device=dev)[None]))
            stored = {id(t): t for state in cache.states for block in state.store.blocks for t in (block.k, block.v,
                                                                                                 block.pos)}
            for backend in backends:  # each backend decodes from its own copy; they share the stored tensors, which
                # decoding never writes (appending makes new blocks)
                caches[backend, n] = cache if backend == backends[-1] else copy.deepcopy(cache, dict(stored))
        token = torch.randint(0, 256, (1, 1), generator=gen).to(dev)
        fns = {f"{backend}/{n}": (lambda m=models[backend], c=c: m(token, cache=c, logits_to_keep=1))
               for (backend, n), c in caches.items()}
        s = measure(fns, dev, warmup=2, repeats=size["decode_steps"])
    smallest = min(size["store_sizes"])
    for (backend, n), cache in caches.items():
        xs = s[f"{backend}/{n}"]
        settings = dict(stored_tokens_per_layer=n, batch=1, retrieved=16, backend=backend,
                        layers=cfg.num_hidden_layers, hidden_size=cfg.hidden_size, working_bytes=cache.working_nbytes,
                        stored_bytes=cache.stored_nbytes)
        name = "latency" if backend == "exact" else f"latency_{backend}"
        ratio = statistics.median(s[f"{backend}/{smallest}"]) / statistics.median(xs)
        peer = {} if n == smallest else dict(peer=f"store/{name}/stored{smallest}", ratio=ratio)
        bench.add("store", f"{name}/stored{n}", _median_ms(xs), "ms/token", settings, spread=stats(xs, 1e3), **peer)
