"""Peak memory of one inference or training step, in a fresh process (called by common.peak_memory).

    python benchmarks/peak_memory.py '{"model": "segformer_b0", "impl": "ours", "mode": "train", "batch": 2}'

Prints one JSON line: {"step_peak": bytes, "process_peak": bytes} or {} where it cannot be measured.
Method: build the pair (both models are built in every run, so the baseline is identical for ours and the
reference), drop the other one, run one warm-up step (caches, optimizer state), then reset the kernel's
RSS high-water mark (write 5 to /proc/self/clear_refs), run the measured step and read VmHWM. step_peak is
VmHWM minus the RSS just before the step; process_peak is VmHWM itself. On CUDA, torch.cuda's peak
allocator statistics are used instead.
"""
from __future__ import annotations

import gc
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from cases import batch, make_optimizer, make_pair, train_step  # noqa: E402


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


def main(spec: dict) -> dict:
    torch.set_num_threads(spec.get("threads", 2))
    device = torch.device(spec.get("device", "cpu"))
    pair = make_pair(spec["model"], device)
    ours = spec["impl"] == "ours"
    model = pair.ours if ours else pair.ref
    if ours:
        pair.ref = None
    else:
        pair.ours = None
    gc.collect()
    x, y = batch(pair, spec["batch"], device)
    if spec["mode"] == "train":
        model.train()
        opt = make_optimizer(model)
        loss_fn = pair.ours_loss if ours else pair.ref_loss

        def step():
            train_step(model, loss_fn, opt, x, y)
    else:
        model.eval()
        logits = pair.ours_logits if ours else pair.ref_logits

        def step():
            with torch.inference_mode():
                logits(x)
    step()  # warm-up
    gc.collect()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
        step()
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated()
        return {"step_peak": peak - before, "process_peak": peak}
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        return {}
    before = _status_kib("VmRSS")
    step()
    peak = _status_kib("VmHWM")
    return {"step_peak": (peak - before) * 1024, "process_peak": peak * 1024}


if __name__ == "__main__":
    print(json.dumps(main(json.loads(sys.argv[1]))))
