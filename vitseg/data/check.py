"""`vitseg data check`: read every image and label of a dataset and report what is in it and what is wrong.

Per split: image count, image sizes, stored label values, pixels per class (after the dataset's remap),
ignored pixels, and every bad file (unreadable image or label, missing label, size mismatch, label values
that are not classes). Unlike the datasets themselves, the check does not stop at the first problem.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from ..errors import DataError
from .datasets import DATASET_TYPES, SegDataset, SyntheticShapes, build_dataset, read_image, read_label

# Splits checked when none are given, per dataset type (folder-like types list ROOT/images/*).
DEFAULT_SPLITS: Dict[str, Sequence[str]] = {
    "ade20k": ("training", "validation"),
    "cityscapes": ("train", "val"),
    "voc": ("train", "val"),
    "voc_aug": ("train_aug", "val"),
    "pascal_context": ("train", "val"),
    "pascal_context_59": ("train", "val"),
    "coco_stuff164k": ("train2017", "val2017"),
    "coco_stuff10k": ("train", "test"),
    "synthetic": ("train", "val"),
}


@dataclass
class SplitReport:
    """What one split holds, and its problems (each naming a file)."""

    split: str
    num_images: int = 0
    class_pixels: Optional[np.ndarray] = None            # int64 [K], after the dataset's label remap
    ignored_pixels: int = 0
    stored_values: Counter = field(default_factory=Counter)  # stored label value -> pixel count (before remap)
    image_sizes: Counter = field(default_factory=Counter)    # (W, H) -> number of images
    size_mismatches: int = 0
    problems: List[str] = field(default_factory=list)


@dataclass
class DatasetReport:
    """The result of `check_dataset`; `summary()` gives the printable text."""

    root: str
    type: str
    classes: List[str] = field(default_factory=list)
    splits: List[SplitReport] = field(default_factory=list)

    @property
    def problems(self) -> List[str]:
        return [f"[{s.split}] {p}" for s in self.splits for p in s.problems]

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self) -> str:
        lines = [f"dataset {self.root} (type {self.type}, {len(self.classes)} classes)"]
        for s in self.splits:
            sizes = ", ".join(f"{w}x{h} ({n})" for (w, h), n in s.image_sizes.most_common(5))
            if len(s.image_sizes) > 5:
                sizes += f", ... {len(s.image_sizes)} sizes in all"
            lines.append(f"split {s.split}: {s.num_images} images" + (f"; sizes WxH: {sizes}" if sizes else ""))
            if s.stored_values:
                lines.append(f"  stored label values: {_ranges(sorted(s.stored_values))}")
            lines.append(f"  image/label sizes: {'all agree' if not s.size_mismatches else f'{s.size_mismatches} mismatches'}")
            lines.append(f"  problems: {len(s.problems)}")
        labelled = [s for s in self.splits if s.class_pixels is not None and s.class_pixels.sum() + s.ignored_pixels]
        if labelled and self.classes:
            width = max(len(c) for c in self.classes) + 2
            lines.append("")
            lines.append("pixels per class (share of labelled pixels):")
            lines.append(" " * (5 + width) + "".join(f"{s.split:>22s}" for s in labelled))
            for k, name in enumerate(self.classes):
                cells = "".join(_cell(s.class_pixels[k], s.class_pixels.sum()) for s in labelled)
                lines.append(f"{k:4d} {name:<{width}s}{cells}")
            cells = "".join(_cell(s.ignored_pixels, s.class_pixels.sum() + s.ignored_pixels) for s in labelled)
            lines.append(f"{'':4s} {'(ignored, 255)':<{width}s}{cells}")
        problems = self.problems
        lines.append("")
        if problems:
            lines.append(f"{len(problems)} problem(s):")
            lines.extend(f"  {p}" for p in problems)
        else:
            lines.append("no problems found")
        return "\n".join(lines)


def _cell(count: int, total: int) -> str:
    share = 100.0 * count / total if total else 0.0
    return f"{int(count):>14d} {share:6.2f}%"


def _ranges(values: List[int]) -> str:
    """[0,1,2,3,7,255] -> '0-3, 7, 255'."""
    parts, start = [], None
    for i, v in enumerate(values):
        if start is None:
            start = v
        if i + 1 == len(values) or values[i + 1] != v + 1:
            parts.append(str(start) if start == v else f"{start}-{v}")
            start = None
    return ", ".join(parts)


def _default_splits(root: Path, type: str) -> List[str]:
    if type in DEFAULT_SPLITS:
        return list(DEFAULT_SPLITS[type])
    images = root / "images"
    if not images.is_dir():
        raise DataError(f"{images}: folder not found; a dataset in our layout has ROOT/images/<split>/ and "
                        "ROOT/labels/<split>/ (or pass --type for a public layout)")
    splits = sorted(p.name for p in images.iterdir() if p.is_dir())
    if not splits:
        raise DataError(f"{images}: no split folders (expected e.g. images/train, images/val)")
    return splits


def _check_sample(ds: SegDataset, index: int, report: SplitReport, counts: np.ndarray, missing: set) -> None:
    sample = ds.samples[index]
    if isinstance(ds, SyntheticShapes):
        image, raw = ds.generate(index)
    else:
        image = raw = None
        try:
            image = read_image(sample.image)
        except DataError as e:
            report.problems.append(str(e))
        if sample.label in missing:
            report.problems.append(f"{sample.label}: label file missing (image {sample.image})")
        else:
            try:
                raw = read_label(sample.label)
            except DataError as e:
                report.problems.append(str(e))
    if image is not None:
        report.image_sizes[(image.shape[1], image.shape[0])] += 1
    if raw is None:
        return
    if image is not None and image.shape[:2] != raw.shape[:2]:
        report.size_mismatches += 1
        report.problems.append(f"image {sample.image} is {image.shape[1]}x{image.shape[0]} but label {sample.label} "
                               f"is {raw.shape[1]}x{raw.shape[0]} (WxH)")
    hist = np.bincount(raw.ravel(), minlength=256)
    counts += hist
    bad = [v for v in np.flatnonzero(hist) if ds.lut[v] < 0]
    if bad:
        where = sample.label if sample.label is not None else ds.sample_name(index)
        report.problems.append(f"{where}: label values {', '.join(str(v) for v in bad[:10])} are not classes "
                               f"({ds.num_classes} classes, 255 = ignore"
                               f"{', reduce_zero_label on' if ds.reduce_zero_label else ''}); "
                               "check num_classes / reduce_zero_label")


def check_split(ds: SegDataset, progress: bool = False) -> SplitReport:
    """Read every sample of `ds` and collect statistics and problems."""
    report = SplitReport(ds.split, num_images=len(ds))
    counts = np.zeros(256, np.int64)
    indices = range(len(ds))
    if progress:
        from tqdm import tqdm
        indices = tqdm(indices, desc=f"check {ds.split}", unit="img", leave=False)
    missing = set(ds.missing_labels)
    for i in indices:
        _check_sample(ds, i, report, counts, missing)
    report.stored_values = Counter({int(v): int(counts[v]) for v in np.flatnonzero(counts)})
    class_pixels = np.zeros(ds.num_classes, np.int64)
    legal = ds.lut >= 0
    mapped = ds.lut[legal].astype(np.int64)
    np.add.at(class_pixels, mapped[mapped != ds.ignore_index], counts[legal][mapped != ds.ignore_index])
    report.class_pixels = class_pixels
    report.ignored_pixels = int(counts[legal][mapped == ds.ignore_index].sum())
    return report


def check_dataset(root, type: str = "folder", splits: Optional[Sequence[str]] = None,
                  progress: bool = False, **dataset_kwargs) -> DatasetReport:
    """Check a dataset on disk; returns a DatasetReport (``report.ok``, ``report.problems``, ``report.summary()``).

    Args:
        root: dataset folder (ignored for type "synthetic").
        type: a dataset type of `build_dataset` ("folder", "ade20k", "cityscapes", ...).
        splits: splits to check (default: every folder under ROOT/images, or the layout's standard splits).
        progress: show a progress bar per split.
        dataset_kwargs: passed to the dataset (e.g. ``classes=``, ``num_classes=``, ``reduce_zero_label=``).
    """
    if type not in DATASET_TYPES:
        build_dataset(type, root, "train")   # raises the ConfigError that lists the known types
    root_path = Path(root) if root is not None else Path(".")
    if type != "synthetic" and not root_path.is_dir():
        raise DataError(f"{root_path}: dataset folder not found")
    report = DatasetReport(str(root_path), type)
    for split in (list(splits) if splits else _default_splits(root_path, type)):
        kwargs = dict(dataset_kwargs)
        if type != "synthetic":
            kwargs["allow_missing_labels"] = True
        try:
            ds = build_dataset(type, root, split, None, **kwargs)
        except DataError as e:
            report.splits.append(SplitReport(split, problems=[str(e)]))
            continue
        report.classes = report.classes or ds.classes
        report.splits.append(check_split(ds, progress))
    return report
