"""Losses used by more than one model family. A family's own reduction (per mask, per image, over the
batch) stays in its file; these are the element-wise or per-row building blocks.

- `cross_entropy`: pixel-wise softmax CE, logits upsampled bilinearly to the label size (every Segmentor).
- `sigmoid_focal_loss`: element-wise focal BCE, α optional (SegViT's ATM loss, VPNeXt's mask loss).
- `dice_loss`: soft dice over chosen dims with +eps smoothing (SegViT, VPNeXt).
- `bce_dice_loss`: BCE + dice on a binary map (the STDC-style boundary / detail supervision).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .layers import resize


def cross_entropy(logits: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255,
                  align_corners: bool = False, reduction: str = "mean") -> torch.Tensor:
    """Softmax CE of logits [B,K,h,w] against labels [B,H,W] after a bilinear resize of the logits to (H, W).

    reduction "mean" averages over labelled pixels; "all_pixels" divides the summed loss by every pixel,
    ignored ones included (mmseg ≤ 0.17's reduction, which RegProxy's released models were trained with).
    """
    logits = resize(logits, labels.shape[-2:], align_corners=align_corners)
    if reduction not in ("mean", "all_pixels"):
        raise ValueError(f"cross_entropy reduction must be 'mean' or 'all_pixels', got {reduction!r}")
    if not (labels != ignore_index).any():
        return logits.sum() * 0.0  # an all-ignore crop: zero loss that still has a graph
    if reduction == "all_pixels":
        return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index, reduction="sum") / labels.numel()
    return F.cross_entropy(logits.float(), labels, ignore_index=ignore_index)


def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float | None = None,
                       gamma: float = 2.0) -> torch.Tensor:
    """Element-wise focal loss (Lin et al.): α_t (1 − p_t)^γ · BCE(logits, targets), no reduction.
    α=None weighs positives and negatives alike (VPNeXt); DETR/SegViT use α=0.25."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    loss = ce * (1 - p_t) ** gamma
    if alpha is not None:
        loss = (alpha * targets + (1 - alpha) * (1 - targets)) * loss
    return loss


def dice_loss(logits: torch.Tensor, targets: torch.Tensor, dims=-1, eps: float = 1.0) -> torch.Tensor:
    """Soft dice loss 1 − (2Σ p·t + eps) / (Σ p + Σ t + eps) of sigmoid(logits), summed over `dims`
    (the other dims remain: per mask, per image, ...)."""
    prob = logits.sigmoid()
    inter = (prob * targets).sum(dims)
    return 1 - (2 * inter + eps) / (prob.sum(dims) + targets.sum(dims) + eps)


def bce_dice_loss(logits: torch.Tensor, targets: torch.Tensor, bce_weight: float = 1.0,
                  dice_weight: float = 1.0, eps: float = 1.0) -> torch.Tensor:
    """Binary map supervision [B,1,H,W]: mean BCE plus per-image dice averaged over the batch (STDC detail
    loss form). Logits are resized bilinearly to the target size first."""
    logits = resize(logits, targets.shape[-2:])
    bce = F.binary_cross_entropy_with_logits(logits.float(), targets.float())
    dice = dice_loss(logits.float().flatten(1), targets.float().flatten(1), dims=1, eps=eps).mean()
    return bce_weight * bce + dice_weight * dice
