"""Pictures of predictions and metrics: coloured masks, overlays with a class legend, image / ground truth /
prediction panels (numpy + PIL), and confusion-matrix / per-class IoU plots (matplotlib, an optional extra).

Masks are integer class maps [H,W]; 255 (ignore / unlabelled) is drawn black. Images are uint8 [H,W,3] RGB.
Masks are always saved as indexed PNGs (mode "P" with the palette), never JPEG: lossy compression would
change class ids.
"""
from __future__ import annotations

import colorsys
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import ConfigError, DataError

IGNORE_INDEX = 255
Palette = Sequence[Sequence[int]]


def default_palette(num_classes: int) -> list[tuple[int, int, int]]:
    """Distinct, deterministic colours for models without a palette: hues a golden-ratio step apart, with
    saturation and brightness cycling so that neighbouring ids stay distinguishable past a dozen classes."""
    colours = []
    for i in range(num_classes):
        hue = (i * 0.618033988749895) % 1.0
        saturation = (0.85, 0.6, 1.0)[i % 3]
        value = (0.95, 0.75, 0.55)[(i // 3) % 3]
        r, g, b = colorsys.hsv_to_rgb(hue, saturation, value)
        colours.append((round(r * 255), round(g * 255), round(b * 255)))
    return colours


def _numpy(array) -> np.ndarray:
    if isinstance(array, torch.Tensor):
        return array.detach().cpu().numpy()
    return np.asarray(array)


def _mask(mask) -> np.ndarray:
    mask = _numpy(mask)
    if mask.ndim != 2:
        raise DataError(f"a mask must be a 2-D class map [H,W], got shape {mask.shape}")
    if not np.issubdtype(mask.dtype, np.integer):
        raise DataError(f"a mask must hold integer class ids, got dtype {mask.dtype}")
    return mask


def _image(image) -> np.ndarray:
    image = _numpy(image)
    if image.ndim == 3 and image.shape[0] == 3 and image.shape[-1] != 3:
        image = image.transpose(1, 2, 0)  # CHW -> HWC
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise DataError(f"an image must be uint8 [H,W,3] RGB, got {image.dtype} {image.shape} (normalised "
                        "tensors: convert with visualize.denormalize(image, mean, std))")
    return image


def _lookup(palette: Palette | None, num_colours: int = 256) -> np.ndarray:
    """uint8 [256,3] colour table: the palette, default colours past its end, black for 255 (ignore)."""
    palette = [tuple(c) for c in palette] if palette else []
    table = np.array(palette + default_palette(num_colours)[len(palette):], dtype=np.int64)[:num_colours]
    if table.min() < 0 or table.max() > 255:
        raise DataError("palette colours must be (R, G, B) with values in 0..255")
    table = table.astype(np.uint8)
    table[IGNORE_INDEX] = 0
    return table


def denormalize(image, mean: Sequence[float], std: Sequence[float]) -> np.ndarray:
    """Normalised float [3,H,W] (0..255 mean/std, as the models take it) -> uint8 [H,W,3] for display."""
    x = _numpy(image).astype(np.float32)
    if x.ndim != 3 or x.shape[0] != 3:
        raise DataError(f"denormalize expects a [3,H,W] image, got shape {x.shape}")
    x = x * np.asarray(std, np.float32)[:, None, None] + np.asarray(mean, np.float32)[:, None, None]
    return np.clip(x + 0.5, 0, 255).astype(np.uint8).transpose(1, 2, 0)


def colorize(mask, palette: Palette | None = None) -> np.ndarray:
    """Class map [H,W] -> uint8 [H,W,3] colours; 255 and ids outside the table are black."""
    mask = _mask(mask)
    table = _lookup(palette)
    inside = (mask >= 0) & (mask < 256)
    out = table[np.where(inside, mask, IGNORE_INDEX)]
    return out.astype(np.uint8)


def save_indexed_png(mask, palette: Palette | None, path) -> Path:
    """Save a class map as an indexed PNG (mode "P", the palette embedded; 255 drawn black)."""
    from PIL import Image
    path = Path(path)
    if path.suffix.lower() != ".png":
        raise ConfigError(f"{path}: masks are saved as .png (lossy formats like JPEG would change class ids)")
    mask = _mask(mask)
    if mask.size and (mask.min() < 0 or mask.max() > 255):
        raise DataError(f"{path}: class ids must be in 0..255 for an indexed PNG, got {mask.min()}..{mask.max()}")
    image = Image.fromarray(mask.astype(np.uint8), mode="P")
    image.putpalette(_lookup(palette).reshape(-1).tolist())
    path.parent.mkdir(parents=True, exist_ok=True)
    image.save(path, format="PNG")
    return path


def overlay(image, mask, palette: Palette | None = None, alpha: float = 0.5) -> np.ndarray:
    """image * (1 - alpha) + colour * alpha; pixels labelled 255 keep the plain image."""
    image, mask = _image(image), _mask(mask)
    if image.shape[:2] != mask.shape:
        raise DataError(f"image size {image.shape[:2]} and mask size {mask.shape} differ")
    blended = image.astype(np.float32) * (1 - alpha) + colorize(mask, palette).astype(np.float32) * alpha
    blended = np.where((mask == IGNORE_INDEX)[..., None], image.astype(np.float32), blended)
    return np.clip(blended + 0.5, 0, 255).astype(np.uint8)


def _font():
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=12)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def _text_size(draw, text: str, font) -> tuple[int, int]:
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    return right - left, bottom - top


def legend(class_names: Sequence[str], palette: Palette | None, present_ids, width: int | None = None) -> np.ndarray:
    """A legend image (uint8 [H,W,3], white background) listing only the classes in `present_ids`.

    Entries are a colour swatch and the class name; with `width` they flow into rows that fit it (a strip
    to put under an image), otherwise they stack in one column.
    """
    from PIL import Image, ImageDraw
    table = _lookup(palette)
    ids = sorted({int(i) for i in _numpy(present_ids).reshape(-1).tolist()} - {IGNORE_INDEX})
    font = _font()
    measure = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    swatch, pad = 14, 6
    class_names = list(class_names or [])
    names = [class_names[i] if 0 <= i < len(class_names) else f"class {i}" for i in ids] or ["(no classes)"]
    entries = [(i, n, swatch + 4 + _text_size(measure, n, font)[0] + 2 * pad) for i, n in zip(ids or [-1], names)]
    line_h = max(swatch, _text_size(measure, "Ag", font)[1]) + pad
    rows, row, used = [], [], 0
    limit = width if width else 0
    for entry in entries:
        if row and (not limit or used + entry[2] > limit):
            rows.append(row)
            row, used = [], 0
        row.append(entry)
        used += entry[2]
    rows.append(row)
    canvas_w = width or max(sum(e[2] for e in r) for r in rows)
    canvas = Image.new("RGB", (max(canvas_w, 1), len(rows) * line_h + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for r, entries_in_row in enumerate(rows):
        x, y = pad, pad + r * line_h
        for class_id, name, entry_w in entries_in_row:
            if class_id >= 0:
                colour = tuple(int(c) for c in table[class_id])
                draw.rectangle([x, y, x + swatch - 1, y + swatch - 1], fill=colour, outline=(0, 0, 0))
            draw.text((x + swatch + 4, y), name, fill=(0, 0, 0), font=font)
            x += entry_w
    return np.asarray(canvas, dtype=np.uint8)


def _titled(panel: np.ndarray, title: str) -> np.ndarray:
    from PIL import Image, ImageDraw
    font = _font()
    bar = Image.new("RGB", (panel.shape[1], 18), "white")
    ImageDraw.Draw(bar).text((4, 2), title, fill=(0, 0, 0), font=font)
    return np.concatenate([np.asarray(bar, dtype=np.uint8), panel], axis=0)


def _stack(top: np.ndarray, bottom: np.ndarray) -> np.ndarray:
    """Put `bottom` under `top`, padding the narrower one with white on the right."""
    w = max(top.shape[1], bottom.shape[1])
    pad = [np.pad(a, ((0, 0), (0, w - a.shape[1]), (0, 0)), constant_values=255) for a in (top, bottom)]
    return np.concatenate(pad, axis=0)


def overlay_with_legend(image, mask, palette: Palette | None, class_names: Sequence[str],
                        alpha: float = 0.5) -> np.ndarray:
    """The overlay with a legend strip of the classes present underneath."""
    mask = _mask(mask)
    blended = overlay(image, mask, palette, alpha)
    return _stack(blended, legend(class_names, palette, np.unique(mask), width=blended.shape[1]))


def side_by_side(image, gt_mask, pred_mask, palette: Palette | None, class_names: Sequence[str]) -> np.ndarray:
    """One panel: image | ground truth | prediction, titled, with a legend of the classes in either mask.
    gt_mask may be None (image | prediction)."""
    image, pred_mask = _image(image), _mask(pred_mask)
    panels = [(image, "image")]
    present = [np.unique(pred_mask)]
    if gt_mask is not None:
        gt_mask = _mask(gt_mask)
        panels.append((colorize(gt_mask, palette), "ground truth"))
        present.append(np.unique(gt_mask))
    panels.append((colorize(pred_mask, palette), "prediction"))
    for panel, name in panels:
        if panel.shape[:2] != image.shape[:2]:
            raise DataError(f"{name} size {panel.shape[:2]} differs from the image size {image.shape[:2]}")
    gap = np.full((image.shape[0] + 18, 4, 3), 255, np.uint8)
    row = [gap] * (2 * len(panels) - 1)
    row[::2] = [_titled(p, t) for p, t in panels]
    strip = np.concatenate(row, axis=1)
    return _stack(strip, legend(class_names, palette, np.concatenate(present), width=strip.shape[1]))


def save_image(array: np.ndarray, path) -> Path:
    """Save a uint8 [H,W,3] picture as PNG."""
    from PIL import Image
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(_image(array)).save(path, format="PNG")
    return path


def save_prediction(out_dir, stem: str, image, mask, palette: Palette | None, class_names: Sequence[str],
                    gt_mask=None, alpha: float = 0.5) -> list[Path]:
    """Write one prediction the way `vitseg predict` and `vitseg eval --show-dir` do: <stem>.png (indexed
    mask), <stem>_overlay.png (overlay + legend) and, when gt_mask is given, <stem>_panel.png
    (image | ground truth | prediction). Returns the written paths."""
    out_dir = Path(out_dir)
    picture = overlay_with_legend(image, mask, palette, class_names, alpha)
    paths = [save_indexed_png(mask, palette, out_dir / f"{stem}.png"),
             save_image(picture, out_dir / f"{stem}_overlay.png")]
    if gt_mask is not None:
        panel = side_by_side(image, gt_mask, mask, palette, class_names)
        paths.append(save_image(panel, out_dir / f"{stem}_panel.png"))
    return paths


def _figure(width: float, height: float):
    try:
        from matplotlib.figure import Figure
    except ImportError as e:
        raise ConfigError("plots need matplotlib: pip install vitseg[viz]") from e
    return Figure(figsize=(width, height), layout="constrained")


def plot_confusion(confusion, class_names: Sequence[str], path, normalize: bool = True) -> Path:
    """Confusion-matrix heat map (rows = ground truth, columns = prediction), rows normalised to 1 by default."""
    matrix = _numpy(confusion).astype(np.float64)
    k = matrix.shape[0]
    if matrix.shape != (k, k) or len(class_names) != k:
        raise DataError(f"confusion matrix of shape {matrix.shape} does not match {len(class_names)} class names")
    if normalize:
        rows = matrix.sum(axis=1, keepdims=True)
        matrix = np.divide(matrix, rows, out=np.zeros_like(matrix), where=rows > 0)
    side = min(max(5.0, 0.28 * k + 2), 40.0)
    fig = _figure(side + 1.5, side)
    ax = fig.add_subplot()
    im = ax.imshow(matrix, cmap="viridis", interpolation="nearest", vmin=0, vmax=1 if normalize else None)
    fig.colorbar(im, ax=ax, shrink=0.8, label="fraction of ground-truth pixels" if normalize else "pixels")
    if k <= 60:
        ax.set_xticks(range(k), class_names, rotation=90, fontsize=7)
        ax.set_yticks(range(k), class_names, fontsize=7)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    ax.set_title("confusion matrix" + (" (row-normalised)" if normalize else ""))
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path


def plot_per_class_iou(metrics: dict, class_names: Sequence[str], path) -> Path:
    """Horizontal bars of per-class IoU (classes with undefined IoU are marked '-'), mIoU as a line."""
    iou = np.array([np.nan if v is None else v for v in metrics["IoU"]], dtype=np.float64)
    if len(class_names) != len(iou):
        raise DataError(f"{len(class_names)} class names for {len(iou)} per-class IoU values")
    k = len(iou)
    fig = _figure(8.0, min(max(3.0, 0.22 * k + 1.2), 40.0))
    ax = fig.add_subplot()
    y = np.arange(k)
    ax.barh(y, np.nan_to_num(iou), color="tab:blue")
    for i in np.flatnonzero(np.isnan(iou)):
        ax.text(1, i, "-", va="center", fontsize=7)
    ax.set_yticks(y, class_names, fontsize=7)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("IoU (%)")
    miou = metrics.get("mIoU")
    if miou is not None and not np.isnan(miou):
        ax.axvline(miou, color="tab:red", linestyle="--", label=f"mIoU {miou:.2f}")
        ax.legend(loc="lower right")
    ax.set_title("per-class IoU")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    return path
