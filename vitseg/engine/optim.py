"""AdamW with parameter groups, and the poly learning-rate schedule with linear warmup (per iteration).

Parameter groups are decided from parameter names, as in the papers' mmseg configs:
  * a name containing one of `head_names` (default "head": the whole decode head) gets lr x head_lr_mult;
  * a name containing one of `no_decay_names` (norms, position embeddings, tokens), and with
    `no_decay_1d` every 1-D tensor (biases, norm weights), gets weight decay 0;
  * with `layer_decay` set, encoder parameters get lr x decay^(num_layers - layer_id) (BEiT style), using
    `backbone.layer_id(name)` and `backbone.num_layers`, which backbones that support it provide.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from ..config import OptimConfig, TrainConfig
from ..errors import ConfigError


def param_groups(model: nn.Module, cfg: OptimConfig) -> list[dict]:
    """Group trainable parameters by (lr multiplier, weight decay); each group records its `lr_mult`."""
    backbone = getattr(model, "backbone", None)
    layered = cfg.layer_decay is not None
    if layered and not (hasattr(backbone, "layer_id") and hasattr(backbone, "num_layers")):
        raise ConfigError(f"optim.layer_decay is set but the backbone {type(backbone).__name__} does not provide "
                          "layer_id(name) / num_layers; set optim.layer_decay: null")
    groups: dict[tuple[float, float], dict] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        no_decay = any(s in name for s in cfg.no_decay_names) or (cfg.no_decay_1d and p.ndim <= 1)
        wd = 0.0 if no_decay else cfg.weight_decay
        mult = 1.0
        if any(s in name for s in cfg.head_names):
            mult = cfg.head_lr_mult
        elif layered and name.startswith("backbone."):
            depth = backbone.num_layers
            mult = cfg.layer_decay ** (depth - backbone.layer_id(name[len("backbone."):]))
        key = (mult, wd)
        if key not in groups:
            groups[key] = {"params": [], "names": [], "lr_mult": mult, "weight_decay": wd}
        groups[key]["params"].append(p)
        groups[key]["names"].append(name)
    return list(groups.values())


def build_optimizer(model: nn.Module, cfg: OptimConfig) -> torch.optim.AdamW:
    """AdamW over `param_groups`; each group's lr is base lr x its lr_mult (names kept for inspection)."""
    groups = param_groups(model, cfg)
    for g in groups:
        g["lr"] = cfg.lr * g["lr_mult"]
        g["initial_lr"] = g["lr"]
    return torch.optim.AdamW(groups, lr=cfg.lr, betas=tuple(cfg.betas), weight_decay=cfg.weight_decay)


def poly_warmup_factor(it: int, max_iters: int, warmup_iters: int = 0, warmup_ratio: float = 1e-6,
                       power: float = 1.0, min_ratio: float = 0.0) -> float:
    """LR factor at iteration `it` (0-based): poly decay from 1 to `min_ratio`, times a linear warmup that
    rises from `warmup_ratio` to 1 over `warmup_iters` (mmcv's linear warmup applied to the poly value)."""
    progress = min(it, max_iters) / max(max_iters, 1)
    factor = (1.0 - min_ratio) * (1.0 - progress) ** power + min_ratio
    if it < warmup_iters:
        k = (1.0 - it / warmup_iters) * (1.0 - warmup_ratio)
        factor *= 1.0 - k
    return factor


class PolyWarmupSchedule:
    """Sets every group's lr to initial_lr x poly_warmup_factor(iteration). Its state is the iteration."""

    def __init__(self, optimizer: torch.optim.Optimizer, cfg: TrainConfig, base_lr: float, max_iters: int):
        self.optimizer = optimizer
        self.max_iters = max_iters
        self.warmup_iters, self.warmup_ratio = cfg.warmup_iters, cfg.warmup_ratio
        self.power = cfg.poly_power
        self.min_ratio = cfg.min_lr / base_lr if base_lr > 0 else 0.0
        self.iteration = 0
        self.apply(0)

    def factor(self, it: int) -> float:
        return poly_warmup_factor(it, self.max_iters, self.warmup_iters, self.warmup_ratio, self.power,
                                  self.min_ratio)

    def apply(self, it: int) -> None:
        """Set the lr for iteration `it` (called before that iteration's optimiser step)."""
        self.iteration = it
        f = self.factor(it)
        for g in self.optimizer.param_groups:
            g["lr"] = g["initial_lr"] * f

    def state_dict(self) -> dict:
        return {"iteration": self.iteration, "max_iters": self.max_iters}

    def load_state_dict(self, state: dict) -> None:
        self.apply(int(state["iteration"]))

    @property
    def lr(self) -> float:
        """The base-group lr (multiplier 1) at the current iteration, for logging."""
        return self.optimizer.defaults["lr"] * self.factor(self.iteration)


def clip_grad_norm(params, max_norm: float | None) -> float:
    """Clip the global gradient norm when max_norm is set; return the norm before clipping."""
    params = [p for p in params if p.grad is not None]
    if not params:
        return 0.0
    if max_norm is None:
        norm = torch.linalg.vector_norm(torch.stack([torch.linalg.vector_norm(p.grad.detach().float())
                                                     for p in params]))
    else:
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    value = float(norm)
    return value if math.isfinite(value) else float("inf")
