"""The model contract shared by every method.

    logits = model(images)                 # [B,3,H,W] normalised -> [B,K,h,w] class scores (inference)
    losses = model.loss(images, labels)    # labels [B,H,W] long, 255 = ignore -> {"loss": total, ...}

A Segmentor is backbone (+ optional neck) + decode head:

    feats = model.forward_features(images)     # backbone maps, through `neck` when there is one
    logits = model.decode_head(feats)

Training-only modules (auxiliary heads, VPNeXt's VCR, RSSeg's boundary head, ...) live in `self.aux` (an
nn.ModuleDict) and are built only when `train_modules=True`; `strip_training_modules()` removes exactly
`aux`, leaving the inference graph. An auxiliary module with a `loss_weight` attribute is a plain auxiliary
head: it takes the whole feature list (choosing its own input, e.g. mmseg's `in_index`) and returns class
logits, and the base `loss` adds `loss_weight × CE` for it as `loss_<name>`. Families with other training
losses override `loss` and call `aux_losses` for the plain heads.
"""
from __future__ import annotations

import torch
from torch import nn

from ..errors import DataError
from ..losses import cross_entropy

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def check_labels(labels: torch.Tensor, num_classes: int, ignore_index: int = 255) -> None:
    """Stop with a clear message when labels hold values the model cannot predict."""
    bad = (labels >= num_classes) & (labels != ignore_index) | (labels < 0)
    if bad.any():
        values = sorted(set(labels[bad].unique().tolist()))[:10]
        raise DataError(f"labels contain values {values} but the model has {num_classes} classes "
                        f"(valid: 0..{num_classes - 1}, {ignore_index} = ignore). Check num_classes in the "
                        "config or the dataset's label remap (e.g. reduce_zero_label).")


class Segmentor(nn.Module):
    """Backbone (+ neck) + decode head. Subclasses set `backbone`, `decode_head` and optionally `neck`
    (here or by assignment) and may override `forward` / `loss` where the method needs more."""

    output_stride = 4

    def __init__(self, num_classes: int, ignore_index: int = 255, align_corners: bool = False,
                 train_modules: bool = True, backbone: nn.Module | None = None,
                 decode_head: nn.Module | None = None, neck: nn.Module | None = None, aux: dict | None = None):
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.align_corners = align_corners
        self.train_modules = train_modules
        if backbone is not None:
            self.backbone = backbone
        self.neck = neck
        if decode_head is not None:
            self.decode_head = decode_head
        self.aux = nn.ModuleDict(aux if train_modules and aux else {})
        # Dataset metadata carried with the weights (filled from checkpoints or configs).
        self.class_names: list[str] | None = None
        self.palette: list[tuple[int, int, int]] | None = None
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD

    def forward_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        feats = self.backbone(images)
        return feats if self.neck is None else self.neck(feats)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.forward_features(images))

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        check_labels(labels, self.num_classes, self.ignore_index)
        feats = self.forward_features(images)
        ce = cross_entropy(self.decode_head(feats), labels, self.ignore_index, self.align_corners)
        out = {"loss": ce, "loss_ce": ce.detach()}
        for name, value in self.aux_losses(feats, labels).items():
            out["loss"] = out["loss"] + value
            out[name] = value.detach()
        return out

    def aux_losses(self, feats: list[torch.Tensor], labels: torch.Tensor) -> dict[str, torch.Tensor]:
        """Weighted CE of every plain auxiliary head (an `aux` module with `loss_weight`), as `loss_<name>`."""
        return {f"loss_{name}": head.loss_weight * cross_entropy(head(feats), labels, self.ignore_index,
                                                                 self.align_corners)
                for name, head in self.aux.items() if hasattr(head, "loss_weight")}

    def strip_training_modules(self) -> "Segmentor":
        """Drop training-only modules; the result is the inference graph counted in the zoo table."""
        self.aux = nn.ModuleDict()
        self.train_modules = False
        return self

    def num_params(self) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("aux."))
