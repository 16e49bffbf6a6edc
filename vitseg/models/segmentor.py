"""The model contract shared by every method.

    logits = model(images)                 # [B,3,H,W] normalised -> [B,K,h,w] class scores (inference)
    losses = model.loss(images, labels)    # labels [B,H,W] long, 255 = ignore -> {"loss": total, ...}

Training-only modules (auxiliary heads, VPNeXt's VCR, ...) live in `self.aux` (an nn.ModuleDict) and are
built only when `train_modules=True`; `strip_training_modules()` removes them before export.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import DataError
from ..layers import resize

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255,
                  align_corners: bool = False) -> torch.Tensor:
    """Pixel-wise softmax CE, logits upsampled bilinearly to the label size (mean over labelled pixels)."""
    logits = resize(logits, labels.shape[-2:], align_corners=align_corners)
    if not (labels != ignore_index).any():
        return logits.sum() * 0.0  # an all-ignore crop: zero loss that still has a graph
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)


def check_labels(labels: torch.Tensor, num_classes: int, ignore_index: int = 255) -> None:
    """Stop with a clear message when labels hold values the model cannot predict."""
    bad = (labels >= num_classes) & (labels != ignore_index) | (labels < 0)
    if bad.any():
        values = sorted(set(labels[bad].unique().tolist()))[:10]
        raise DataError(f"labels contain values {values} but the model has {num_classes} classes "
                        f"(valid: 0..{num_classes - 1}, {ignore_index} = ignore). Check num_classes in the "
                        "config or the dataset's label remap (e.g. reduce_zero_label).")


class Segmentor(nn.Module):
    """Encoder + decoder. Subclasses set `backbone` and `decode_head` and may override `loss`."""

    output_stride = 4

    def __init__(self, num_classes: int, ignore_index: int = 255, align_corners: bool = False,
                 train_modules: bool = True):
        super().__init__()
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.align_corners = align_corners
        self.train_modules = train_modules
        self.aux = nn.ModuleDict()
        # Dataset metadata carried with the weights (filled from checkpoints or configs).
        self.class_names: list[str] | None = None
        self.palette: list[tuple[int, int, int]] | None = None
        self.mean, self.std = IMAGENET_MEAN, IMAGENET_STD

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.decode_head(self.backbone(images))

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        check_labels(labels, self.num_classes, self.ignore_index)
        logits = self(images)
        ce = cross_entropy(logits, labels, self.ignore_index, self.align_corners)
        return {"loss": ce, "loss_ce": ce.detach()}

    def strip_training_modules(self) -> "Segmentor":
        """Drop training-only modules; the result is the inference graph counted in the zoo table."""
        self.aux = nn.ModuleDict()
        self.train_modules = False
        return self

    def num_params(self) -> int:
        return sum(p.numel() for n, p in self.named_parameters() if not n.startswith("aux."))
