"""Latency, throughput and peak memory of a model's forward pass (or training step).

    stats = benchmark(model, batch=1, size=(512, 512), device="cpu", runs=20, warmup=5)

Timing: `time.perf_counter` around each run, CUDA synchronised before reading the clock; warm-up runs are
excluded. Latency is reported as the median with the spread (min, 10th/90th percentile, max, std).
Peak memory:
- CUDA: `torch.cuda.max_memory_allocated` after `reset_peak_memory_stats`, minus what was allocated before
  the first (warm-up) run (the model's weights and input), i.e. activations and workspace of one run.
- CPU: the process's peak resident set size (Linux VmHWM in /proc/self/status) minus the RSS before the
  first run, with the peak counter reset through /proc/self/clear_refs first. Where that reset is not possible the
  delta of `resource.getrusage(...).ru_maxrss` is used, which is only a lower bound (the process's earlier
  peak may hide it). The method used is returned under "memory_method".
"""
from __future__ import annotations

import contextlib
import copy
import resource
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError

AMP_DTYPES = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def _proc_status_kb(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_cpu_peak() -> bool:
    """Reset Linux's peak-RSS counter (VmHWM) to the current RSS; False where not possible."""
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return _proc_status_kb("VmHWM") is not None
    except OSError:
        return False


def _ru_maxrss_kb() -> int:
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss // 1024 if sys.platform == "darwin" else rss  # bytes on macOS, KiB on Linux


class _MemoryProbe:
    """Peak memory of what runs between start() and stop(), in bytes."""

    def __init__(self, device: torch.device):
        self.device = device

    def start(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
            self.base = torch.cuda.memory_allocated(self.device)
            self.method = "torch.cuda.max_memory_allocated minus allocation before the first run"
        elif _reset_cpu_peak():
            self.base = _proc_status_kb("VmRSS") * 1024
            self.method = "peak RSS (VmHWM, reset via /proc/self/clear_refs) minus RSS before the first run"
        else:
            self.base = _ru_maxrss_kb() * 1024
            self.method = "ru_maxrss delta (lower bound: the process's earlier peak can hide it)"

    def stop(self) -> tuple[int, int]:
        """(peak delta, absolute peak) in bytes."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
        elif "VmHWM" in self.method:
            peak = _proc_status_kb("VmHWM") * 1024
        else:
            peak = _ru_maxrss_kb() * 1024
        return max(0, peak - self.base), peak


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def benchmark(model: torch.nn.Module, batch: int = 1, size: tuple[int, int] = (512, 512), device="cpu",
              runs: int = 20, warmup: int = 5, train_step: bool = False, amp: str = "off",
              threads: int | None = None, num_classes: int | None = None, seed: int = 0) -> dict:
    """Time `runs` repetitions (after `warmup` untimed ones) of one forward pass on a random batch.

    train_step=True times a training step instead: forward, `model.loss` on random labels (or the mean
    logit for models without `loss`), backward and an SGD update. The caller's model is not modified
    (a copy is moved to `device`). Returns a dict of plain numbers and strings; times in milliseconds.
    """
    if runs < 1 or warmup < 0 or batch < 1:
        raise ConfigError(f"benchmark needs runs >= 1, warmup >= 0 and batch >= 1 (got runs={runs}, "
                          f"warmup={warmup}, batch={batch})")
    if amp not in AMP_DTYPES:
        raise ConfigError(f"--amp must be one of {', '.join(AMP_DTYPES)}, got '{amp}'")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but torch sees no CUDA device; use --device cpu")
    previous_threads = torch.get_num_threads()
    if threads:
        torch.set_num_threads(threads)
    try:
        return _run(model, batch, size, device, runs, warmup, train_step, amp, num_classes, seed)
    finally:
        torch.set_num_threads(previous_threads)


def _run(model, batch, size, device, runs, warmup, train_step, amp, num_classes, seed) -> dict:
    model = copy.deepcopy(model)
    if not train_step and hasattr(model, "strip_training_modules"):
        model.strip_training_modules()
    model.to(device).train(train_step)
    generator = torch.Generator().manual_seed(seed)
    images = torch.randn(batch, 3, *size, generator=generator).to(device)
    k = num_classes or getattr(model, "num_classes", 2)
    labels = torch.randint(0, k, (batch, *size), generator=generator).to(device)
    autocast = (torch.autocast(device.type, dtype=AMP_DTYPES[amp]) if AMP_DTYPES[amp] is not None
                else contextlib.nullcontext())
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-6) if train_step else None

    def step():
        if train_step:
            optimizer.zero_grad(set_to_none=True)
            with autocast:
                if hasattr(model, "loss"):
                    loss = model.loss(images, labels)["loss"]
                else:
                    loss = model(images).float().mean()
            loss.backward()
            optimizer.step()
        else:
            with torch.inference_mode(), autocast:
                model(images)

    # The probe starts before the warm-up: allocators keep freed memory, so activation memory first
    # allocated during warm-up would not show as growth in the timed runs.
    probe = _MemoryProbe(device)
    probe.start()
    for _ in range(warmup):
        step()
    _sync(device)
    times = []
    for _ in range(runs):
        _sync(device)
        t0 = time.perf_counter()
        step()
        _sync(device)
        times.append((time.perf_counter() - t0) * 1000.0)
    peak_delta, peak_total = probe.stop()
    median = statistics.median(times)
    return {
        "mode": "train_step" if train_step else "inference",
        "batch": batch, "size": list(size), "device": str(device),
        "device_name": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "threads": torch.get_num_threads(), "amp": amp, "runs": runs, "warmup": warmup,
        "latency_ms_median": median,
        "latency_ms_min": min(times), "latency_ms_max": max(times),
        "latency_ms_p10": float(np.percentile(times, 10)), "latency_ms_p90": float(np.percentile(times, 90)),
        "latency_ms_std": statistics.pstdev(times),
        "throughput_img_s": batch / (median / 1000.0),
        "peak_memory_mb": peak_delta / 2 ** 20, "peak_memory_total_mb": peak_total / 2 ** 20,
        "memory_method": probe.method,
        "params": sum(p.numel() for n, p in model.named_parameters() if not n.startswith("aux.")),
        "torch": torch.__version__,
    }


def format_benchmark(stats: dict, name: str = "") -> str:
    """A few readable lines for the CLI."""
    h, w = stats["size"]
    return "\n".join([
        f"model       {name}  ({stats['params'] / 1e6:.2f} M params)",
        f"setting     {stats['mode']}, batch {stats['batch']}, {h}x{w}, device {stats['device']} "
        f"({stats['device_name']}), threads {stats['threads']}, amp {stats['amp']}, torch {stats['torch']}",
        f"latency     median {stats['latency_ms_median']:.2f} ms  (min {stats['latency_ms_min']:.2f}, "
        f"p10 {stats['latency_ms_p10']:.2f}, p90 {stats['latency_ms_p90']:.2f}, max {stats['latency_ms_max']:.2f}, "
        f"std {stats['latency_ms_std']:.2f}; {stats['runs']} runs after {stats['warmup']} warm-up)",
        f"throughput  {stats['throughput_img_s']:.2f} images/s",
        f"peak memory {stats['peak_memory_mb']:.1f} MiB  [{stats['memory_method']}]",
    ])
