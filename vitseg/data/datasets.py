"""Segmentation datasets: our folder layout, adapters for the public benchmark layouts, and SyntheticShapes.

Every dataset yields ``{"image": float [3,H,W], "label": long [H,W], "name": str, "ori_size": (H, W)}``.
Label remaps (reduce_zero_label, Cityscapes labelId -> trainId, COCO-Stuff 182 -> 171) are folded into one
256-entry lookup table that is applied exactly once, when a label file is read; the same table marks which
stored values are legal, so a bad value is reported with its file instead of poisoning the loss.
Per-sample randomness comes from ``np.random.default_rng([seed, epoch, index])``: a sample does not depend
on the number of workers, their order, or the rank, which exact resume and DDP rely on.
"""
from __future__ import annotations

import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image

from ..errors import ConfigError, DataError
from . import palettes as P
from .transforms import IGNORE_INDEX, TestPipeline, resize_image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".JPG", ".JPEG", ".PNG", ".bmp", ".tif", ".tiff", ".webp")
PathLike = Union[str, Path]
Pipeline = Callable[[np.ndarray, Optional[np.ndarray], Optional[np.random.Generator]], tuple]


# --------------------------------------------------------------------------------------------- file reading
def read_image(path: PathLike) -> np.ndarray:
    """Read an image file as uint8 HxWx3 RGB; DataError naming the file if it cannot be decoded."""
    try:
        with Image.open(path) as im:
            return np.array(im.convert("RGB"))
    except FileNotFoundError:
        raise DataError(f"{path}: image file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read image ({e}); the file is truncated, corrupt or not an image") from None


def read_label(path: PathLike) -> np.ndarray:
    """Read a label file as uint8 HxW class indices (palette PNGs give their indices, not colours)."""
    try:
        with Image.open(path) as im:
            mode = im.mode
            arr = np.array(im) if mode in ("L", "P", "1", "I", "I;16", "I;16B", "I;16L") else None
    except FileNotFoundError:
        raise DataError(f"{path}: label file not found") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise DataError(f"{path}: cannot read label ({e}); the file is truncated, corrupt or not an image") from None
    if arr is None:
        raise DataError(f"{path}: label has mode {mode}; labels must be single-channel PNGs of class indices "
                        "(mode L or P). Convert colour masks to indices first.")
    if arr.dtype != np.uint8:
        if arr.size and (arr.min() < 0 or arr.max() > 255):
            raise DataError(f"{path}: label values range {int(arr.min())}..{int(arr.max())}; "
                            "class indices must fit in 0..255 (255 = ignore)")
        arr = arr.astype(np.uint8)
    return arr


def label_lookup_table(num_classes: int, reduce_zero_label: bool = False,
                       label_map: Optional[Dict[int, int]] = None) -> np.ndarray:
    """int16[256] table: stored value -> class index (0..K-1), 255 (ignore), or -1 (illegal value).

    `label_map` (e.g. Cityscapes labelId -> trainId) is applied first and makes every unlisted value illegal
    (255 stays 255); `reduce_zero_label` then turns 0 into 255 and k into k-1.
    """
    if label_map is not None:
        lut = np.full(256, -1, np.int16)
        for src, dst in label_map.items():
            lut[int(src)] = int(dst)
        if 255 not in label_map:
            lut[255] = IGNORE_INDEX
    else:
        lut = np.arange(256, dtype=np.int16)
    if reduce_zero_label:
        lut = np.where(lut == 0, IGNORE_INDEX, np.where((lut > 0) & (lut != IGNORE_INDEX), lut - 1, lut))
    legal = (lut == IGNORE_INDEX) | ((lut >= 0) & (lut < num_classes))
    return np.where(legal, lut, -1).astype(np.int16)


def _read_lines(path: Path) -> List[str]:
    return [ln.strip() for ln in path.read_text().splitlines() if ln.strip() and not ln.startswith("#")]


def _read_palette(path: Path) -> List[Tuple[int, int, int]]:
    colors = []
    for i, ln in enumerate(_read_lines(path)):
        parts = ln.replace(",", " ").split()
        try:
            colors.append(tuple(int(v) for v in parts[:3]))
        except ValueError:
            raise DataError(f"{path}: line {i + 1} '{ln}' is not an 'R G B' colour") from None
        if len(colors[-1]) != 3:
            raise DataError(f"{path}: line {i + 1} '{ln}' is not an 'R G B' colour")
    return colors


@dataclass(frozen=True)
class Sample:
    """One image and its label file (label None only for SyntheticShapes-like in-memory data)."""

    name: str
    image: Optional[Path]
    label: Optional[Path]


# ------------------------------------------------------------------------------------------------- base class
class SegDataset(torch.utils.data.Dataset):
    """A list of (image, label) files with a class list, a label lookup table and a pipeline.

    Args:
        samples: the image/label pairs, in order.
        pipeline: callable ``(image, label, rng) -> (image_tensor, label_tensor)``; default: normalise only.
        classes: class names in label-index order; palette: one RGB colour per class (default generated).
        reduce_zero_label / label_map: stored-value remaps, see `label_lookup_table`.
        seed: base seed of the per-sample random generators.
        source: the folder the samples came from (named in errors).
        allow_missing_labels: record missing label files in `missing_labels` instead of raising
            (used by `vitseg data check`, which reports every bad file).
    """

    ignore_index: int = IGNORE_INDEX

    def __init__(self, samples: Sequence[Sample], pipeline: Optional[Pipeline] = None,
                 classes: Optional[Sequence[str]] = None, palette=None, reduce_zero_label: bool = False,
                 label_map: Optional[Dict[int, int]] = None, seed: int = 0, source: PathLike = "",
                 split: str = "", allow_missing_labels: bool = False):
        self.source, self.split = str(source), split
        if classes is None or len(classes) == 0:
            raise DataError(f"{source}: no class names; pass classes=[...] or write classes.txt (one name per line)")
        self.classes = [str(c) for c in classes]
        palette = list(palette) if palette is not None else P.default_palette(len(self.classes))
        if len(palette) < len(self.classes):
            raise DataError(f"{source}: palette has {len(palette)} colours for {len(self.classes)} classes")
        self.palette = [tuple(int(v) for v in c) for c in palette[:len(self.classes)]]
        self.reduce_zero_label = bool(reduce_zero_label)
        self.label_map = dict(label_map) if label_map is not None else None
        self.lut = label_lookup_table(self.num_classes, self.reduce_zero_label, self.label_map)
        self.pipeline = pipeline if pipeline is not None else TestPipeline()
        self.seed, self.epoch = int(seed), 0
        self.samples = list(samples)
        if not self.samples:
            raise DataError(f"{source}: split '{split}' has no images; check the folder and the split name")
        self.missing_labels = [s.label for s in self.samples if s.label is not None and not s.label.is_file()]
        if self.missing_labels and not allow_missing_labels:
            shown = ", ".join(str(p) for p in self.missing_labels[:5])
            more = f" and {len(self.missing_labels) - 5} more" if len(self.missing_labels) > 5 else ""
            raise DataError(f"{source}: {len(self.missing_labels)} label file(s) missing in split '{split}': "
                            f"{shown}{more}; every image needs a label with the same name")

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def __len__(self) -> int:
        return len(self.samples)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}(source='{self.source}', split='{self.split}', images={len(self)}, "
                f"classes={self.num_classes}, pipeline={self.pipeline!r})")

    def set_epoch(self, epoch: int) -> None:
        """Select the random stream of an epoch (call before each epoch, in every process)."""
        self.epoch = int(epoch)

    def sample_name(self, index: int) -> str:
        return self.samples[index].name

    def load_label(self, index: int) -> np.ndarray:
        """The label of sample `index` after remapping: uint8 HxW with values in 0..K-1 or 255."""
        path = self.samples[index].label
        raw = read_label(path)
        mapped = self.lut[raw]
        if (mapped < 0).any():
            bad = np.unique(raw[mapped < 0]).tolist()
            shown = ", ".join(str(v) for v in bad[:10]) + (" ..." if len(bad) > 10 else "")
            raise DataError(
                f"{path}: label values {shown} are not classes of this dataset ({self.num_classes} classes, "
                f"values 0..{self.num_classes - 1} and 255 = ignore"
                f"{', reduce_zero_label on' if self.reduce_zero_label else ''}"
                f"{', after the dataset label map' if self.label_map is not None else ''}). "
                "Check num_classes / the class list, or reduce_zero_label (0 = 'other' stored as a value).")
        return mapped.astype(np.uint8)

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Image (uint8 HxWx3 RGB) and remapped label (uint8 HxW) of sample `index`, validated."""
        sample = self.samples[index]
        image = read_image(sample.image)
        label = self.load_label(index)
        if image.shape[:2] != label.shape[:2]:
            raise DataError(f"image {sample.image} is {image.shape[1]}x{image.shape[0]} but label {sample.label} "
                            f"is {label.shape[1]}x{label.shape[0]} (WxH); they must have the same size")
        return image, label

    def rng(self, index: int) -> np.random.Generator:
        """The random generator of sample `index` in the current epoch."""
        return np.random.default_rng([self.seed, self.epoch, index])

    def __getitem__(self, index: int) -> dict:
        if index < 0:
            index += len(self)
        image, label = self.load(index)
        image_t, label_t = self.pipeline(image, label, self.rng(index))
        return {"image": image_t, "label": label_t, "name": self.sample_name(index),
                "ori_size": (int(image.shape[0]), int(image.shape[1]))}


def _existing_dir(path: Path, what: str) -> Path:
    if not path.is_dir():
        siblings = sorted(p.name for p in path.parent.iterdir() if p.is_dir()) if path.parent.is_dir() else []
        hint = f" (found: {', '.join(siblings)})" if siblings else ""
        raise DataError(f"{path}: {what} folder not found{hint}")
    return path


def _list_images(folder: Path, suffix: str = "") -> List[Tuple[str, Path]]:
    """(name, path) of every image under `folder` (recursively) ending in `suffix`, sorted by name.

    The name is the path relative to `folder` without the suffix (or without the extension)."""
    out = []
    for p in folder.rglob("*"):
        if not p.is_file():
            continue
        rel = p.relative_to(folder).as_posix()
        if suffix:
            if rel.endswith(suffix):
                out.append((rel[: -len(suffix)], p))
        elif p.suffix in IMAGE_EXTENSIONS:
            out.append((rel[: -len(p.suffix)], p))
    return sorted(out)


def _names_from_list(path: Path) -> List[str]:
    if not path.is_file():
        raise DataError(f"{path}: split list not found")
    return [ln.split()[0] for ln in _read_lines(path)]


def _find_image(folder: Path, name: str, list_file: Path) -> Path:
    for ext in IMAGE_EXTENSIONS:
        p = folder / f"{name}{ext}"
        if p.is_file():
            return p
    raise DataError(f"{folder / name}.<jpg|png|jpeg>: image listed in {list_file} not found")


# ----------------------------------------------------------------------------------------------- our layout
class FolderDataset(SegDataset):
    """Our layout: ``ROOT/images/<split>/<name>.<jpg|png|jpeg>`` and ``ROOT/labels/<split>/<name>.png``.

    Optional in ROOT: ``<split>.txt`` (image names of the split, in order; otherwise every image in the
    folder), ``classes.txt`` (one name per line), ``palette.txt`` ('R G B' per line), ``meta.json``
    (``classes``, ``palette``, ``reduce_zero_label``). `classes`/`palette` may be lists or file paths;
    `num_classes` names the classes class_0.. when nothing else does.
    """

    def __init__(self, root: PathLike, split: str = "train", pipeline: Optional[Pipeline] = None,
                 classes=None, palette=None, reduce_zero_label: Optional[bool] = None, seed: int = 0,
                 num_classes: Optional[int] = None, allow_missing_labels: bool = False):
        root = Path(root)
        if not root.is_dir():
            raise DataError(f"{root}: dataset folder not found")
        meta = self._read_meta(root)
        classes = self._classes(root, classes, meta, num_classes)
        palette = self._palette(root, palette, meta)
        if reduce_zero_label is None:
            reduce_zero_label = bool(meta.get("reduce_zero_label", False))
        image_dir = _existing_dir(root / "images" / split, f"images of split '{split}'")
        label_dir = root / "labels" / split
        list_file = root / f"{split}.txt"
        if list_file.is_file():
            pairs = [(n, _find_image(image_dir, n, list_file)) for n in _names_from_list(list_file)]
        else:
            pairs = _list_images(image_dir)
        samples = [Sample(n, p, label_dir / f"{n}.png") for n, p in pairs]
        super().__init__(samples, pipeline, classes, palette, reduce_zero_label, None, seed, image_dir, split,
                         allow_missing_labels)
        self.root = root

    @staticmethod
    def _read_meta(root: Path) -> dict:
        path = root / "meta.json"
        if not path.is_file():
            return {}
        try:
            return json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise DataError(f"{path}: not valid JSON ({e})") from None

    @staticmethod
    def _classes(root: Path, classes, meta: dict, num_classes: Optional[int]) -> List[str]:
        if isinstance(classes, (str, Path)):
            classes = _read_lines(Path(classes))
        elif classes is None and (root / "classes.txt").is_file():
            classes = _read_lines(root / "classes.txt")
        elif classes is None and meta.get("classes"):
            classes = list(meta["classes"])
        elif classes is None and num_classes:
            classes = [f"class_{i}" for i in range(num_classes)]
        if not classes:
            raise DataError(f"{root}: no class names; write {root / 'classes.txt'} (one name per line) "
                            "or pass classes=[...] / num_classes")
        if num_classes and len(classes) != num_classes:
            raise DataError(f"{root}: {len(classes)} class names but num_classes={num_classes}")
        return list(classes)

    @staticmethod
    def _palette(root: Path, palette, meta: dict):
        if isinstance(palette, (str, Path)):
            return _read_palette(Path(palette))
        if palette is None and (root / "palette.txt").is_file():
            return _read_palette(root / "palette.txt")
        if palette is None and meta.get("palette"):
            return [tuple(c) for c in meta["palette"]]
        return palette


class CamVid(FolderDataset):
    """CamVid (11 classes, SegNet split) in our layout, as shipped in shared/data/camvid."""

    def __init__(self, root: PathLike, split: str = "train", pipeline: Optional[Pipeline] = None, seed: int = 0,
                 **kwargs):
        kwargs.setdefault("classes", P.CAMVID_CLASSES)
        kwargs.setdefault("palette", P.CAMVID_PALETTE)
        super().__init__(root, split, pipeline, seed=seed, **kwargs)


# ------------------------------------------------------------------------------------- public layout adapters
def _subdir_if_present(root: Path, *names: str) -> Path:
    """Accept either the dataset folder itself or a parent that contains it (e.g. VOCdevkit/VOC2012)."""
    for name in names:
        if (root / name).is_dir():
            return _subdir_if_present(root / name, *names[names.index(name) + 1:])
    return root


def _alias(split: str, aliases: Dict[str, str]) -> str:
    return aliases.get(split, split)


class ADE20K(SegDataset):
    """ADE20K SceneParsing (``ADEChallengeData2016/{images,annotations}/{training,validation}``).

    150 classes; stored 0 = 'other' becomes ignore (reduce_zero_label). Splits: training / validation
    (aliases train / val)."""

    def __init__(self, root: PathLike, split: str = "training", pipeline: Optional[Pipeline] = None, seed: int = 0,
                 allow_missing_labels: bool = False):
        root = _subdir_if_present(Path(root), "ADEChallengeData2016")
        split = _alias(split, {"train": "training", "val": "validation"})
        image_dir = _existing_dir(root / "images" / split, f"ADE20K images of split '{split}'")
        samples = [Sample(n, p, root / "annotations" / split / f"{n}.png") for n, p in _list_images(image_dir, ".jpg")]
        super().__init__(samples, pipeline, P.ADE20K_CLASSES, P.ADE20K_PALETTE, True, None, seed, image_dir, split,
                         allow_missing_labels)


class Cityscapes(SegDataset):
    """Cityscapes fine (``leftImg8bit/<split>/<city>/*_leftImg8bit.png``, ``gtFine/<split>/<city>/...``).

    Reads the shipped ``*_gtFine_labelIds.png`` and maps the 34 labelIds to the 19 trainIds (others ignored);
    falls back to converter-made ``*_gtFine_labelTrainIds.png`` when no labelIds files exist."""

    def __init__(self, root: PathLike, split: str = "train", pipeline: Optional[Pipeline] = None, seed: int = 0,
                 allow_missing_labels: bool = False):
        root = Path(root)
        image_dir = _existing_dir(root / "leftImg8bit" / split, f"Cityscapes images of split '{split}'")
        label_dir = root / "gtFine" / split
        pairs = _list_images(image_dir, "_leftImg8bit.png")
        use_train_ids = bool(pairs) and not (label_dir / f"{pairs[0][0]}_gtFine_labelIds.png").is_file() and \
            (label_dir / f"{pairs[0][0]}_gtFine_labelTrainIds.png").is_file()
        suffix = "_gtFine_labelTrainIds.png" if use_train_ids else "_gtFine_labelIds.png"
        samples = [Sample(Path(n).name, p, label_dir / f"{n}{suffix}") for n, p in pairs]
        label_map = None if use_train_ids else P.CITYSCAPES_LABELID_TO_TRAINID
        super().__init__(samples, pipeline, P.CITYSCAPES_CLASSES, P.CITYSCAPES_PALETTE, False, label_map, seed,
                         image_dir, split, allow_missing_labels)


class PascalVOC(SegDataset):
    """Pascal VOC 2012 (``VOC2012/JPEGImages``, ``SegmentationClass``, ``ImageSets/Segmentation/<split>.txt``).

    21 classes (background is a class), 255 on object borders. Splits: train, val, trainval."""

    def __init__(self, root: PathLike, split: str = "train", pipeline: Optional[Pipeline] = None, seed: int = 0,
                 allow_missing_labels: bool = False):
        root = _subdir_if_present(Path(root), "VOCdevkit", "VOC2012")
        samples = self._from_list(root, root / "ImageSets" / "Segmentation" / f"{split}.txt", "SegmentationClass")
        super().__init__(samples, pipeline, P.VOC_CLASSES, P.VOC_PALETTE, False, None, seed, root, split,
                         allow_missing_labels)

    @staticmethod
    def _from_list(root: Path, list_file: Path, label_folder: str, names: Optional[List[str]] = None):
        names = _names_from_list(list_file) if names is None else names
        images = root / "JPEGImages"
        return [Sample(n, images / f"{n}.jpg", root / label_folder / f"{n}.png") for n in names]


class PascalVOCAug(PascalVOC):
    """VOC 2012 + SBD ("aug", 10,582 training images), as produced by mmseg's voc_aug converter.

    Split ``train_aug`` (alias ``trainaug``) = VOC ``train.txt`` with ``SegmentationClass`` labels plus
    ``aug.txt`` (or ``trainaug.txt`` minus ``train.txt``) with ``SegmentationClassAug`` labels. Any other split
    (``val``) reads VOC's own list and labels."""

    def __init__(self, root: PathLike, split: str = "train_aug", pipeline: Optional[Pipeline] = None,
                 seed: int = 0, allow_missing_labels: bool = False):
        root = _subdir_if_present(Path(root), "VOCdevkit", "VOC2012")
        lists = root / "ImageSets" / "Segmentation"
        if split in ("train_aug", "trainaug"):
            voc = self._from_list(root, lists / "train.txt", "SegmentationClass")
            if (lists / "aug.txt").is_file():
                aug_names = _names_from_list(lists / "aug.txt")
            else:
                in_voc = {s.name for s in voc}
                aug_names = [n for n in _names_from_list(lists / "trainaug.txt") if n not in in_voc]
            samples = voc + self._from_list(root, lists / "aug.txt", "SegmentationClassAug", aug_names)
        else:
            samples = self._from_list(root, lists / f"{split}.txt", "SegmentationClass")
        SegDataset.__init__(self, samples, pipeline, P.VOC_CLASSES, P.VOC_PALETTE, False, None, seed, root, split,
                            allow_missing_labels)


class PascalContext(SegDataset):
    """Pascal Context on VOC2010 (``JPEGImages``, ``SegmentationClassContext``,
    ``ImageSets/SegmentationContext/<split>.txt``). 60 classes with background; ``num_classes=59`` turns
    background into ignore (reduce_zero_label) and leaves the 59 object/stuff classes."""

    def __init__(self, root: PathLike, split: str = "train", pipeline: Optional[Pipeline] = None, seed: int = 0,
                 num_classes: int = 60, allow_missing_labels: bool = False):
        if num_classes not in (59, 60):
            raise ConfigError(f"PascalContext: num_classes must be 59 or 60, got {num_classes}")
        root = _subdir_if_present(Path(root), "VOCdevkit", "VOC2010")
        names = _names_from_list(root / "ImageSets" / "SegmentationContext" / f"{split}.txt")
        samples = [Sample(n, root / "JPEGImages" / f"{n}.jpg", root / "SegmentationClassContext" / f"{n}.png")
                   for n in names]
        if num_classes == 60:
            classes, palette = P.PASCAL_CONTEXT_CLASSES, P.PASCAL_CONTEXT_PALETTE
        else:
            classes, palette = P.PASCAL_CONTEXT59_CLASSES, P.PASCAL_CONTEXT59_PALETTE
        super().__init__(samples, pipeline, classes, palette, num_classes == 59, None, seed, root, split,
                         allow_missing_labels)


class COCOStuff164k(SegDataset):
    """COCO-Stuff 164k (``images/{train2017,val2017}``, ``annotations/...``), 171 classes.

    Reads the raw ``<name>.png`` maps (0-based ids 0..181, 255 unlabelled) and maps them to the 171 trainIds;
    falls back to converter-made ``<name>_labelTrainIds.png`` when raw maps are absent. Splits: train2017 /
    val2017 (aliases train / val)."""

    def __init__(self, root: PathLike, split: str = "train2017", pipeline: Optional[Pipeline] = None,
                 seed: int = 0, allow_missing_labels: bool = False):
        root = Path(root)
        split = _alias(split, {"train": "train2017", "val": "val2017"})
        image_dir = _existing_dir(root / "images" / split, f"COCO-Stuff images of split '{split}'")
        label_dir = root / "annotations" / split
        pairs = _list_images(image_dir, ".jpg")
        use_train_ids = bool(pairs) and not (label_dir / f"{pairs[0][0]}.png").is_file() and \
            (label_dir / f"{pairs[0][0]}_labelTrainIds.png").is_file()
        suffix = "_labelTrainIds.png" if use_train_ids else ".png"
        samples = [Sample(n, p, label_dir / f"{n}{suffix}") for n, p in pairs]
        label_map = None if use_train_ids else P.coco_stuff_raw_to_train_id()
        super().__init__(samples, pipeline, P.COCO_STUFF_CLASSES, P.COCO_STUFF_PALETTE, False, label_map, seed,
                         image_dir, split, allow_missing_labels)


class COCOStuff10k(SegDataset):
    """COCO-Stuff 10k as converted by mmseg (``images/{train2014,test2014}``, ``annotations/...`` with
    ``<name>_labelTrainIds.png`` holding 0 = unlabelled and 1..171; ``imageLists/{train,test}.txt``).
    reduce_zero_label maps them to the same 171 classes as 164k."""

    def __init__(self, root: PathLike, split: str = "train", pipeline: Optional[Pipeline] = None, seed: int = 0,
                 allow_missing_labels: bool = False):
        root = Path(root)
        split = _alias(split, {"val": "test", "train2014": "train", "test2014": "test"})
        folder = f"{split}2014"
        names = _names_from_list(root / "imageLists" / f"{split}.txt")
        samples = [Sample(n, root / "images" / folder / f"{n}.jpg",
                          root / "annotations" / folder / f"{n}_labelTrainIds.png") for n in names]
        super().__init__(samples, pipeline, P.COCO_STUFF_CLASSES, P.COCO_STUFF_PALETTE, True, None, seed, root, split,
                         allow_missing_labels)


# ---------------------------------------------------------------------------------------------- synthetic data
SHAPES = ("circle", "rectangle", "triangle", "ring")
TEXTURES = ("striped", "checkered", "dotted")
_SPLIT_CODES = {"train": 0, "val": 1, "test": 2}


def synthetic_class_kinds(num_classes: int) -> List[Tuple[str, str]]:
    """(shape, texture) of foreground classes 1..K-1, interleaved so that every shape appears with several
    textures and every texture on several shapes: neither cue alone identifies a class."""
    kinds = []
    for k in range(len(SHAPES) * len(TEXTURES)):
        s, j = k % len(SHAPES), k // len(SHAPES)
        kinds.append((SHAPES[s], TEXTURES[(s + j) % len(TEXTURES)]))
    return kinds[:num_classes - 1]


class SyntheticShapes(SegDataset):
    """Deterministic in-memory dataset: textured shapes on textured backgrounds.

    Class 0 is the background (smooth random colour field with grain); classes 1..K-1 are (shape, texture)
    combinations (circle/rectangle/triangle/ring x striped/checkered/dotted) painted with two random colours,
    so colour carries no information and a model must recognise both the outline and the texture. Image i of
    a split is generated from ``(seed, split, i)`` alone; train, val and test use different streams. Every
    class appears: the first shape of image i has class ``1 + i % (K-1)``.

    Args:
        num_classes: 2..13 (background + up to 12 shape/texture kinds).
        num_images: number of images in the split.
        size: (h, w) of the generated images.
        split: "train", "val" or "test".
        seed: generation and augmentation seed.
        pipeline: as for every dataset (default: normalise only).
    """

    def __init__(self, num_classes: int = 6, num_images: int = 64, size=(128, 128), split: str = "train",
                 seed: int = 0, pipeline: Optional[Pipeline] = None):
        max_classes = len(SHAPES) * len(TEXTURES) + 1
        if not 2 <= int(num_classes) <= max_classes:
            raise ConfigError(f"SyntheticShapes: num_classes must be in 2..{max_classes}, got {num_classes}")
        if split not in _SPLIT_CODES:
            raise ConfigError(f"SyntheticShapes: split must be one of {', '.join(_SPLIT_CODES)}, got '{split}'")
        if int(num_images) < 1:
            raise ConfigError(f"SyntheticShapes: num_images must be >= 1, got {num_images}")
        self.size = (int(size[0]), int(size[1]))
        if min(self.size) < 32:
            raise ConfigError(f"SyntheticShapes: size must be at least 32x32, got {self.size}")
        self.kinds = synthetic_class_kinds(int(num_classes))
        classes = ["background"] + [f"{tex} {shape}" for shape, tex in self.kinds]
        samples = [Sample(f"synthetic_{split}_{i:05d}", None, None) for i in range(int(num_images))]
        super().__init__(samples, pipeline, classes, P.voc_colormap(int(num_classes)), seed=seed,
                         source="<synthetic>", split=split)
        self._cache: Dict[int, Tuple[np.ndarray, np.ndarray]] = {}
        self._cache_limit = max(0, (256 << 20) // (4 * self.size[0] * self.size[1]))

    def load(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        if index not in self._cache:
            if len(self._cache) >= self._cache_limit:
                return self.generate(index)
            self._cache[index] = self.generate(index)
        image, label = self._cache[index]
        return image.copy(), label.copy()

    def load_label(self, index: int) -> np.ndarray:
        return self.load(index)[1]

    def generate(self, index: int) -> Tuple[np.ndarray, np.ndarray]:
        """Image (uint8 HxWx3) and label (uint8 HxW) number `index`, a pure function of (seed, split, index)."""
        rng = np.random.default_rng([self.seed, _SPLIT_CODES[self.split], index, 7])
        h, w = self.size
        image = self._background(rng, h, w)
        label = np.zeros((h, w), np.uint8)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        n_fg = len(self.kinds)
        classes = [1 + index % n_fg] + [int(rng.integers(1, n_fg + 1)) for _ in range(int(rng.integers(1, 4)))]
        for cls in classes:
            shape, texture = self.kinds[cls - 1]
            for _ in range(30):  # rejection sampling: shapes do not overlap, so outlines stay visible
                mask = self._shape_mask(rng, shape, yy, xx)
                if mask.sum() > 0.01 * h * w and not (label[mask] > 0).any():
                    break
            else:
                continue
            pattern = self._texture(rng, texture, yy, xx)
            fg, bg = self._color_pair(rng)
            painted = np.where(pattern[..., None], fg, bg) + rng.normal(0, 6, (h, w, 3))
            image[mask] = np.clip(painted[mask], 0, 255)
            label[mask] = cls
        return image.astype(np.uint8), label

    @staticmethod
    def _background(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
        coarse = rng.uniform(30, 225, (4, 4, 3)).astype(np.uint8)
        smooth = resize_image(coarse, (h, w)).astype(np.float32)
        return np.clip(smooth + rng.normal(0, 10, (h, w, 3)), 0, 255)

    @staticmethod
    def _color_pair(rng: np.random.Generator):
        first = rng.uniform(0, 255, 3)
        while True:
            second = rng.uniform(0, 255, 3)
            if np.abs(first - second).mean() > 80:
                return first, second

    def _shape_mask(self, rng: np.random.Generator, shape: str, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        h, w = self.size
        r = rng.uniform(0.14, 0.28) * min(h, w)
        cy, cx = rng.uniform(0.6 * r, h - 0.6 * r), rng.uniform(0.6 * r, w - 0.6 * r)
        theta = rng.uniform(0, np.pi)
        dy, dx = yy - cy, xx - cx
        if shape == "circle":
            return dy ** 2 + dx ** 2 <= r ** 2
        if shape == "ring":
            d2 = dy ** 2 + dx ** 2
            return (d2 <= r ** 2) & (d2 >= (0.55 * r) ** 2)
        u = dx * np.cos(theta) + dy * np.sin(theta)
        v = -dx * np.sin(theta) + dy * np.cos(theta)
        if shape == "rectangle":
            return (np.abs(u) <= r) & (np.abs(v) <= r * rng.uniform(0.5, 0.8))
        # triangle: inside all three edges of an equilateral triangle with circumradius 1.2 r
        inside = np.ones_like(u, dtype=bool)
        for k in range(3):
            a = 2 * np.pi * k / 3
            inside &= u * np.cos(a) + v * np.sin(a) <= 0.6 * r
        return inside

    def _texture(self, rng: np.random.Generator, texture: str, yy: np.ndarray, xx: np.ndarray) -> np.ndarray:
        scale = max(1.0, min(self.size) / 128)
        phi = rng.uniform(0, np.pi)
        u = xx * np.cos(phi) + yy * np.sin(phi) + rng.uniform(0, 100)
        v = -xx * np.sin(phi) + yy * np.cos(phi) + rng.uniform(0, 100)
        if texture == "striped":
            period = rng.uniform(6, 10) * scale
            return np.mod(u / period, 1.0) < 0.5
        if texture == "checkered":
            cell = rng.uniform(4, 7) * scale
            return (np.floor(u / cell) + np.floor(v / cell)) % 2 == 0
        period = rng.uniform(7, 10) * scale  # dotted
        fu, fv = np.mod(u / period, 1.0) - 0.5, np.mod(v / period, 1.0) - 0.5
        return fu ** 2 + fv ** 2 < 0.3 ** 2


# ------------------------------------------------------------------------------------------------- factory
DATASET_TYPES: Dict[str, Callable[..., SegDataset]] = {
    "folder": FolderDataset,
    "ade20k": ADE20K,
    "cityscapes": Cityscapes,
    "voc": PascalVOC,
    "voc_aug": PascalVOCAug,
    "pascal_context": PascalContext,
    "pascal_context_59": PascalContext,
    "coco_stuff164k": COCOStuff164k,
    "coco_stuff10k": COCOStuff10k,
    "camvid": CamVid,
    "synthetic": SyntheticShapes,
}


# Public layouts fix reduce_zero_label by their label convention; a config may restate it but not flip it.
LAYOUT_REDUCE_ZERO_LABEL = {"ade20k": True, "cityscapes": False, "voc": False, "voc_aug": False,
                            "pascal_context": False, "pascal_context_59": True, "coco_stuff164k": False,
                            "coco_stuff10k": True}


def build_dataset(type: str, root: Optional[PathLike], split: str, pipeline: Optional[Pipeline] = None,
                  **kwargs) -> SegDataset:
    """Build a dataset by type name (see DATASET_TYPES); `root` is ignored for "synthetic".

    Extra keyword arguments go to the dataset class (e.g. ``classes=``, ``seed=``, ``num_images=``)."""
    cls = DATASET_TYPES.get(type)
    if cls is None:
        raise ConfigError(f"unknown dataset type '{type}'. Known: {', '.join(DATASET_TYPES)}")
    if type == "pascal_context_59":
        kwargs.setdefault("num_classes", 59)
    if type in LAYOUT_REDUCE_ZERO_LABEL and "reduce_zero_label" in kwargs:
        fixed = LAYOUT_REDUCE_ZERO_LABEL[type] or (type == "pascal_context" and kwargs.get("num_classes") == 59)
        if bool(kwargs.pop("reduce_zero_label")) != fixed:
            raise ConfigError(f"dataset type '{type}' always uses reduce_zero_label={fixed} (its label convention); "
                              "remove the reduce_zero_label setting")
    if type != "synthetic":
        if root is None or str(root) == "":
            raise ConfigError(f"dataset type '{type}' needs a root folder (data.root)")
        kwargs["root"] = root
    accepted = inspect.signature(cls.__init__).parameters
    has_var_kw = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in accepted.values())
    if type == "camvid":  # CamVid forwards extra options to FolderDataset
        accepted = {**inspect.signature(FolderDataset.__init__).parameters, **accepted}
        has_var_kw = False
    unknown = sorted(k for k in kwargs if k not in accepted)
    if unknown and not has_var_kw:
        names = [n for n in accepted if n not in ("self", "kwargs", "split", "pipeline", "root")]
        raise ConfigError(f"dataset type '{type}' does not take {', '.join(unknown)}; "
                          f"it accepts: {', '.join(names)}")
    return cls(split=split, pipeline=pipeline, **kwargs)
