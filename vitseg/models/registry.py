"""Model and backbone registry: a name maps to a builder function (timm style), plus paper metadata.

A builder is a plain function `fn(num_classes=..., **overrides) -> nn.Module`. The module that defines it
is the model *family*; it may define `checkpoint_filter_fn(state_dict, model, source)` (converts foreign
checkpoint layouts to ours) and `config_from_checkpoint(source)` (settings a foreign checkpoint implies,
e.g. LayerNorm eps), which `vitseg.weights` calls.
"""
from __future__ import annotations

import fnmatch
import sys
from dataclasses import dataclass, field
from typing import Callable

from ..errors import ConfigError


@dataclass(frozen=True)
class PaperInfo:
    """Published figures for one model, with the setting they refer to."""

    params_m: float | None = None          # millions, inference graph
    gflops: float | None = None            # as printed in the paper (most papers: multiply-accumulates)
    input_size: tuple[int, int] = (512, 512)
    num_classes: int = 150                 # class count the params/FLOPs refer to
    miou: dict[str, float] = field(default_factory=dict)  # dataset -> single-scale mIoU (%)
    source: str = ""                       # "SegFormer Table 1", ...


@dataclass(frozen=True)
class Entry:
    name: str
    builder: Callable
    kind: str          # "model" or "backbone"
    paper: PaperInfo | None
    default_num_classes: int = 150

    @property
    def family(self):
        return sys.modules[self.builder.__module__]


_ENTRIES: dict[str, Entry] = {}


def _register(kind: str, paper: PaperInfo | None, name: str | None):
    def deco(fn):
        key = name or fn.__name__
        if key in _ENTRIES:
            raise RuntimeError(f"{kind} '{key}' registered twice")
        _ENTRIES[key] = Entry(key, fn, kind, paper)
        return fn
    return deco


def register_model(fn=None, *, paper: PaperInfo | None = None, name: str | None = None):
    """Decorator: `@register_model(paper=PaperInfo(...))` or bare `@register_model`."""
    if fn is not None:
        return _register("model", None, name)(fn)
    return _register("model", paper, name)


def register_backbone(fn=None, *, paper: PaperInfo | None = None, name: str | None = None):
    if fn is not None:
        return _register("backbone", None, name)(fn)
    return _register("backbone", paper, name)


def _ensure_loaded():
    from . import backbones, heads  # noqa: F401  (importing registers every family)


def get_entry(name: str, kind: str | None = None) -> Entry:
    _ensure_loaded()  # always: importing one family directly must not hide the others
    entry = _ENTRIES.get(name)
    if entry is None or (kind and entry.kind != kind):
        names = [n for n, e in _ENTRIES.items() if kind is None or e.kind == kind]
        close = [n for n in names if n.split("_")[0] == name.split("_")[0]] or names
        raise ConfigError(f"unknown {kind or 'model'} '{name}'. Known: {', '.join(sorted(close))}. "
                          "Run `vitseg list` for all names.")
    return entry


def list_models(pattern: str = "*", kind: str = "model") -> list[str]:
    _ensure_loaded()  # always: importing one family directly must not hide the others
    return sorted(n for n, e in _ENTRIES.items() if e.kind == kind and fnmatch.fnmatch(n, pattern))


def list_backbones(pattern: str = "*") -> list[str]:
    return list_models(pattern, kind="backbone")


def model_info(name: str) -> Entry:
    return get_entry(name)


def create_model(name: str, num_classes: int | None = None, pretrained=None, strict: bool = True,
                 **overrides):
    """Build a registered segmentation model.

    train_modules=False builds the inference graph only (auxiliary heads and other training-only modules
    absent), for any model.

    pretrained: a weight file or HF model folder; its layout is detected and converted. Settings the
    checkpoint implies (class count, LayerNorm eps, ...) are applied unless given explicitly.
    """
    entry = get_entry(name, "model")
    return _build(entry, pretrained, strict, dict(overrides, **({} if num_classes is None else
                                                                 {"num_classes": num_classes})))


def create_backbone(name: str, pretrained=None, strict: bool = True, **overrides):
    """Build a registered encoder. `backbone(images)` returns a list of [B,C,h,w] feature maps."""
    entry = get_entry(name, "backbone")
    return _build(entry, pretrained, strict, overrides)


def _build(entry: Entry, pretrained, strict: bool, overrides: dict):
    # Training-only modules are a Segmentor concern, not a builder argument: every model accepts the flag.
    train_modules = overrides.pop("train_modules", True)
    if entry.kind == "backbone" and not train_modules:
        raise ConfigError("train_modules applies to segmentation models, not to backbones")
    model = _construct(entry, pretrained, strict, overrides)
    if not train_modules:
        model.strip_training_modules()
    return model


def _construct(entry: Entry, pretrained, strict: bool, overrides: dict):
    if pretrained is None:
        model = entry.builder(**overrides)
        build_args = dict(overrides)
    else:
        from .. import weights
        source = weights.read_weights(pretrained)
        build_args = {**weights.config_from_checkpoint(entry, source), **overrides}
        model = entry.builder(**build_args)
        weights.load_into(model, source, entry, strict=strict)
    # Remembered so that save_weights() can rebuild exactly this model from its metadata.
    model.arch, model.build_args = entry.name, build_args
    return model
