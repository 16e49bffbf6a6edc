"""`make bench`: ours vs HF transformers, side by side in one process, with parity checked in the same run.

    python benchmarks/run_all.py                      # the issue-8 set (SegFormer-B0/B2, ViT-B/16 + linear)
    python benchmarks/run_all.py --models segformer_b0 --no-memory --quick
    python benchmarks/run_all.py --device cuda        # the same on a GPU
    python benchmarks/run_all.py --compile            # opt-in: torch.compile our model (inference)
    python benchmarks/run_all.py --bf16               # opt-in: our model under bf16 autocast (inference)

Per model: inference latency at batch 1 and 8 and one training step (forward + loss + backward + AdamW) at
batch 2, all 512×512, fp32; medians of ≥ 7 interleaved runs after warm-up; logits, loss and gradients are
compared with the reference before timing. Achieved GFLOP/s use our own FLOP count (torch.utils.flop_counter on
our graph) and are divided by the machine's fp32 matmul GFLOP/s, measured in the same run. Peak memory is the
RSS high-water mark of one step in a fresh process (see common.py). Exit status: 1 when any parity check fails,
and with --strict also when a speed or memory target is missed.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import asdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import fmt_mib, machine_info, matmul_gflops  # noqa: E402
from compare import Options, compare  # noqa: E402

# (model, mode, batch) -> minimum speed-up over the reference (issue 8, §3)
TARGETS = {("segformer_b0", "infer", 1): 2.0, ("segformer_b2", "infer", 1): 3.0,
           ("segformer_b0", "train", 2): 1.3, ("segformer_b2", "train", 2): 2.0,
           ("linear_vit_b16", "infer", 1): 1.0}
# What each model is run at (the ViT is heavy at 512²: batch 8 and its training step are left to --full).
PLAN = {"segformer_b0": {"infer_batches": (1, 8), "train_batch": 2},
        "segformer_b2": {"infer_batches": (1, 8), "train_batch": 2},
        "linear_vit_b16": {"infer_batches": (1,), "train_batch": 2}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--models", nargs="+", default=list(PLAN), choices=list(PLAN))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2, help="intra-op threads (CPU); the issue's machine has 2")
    p.add_argument("--runs", type=int, default=7, help="timed runs per measurement (at least 7)")
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="batch 1 inference only, 1 warm-up (for a smoke run)")
    p.add_argument("--no-memory", action="store_true", help="skip the peak-memory subprocesses")
    p.add_argument("--compile", action="store_true", help="torch.compile our model (opt-in; inference)")
    p.add_argument("--bf16", action="store_true", help="bf16 autocast for our model (opt-in; inference)")
    p.add_argument("--json", type=Path, help="also write the results here")
    p.add_argument("--strict", action="store_true", help="exit 1 when a target is missed")
    args = p.parse_args(argv)

    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    start = time.time()
    info = machine_info(device)
    rate = matmul_gflops(device)
    info["matmul_gflops"] = round(rate, 1)
    print("machine: " + ", ".join(f"{k}={v}" for k, v in info.items()), flush=True)
    opts = Options(device, runs=max(7, args.runs), warmup=1 if args.quick else args.warmup,
                   memory=not args.no_memory, compile=args.compile, bf16=args.bf16)
    results = []
    for name in args.models:
        plan = dict(PLAN[name])
        if args.quick or args.compile or args.bf16:  # smoke run; the opt-in paths are inference paths
            plan = {"infer_batches": (1,), "train_batch": None}
        t0 = time.time()
        rs = compare(name, opts, matmul_gflops=rate, **plan)
        for r in rs:
            print(_row(r), flush=True)
        print(f"  ({name}: {time.time() - t0:.0f} s)", flush=True)
        results.extend(rs)
    rate_end = matmul_gflops(device)
    print(f"matmul GFLOP/s at start {rate:.1f}, at end {rate_end:.1f}")
    ok = _summary(results, args)
    print(f"total {time.time() - start:.0f} s")
    if args.json:
        args.json.write_text(json.dumps({"machine": info, "matmul_gflops_end": rate_end,
                                         "results": [asdict(r) for r in results]}, indent=1))
    return 0 if ok else 1


def _row(r) -> str:
    mem = f"peak {fmt_mib(r.ours_mem)} vs {fmt_mib(r.ref_mem)}" if r.ours_mem is not None else "peak n/a"
    return (f"{r.model:15s} {r.mode:5s} b{r.batch}: ours {r.ours_s * 1000:8.1f} ms  ref {r.ref_s * 1000:8.1f} ms  "
            f"x{r.speedup:5.2f}  | {r.ours_gflop:6.1f} GFLOP, {r.ours_gflops:5.1f} GFLOP/s = "
            f"{100 * r.utilisation:4.1f}% of matmul | {mem} | {'OK' if r.parity_ok else 'PARITY FAIL'}: "
            f"{r.parity}")


def _summary(results, args) -> bool:
    parity = all(r.parity_ok for r in results)
    missed = []
    print("\ntargets (issue 8):")
    for r in results:
        want = TARGETS.get((r.model, r.mode, r.batch))
        if want is not None and not (args.compile or args.bf16):
            met = r.speedup >= want
            print(f"  {r.model} {r.mode} b{r.batch}: x{r.speedup:.2f} (want >= {want}) {'met' if met else 'MISSED'}")
            if not met:
                missed.append(r)
        if r.ours_mem is not None:
            met = r.ours_mem <= r.ref_mem
            print(f"  {r.model} {r.mode} b{r.batch} peak memory: {fmt_mib(r.ours_mem)} vs {fmt_mib(r.ref_mem)} "
                  f"{'met' if met else 'MISSED'}")
            if not met:
                missed.append(r)
    print(f"parity: {'all checks passed' if parity else 'FAILED'}; targets: "
          f"{'all met' if not missed else f'{len(missed)} missed'}")
    return parity and (not args.strict or not missed)


if __name__ == "__main__":
    sys.exit(main())
