"""Reading weight files of any supported format and loading them into a model strictly.

What this file knows: file formats (safetensors, torch pickles read with weights_only=True, numpy .npz,
HF model folders) and the strict key/shape check. What it does not know: key layouts. Each model family
converts foreign layouts in its own `checkpoint_filter_fn(state_dict, model, source)` (beside the model,
timm style) and may say which settings a checkpoint implies in `config_from_checkpoint(source)`.
"""
from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch

from .errors import CheckpointError
from .logging import logger

METADATA_KEY = "vitseg"
FORMAT_VERSION = "1"


@dataclass
class Source:
    """A weight file as read from disk, before any key conversion."""

    path: str
    state_dict: dict[str, torch.Tensor]
    config: dict | None = None       # HF config.json, when the source is an HF folder
    metadata: dict | None = None     # our own safetensors metadata (arch, class names, palette, ...)
    format: str = ""                 # "hf-folder" | "safetensors" | "torch" | "npz"


@dataclass
class Converted:
    """What a family's checkpoint_filter_fn returns when it needs to say more than the state dict."""

    state_dict: dict[str, torch.Tensor]
    allow_missing: tuple[str, ...] = ()   # key prefixes that may stay initialised (e.g. "decode_head.")
    layout: str = ""                      # name of the detected layout, for notices
    notes: list[str] = field(default_factory=list)


def _unwrap(obj, path: str) -> dict[str, torch.Tensor]:
    """Find the state dict inside common checkpoint wrappers (mmseg 'state_dict', timm/CSWin 'state_dict_ema',
    'model', DDP 'module.'), in the priority order of the official CSWin/BEiT segmentation loaders."""
    for key in ("state_dict", "state_dict_ema", "model", "module"):
        if isinstance(obj, dict) and key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not isinstance(obj, dict) or not obj:
        raise CheckpointError(f"{path}: no state dict found (expected a dict of tensors, or one under "
                              "'state_dict' / 'model')")
    tensors = {k: v for k, v in obj.items() if isinstance(v, torch.Tensor)}
    if not tensors:
        raise CheckpointError(f"{path}: the checkpoint holds no tensors")
    if all(k.startswith("module.") for k in tensors):
        tensors = {k[len("module."):]: v for k, v in tensors.items()}
    return tensors


def _read_safetensors(path: Path) -> tuple[dict, dict | None]:
    from safetensors import safe_open
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            sd = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types for corrupt headers
        raise CheckpointError(f"{path}: not a readable safetensors file ({e})") from e
    ours = json.loads(meta[METADATA_KEY]) if METADATA_KEY in meta else None
    return sd, ours


def _read_torch(path: Path) -> dict:
    try:
        obj = torch.load(str(path), map_location="cpu", weights_only=True)
    except Exception as e:
        raise CheckpointError(
            f"{path}: could not be read as a PyTorch checkpoint with weights_only=True ({type(e).__name__}: "
            f"{str(e).splitlines()[0][:300]}). If the file is a trusted pickle with custom objects, re-save its "
            "state_dict with torch.save(state_dict, path) first.") from e
    return _unwrap(obj, str(path))


def _read_npz(path: Path) -> dict:
    import numpy as np
    try:
        with np.load(str(path), allow_pickle=False) as z:
            return {k: torch.from_numpy(z[k].copy()) for k in z.files}
    except Exception as e:
        raise CheckpointError(f"{path}: not a readable .npz archive ({e})") from e


def read_weights(path) -> Source:
    """Read a weight file or an HF model folder (config.json + model.safetensors / pytorch_model.bin)."""
    if isinstance(path, Source):
        return path
    if isinstance(path, dict):  # an in-memory state dict
        return Source("<state_dict>", _unwrap(path, "<state_dict>"), format="dict")
    p = Path(path)
    if not p.exists():
        raise CheckpointError(f"{p}: weight file not found")
    if p.is_dir():
        config = None
        if (p / "config.json").exists():
            config = json.loads((p / "config.json").read_text())
        for name in ("model.safetensors", "pytorch_model.bin", "model.pth", "weights.safetensors"):
            if (p / name).exists():
                inner = read_weights(p / name)
                return Source(str(p), inner.state_dict, config, inner.metadata, "hf-folder")
        shards = sorted(p.glob("model-*.safetensors"))
        if shards:
            sd = {}
            for s in shards:
                sd.update(_read_safetensors(s)[0])
            return Source(str(p), sd, config, None, "hf-folder")
        raise CheckpointError(f"{p}: folder holds no model.safetensors or pytorch_model.bin")
    suffix = p.suffix.lower()
    if suffix == ".safetensors":
        sd, meta = _read_safetensors(p)
        return Source(str(p), sd, None, meta, "safetensors")
    if suffix == ".npz":
        return Source(str(p), _read_npz(p), format="npz")
    if suffix in (".pth", ".pt", ".bin", ".ckpt", ".tar"):
        obj = _read_torch(p)
        return Source(str(p), obj, format="torch")
    raise CheckpointError(f"{p}: unknown weight format '{suffix}' (expected .safetensors, .pth/.pt/.bin, "
                          ".npz or an HF model folder)")


def config_from_checkpoint(entry, source: Source) -> dict:
    """Builder arguments a checkpoint implies: our metadata first, then the family's own reading."""
    implied = {}
    if source.metadata:
        arch = source.metadata.get("arch")
        if arch and arch != entry.name:
            raise CheckpointError(f"{source.path}: holds weights of '{arch}', not '{entry.name}'. "
                                  f"Use create_model('{arch}', ...) or vitseg.load_checkpoint(path).")
        implied.update(source.metadata.get("build", {}))
    fn = getattr(entry.family, "config_from_checkpoint", None)
    if fn is not None and not source.metadata:
        implied.update(fn(source))
    return implied


def _format_keys(keys, limit: int = 20) -> str:
    keys = sorted(keys)
    more = f" ... and {len(keys) - limit} more" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def load_into(model: torch.nn.Module, source, entry=None, strict: bool = True) -> Converted:
    """Convert `source` to the model's layout and load it; unmatched keys are errors unless strict=False."""
    source = read_weights(source)
    sd = source.state_dict
    converted = Converted(sd, layout="vitseg")
    if not source.metadata:
        fn = getattr(entry.family, "checkpoint_filter_fn", None) if entry is not None else None
        if fn is not None:
            out = fn(sd, model, source)
            converted = out if isinstance(out, Converted) else Converted(out)
    own = model.state_dict()
    missing = [k for k in own if k not in converted.state_dict]
    allowed = [k for k in missing if k.startswith(tuple(converted.allow_missing))] if converted.allow_missing else []
    missing = [k for k in missing if k not in allowed]
    unexpected = [k for k in converted.state_dict if k not in own]
    mismatched = [f"{k}: checkpoint {tuple(v.shape)} vs model {tuple(own[k].shape)}"
                  for k, v in converted.state_dict.items() if k in own and v.shape != own[k].shape]
    problems = []
    if mismatched:
        problems.append("shape mismatch: " + "; ".join(mismatched[:10]))
    if missing:
        problems.append(f"missing keys ({len(missing)}): {_format_keys(missing)}")
    if unexpected:
        problems.append(f"unexpected keys ({len(unexpected)}): {_format_keys(unexpected)}")
    where = f"{source.path} (layout: {converted.layout or 'unknown'})"
    if problems and strict:
        hint = ("The class count differs: pass num_classes matching the checkpoint, or strict=False to "
                "re-initialise the classifier." if mismatched else
                "Is this checkpoint for this architecture? Pass strict=False to load what matches anyway.")
        raise CheckpointError(f"{where} does not match {type(model).__name__}:\n  " + "\n  ".join(problems)
                              + f"\n  {hint}")
    for p in problems:
        logger.warning(f"{where}: {p} (strict=False: left initialised / ignored)")
    bad = {m.split(":")[0] for m in mismatched}
    model.load_state_dict({k: v for k, v in converted.state_dict.items() if k in own and k not in bad},
                          strict=False)
    if allowed:
        logger.info(f"{where}: loaded the encoder; {len(allowed)} tensors under "
                    f"{', '.join(converted.allow_missing)} stay initialised")
    for note in converted.notes:
        logger.info(f"{where}: {note}")
    meta = source.metadata or {}
    if hasattr(model, "class_names"):
        names = meta.get("class_names")
        if names is None and source.config and "id2label" in source.config:
            id2label = source.config["id2label"]
            names = [id2label[str(i)] for i in range(len(id2label))] if all(
                str(i) in id2label for i in range(len(id2label))) else None
        if names is not None and len(names) == getattr(model, "num_classes", len(names)):
            model.class_names = list(names)
        if meta.get("palette") is not None:
            model.palette = [tuple(c) for c in meta["palette"]]
    return converted


def atomic_write(path, write_fn) -> None:
    """Write through a temp file in the same folder, fsync, then rename: a crash never leaves half a file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=str(path.parent))
    os.close(fd)
    try:
        write_fn(tmp)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_weights(model: torch.nn.Module, path, arch: str | None = None, build: dict | None = None,
                 **extra_meta) -> None:
    """Save inference weights as safetensors with our metadata (arch, build args, class names, palette).

    arch/build default to what create_model recorded on the model.
    """
    from safetensors.torch import save_file
    arch = arch or getattr(model, "arch", None)
    if not arch:
        raise ValueError("save_weights needs arch= for a model not built by vitseg.create_model")
    build = dict(build if build is not None else getattr(model, "build_args", {}))
    if getattr(model, "num_classes", None) is not None:
        build["num_classes"] = model.num_classes
    meta = {"format_version": FORMAT_VERSION, "arch": arch, "build": build,
            "num_classes": getattr(model, "num_classes", None),
            "class_names": getattr(model, "class_names", None),
            "palette": [list(c) for c in model.palette] if getattr(model, "palette", None) else None,
            "mean": list(getattr(model, "mean", ())), "std": list(getattr(model, "std", ())), **extra_meta}
    sd = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()}
    atomic_write(path, lambda tmp: save_file(sd, tmp, metadata={METADATA_KEY: json.dumps(meta)}))


def load_checkpoint(path, strict: bool = True, **overrides):
    """Build and load a model from a vitseg safetensors file (its metadata names the architecture)."""
    from .models.registry import create_model
    source = read_weights(path)
    arch = (source.metadata or {}).get("arch")
    if not arch:
        raise CheckpointError(f"{path}: has no vitseg metadata naming the architecture; use "
                              "vitseg.create_model(NAME, pretrained=path) or `vitseg convert` first.")
    return create_model(arch, pretrained=source, strict=strict, **overrides)
