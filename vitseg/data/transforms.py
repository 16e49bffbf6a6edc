"""Training and test pipelines on numpy arrays (no torchvision, no OpenCV; torch only for bilinear resizing).

The steps follow mmseg's defaults, which all five reproduced papers use (see specs/datasets.md §1.4):
keep-ratio random rescale, random crop with `cat_max_ratio`, horizontal flip, photometric distortion,
normalise, pad. Images are uint8 HxWx3 RGB, labels uint8 HxW (255 = ignore). Every random draw comes from
the `rng` argument, so a sample is a pure function of (image, label, rng seed): exact resume and DDP rely
on it. Resizing matches OpenCV's conventions (bilinear with half-pixel centres and no antialiasing for
images; nearest with `floor(dst * in / out)` for labels, so no new label value can appear).
"""
from __future__ import annotations

from typing import Optional, Sequence, Tuple

import numpy as np
import torch

IMAGENET_MEAN = (123.675, 116.28, 103.53)
IMAGENET_STD = (58.395, 57.12, 57.375)
IGNORE_INDEX = 255


# ----------------------------------------------------------------------------------------------- resizing
def resize_image(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a uint8 HxWxC image to `size` = (h, w) (half-pixel centres, no antialiasing)."""
    out_h, out_w = int(size[0]), int(size[1])
    if (out_h, out_w) == tuple(image.shape[:2]):
        return image
    x = torch.from_numpy(np.ascontiguousarray(image)).permute(2, 0, 1)[None].float()
    y = torch.nn.functional.interpolate(x, size=(out_h, out_w), mode="bilinear", align_corners=False)
    return y[0].permute(1, 2, 0).round_().clamp_(0, 255).to(torch.uint8).numpy()


def resize_label(label: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize of an HxW label map (OpenCV INTER_NEAREST): only existing values survive."""
    out_h, out_w = int(size[0]), int(size[1])
    in_h, in_w = label.shape[:2]
    if (out_h, out_w) == (in_h, in_w):
        return label
    ys = np.minimum(np.floor(np.arange(out_h) * (in_h / out_h)).astype(np.int64), in_h - 1)
    xs = np.minimum(np.floor(np.arange(out_w) * (in_w / out_w)).astype(np.int64), in_w - 1)
    return label[ys[:, None], xs[None, :]]


def rescale_size(hw: Tuple[int, int], scale: Tuple[float, float]) -> Tuple[int, int]:
    """Output (h, w) when rescaling with kept aspect ratio into `scale` = (long, short) edge limits (mmcv rule)."""
    h, w = hw
    long_edge, short_edge = max(scale), min(scale)
    factor = min(long_edge / max(h, w), short_edge / min(h, w))
    return int(h * factor + 0.5), int(w * factor + 0.5)


# ---------------------------------------------------------------------------------------------- photometric
def rgb_to_hsv(image: np.ndarray) -> np.ndarray:
    """uint8 RGB -> uint8 HSV on OpenCV's scale (H in 0..179, S and V in 0..255)."""
    rgb = image.astype(np.float32)
    v = rgb.max(axis=2)
    delta = v - rgb.min(axis=2)
    s = np.where(v > 0, delta * 255.0 / np.maximum(v, 1e-6), 0.0)
    r, g, b = rgb[..., 0], rgb[..., 1], rgb[..., 2]
    safe = np.maximum(delta, 1e-6)
    h = np.where(v == r, 60.0 * (g - b) / safe,
                 np.where(v == g, 120.0 + 60.0 * (b - r) / safe, 240.0 + 60.0 * (r - g) / safe))
    h = np.where(delta > 0, np.mod(h, 360.0), 0.0)
    hsv = np.stack([np.rint(h / 2.0) % 180, np.rint(s), v], axis=2)
    return np.clip(hsv, 0, 255).astype(np.uint8)


def hsv_to_rgb(hsv: np.ndarray) -> np.ndarray:
    """Inverse of `rgb_to_hsv` (OpenCV's 8-bit HSV scale back to uint8 RGB)."""
    h = hsv[..., 0:1].astype(np.float32) * (2.0 / 60.0)       # hue in sextants, 0..6
    s = hsv[..., 1:2].astype(np.float32) * (1.0 / 255.0)
    v = hsv[..., 2:3].astype(np.float32)
    k = np.mod(np.array([5.0, 3.0, 1.0], np.float32) + h, 6.0)  # one offset per output channel R, G, B
    ramp = np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return np.clip(np.rint(v - v * s * ramp), 0, 255).astype(np.uint8)


def _affine_uint8(x: np.ndarray, alpha: float = 1.0, beta: float = 0.0) -> np.ndarray:
    # mmseg clips and truncates back to uint8 after every step
    return np.clip(x.astype(np.float32) * alpha + beta, 0, 255).astype(np.uint8)


def photometric_distortion(image: np.ndarray, rng: np.random.Generator, brightness_delta: int = 32,
                           contrast_range=(0.5, 1.5), saturation_range=(0.5, 1.5), hue_delta: int = 18) -> np.ndarray:
    """mmseg PhotoMetricDistortion: brightness, then contrast either first or last, saturation, hue.

    Each step happens with probability 0.5; values are clipped to 0..255 after each step.
    """
    img = image
    if rng.integers(2):
        img = _affine_uint8(img, beta=rng.uniform(-brightness_delta, brightness_delta))
    contrast_first = bool(rng.integers(2))

    def contrast(x):
        if rng.integers(2):
            return _affine_uint8(x, alpha=rng.uniform(*contrast_range))
        return x

    if contrast_first:
        img = contrast(img)
    if rng.integers(2):
        hsv = rgb_to_hsv(img)
        hsv[..., 1] = _affine_uint8(hsv[..., 1], alpha=rng.uniform(*saturation_range))
        img = hsv_to_rgb(hsv)
    if rng.integers(2):
        hsv = rgb_to_hsv(img)
        hsv[..., 0] = (hsv[..., 0].astype(np.int64) + rng.integers(-hue_delta, hue_delta)) % 180
        img = hsv_to_rgb(hsv)
    if not contrast_first:
        img = contrast(img)
    return img


# --------------------------------------------------------------------------------------------- crop, tensors
def crop_window(hw: Tuple[int, int], crop: Tuple[int, int], rng: np.random.Generator) -> Tuple[int, int, int, int]:
    """A uniformly random (top, left, bottom, right) window; covers a whole dimension smaller than the crop."""
    margin_h, margin_w = max(hw[0] - crop[0], 0), max(hw[1] - crop[1], 0)
    top, left = int(rng.integers(margin_h + 1)), int(rng.integers(margin_w + 1))
    return top, left, top + min(crop[0], hw[0]), left + min(crop[1], hw[1])


def random_crop(image: np.ndarray, label: np.ndarray, crop: Tuple[int, int], rng: np.random.Generator,
                cat_max_ratio: float = 0.75, ignore_index: int = IGNORE_INDEX, tries: int = 10):
    """mmseg RandomCrop: redraw the window (up to `tries` times) while a single class covers
    >= cat_max_ratio of its non-ignored pixels or it holds fewer than two classes; the last draw is kept."""
    box = crop_window(label.shape, crop, rng)
    if cat_max_ratio < 1.0:
        for _ in range(tries):
            t, l, b, r = box
            counts = np.bincount(label[t:b, l:r].ravel(), minlength=256)
            counts[ignore_index] = 0
            counts = counts[counts > 0]
            if len(counts) > 1 and counts.max() / counts.sum() < cat_max_ratio:
                break
            box = crop_window(label.shape, crop, rng)
    t, l, b, r = box
    return image[t:b, l:r], label[t:b, l:r]


def normalize(image: np.ndarray, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """uint8 HxWx3 -> float32 3xHxW, (x - mean) / std per channel."""
    img = (image.astype(np.float32) - np.asarray(mean, np.float32)) / np.asarray(std, np.float32)
    return np.ascontiguousarray(img.transpose(2, 0, 1))


def _label_tensor(label: Optional[np.ndarray]) -> Optional[torch.Tensor]:
    if label is None:
        return None
    return torch.from_numpy(np.ascontiguousarray(label).astype(np.int64))


# ----------------------------------------------------------------------------------------------- pipelines
class TrainPipeline:
    """The standard training pipeline: rescale, crop, flip, photometric distortion, normalise, pad.

    Args:
        crop_size: (h, w) of the training crop (also the padded output size).
        scale: (long, short) base scale for the keep-ratio rescale, e.g. (2048, 512); None skips resizing.
        ratio_range: the base scale is multiplied by a ratio drawn uniformly from this range; None = ratio 1.
        cat_max_ratio: crop acceptance threshold (1.0 disables the check).
        flip_prob: probability of a horizontal flip.
        photometric: apply mmseg's PhotoMetricDistortion.
        mean, std: RGB normalisation statistics (0..255 scale).
        ignore_index: label value for ignored and padded pixels.
    Call as ``pipe(image, label, rng) -> (float [3,H,W], long [H,W])``.
    """

    def __init__(self, crop_size=(512, 512), scale=(2048, 512), ratio_range=(0.5, 2.0), cat_max_ratio=0.75,
                 flip_prob=0.5, photometric=True, mean=IMAGENET_MEAN, std=IMAGENET_STD, ignore_index=IGNORE_INDEX):
        self.crop_size = (int(crop_size[0]), int(crop_size[1]))
        self.scale = tuple(scale) if scale is not None else None
        self.ratio_range = tuple(ratio_range) if ratio_range is not None else None
        self.cat_max_ratio = float(cat_max_ratio)
        self.flip_prob = float(flip_prob)
        self.photometric = bool(photometric)
        self.mean, self.std = tuple(mean), tuple(std)
        self.ignore_index = int(ignore_index)

    def __repr__(self) -> str:
        return (f"TrainPipeline(crop_size={self.crop_size}, scale={self.scale}, ratio_range={self.ratio_range}, "
                f"cat_max_ratio={self.cat_max_ratio}, flip_prob={self.flip_prob}, photometric={self.photometric})")

    def __call__(self, image: np.ndarray, label: np.ndarray, rng: np.random.Generator):
        if self.scale is not None:
            ratio = rng.uniform(*self.ratio_range) if self.ratio_range is not None else 1.0
            target = (int(self.scale[0] * ratio), int(self.scale[1] * ratio))
            size = rescale_size(image.shape[:2], target)
            image, label = resize_image(image, size), resize_label(label, size)
        image, label = random_crop(image, label, self.crop_size, rng, self.cat_max_ratio, self.ignore_index)
        if rng.random() < self.flip_prob:
            image, label = image[:, ::-1], label[:, ::-1]
        if self.photometric:
            image = photometric_distortion(image, rng)
        img = normalize(image, self.mean, self.std)
        pad_h, pad_w = self.crop_size[0] - img.shape[1], self.crop_size[1] - img.shape[2]
        if pad_h > 0 or pad_w > 0:
            img = np.pad(img, ((0, 0), (0, max(pad_h, 0)), (0, max(pad_w, 0))), constant_values=0.0)
            label = np.pad(label, ((0, max(pad_h, 0)), (0, max(pad_w, 0))), constant_values=self.ignore_index)
        return torch.from_numpy(img), _label_tensor(label)


class TestPipeline:
    """Evaluation pipeline: optional keep-ratio resize to `scale` = (long, short), optional resize up to a
    multiple of `align_to` (SegFormer's AlignedResize), normalise. The label is returned untouched, at the
    original resolution, because metrics are computed there. ``pipe(image, label_or_None, rng=None)``.
    """

    __test__ = False  # not a pytest class despite the name

    def __init__(self, scale=None, align_to=None, mean=IMAGENET_MEAN, std=IMAGENET_STD):
        self.scale = tuple(scale) if scale is not None else None
        self.align_to = int(align_to) if align_to else None
        self.mean, self.std = tuple(mean), tuple(std)

    def __repr__(self) -> str:
        return f"TestPipeline(scale={self.scale}, align_to={self.align_to})"

    def output_size(self, hw: Tuple[int, int]) -> Tuple[int, int]:
        """The network input size for an original image of size `hw`."""
        h, w = hw
        if self.scale is not None:
            h, w = rescale_size((h, w), self.scale)
        if self.align_to:
            a = self.align_to
            h, w = int(np.ceil(h / a)) * a, int(np.ceil(w / a)) * a
        return h, w

    def __call__(self, image: np.ndarray, label: Optional[np.ndarray] = None,
                 rng: Optional[np.random.Generator] = None):
        image = resize_image(image, self.output_size(image.shape[:2]))
        return torch.from_numpy(normalize(image, self.mean, self.std)), _label_tensor(label)
