"""Side-by-side comparison of one model pair: parity, latency, training step, FLOP utilisation, peak memory."""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field

import torch

from cases import Pair, batch, make_optimizer, make_pair, train_step
from common import count_flops, peak_memory, time_interleaved


@dataclass
class Result:
    model: str
    mode: str                 # "infer" or "train"
    batch: int
    ours_s: float
    ref_s: float
    speedup: float            # ref / ours
    runs: int
    parity: str               # what was checked and the numbers
    parity_ok: bool
    ours_gflop: float         # our FLOP count of one call (forward, or forward + backward)
    ours_gflops: float        # achieved: ours_gflop / ours_s
    utilisation: float        # ours_gflops / machine matmul GFLOP/s
    ours_mem: int | None = None
    ref_mem: int | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class Options:
    device: torch.device
    runs: int = 7
    warmup: int = 2
    memory: bool = True
    compile: bool = False     # torch.compile our model (inference only)
    bf16: bool = False        # autocast our model to bfloat16 (inference only; parity then reported, not held)


def _autocast(opts: Options):
    if opts.bf16:
        return torch.autocast(opts.device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def check_logits(ours: torch.Tensor, ref: torch.Tensor, bf16: bool) -> tuple[str, bool]:
    """Issue 8: max-abs ≤ 1e-4·max(1, max|ref|) in fp32."""
    err = (ours.float() - ref.float()).abs().max().item()
    bound = 1e-4 * max(1.0, ref.abs().max().item())
    ok = ours.shape == ref.shape and (bf16 or err <= bound)
    return f"logits max-abs {err:.2e} (bound {bound:.1e}{', not held: bf16' if bf16 else ''})", ok


def check_training(pair: Pair, x: torch.Tensor, y: torch.Tensor) -> tuple[str, bool]:
    """Loss and every gradient of one training step, ours against the reference's (same weights, no dropout).

    Gradients agree to fp32 rounding when, per tensor, ||g_ours - g_ref|| ≤ 1e-2·max(||g_ref||, 1e-3·G) with G
    the largest gradient norm (the decoder's projection biases have an exactly-zero true gradient under train-
    mode BatchNorm). A norm, not a max: at 512² a few ReLU inputs sit within 1e-7 of zero, and fp32 rounding
    in the features flips them; measured against float64, a 1e-6 relative perturbation of the features moves
    single gradient entries by up to 1e-1 while a 1e-7 one moves them by 1e-8.
    """
    pair.ours.train()
    pair.ref.train()
    pair.ours.zero_grad(set_to_none=True)
    pair.ref.zero_grad(set_to_none=True)
    lo = pair.ours_loss(x, y)
    lo.backward()
    lr = pair.ref_loss(x, y)
    lr.backward()
    ref_grads = pair.ref_grads_as_ours()
    ours_grads = {k: p.grad for k, p in pair.ours.named_parameters() if p.grad is not None}
    worst, worst_name, ok = 0.0, "", set(ours_grads) == set(ref_grads)
    scale = 1e-3 * max(r.norm().item() for r in ref_grads.values())
    for k, g in ours_grads.items():
        r = ref_grads.get(k)
        if r is None or r.shape != g.shape:
            ok = False
            continue
        rel = (g - r).norm().item() / max(r.norm().item(), scale)
        if rel > worst:
            worst, worst_name = rel, k
    loss_err = abs(lo.item() - lr.item()) / abs(lr.item())
    ok = ok and loss_err <= 1e-5 and worst <= 1e-2
    msg = (f"loss {lo.item():.6f} vs {lr.item():.6f} (rel {loss_err:.1e}); {len(ours_grads)} grads, "
           f"worst relative L2 error {worst:.1e} ({worst_name})")
    pair.ours.zero_grad(set_to_none=True)
    pair.ref.zero_grad(set_to_none=True)
    return msg, ok


def compare(name: str, opts: Options, infer_batches=(1, 8), train_batch: int | None = 2,
            runs_by_batch: dict[int, int] | None = None, matmul_gflops: float = 1.0) -> list[Result]:
    """Everything for one pair; runs_by_batch overrides the number of timed runs (never below 7)."""
    dev = opts.device
    pair = make_pair(name, dev)
    ours_fn = pair.ours_logits
    if opts.compile:
        ours_fn = torch.compile(pair.ours)
    results = []
    for bs in infer_batches:
        runs = max(7, (runs_by_batch or {}).get(bs, opts.runs))
        x, _ = batch(pair, bs, dev)
        pair.ours.eval()
        pair.ref.eval()
        with torch.inference_mode():
            with _autocast(opts):
                a = ours_fn(x)
            b = pair.ref_logits(x)
            parity, ok = check_logits(a, b, opts.bf16)
            del a, b

            def ours_call():
                with _autocast(opts):
                    ours_fn(x)

            t = time_interleaved(ours_call, lambda: pair.ref_logits(x), runs, opts.warmup, dev)
            flops = count_flops(lambda: pair.ours_logits(x))
        results.append(_result(name, "infer", bs, t, runs, parity, ok, flops, matmul_gflops))
    if train_batch:
        x, y = batch(pair, train_batch, dev)
        parity, ok = check_training(pair, x, y)
        opt_o, opt_r = make_optimizer(pair.ours), make_optimizer(pair.ref)
        t = time_interleaved(lambda: train_step(pair.ours, pair.ours_loss, opt_o, x, y),
                             lambda: train_step(pair.ref, pair.ref_loss, opt_r, x, y),
                             max(7, (runs_by_batch or {}).get("train", opts.runs)), opts.warmup, dev)
        pair.ours.zero_grad(set_to_none=True)
        flops = count_flops(lambda: pair.ours_loss(x, y).backward())
        pair.ours.zero_grad(set_to_none=True)
        results.append(_result(name, "train", train_batch, t, len(t.ours), parity, ok, flops, matmul_gflops))
        del opt_o, opt_r
    del pair
    if opts.memory:
        for r in results:
            spec = {"model": name, "mode": r.mode, "batch": r.batch, "device": str(dev),
                    "threads": torch.get_num_threads()}
            mem_o = peak_memory({**spec, "impl": "ours"})
            mem_r = peak_memory({**spec, "impl": "ref"})
            if mem_o and mem_r:
                r.ours_mem, r.ref_mem = mem_o["step_peak"], mem_r["step_peak"]
    return results


def _result(name, mode, bs, t, runs, parity, ok, flops, matmul_gflops) -> Result:
    achieved = flops / t.ours_s / 1e9
    return Result(name, mode, bs, t.ours_s, t.ref_s, t.speedup, runs, parity, ok, flops / 1e9, achieved,
                  achieved / matmul_gflops)
