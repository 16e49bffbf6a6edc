"""Segmentation metrics from a streaming confusion matrix: IoU and Acc per class, aAcc, mIoU, mAcc.

The confusion matrix is accumulated batch by batch (no per-image predictions are kept) and summed across
processes, so a multi-process evaluation scores exactly like a single-process one over the same images.

Definitions (as in mmseg, the code behind every paper here), with TP/FP/FN counted over labelled pixels:
    IoU_c = TP / (TP + FP + FN)      Acc_c = TP / (TP + FN)      aAcc = sum TP / labelled pixels
A class absent from both prediction and ground truth has IoU NaN and is left out of mIoU; a class absent
from the ground truth has Acc NaN (0/0) and is left out of mAcc. All values are percentages.
"""
from __future__ import annotations

import csv
import io
import json
import math
import sys
from pathlib import Path

import numpy as np
import torch

from ..errors import ConfigError, DataError
from .inference import predict


def _dist_rank() -> int | None:
    """Rank when torch.distributed is initialised, else None."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return None


class ConfusionMatrix:
    """K x K pixel counts, rows = ground truth, columns = prediction; pixels labelled `ignore_index` skipped."""

    def __init__(self, num_classes: int, ignore_index: int = 255, device="cpu"):
        if num_classes < 1:
            raise ConfigError(f"num_classes must be >= 1, got {num_classes}")
        self.num_classes = int(num_classes)
        self.ignore_index = ignore_index
        self.matrix = torch.zeros(self.num_classes, self.num_classes, dtype=torch.int64, device=device)

    def reset(self) -> None:
        self.matrix.zero_()

    def update(self, pred: torch.Tensor, label: torch.Tensor) -> None:
        """Add one batch: pred and label are integer class maps of the same shape (e.g. [B,H,W])."""
        if pred.shape != label.shape:
            raise DataError(f"prediction shape {tuple(pred.shape)} differs from label shape {tuple(label.shape)}")
        k = self.num_classes
        pred = pred.to(self.matrix.device, torch.int64)
        label = label.to(self.matrix.device, torch.int64)
        valid = label != self.ignore_index
        label, pred = label[valid], pred[valid]
        if label.numel() and (label.min() < 0 or label.max() >= k):
            bad = sorted(label[(label < 0) | (label >= k)].unique().tolist())[:10]
            raise DataError(f"labels contain values {bad} outside 0..{k - 1} (and not {self.ignore_index} = "
                            "ignore). Check num_classes or the dataset's label remap (e.g. reduce_zero_label).")
        if pred.numel() and (pred.min() < 0 or pred.max() >= k):
            raise DataError(f"predictions contain class ids outside 0..{k - 1}: the model predicts more classes "
                            f"than num_classes={k}")
        self.matrix += torch.bincount(label * k + pred, minlength=k * k).view(k, k)

    def all_reduce(self) -> "ConfusionMatrix":
        """Sum the counts over all processes (a no-op unless torch.distributed is initialised)."""
        if _dist_rank() is not None:
            torch.distributed.all_reduce(self.matrix, op=torch.distributed.ReduceOp.SUM)
        return self

    def compute(self) -> dict:
        """aAcc, mIoU, mAcc and per-class IoU/Acc lists, all in percent (NaN where undefined)."""
        m = self.matrix.detach().cpu().double().numpy()
        tp = np.diag(m)
        gt = m.sum(axis=1)
        pr = m.sum(axis=0)
        union = gt + pr - tp
        with np.errstate(divide="ignore", invalid="ignore"):
            iou = np.where(union > 0, tp / union, np.nan) * 100
            acc = np.where(gt > 0, tp / gt, np.nan) * 100
        total = gt.sum()
        return {
            "aAcc": float(tp.sum() / total * 100) if total > 0 else math.nan,
            "mIoU": _nanmean(iou),
            "mAcc": _nanmean(acc),
            "IoU": [float(v) for v in iou],
            "Acc": [float(v) for v in acc],
            "num_classes": self.num_classes,
            "num_pixels": int(total),
        }


def _nanmean(values: np.ndarray) -> float:
    values = values[~np.isnan(values)]
    return float(values.mean()) if values.size else math.nan


def evaluate(model: torch.nn.Module, loader, mode: str = "whole", crop=None, stride=None, scales=(1.0,),
             flip: bool = False, device=None, num_classes: int | None = None, ignore_index: int = 255,
             class_names: list[str] | None = None, progress: bool = True, return_confusion: bool = False) -> dict:
    """Score `model` on every batch of `loader` and return the metrics of `ConfusionMatrix.compute()`.

    loader yields dicts {"image": float [B,3,H,W], "label": long [B,H,W], ...}; predictions are made with
    `inference.predict` at the label's resolution. device defaults to the model's (the model must already be
    there). Under torch.distributed each process scores its own shard and the counts are summed, so every
    rank returns the same metrics. The model is put in eval mode and its previous mode restored.
    With return_confusion=True the result also holds "confusion" (int64 numpy [K,K], rows = ground truth).
    """
    if device is None:
        param = next(model.parameters(), None)
        device = param.device if param is not None else torch.device("cpu")
    core = getattr(model, "module", model)  # a DDP wrapper keeps the attributes on .module
    num_classes = num_classes or getattr(core, "num_classes", None)
    if not num_classes:
        raise ConfigError("evaluate needs num_classes (the model has no num_classes attribute)")
    class_names = class_names or getattr(core, "class_names", None)
    if class_names is not None and len(class_names) != num_classes:
        raise ConfigError(f"{len(class_names)} class names for {num_classes} classes")
    rank = _dist_rank()
    show = progress and (rank in (None, 0)) and sys.stderr.isatty()
    cm = ConfusionMatrix(num_classes, ignore_index, device)
    was_training = model.training
    model.eval()
    num_images = 0
    try:
        from tqdm import tqdm
        total = len(loader) if hasattr(loader, "__len__") else None
        for batch in tqdm(loader, total=total, desc="eval", unit="batch", disable=not show, dynamic_ncols=True):
            if not isinstance(batch, dict) or "image" not in batch or "label" not in batch:
                raise DataError("evaluate expects batches as dicts with 'image' [B,3,H,W] and 'label' [B,H,W]")
            images = batch["image"].to(device, non_blocking=True)
            labels = batch["label"]
            if labels.dim() == 2:
                labels = labels.unsqueeze(0)
            scores = predict(model, images, mode=mode, crop=crop, stride=stride, scales=scales, flip=flip,
                             out_size=tuple(labels.shape[-2:]))
            cm.update(scores.argmax(dim=1), labels)
            num_images += images.shape[0]
    finally:
        model.train(was_training)
    cm.all_reduce()
    if rank is not None:
        count = torch.tensor([num_images], dtype=torch.int64, device=device)
        torch.distributed.all_reduce(count)
        num_images = int(count.item())
    metrics = cm.compute()
    metrics["num_images"] = num_images
    metrics["eval"] = {"mode": mode, "crop": _plain(crop), "stride": _plain(stride),
                       "scales": [float(s) for s in scales], "flip": bool(flip)}
    if class_names is not None:
        metrics["class_names"] = list(class_names)
    if return_confusion:
        metrics["confusion"] = cm.matrix.cpu().numpy()
    return metrics


def _plain(value):
    return list(value) if isinstance(value, (tuple, list)) else value


def _fmt(value: float) -> str:
    return "-" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.2f}"


def _names(metrics: dict, class_names) -> list[str]:
    k = len(metrics["IoU"])
    names = class_names or metrics.get("class_names") or [str(i) for i in range(k)]
    if len(names) != k:
        raise ConfigError(f"{len(names)} class names for {k} classes")
    return list(names)


def format_table(metrics: dict, class_names: list[str] | None = None) -> str:
    """A per-class table (IoU and Acc in percent, '-' where undefined) followed by aAcc / mIoU / mAcc."""
    names = _names(metrics, class_names)
    width = max([len("Class")] + [len(n) for n in names])
    rule = "+-" + "-" * width + "-+--------+--------+"
    lines = [rule, f"| {'Class':<{width}} |    IoU |    Acc |", rule]
    for name, iou, acc in zip(names, metrics["IoU"], metrics["Acc"]):
        lines.append(f"| {name:<{width}} | {_fmt(iou):>6} | {_fmt(acc):>6} |")
    lines.append(rule)
    lines.append(f"aAcc {_fmt(metrics['aAcc'])}   mIoU {_fmt(metrics['mIoU'])}   mAcc {_fmt(metrics['mAcc'])}")
    return "\n".join(lines)


def _json_safe(value):
    """NaN -> null (JSON has no NaN), numpy scalars -> Python numbers."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(value) else float(value)
    if isinstance(value, np.integer):
        return int(value)
    return value


def save_metrics(metrics: dict, out, class_names: list[str] | None = None, confusion=None) -> Path:
    """Write the metrics as JSON (NaN as null). Returns the JSON path.

    out: a path ending in .json (that one file is written), or a directory, which receives results.json,
    per_class.csv (class, IoU, Acc) and, when a confusion matrix is given or held in metrics["confusion"],
    confusion.npy (int64 [K,K], rows = ground truth, columns = prediction).
    """
    from ..weights import atomic_write
    out = Path(out)
    metrics = dict(metrics)
    held = metrics.pop("confusion", None)
    confusion = held if confusion is None else confusion
    names = _names(metrics, class_names)
    record = dict(metrics, class_names=names,
                  per_class={n: {"IoU": i, "Acc": a} for n, i, a in zip(names, metrics["IoU"], metrics["Acc"])})
    text = json.dumps(_json_safe(record), indent=2)
    json_path = out if out.suffix.lower() == ".json" else out / "results.json"
    atomic_write(json_path, lambda tmp: Path(tmp).write_text(text + "\n"))
    if json_path is out:
        return json_path
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["class_id", "class", "IoU", "Acc"])
    for i, (n, iou, acc) in enumerate(zip(names, metrics["IoU"], metrics["Acc"])):
        writer.writerow([i, n, _csv_number(iou), _csv_number(acc)])
    atomic_write(out / "per_class.csv", lambda tmp: Path(tmp).write_text(buf.getvalue()))
    if confusion is not None:
        array = confusion.detach().cpu().numpy() if isinstance(confusion, torch.Tensor) else np.asarray(confusion)
        atomic_write(out / "confusion.npy", lambda tmp: _save_npy(tmp, array.astype(np.int64)))
    return json_path


def _csv_number(value) -> str:
    return "" if value is None or math.isnan(value) else f"{value:.4f}"


def _save_npy(path: str, array: np.ndarray) -> None:
    with open(path, "wb") as f:  # a file object: np.save would append .npy to the temp name
        np.save(f, array, allow_pickle=False)
