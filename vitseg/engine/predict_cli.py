"""`vitseg predict CHECKPOINT INPUT... --out DIR`: coloured masks and overlays for image files or folders.

The checkpoint is a vitseg safetensors file; its metadata names the architecture, the classes, the palette
and the normalisation, so nothing else is needed. For every input image <stem>.<ext> it writes
    <stem>.png          indexed PNG (mode "P", the checkpoint's palette), same size as the input
    <stem>_overlay.png  image * 0.5 + colour * 0.5, with a legend strip of the classes present
"""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp", ".tif", ".tiff", ".webp")


def add_parser(sub) -> None:
    p = sub.add_parser(
        "predict", help="segment images with a trained checkpoint (indexed PNG masks + overlays)",
        description="Segment image files or folders with a vitseg checkpoint (.safetensors with metadata). "
        "Writes <stem>.png (indexed, the checkpoint's palette, same size as the input) and <stem>_overlay.png "
        "(overlay with a legend of the classes present) into --out.")
    p.add_argument("checkpoint", help="vitseg .safetensors weights (from training or `vitseg convert`)")
    p.add_argument("inputs", nargs="+", metavar="INPUT", help="image files and/or folders of images")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--mode", choices=("whole", "slide"), default="whole",
                   help="whole image or sliding window (default: whole)")
    p.add_argument("--crop", nargs=2, type=int, metavar=("H", "W"), default=None,
                   help="slide window size (default: the checkpoint's crop_size)")
    p.add_argument("--stride", nargs=2, type=int, metavar=("H", "W"), default=None,
                   help="slide window stride (default: 2/3 of the crop)")
    p.add_argument("--scales", nargs="+", default=["1.0"],
                   help="test scales, e.g. --scales 0.75 1 1.25 or 0.75,1,1.25 (probabilities are averaged; "
                        "default: 1)")
    p.add_argument("--flip", action="store_true", help="also average horizontally flipped predictions")
    p.add_argument("--size", type=int, default=None, metavar="SHORT",
                   help="resize so that the short side is SHORT before inference (the mask is returned at "
                        "the input size); default: the input size")
    p.add_argument("--align", type=int, default=32, metavar="N",
                   help="in whole mode, stretch height and width up to multiples of N (SegFormer's "
                        "AlignedResize; default 32); 0 or 1 turns it off")
    p.add_argument("--alpha", type=float, default=0.5, help="overlay opacity of the mask colours (default: 0.5)")
    p.add_argument("--device", default=None, help="cpu, cuda, cuda:1, ... (default: cuda when available)")
    p.set_defaults(func=cmd_predict)


def parse_scales(values) -> list[float]:
    """['0.5,0.75', '1'] -> [0.5, 0.75, 1.0]."""
    scales = []
    for value in values:
        for part in str(value).split(","):
            if part.strip():
                try:
                    scales.append(float(part))
                except ValueError:
                    raise ConfigError(f"--scales: '{part}' is not a number") from None
    if not scales or min(scales) <= 0:
        raise ConfigError(f"--scales must be positive numbers, got {values}")
    return scales


def collect_inputs(inputs) -> list[Path]:
    """Image files named directly plus the images inside named folders (sorted, not recursive)."""
    files = []
    for item in inputs:
        path = Path(item)
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise DataError(f"{path}: folder holds no images ({', '.join(IMAGE_SUFFIXES)})")
            files.extend(found)
        elif path.is_file():
            files.append(path)
        else:
            raise DataError(f"{path}: no such file or folder")
    seen = {}
    for f in files:
        if f.stem in seen and seen[f.stem] != f:
            raise DataError(f"{seen[f.stem]} and {f} share the name '{f.stem}': their outputs would overwrite "
                            "each other. Predict them into different --out folders.")
        seen[f.stem] = f
    return list(dict.fromkeys(files))


def read_image(path: Path) -> np.ndarray:
    """uint8 [H,W,3] RGB, EXIF orientation applied; DataError naming the file when it cannot be read."""
    from PIL import Image, ImageOps
    try:
        with Image.open(path) as im:
            im.load()
            return np.array(ImageOps.exif_transpose(im).convert("RGB"), dtype=np.uint8)
    except Exception as e:  # PIL raises several types for truncated/corrupt/unsupported files
        raise DataError(f"{path}: cannot read the image ({type(e).__name__}: {e})") from e


def _input_size(height: int, width: int, short: int | None, align: int) -> tuple[int, int]:
    if short:
        ratio = short / min(height, width)
        height, width = max(int(height * ratio + 0.5), 1), max(int(width * ratio + 0.5), 1)
    if align and align > 1:
        height, width = -(-height // align) * align, -(-width // align) * align
    return height, width


def to_tensor(image: np.ndarray, mean, std, size: tuple[int, int], device) -> torch.Tensor:
    """uint8 [H,W,3] -> normalised float [1,3,h,w] at `size` (bilinear, align_corners=False)."""
    from ..layers import resize
    x = torch.from_numpy(image).to(device).permute(2, 0, 1).float().unsqueeze(0)
    x = resize(x, size)
    mean = torch.tensor(mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
    return (x - mean) / std


def _device(name: str | None) -> torch.device:
    if name is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"--device '{name}': {e}") from e
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return device


def cmd_predict(args) -> int:
    from tqdm import tqdm

    from ..tools import visualize
    from ..weights import load_checkpoint, read_weights
    from .inference import predict

    device = _device(args.device)
    scales = parse_scales(args.scales)
    files = collect_inputs(args.inputs)
    source = read_weights(args.checkpoint)
    if source.format != "safetensors" or not source.metadata:
        raise ConfigError(f"{args.checkpoint}: predict needs a vitseg .safetensors checkpoint with metadata; "
                          "convert foreign weights first with `vitseg convert SRC DST --model NAME`")
    crop = args.crop or source.metadata.get("crop_size")
    if args.mode == "slide" and not crop:
        raise ConfigError(f"--mode slide needs --crop H W ({args.checkpoint} records no crop_size)")
    model = load_checkpoint(source).to(device).eval()
    num_classes = model.num_classes
    class_names = list(model.class_names or [f"class {i}" for i in range(num_classes)])
    palette = model.palette or visualize.default_palette(num_classes)
    if num_classes > 255:
        raise ConfigError(f"{args.checkpoint}: {num_classes} classes do not fit an indexed PNG (at most 255)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    show = sys.stderr.isatty()
    align = args.align if args.mode == "whole" else 0
    for path in tqdm(files, desc="predict", unit="img", disable=not show, dynamic_ncols=True):
        image = read_image(path)
        height, width = image.shape[:2]
        x = to_tensor(image, model.mean, model.std, _input_size(height, width, args.size, align), device)
        scores = predict(model, x, mode=args.mode, crop=crop, stride=args.stride, scales=scales, flip=args.flip,
                         out_size=(height, width))
        mask = scores.argmax(dim=1)[0].to(torch.uint8).cpu().numpy()
        visualize.save_prediction(out, path.stem, image, mask, palette, class_names, alpha=args.alpha)
    print(f"wrote {len(files)} mask(s) and overlay(s) to {out}")
    return 0
