"""Common image corruptions (ImageNet-C / Cityscapes-C) in numpy and PIL, for robustness benchmarks.

    corrupted = corrupt(image_uint8_hwc, "motion_blur", severity=3, seed=0)   # -> uint8, same shape

Seventeen corruptions in four groups, each at severities 1-5 with the parameters of ImageNet-C
(Hendrycks & Dietterich 2019) as packaged for arbitrary image sizes by bethgelab/imagecorruptions, which
Cityscapes-C (Kamann & Rother) and SegFormer's Table 5 use. Only numpy and PIL are needed (no scipy,
scikit-image, OpenCV or ImageMagick), so the filters are written out here:

- Gaussian filters are separable 1-D convolutions (scikit-image's `truncate=4`, border 'nearest');
  the defocus disk is convolved with FFTs (OpenCV's reflect-101 border).
- glass_blur: the reference swaps pixels with a random neighbour one at a time in a Python loop (minutes on a
  2048x1024 image); here every pixel of an iteration reads a random neighbour at once (a gather). Same
  displacement range and iteration count, same look, not bit-identical.
- frost: the reference blends in one of six photographs of frosted glass that it ships. No download here:
  a frost texture is synthesised per seed (fractal value noise for the milky layer plus randomly branching,
  blurred ice-crystal strokes, tinted blue-white, mean brightness about that of the photographs) and blended
  with the reference weights.
- zoom/snow use PIL bilinear resizing where the reference uses scipy.ndimage.zoom (order 1).

Every corruption is deterministic for a given seed (all randomness comes from numpy's Generator).
"""
from __future__ import annotations

import io
import math
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFilter

from ..errors import ConfigError, DataError

# ---------------------------------------------------------------------------------------------------------
# Shared filters (float images, HxW or HxWxC)


def _gaussian_kernel1d(sigma: float, radius: int) -> np.ndarray:
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    k = np.exp(-0.5 * (x / sigma) ** 2)
    return k / k.sum()


def _convolve_axis(x: np.ndarray, kernel: np.ndarray, axis: int, pad_mode: str) -> np.ndarray:
    """1-D convolution along one axis with the given numpy pad mode; output has the input's shape."""
    r = len(kernel) // 2
    pad = [(0, 0)] * x.ndim
    pad[axis] = (r, r)
    padded = np.pad(x, pad, mode=pad_mode)
    out = np.zeros_like(x, dtype=np.float64)
    n = x.shape[axis]
    for i, w in enumerate(kernel):
        out += w * np.take(padded, np.arange(i, i + n), axis=axis)
    return out


def gaussian_filter(x: np.ndarray, sigma, truncate: float = 4.0, pad_mode: str = "edge") -> np.ndarray:
    """Separable Gaussian blur over the two spatial axes. sigma: scalar or (sigma_y, sigma_x)."""
    sy, sx = (sigma, sigma) if np.isscalar(sigma) else sigma
    for axis, s in ((0, sy), (1, sx)):
        if s > 0:
            radius = max(1, int(truncate * s + 0.5))
            x = _convolve_axis(x, _gaussian_kernel1d(s, radius), axis, pad_mode)
    return x


def _filter2d(x: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """2-D correlation of each channel with `kernel` (reflect-101 border), via FFT."""
    kh, kw = kernel.shape
    ry, rx = kh // 2, kw // 2
    pad = ((ry, ry), (rx, rx)) + ((0, 0),) * (x.ndim - 2)
    padded = np.pad(x, pad, mode="reflect")
    ph, pw = padded.shape[:2]
    spec_k = np.fft.rfft2(kernel[::-1, ::-1], s=(ph, pw))
    spec_x = np.fft.rfft2(padded, s=(ph, pw), axes=(0, 1))
    if x.ndim == 3:
        spec_k = spec_k[:, :, None]
    full = np.fft.irfft2(spec_x * spec_k, s=(ph, pw), axes=(0, 1))
    # Circular convolution with the kernel anchored at 0: output pixel (i, j) sits at (i + 2ry, j + 2rx).
    return full[2 * ry:2 * ry + x.shape[0], 2 * rx:2 * rx + x.shape[1]]


def _resize_float(x: np.ndarray, size_hw: tuple[int, int]) -> np.ndarray:
    """Bilinear resize of a float HxW or HxWxC array (PIL mode 'F', channel by channel)."""
    h, w = size_hw
    if x.ndim == 2:
        resized = Image.fromarray(x.astype(np.float32)).resize((w, h), Image.BILINEAR)
        return np.array(resized, dtype=np.float64)
    return np.stack([_resize_float(x[..., c], size_hw) for c in range(x.shape[2])], axis=-1)


def _clipped_zoom(x: np.ndarray, zoom: float) -> np.ndarray:
    """Zoom into the centre by `zoom` (>= 1) keeping the size: crop the centre, resize back up."""
    h, w = x.shape[:2]
    ch, cw = int(math.ceil(h / zoom)), int(math.ceil(w / zoom))
    top, left = (h - ch) // 2, (w - cw) // 2
    return _resize_float(x[top:top + ch, left:left + cw], (h, w))


def _shift(x: np.ndarray, dx: int, dy: int) -> np.ndarray:
    """out[y, x] = in[y - dy, x - dx], borders replicated."""
    h, w = x.shape[:2]
    rows = np.clip(np.arange(h) - dy, 0, h - 1)
    cols = np.clip(np.arange(w) - dx, 0, w - 1)
    return x[rows][:, cols]


def _motion_blur(x: np.ndarray, radius: int, sigma: float, angle: float) -> np.ndarray:
    """One-sided Gaussian-weighted streak along `angle` degrees (imagecorruptions' _motion_blur)."""
    width = radius * 2 + 1
    weights = np.exp(-0.5 * (np.arange(width) / sigma) ** 2)
    weights /= weights.sum()
    py, px = width * math.sin(math.radians(angle)), width * math.cos(math.radians(angle))
    hyp = math.hypot(py, px)
    out = np.zeros_like(x, dtype=np.float64)
    for i in range(width):
        dy = -math.ceil(i * py / hyp - 0.5)
        dx = -math.ceil(i * px / hyp - 0.5)
        if abs(dy) >= x.shape[0] or abs(dx) >= x.shape[1]:
            break
        out += weights[i] * _shift(x, dx, dy)
    return out


def _reflect_coords(c: np.ndarray, n: int) -> np.ndarray:
    """Mirror coordinates into [0, n-1] (scipy 'reflect': d c b a | a b c d)."""
    period = 2 * n
    c = np.mod(c + 0.5, period) - 0.5
    return np.where(c > n - 0.5, period - 1 - c, c)


def _bilinear_sample(x: np.ndarray, ys: np.ndarray, xs: np.ndarray) -> np.ndarray:
    """Sample HxWxC image x at float coordinates (HxW each), bilinear, reflect border."""
    h, w = x.shape[:2]
    ys = np.clip(_reflect_coords(ys, h), 0, h - 1)
    xs = np.clip(_reflect_coords(xs, w), 0, w - 1)
    y0, x0 = np.floor(ys).astype(np.int64), np.floor(xs).astype(np.int64)
    y1, x1 = np.minimum(y0 + 1, h - 1), np.minimum(x0 + 1, w - 1)
    fy, fx = (ys - y0)[..., None], (xs - x0)[..., None]
    top = x[y0, x0] * (1 - fx) + x[y0, x1] * fx
    bottom = x[y1, x0] * (1 - fx) + x[y1, x1] * fx
    return top * (1 - fy) + bottom * fy


def _gray(x: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma (OpenCV's RGB2GRAY)."""
    return x[..., 0] * 0.299 + x[..., 1] * 0.587 + x[..., 2] * 0.114


# ---------------------------------------------------------------------------------------------------------
# Corruptions. Each takes a float64 RGB image in [0, 255] (HxWx3), a severity 1..5 and a Generator, and
# returns a float image in [0, 255] (clipping and rounding happen in `corrupt`).

def gaussian_noise(x, severity, rng):
    c = [0.08, 0.12, 0.18, 0.26, 0.38][severity - 1]
    return (x / 255 + rng.normal(size=x.shape, scale=c)) * 255


def shot_noise(x, severity, rng):
    c = [60, 25, 12, 5, 3][severity - 1]
    return rng.poisson(np.clip(x / 255, 0, 1) * c) / c * 255


def impulse_noise(x, severity, rng):
    # Salt and pepper on every array element (as scikit-image's random_noise, salt_vs_pepper=0.5).
    amount = [0.03, 0.06, 0.09, 0.17, 0.27][severity - 1]
    flipped = rng.random(x.shape) < amount
    salted = rng.random(x.shape) < 0.5
    out = x.copy()
    out[flipped & salted] = 255
    out[flipped & ~salted] = 0
    return out


def speckle_noise(x, severity, rng):
    c = [0.15, 0.2, 0.35, 0.45, 0.6][severity - 1]
    x = x / 255
    return (x + x * rng.normal(size=x.shape, scale=c)) * 255


def gaussian_blur(x, severity, rng):
    sigma = [1, 2, 3, 4, 6][severity - 1]
    return gaussian_filter(x, sigma)


def glass_blur(x, severity, rng):
    sigma, max_delta, iterations = [(0.7, 1, 2), (0.9, 2, 1), (1, 2, 3), (1.1, 3, 2), (1.5, 4, 2)][severity - 1]
    x = np.round(np.clip(gaussian_filter(x, sigma), 0, 255))
    h, w = x.shape[:2]
    for _ in range(iterations):
        # Interior pixels take the value of a random neighbour within [-max_delta, max_delta).
        ys, xs = np.mgrid[max_delta:h - max_delta, max_delta:w - max_delta]
        dy = rng.integers(-max_delta, max_delta, size=ys.shape)
        dx = rng.integers(-max_delta, max_delta, size=xs.shape)
        x = x.copy()
        x[ys, xs] = x[ys + dy, xs + dx]
    return gaussian_filter(x, sigma)


def _disk(radius: float, alias_blur: float) -> np.ndarray:
    if radius <= 8:
        coords, ksize = np.arange(-8, 9), 3
    else:
        coords, ksize = np.arange(-radius, radius + 1), 5
    yy, xx = np.meshgrid(coords, coords, indexing="ij")
    disk = (xx ** 2 + yy ** 2 <= radius ** 2).astype(np.float64)
    disk /= disk.sum()
    # Anti-alias the disk's edge with a small Gaussian (reflect-101 border, as OpenCV's GaussianBlur).
    g = _gaussian_kernel1d(alias_blur, ksize // 2)
    disk = _convolve_axis(_convolve_axis(disk, g, 0, "reflect"), g, 1, "reflect")
    return disk


def defocus_blur(x, severity, rng):
    radius, alias_blur = [(3, 0.1), (4, 0.5), (6, 0.5), (8, 0.5), (10, 0.5)][severity - 1]
    return _filter2d(x, _disk(radius, alias_blur))


def motion_blur(x, severity, rng):
    radius, sigma = [(10, 3), (15, 5), (15, 8), (15, 12), (20, 15)][severity - 1]
    return _motion_blur(x, radius, sigma, rng.uniform(-45, 45))


def zoom_blur(x, severity, rng):
    zooms = [np.arange(1, 1.11, 0.01), np.arange(1, 1.16, 0.01), np.arange(1, 1.21, 0.02),
             np.arange(1, 1.26, 0.02), np.arange(1, 1.31, 0.03)][severity - 1]
    x = x / 255
    out = np.zeros_like(x)
    for z in zooms:
        out += _clipped_zoom(x, float(z))
    return (x + out) / (len(zooms) + 1) * 255


def snow(x, severity, rng):
    loc, scale, zoom, threshold, radius, sigma, blend = [
        (0.1, 0.3, 3, 0.5, 10, 4, 0.8), (0.2, 0.3, 2, 0.5, 12, 4, 0.7), (0.55, 0.3, 4, 0.9, 12, 8, 0.7),
        (0.55, 0.3, 4.5, 0.85, 12, 8, 0.65), (0.55, 0.3, 2.5, 0.85, 12, 12, 0.55)][severity - 1]
    x = x / 255
    flakes = rng.normal(size=x.shape[:2], loc=loc, scale=scale)
    flakes = _clipped_zoom(flakes, zoom)
    flakes[flakes < threshold] = 0
    flakes = np.clip(_motion_blur(flakes, radius, sigma, rng.uniform(-135, -45)), 0, 1)[..., None]
    # Whiten the scene a little, then add the flakes and their 180-degree rotation (denser snowfall).
    x = blend * x + (1 - blend) * np.maximum(x, _gray(x)[..., None] * 1.5 + 0.5)
    return np.clip(x + flakes + np.rot90(flakes, k=2), 0, 1) * 255


def frost_texture(height: int, width: int, rng: np.random.Generator) -> np.ndarray:
    """Synthetic frosted-glass texture, float HxWx3 in [0, 255] (stands in for ImageNet-C's frost photos).

    A milky layer of fractal value noise (octaves of upsampled random grids) plus ice crystals: random
    walks of short strokes that branch, drawn bright and blurred slightly; tinted blue-white.
    """
    milk = np.zeros((height, width))
    for octave in range(1, 7):
        cells = 2 ** octave
        grid = rng.random((cells + 1, cells + 1)).astype(np.float32)
        milk += _resize_float(grid, (height, width)) / 1.6 ** octave
    milk = (milk - milk.min()) / max(milk.max() - milk.min(), 1e-8)
    canvas = Image.new("L", (width, height), 0)
    draw = ImageDraw.Draw(canvas)
    scale = max(height, width)
    for _ in range(int(60 + 0.002 * height * width)):
        y, x = rng.uniform(0, height), rng.uniform(0, width)
        angle = rng.uniform(0, 2 * math.pi)
        for _ in range(int(rng.integers(3, 12))):
            length = rng.uniform(0.005, 0.03) * scale
            ny, nx = y + length * math.sin(angle), x + length * math.cos(angle)
            draw.line([(x, y), (nx, ny)], fill=int(rng.integers(60, 200)), width=1)
            if rng.random() < 0.35:  # a side branch
                b = angle + rng.choice([-1, 1]) * rng.uniform(0.6, 1.2)
                draw.line([(nx, ny), (nx + 0.5 * length * math.cos(b), ny + 0.5 * length * math.sin(b))],
                          fill=int(rng.integers(40, 160)), width=1)
            y, x, angle = ny, nx, angle + rng.normal(scale=0.4)
    crystals = np.asarray(canvas.filter(ImageFilter.GaussianBlur(0.7)), dtype=np.float64) / 255
    t = np.clip(0.2 + 0.5 * milk + 0.8 * crystals, 0, 1)
    tint = np.array([0.80, 0.88, 1.0])
    return t[..., None] * tint * 235


def frost(x, severity, rng):
    image_weight, frost_weight = [(1, 0.4), (0.8, 0.6), (0.7, 0.7), (0.65, 0.7), (0.6, 0.75)][severity - 1]
    return image_weight * x + frost_weight * frost_texture(x.shape[0], x.shape[1], rng)


def plasma_fractal(size: int, decay: float, rng: np.random.Generator) -> np.ndarray:
    """Diamond-square fractal on a periodic size x size grid (size a power of two), scaled to [0, 1]."""
    grid = np.zeros((size, size))
    step, amplitude = size, 100.0
    while step >= 2:
        half = step // 2
        corners = grid[0:size:step, 0:size:step]
        # Square step: the centre of each square is the mean of its four corners plus noise.
        centre_mean = (corners + np.roll(corners, -1, 0) + np.roll(corners, -1, 1)
                       + np.roll(np.roll(corners, -1, 0), -1, 1)) / 4
        grid[half:size:step, half:size:step] = centre_mean + rng.uniform(-amplitude, amplitude, corners.shape)
        # Diamond step: edge midpoints are the mean of their two corners and two neighbouring centres.
        centres = grid[half:size:step, half:size:step]
        left_right = (corners + np.roll(corners, -1, 1)) / 2          # midpoints on horizontal edges
        up_down = (centres + np.roll(centres, 1, 0)) / 2
        grid[0:size:step, half:size:step] = (left_right + up_down) / 2 + rng.uniform(-amplitude, amplitude,
                                                                                      corners.shape)
        top_bottom = (corners + np.roll(corners, -1, 0)) / 2          # midpoints on vertical edges
        side = (centres + np.roll(centres, 1, 1)) / 2
        grid[half:size:step, 0:size:step] = (top_bottom + side) / 2 + rng.uniform(-amplitude, amplitude,
                                                                                   corners.shape)
        step, amplitude = half, amplitude / decay
    grid -= grid.min()
    return grid / max(grid.max(), 1e-12)


def fog(x, severity, rng):
    strength, decay = [(1.5, 2), (2.0, 2), (2.5, 1.7), (2.5, 1.5), (3.0, 1.4)][severity - 1]
    x = x / 255
    peak = x.max()
    size = 2 ** int(math.ceil(math.log2(max(x.shape[:2]))))
    haze = strength * plasma_fractal(size, decay, rng)[:x.shape[0], :x.shape[1]]
    return (x + haze[..., None]) * peak / (peak + strength) * 255


def brightness(x, severity, rng):
    # +c on HSV value with hue and saturation kept: RGB scales by V'/V (black pixels become grey V').
    c = [0.1, 0.2, 0.3, 0.4, 0.5][severity - 1]
    x = x / 255
    v = x.max(axis=-1, keepdims=True)
    v_new = np.clip(v + c, 0, 1)
    scaled = np.where(v > 0, x * v_new / np.maximum(v, 1e-12), v_new)
    return scaled * 255


def contrast(x, severity, rng):
    c = [0.4, 0.3, 0.2, 0.1, 0.05][severity - 1]
    means = x.mean(axis=(0, 1), keepdims=True)
    return (x - means) * c + means


def elastic_transform(x, severity, rng):
    h, w = x.shape[:2]
    alpha = [250 * 0.05, 250 * 0.065, 250 * 0.085, 250 * 0.1, 250 * 0.12][severity - 1]
    sigma = (h * 0.01, w * 0.01)
    max_d = h * 0.005
    dy = gaussian_filter(rng.uniform(-max_d, max_d, size=(h, w)), sigma, truncate=3, pad_mode="symmetric") * alpha
    dx = gaussian_filter(rng.uniform(-max_d, max_d, size=(h, w)), sigma, truncate=3, pad_mode="symmetric") * alpha
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float64)
    return _bilinear_sample(x, ys + dy, xs + dx)


def pixelate(x, severity, rng):
    c = [0.6, 0.5, 0.4, 0.3, 0.25][severity - 1]
    h, w = x.shape[:2]
    img = Image.fromarray(np.clip(np.round(x), 0, 255).astype(np.uint8))
    small = img.resize((max(1, int(w * c)), max(1, int(h * c))), Image.BOX)
    return np.asarray(small.resize((w, h), Image.BOX), dtype=np.float64)


def jpeg_compression(x, severity, rng):
    quality = [25, 18, 15, 10, 7][severity - 1]
    buf = io.BytesIO()
    Image.fromarray(np.clip(np.round(x), 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    buf.seek(0)
    return np.asarray(Image.open(buf).convert("RGB"), dtype=np.float64)


# ---------------------------------------------------------------------------------------------------------

CORRUPTIONS: dict[str, Callable] = {
    "gaussian_noise": gaussian_noise, "shot_noise": shot_noise, "impulse_noise": impulse_noise,
    "speckle_noise": speckle_noise,
    "defocus_blur": defocus_blur, "glass_blur": glass_blur, "motion_blur": motion_blur, "zoom_blur": zoom_blur,
    "gaussian_blur": gaussian_blur,
    "snow": snow, "frost": frost, "fog": fog, "brightness": brightness,
    "contrast": contrast, "elastic_transform": elastic_transform, "pixelate": pixelate,
    "jpeg_compression": jpeg_compression,
}

GROUPS: dict[str, list[str]] = {
    "noise": ["gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"],
    "blur": ["defocus_blur", "glass_blur", "motion_blur", "zoom_blur", "gaussian_blur"],
    "weather": ["snow", "frost", "fog", "brightness"],
    "digital": ["contrast", "elastic_transform", "pixelate", "jpeg_compression"],
}

SEVERITIES = (1, 2, 3, 4, 5)


def list_corruptions() -> list[str]:
    """Corruption names, grouped (noise, blur, weather, digital)."""
    return [n for names in GROUPS.values() for n in names]


def check_corruption(name: str, severity: int) -> None:
    """Raise ConfigError for an unknown corruption name or a severity outside 1..5."""
    if name not in CORRUPTIONS:
        raise ConfigError(f"unknown corruption '{name}'. Known: {', '.join(list_corruptions())}")
    if severity not in SEVERITIES:
        raise ConfigError(f"corruption severity must be one of 1..5, got {severity!r}")


def corrupt(image: np.ndarray, name: str, severity: int = 3, seed: int | Sequence[int] = 0) -> np.ndarray:
    """Apply corruption `name` at `severity` (1-5) to an RGB uint8 image HxWx3; deterministic for `seed`
    (an int or a sequence of ints, as numpy.random.default_rng takes). Returns a new uint8 array of the same
    shape; the input is not modified.
    """
    check_corruption(name, severity)
    image = np.asarray(image)
    if image.dtype != np.uint8 or image.ndim != 3 or image.shape[2] != 3:
        raise DataError(f"corrupt() expects an RGB uint8 image of shape HxWx3, got {image.dtype} "
                        f"{tuple(image.shape)}; convert it first (e.g. PIL .convert('RGB')).")
    rng = np.random.default_rng(seed)
    out = CORRUPTIONS[name](image.astype(np.float64), severity, rng)
    return np.clip(np.round(out), 0, 255).astype(np.uint8)


# ---------------------------------------------------------------------------------------------------------
# Robustness benchmark (Cityscapes-C style): mIoU of one model on clean and corrupted copies of a dataset.

class Corruption:
    """`corrupt` bound to a name and severity, seeded per image: callable on a uint8 RGB image.

    The seed mixes the benchmark seed with a checksum of the image, so each image gets its own noise and
    the result does not depend on loading order or worker count.
    """

    def __init__(self, name: str, severity: int, seed: int = 0):
        check_corruption(name, severity)
        self.name, self.severity, self.seed = name, severity, seed

    def __call__(self, image: np.ndarray) -> np.ndarray:
        import zlib
        image = np.ascontiguousarray(image)
        return corrupt(image, self.name, self.severity, seed=[self.seed, zlib.crc32(image.tobytes())])

    def __repr__(self) -> str:
        return f"Corruption({self.name!r}, severity={self.severity}, seed={self.seed})"


class CorruptedPipeline:
    """Wraps a data pipeline `pipe(image_uint8, label, rng)`: corrupts the raw image, then runs `pipeline`
    (so the corruption acts on uint8 RGB pixels, before resizing and normalisation)."""

    def __init__(self, pipeline, corruption: Corruption | None):
        self.pipeline, self.corruption = pipeline, corruption

    def __call__(self, image, label, rng=None):
        if self.corruption is not None:
            image = self.corruption(image)
        return self.pipeline(image, label, rng)


def run_robustness(model: torch.nn.Module, make_dataset: Callable, corruptions=None, severities=SEVERITIES,
                   seed: int = 0, batch_size: int = 1, workers: int = 0, log=print, **eval_kwargs) -> dict:
    """mIoU of `model` on the clean dataset and on every corruption x severity.

    make_dataset(corruption) returns the evaluation dataset with `corruption` (a `Corruption`, or None for
    clean images) applied to raw uint8 images before the test pipeline (use `CorruptedPipeline`).
    eval_kwargs go to `vitseg.engine.evaluate.evaluate` (mode, crop, stride, scales, flip, device, ...).
    Returns {"clean": mIoU, "corruptions": {name: {"1": mIoU, ..., "mean": mean over severities}},
    "groups": {group: mean}, "mean_corrupted": mean over corruptions, "severities", "seed"}.
    """
    from torch.utils.data import DataLoader

    from ..engine.evaluate import evaluate

    corruptions = list(corruptions or list_corruptions())
    for name in corruptions:
        for s in severities:
            check_corruption(name, s)
    eval_kwargs.setdefault("progress", False)

    def score(corruption):
        loader = DataLoader(make_dataset(corruption), batch_size=batch_size, shuffle=False, num_workers=workers)
        return float(evaluate(model, loader, **eval_kwargs)["mIoU"])

    result = {"clean": score(None), "corruptions": {}, "severities": list(severities), "seed": seed}
    log(f"clean: mIoU {result['clean']:.2f}")
    for name in corruptions:
        per = {}
        for s in severities:
            per[str(s)] = score(Corruption(name, s, seed))
            log(f"{name} severity {s}: mIoU {per[str(s)]:.2f}")
        per["mean"] = float(np.mean([per[str(s)] for s in severities]))
        result["corruptions"][name] = per
    result["groups"] = {g: float(np.mean([result["corruptions"][n]["mean"] for n in names]))
                        for g, names in GROUPS.items() if all(n in result["corruptions"] for n in names)}
    result["mean_corrupted"] = float(np.mean([v["mean"] for v in result["corruptions"].values()]))
    return result


def format_robustness(result: dict) -> str:
    """Cityscapes-C style table: one row per corruption (grouped), mIoU per severity and the mean."""
    sev = [str(s) for s in result["severities"]]
    header = ["group", "corruption", *[f"sev {s}" for s in sev], "mean"]
    lines = [header, ["", "clean", *[""] * len(sev), f"{result['clean']:.2f}"]]
    for group, names in GROUPS.items():
        for name in names:
            if name in result["corruptions"]:
                per = result["corruptions"][name]
                lines.append([group, name, *[f"{per[s]:.2f}" for s in sev], f"{per['mean']:.2f}"])
        if group in result.get("groups", {}):
            lines.append([group, "(average)", *[""] * len(sev), f"{result['groups'][group]:.2f}"])
    lines.append(["", "all corruptions", *[""] * len(sev), f"{result['mean_corrupted']:.2f}"])
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


def save_robustness(result: dict, out_dir) -> tuple[Path, Path]:
    """Write robustness.json and robustness.csv (corruption, severity, mIoU; plus clean and means)."""
    import csv
    import json
    from ..weights import atomic_write
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, csv_path = out_dir / "robustness.json", out_dir / "robustness.csv"
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(json.dumps(result, indent=1) + "\n"))
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["group", "corruption", "severity", "mIoU"])
    writer.writerow(["", "clean", "", f"{result['clean']:.4f}"])
    group_of = {n: g for g, names in GROUPS.items() for n in names}
    for name, per in result["corruptions"].items():
        for key, value in per.items():
            writer.writerow([group_of[name], name, key, f"{value:.4f}"])
    atomic_write(csv_path, lambda tmp: Path(tmp).write_text(buf.getvalue()))
    return json_path, csv_path
