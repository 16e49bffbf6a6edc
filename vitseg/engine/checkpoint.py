"""Training-state checkpoints: atomic writes, a `latest` pointer written last, pruning, exact resume.

A training state holds only tensors and plain containers (model, optimiser, schedule, scaler, EMA, the
python/numpy/torch/cuda RNG states, iteration, epoch, sampler position and the config), so it reads back
with `torch.load(weights_only=True)`. Inference weights go to `best.safetensors` via vitseg.weights.

    checkpoints/
      step_0000300.pt     training state after 300 iterations
      latest              text: the file name of the newest complete training state
      best.safetensors    weights + metadata (class names, palette, config); best.json: metric and step
"""
from __future__ import annotations

import json
import random
import re
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError
from ..weights import atomic_write, save_weights

LATEST = "latest"
_STEP_RE = re.compile(r"^step_(\d+)\.pt$")


# ------------------------------------------------------------------------------------------------ RNG state
def rng_state() -> dict:
    """Every RNG the loop touches, as plain containers (python ints, tensors)."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {"python": [version, list(internal), gauss],
             "numpy": [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)],
             "torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ------------------------------------------------------------------------------------------- state files
def save_state(path, state: dict) -> None:
    """torch.save through a temp file + rename: an interrupted write never replaces a good file."""
    atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_state(path) -> dict:
    """Read a training state with weights_only=True; unreadable files are a CheckpointError."""
    p = Path(path)
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint not found")
    try:
        state = torch.load(str(p), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(f"{p}: not a readable vitseg training checkpoint ({type(e).__name__}: "
                              f"{str(e).splitlines()[0][:200] if str(e) else ''}). Resume from an older "
                              "step_*.pt or start again without --resume.") from e
    if not isinstance(state, dict) or "model" not in state or "iteration" not in state:
        raise CheckpointError(f"{p}: not a vitseg training state (no 'model'/'iteration'); for weight files "
                              "use model.pretrained instead of --resume")
    return state


def check_num_classes(state_dict: dict, num_classes: int, path, key_hint: str = "model.num_classes") -> None:
    """Stop when a checkpoint was trained for another class count than the config asks for."""
    found = state_dict.get("num_classes")
    if found is not None and int(found) != int(num_classes):
        raise CheckpointError(f"{path}: checkpoint has {int(found)} classes but the config asks for "
                              f"{num_classes} ({key_hint}). Set {key_hint}={int(found)}, or start a new run in another "
                              "work dir (without --resume).")


class CheckpointManager:
    """Writes step_N.pt files into `directory`, then the `latest` pointer, then prunes to `keep_last`."""

    def __init__(self, directory, keep_last: int = 3):
        self.dir = Path(directory)
        self.keep_last = keep_last

    def path_for(self, iteration: int) -> Path:
        return self.dir / f"step_{iteration:07d}.pt"

    def save(self, iteration: int, state: dict) -> Path:
        path = self.path_for(iteration)
        save_state(path, state)
        atomic_write(self.dir / LATEST, lambda tmp: Path(tmp).write_text(path.name + "\n"))
        self.prune()
        return path

    def steps(self) -> list[Path]:
        found = [(int(m[1]), p) for p in self.dir.glob("step_*.pt") if (m := _STEP_RE.match(p.name))]
        return [p for _, p in sorted(found)]

    def prune(self) -> None:
        if self.keep_last and self.keep_last > 0:
            for old in self.steps()[:-self.keep_last]:
                old.unlink(missing_ok=True)

    def latest(self) -> Path | None:
        """The newest complete checkpoint: the one `latest` names (falling back to the highest step)."""
        pointer = self.dir / LATEST
        if pointer.is_file():
            candidate = self.dir / pointer.read_text().strip()
            if candidate.is_file():
                return candidate
        steps = self.steps()
        return steps[-1] if steps else None


def resolve_resume(resume: str | None, work_dir) -> Path | None:
    """--resume auto: the newest checkpoint in work_dir (None if there is none); a path: that file."""
    if not resume:
        return None
    if resume == "auto":
        return CheckpointManager(Path(work_dir) / "checkpoints").latest()
    p = Path(resume)
    if p.is_dir():
        found = CheckpointManager(p / "checkpoints" if (p / "checkpoints").is_dir() else p).latest()
        if found is None:
            raise CheckpointError(f"{p}: no step_*.pt checkpoint found to resume from")
        return found
    if not p.is_file():
        raise CheckpointError(f"{p}: checkpoint to resume from not found (use --resume auto to pick the "
                              "newest one in the work dir)")
    return p


def save_best(model, directory, metrics: dict, iteration: int, metric: str, config: dict,
              eval_settings: dict, name: str = "best") -> Path:
    """Inference weights (+ class names, palette, config in the metadata) and a JSON note beside them."""
    directory = Path(directory)
    path = directory / f"{name}.safetensors"
    save_weights(model, path, config=config, eval=eval_settings, iteration=iteration)
    note = {"metric": metric, "value": metrics.get(metric), "iteration": iteration, "eval": eval_settings,
            **{k: metrics[k] for k in ("aAcc", "mIoU", "mAcc") if k in metrics}}
    atomic_write(directory / f"{name}.json", lambda tmp: Path(tmp).write_text(json.dumps(note, indent=2)))
    return path
