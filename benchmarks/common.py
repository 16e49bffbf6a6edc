"""Shared helpers for the side-by-side benchmarks: interleaved timing, machine matmul rate, FLOPs, peak memory.

Timing: our model and the reference run alternately in one process (ours, ref, ours, ref, ...) after warm-up,
so that machine load affects both alike; the figure is the median of the runs. Peak memory: each model runs in
a fresh subprocess (`python benchmarks/peak_memory.py ...`) that resets the kernel's RSS high-water mark
(/proc/self/clear_refs) right before one measured step and reads VmHWM after it; the step's peak is that
high-water mark minus the RSS before the step (activations, gradients, workspaces: everything the process
touched, not only torch tensors).
"""
from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import torch

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:  # run as `python benchmarks/x.py` from a checkout
    sys.path.insert(0, str(ROOT))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@dataclass
class Timing:
    """Per-run wall times in seconds of two callables measured alternately."""
    ours: list[float] = field(default_factory=list)
    ref: list[float] = field(default_factory=list)

    @property
    def ours_s(self) -> float:
        return statistics.median(self.ours)

    @property
    def ref_s(self) -> float:
        return statistics.median(self.ref)

    @property
    def speedup(self) -> float:
        """Reference time / our time (> 1: ours is faster)."""
        return self.ref_s / self.ours_s


def time_interleaved(ours: Callable[[], object], ref: Callable[[], object], runs: int, warmup: int,
                     device: torch.device) -> Timing:
    """Alternate ours and ref: `warmup` unrecorded rounds, then `runs` recorded ones (order swapped every
    round so neither always runs right after the other's memory traffic)."""
    t = Timing()
    for i in range(warmup + runs):
        pair = [("ours", ours), ("ref", ref)]
        for name, fn in pair if i % 2 == 0 else pair[::-1]:
            sync(device)
            start = time.perf_counter()
            fn()
            sync(device)
            if i >= warmup:
                getattr(t, name).append(time.perf_counter() - start)
    return t


def matmul_gflops(device: torch.device, n: int = 2048, runs: int = 7) -> float:
    """The machine's fp32 matmul rate (GFLOP/s): median over runs of an n×n×n product."""
    a, b = torch.randn(n, n, device=device), torch.randn(n, n, device=device)
    for _ in range(2):
        a @ b
    times = []
    for _ in range(runs):
        sync(device)
        start = time.perf_counter()
        a @ b
        sync(device)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / statistics.median(times) / 1e9


def count_flops(fn: Callable[[], object]) -> int:
    """FLOPs (2 per multiply-accumulate) of one call, backward included when fn calls it (vitseg's counter:
    torch.utils.flop_counter with the CPU attention kernels counted and grouped-conv backward fixed)."""
    from vitseg.tools.flops import count_flops as vitseg_count_flops
    return vitseg_count_flops(fn)


def machine_info(device: torch.device) -> dict:
    cpu = platform.processor() or platform.machine()
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    info = {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "device": str(device),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    with contextlib.suppress(ImportError):
        import transformers
        info["transformers"] = transformers.__version__
    return info


def peak_memory(spec: dict, timeout: float = 900) -> dict | None:
    """Run one step of the model described by `spec` in a fresh process; returns its peak-memory record
    (see peak_memory.py) or None where the platform cannot measure it."""
    cmd = [sys.executable, str(Path(__file__).with_name("peak_memory.py")), json.dumps(spec)]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    if res.returncode != 0:
        raise RuntimeError(f"peak-memory run failed for {spec}:\n{res.stderr[-2000:]}")
    out = json.loads(res.stdout.strip().splitlines()[-1])
    return out or None


def fmt_mib(n: float | None) -> str:
    return "n/a" if n is None else f"{n / 2 ** 20:.0f} MiB"
