"""Prediction at the input resolution: whole image, sliding window, multi-scale + flip.

Every model follows the same contract (`model(images) -> logits [B,K,h,w]` at its own output stride), so
every method shares this one predict path:

    scores = predict(model, images)                                    # whole image, logits
    scores = predict(model, images, mode="slide", crop=1024, stride=768)
    scores = predict(model, images, scales=(0.75, 1.0, 1.25), flip=True)  # softmax probabilities

Conventions follow the papers' code (mmseg): bilinear resizing with align_corners=False, slide windows
whose last window is flush with the border, overlapping window logits averaged, and test-time
augmentation that averages softmax probabilities over scales and flips.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F

from ..errors import ConfigError
from ..layers import resize

def _pair(value, name: str) -> tuple[int, int] | None:
    if value is None:
        return None
    if isinstance(value, int):
        value = (value, value)
    value = tuple(int(v) for v in value)
    if len(value) != 2 or min(value) <= 0:
        raise ConfigError(f"{name} must be a positive int or (height, width), got {value}")
    return value


def window_starts(length: int, crop: int, stride: int) -> list[int]:
    """Start offsets of windows of size `crop` every `stride` pixels, the last one flush with the border.

    For length 2048, crop 1024, stride 768: [0, 768, 1024]. A length up to `crop` gives one window at 0.
    """
    count = max(length - crop + stride - 1, 0) // stride + 1
    return [max(min(i * stride, length - crop), 0) for i in range(count)]


def slide_windows(height: int, width: int, crop, stride) -> list[tuple[int, int, int, int]]:
    """The (y0, x0, y1, x1) windows slide inference visits on a height x width image."""
    (ch, cw), (sh, sw) = _pair(crop, "crop"), _pair(stride, "stride")
    return [(y, x, min(y + ch, height), min(x + cw, width))
            for y in window_starts(height, ch, sh) for x in window_starts(width, cw, sw)]


def _whole(model, images: torch.Tensor, out_size) -> torch.Tensor:
    return resize(model(images).float(), out_size)


def _slide(model, images: torch.Tensor, crop: tuple[int, int], stride: tuple[int, int]) -> torch.Tensor:
    """Logits at the input resolution, averaged over overlapping windows."""
    b, _, h, w = images.shape
    ch, cw = crop
    logits = counts = None
    for y0, x0, y1, x1 in slide_windows(h, w, crop, stride):
        window = images[:, :, y0:y1, x0:x1]
        wh, ww = window.shape[-2:]
        if wh < ch or ww < cw:  # the image is smaller than the crop: pad bottom/right, drop the padding after
            window = F.pad(window, (0, cw - ww, 0, ch - wh))
        out = resize(model(window).float(), (ch, cw))[:, :, :wh, :ww]
        if logits is None:
            logits = images.new_zeros((b, out.shape[1], h, w), dtype=torch.float32)
            counts = images.new_zeros((1, 1, h, w), dtype=torch.float32)
        logits[:, :, y0:y1, x0:x1] += out
        counts[:, :, y0:y1, x0:x1] += 1
    return logits / counts


@torch.no_grad()
def predict(model: torch.nn.Module, images: torch.Tensor, mode: str = "whole", crop=None, stride=None,
            scales: Sequence[float] = (1.0,), flip: bool = False, out_size=None) -> torch.Tensor:
    """Per-pixel class scores [B,K,H,W] at the input resolution (or `out_size`).

    images: float [B,3,H,W], normalised as the model expects. mode: "whole" (one forward pass, logits
    upsampled) or "slide" (windows of `crop` every `stride` pixels, int or (h, w); stride defaults to 2/3 of
    the crop). With one scale and no flip the result is logits; with several scales or flip it is softmax
    probabilities averaged over every scale and flip (images rescaled bilinearly per scale).
    The caller puts the model in eval mode.
    """
    if images.dim() != 4 or images.shape[1] != 3:
        raise ConfigError(f"predict expects images of shape [B,3,H,W], got {tuple(images.shape)}")
    if mode not in ("whole", "slide"):
        raise ConfigError(f"unknown inference mode '{mode}': use 'whole' or 'slide'")
    height, width = images.shape[-2:]
    out_size = _pair(out_size, "out_size") or (height, width)
    if mode == "slide":
        crop = _pair(crop, "crop")
        if crop is None:
            raise ConfigError("slide inference needs a crop size (e.g. --crop 512 512, or eval.crop in the config)")
        stride = _pair(stride, "stride") or (max(crop[0] * 2 // 3, 1), max(crop[1] * 2 // 3, 1))
        if stride[0] > crop[0] or stride[1] > crop[1]:
            raise ConfigError(f"slide stride {stride} is larger than the crop {crop}: pixels between windows "
                              "would never be predicted. Use a stride <= crop.")
    scales = [float(s) for s in scales] or [1.0]
    if min(scales) <= 0:
        raise ConfigError(f"scales must be positive, got {scales}")

    def run(x: torch.Tensor, size) -> torch.Tensor:
        if mode == "whole":
            return _whole(model, x, size)
        return resize(_slide(model, x, crop, stride), size)

    if len(scales) == 1 and scales[0] == 1.0 and not flip:
        return run(images, out_size)

    probs = None
    flips = (False, True) if flip else (False,)
    for scale in scales:
        size = (max(int(height * scale + 0.5), 1), max(int(width * scale + 0.5), 1))
        scaled = resize(images, size)
        for flipped in flips:
            x = scaled.flip(-1) if flipped else scaled
            out = run(x, out_size)
            out = out.flip(-1) if flipped else out
            p = out.softmax(dim=1)
            probs = p if probs is None else probs + p
    return probs / (len(scales) * len(flips))
