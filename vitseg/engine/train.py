"""The training loop, readable top to bottom (detectron2's plain_train_net style, no hook system).

    cfg = vitseg.config.load_config("configs/demo/segformer_b0_synthetic.yaml")
    summary = train(cfg)                       # or train(cfg, resume="auto")

Iteration-based: iteration i (0-based) takes the global batch perm_e[i' * G : (i' + 1) * G] of epoch e's
seeded permutation (i' = position in the epoch, G = batch per device x world size x grad_accum); its chunks of
`batch_size_per_device` go round-robin to ranks, then to accumulation steps. Batches therefore depend only on
(seed, iteration), so a resumed run sees exactly the data of an uninterrupted one, and a 2-process run with
batch B sees the same global batches as a 1-process run with grad_accum 2. Augmentation randomness comes
from each dataset's per-sample rng (seed, epoch, index); dropout/drop-path from the torch RNG, whose state
is saved in every checkpoint.
"""
from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import json
import math
import os
import platform
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from ..config import Config, config_to_dict, dump_config
from ..errors import ConfigError, DataError, TrainingError
from ..logging import logger
from ..weights import atomic_write
from .checkpoint import (CheckpointManager, check_num_classes, load_state, resolve_resume, rng_state,
                         save_best, set_rng_state)
from .dist import DistInfo, all_reduce_mean, gather_objects, init_distributed
from .optim import PolyWarmupSchedule, build_optimizer, clip_grad_norm


# ---------------------------------------------------------------------------------------------- data order
def epoch_plan(num_samples: int, seed: int, epoch: int, batch_size: int, world_size: int, grad_accum: int,
               rank: int) -> list[list[int]]:
    """This rank's micro-batches for one epoch, in (iteration, accumulation step) order; drops the tail."""
    gen = torch.Generator().manual_seed(seed * 100003 + epoch)
    perm = torch.randperm(num_samples, generator=gen).tolist()
    chunks_per_iter = world_size * grad_accum
    iters = num_samples // (batch_size * chunks_per_iter)
    plan = []
    for it in range(iters):
        base = it * chunks_per_iter * batch_size
        for step in range(grad_accum):
            c = step * world_size + rank
            plan.append(perm[base + c * batch_size: base + (c + 1) * batch_size])
    return plan


def iters_per_epoch(num_samples: int, batch_size: int, world_size: int, grad_accum: int) -> int:
    return num_samples // (batch_size * world_size * grad_accum)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


class ModelEMA:
    """Exponential moving average of a model's floating-point parameters and buffers."""

    def __init__(self, model: nn.Module, decay: float):
        self.decay = decay
        self.shadow = {k: v.detach().clone() for k, v in model.state_dict().items()}

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        for k, v in model.state_dict().items():
            if v.dtype.is_floating_point:
                self.shadow[k].mul_(self.decay).add_(v.detach(), alpha=1 - self.decay)
            else:
                self.shadow[k].copy_(v)

    def state_dict(self) -> dict:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict) -> None:
        self.decay = state["decay"]
        for k, v in state["shadow"].items():
            self.shadow[k].copy_(v)

    def copy_model(self, model: nn.Module) -> nn.Module:
        """A copy of `model` carrying the averaged weights (for evaluation and best.safetensors)."""
        averaged = copy.deepcopy(model)
        averaged.load_state_dict(self.shadow)
        return averaged


class _LossModule(nn.Module):
    """Makes `model.loss` the forward pass, so DistributedDataParallel synchronises its gradients."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, images: torch.Tensor, labels: torch.Tensor) -> dict:
        return self.model.loss(images, labels)


# ------------------------------------------------------------------------------------------------- logging
CSV_FIELDS = ["event", "iter", "epoch", "loss", "lr", "grad_norm", "iter_time", "eta_s", "aAcc", "mIoU", "mAcc"]


class RunLog:
    """log.txt, metrics.jsonl (+ metrics.csv mirror) and TensorBoard events; a no-op off rank 0."""

    def __init__(self, work_dir: Path, active: bool, tensorboard: bool, resume_iter: int | None):
        self.active = active
        self.jsonl, self.csv = work_dir / "metrics.jsonl", work_dir / "metrics.csv"
        self.tb = None
        self._file_handler = None
        if not active:
            return
        work_dir.mkdir(parents=True, exist_ok=True)
        if resume_iter is not None:
            self._truncate_after(resume_iter)
        self._file_handler = _add_file_log(work_dir / "log.txt")
        if tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
                self.tb = SummaryWriter(str(work_dir / "tb"))
            except (ImportError, ModuleNotFoundError):
                logger.info("tensorboard is not installed: skipping tb/ events (pip install tensorboard)")

    def _truncate_after(self, iteration: int) -> None:
        """Drop events a killed run logged after its last checkpoint, so the resumed curve has no repeats."""
        if not self.jsonl.is_file():
            return
        rows = [json.loads(line) for line in self.jsonl.read_text().splitlines() if line.strip()]
        keep = [r for r in rows if r.get("iter", 0) <= iteration]
        atomic_write(self.jsonl, lambda tmp: Path(tmp).write_text("".join(json.dumps(r) + "\n" for r in keep)))
        atomic_write(self.csv, lambda tmp: self._write_csv(tmp, keep))

    @staticmethod
    def _write_csv(path, rows) -> None:
        with open(path, "w", newline="") as f:
            w = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
            w.writeheader()
            w.writerows(rows)

    def event(self, row: dict) -> None:
        if not self.active:
            return
        with open(self.jsonl, "a") as f:
            f.write(json.dumps(row) + "\n")
        new = not self.csv.is_file()
        with open(self.csv, "a", newline="") as f:
            w = csv.DictWriter(f, CSV_FIELDS, extrasaction="ignore")
            if new:
                w.writeheader()
            w.writerow(row)
        if self.tb is not None:
            for k, v in row.items():
                if isinstance(v, (int, float)) and k not in ("iter", "epoch"):
                    self.tb.add_scalar(f"{row['event']}/{k}", v, row["iter"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()
        if self._file_handler is not None:
            logger.removeHandler(self._file_handler)
            self._file_handler.close()


def _add_file_log(path: Path):
    import logging
    handler = logging.FileHandler(path)
    handler.setFormatter(logging.Formatter("%(asctime)s %(message)s", "%Y-%m-%d %H:%M:%S"))
    logger.addHandler(handler)
    return handler


def _env_text(info: DistInfo) -> str:
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        sha = ""
    lines = [f"python: {sys.version.split()[0]}", f"platform: {platform.platform()}",
             f"torch: {torch.__version__}", f"numpy: {np.__version__}", f"device: {info.device}",
             f"cuda: {torch.cuda.get_device_name(info.device) if info.device.type == 'cuda' else 'none'}",
             f"threads: {torch.get_num_threads()}", f"world_size: {info.world_size}", f"git: {sha or 'unknown'}"]
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------------------------------------ building
def build_model(cfg: Config) -> nn.Module:
    from ..models import create_model
    return create_model(cfg.model.name, num_classes=cfg.model.num_classes, pretrained=cfg.model.pretrained,
                        **cfg.model.overrides)


def build_datasets(cfg: Config, splits=("train", "val")) -> dict:
    """Datasets named by the config, with the train/test pipelines it describes."""
    from ..data import build_dataset
    from ..data.transforms import TestPipeline, TrainPipeline
    d = cfg.data
    out = {}
    if "train" in splits:
        pipe = TrainPipeline(crop_size=d.crop_size, scale=d.scale, ratio_range=d.ratio_range,
                             cat_max_ratio=d.cat_max_ratio, flip_prob=d.flip_prob, photometric=d.photometric,
                             mean=d.mean, std=d.std)
        out["train"] = build_dataset(d.type, d.root, d.train_split, pipe, seed=cfg.train.seed,
                                     **_dataset_kwargs(cfg))
    if "val" in splits and d.val_split:
        pipe = TestPipeline(scale=d.test_scale, align_to=d.align_to, mean=d.mean, std=d.std)
        # No seed: evaluation data must not change with train.seed (it matters for generated data).
        out["val"] = build_dataset(d.type, d.root, d.val_split, pipe, **_dataset_kwargs(cfg))
    return out


def _dataset_kwargs(cfg: Config) -> dict:
    kw = dict(cfg.data.options)
    if cfg.data.type == "synthetic":  # generated data: as many classes as the model predicts
        kw.setdefault("num_classes", cfg.model.num_classes)
    if cfg.data.reduce_zero_label:
        kw["reduce_zero_label"] = True
    return kw


def _autocast(amp: str, device: torch.device):
    if amp == "off":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if amp == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def _check_config(cfg: Config, device: torch.device) -> None:
    t = cfg.train
    if t.amp == "fp16" and device.type != "cuda":
        raise ConfigError("train.amp=fp16 needs a CUDA device (GradScaler); use train.amp=bf16 on CPU")
    for name, value in (("train.batch_size_per_device", t.batch_size_per_device), ("train.grad_accum", t.grad_accum),
                        ("train.checkpoint_interval", t.checkpoint_interval), ("log.interval", cfg.log.interval)):
        if value < 1:
            raise ConfigError(f"{name} must be >= 1, got {value}")
    if t.ema is not None and not 0.0 < t.ema < 1.0:
        raise ConfigError(f"train.ema must be a decay in (0, 1) or null, got {t.ema}")


def _loader(dataset, batches: list[list[int]], workers: int, device: torch.device, seed: int) -> DataLoader:
    # A dedicated generator: creating the iterator must not consume the global torch RNG (exact resume).
    return DataLoader(dataset, batch_sampler=batches, num_workers=workers, pin_memory=device.type == "cuda",
                      generator=torch.Generator().manual_seed(seed), persistent_workers=False)


def evaluate_model(model: nn.Module, dataset, cfg: Config, info: DistInfo, progress: bool = False,
                   return_confusion: bool = False) -> dict:
    """Score `model` on this rank's unpadded shard; the confusion matrix is summed over ranks."""
    from .evaluate import evaluate
    shard = Subset(dataset, list(range(info.rank, len(dataset), info.world_size))) if info.enabled else dataset
    # Own generator: evaluating must not consume the global torch RNG that training (dropout) uses.
    loader = DataLoader(shard, batch_size=1, num_workers=cfg.eval.workers, generator=torch.Generator())
    e = cfg.eval
    was_training = model.training
    model.eval()
    try:
        return evaluate(model, loader, mode=e.mode, crop=e.crop, stride=e.stride, scales=tuple(e.scales),
                        flip=e.flip, device=info.device, num_classes=cfg.model.num_classes,
                        class_names=getattr(dataset, "classes", None), progress=progress and info.is_main,
                        return_confusion=return_confusion)
    finally:
        model.train(was_training)


def eval_settings(cfg: Config) -> dict:
    e = cfg.eval
    return {"mode": e.mode, "crop": e.crop, "stride": e.stride, "scales": e.scales, "flip": e.flip,
            "test_scale": cfg.data.test_scale, "align_to": cfg.data.align_to}


# ----------------------------------------------------------------------------------------------- the loop
def train(cfg: Config, resume: str | None = None, train_set=None, val_set=None) -> dict:
    """Train as the config says; returns {"iteration", "losses", "metrics", "best", "work_dir", "model", "rank"}.

    resume: None, "auto" (newest checkpoint in the work dir, if any) or a checkpoint path.
    train_set / val_set: datasets to use instead of the config's (val_set=None and no data.val_split: no eval).
    """
    info = init_distributed(cfg.train.device)
    device = info.device
    _check_config(cfg, device)
    work_dir = Path(cfg.work_dir or "work_dirs/run")
    if cfg.train.deterministic:
        torch.use_deterministic_algorithms(True, warn_only=True)
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.backends.cudnn.benchmark = False

    # Data
    if train_set is None:
        sets = build_datasets(cfg)
        train_set, val_set = sets["train"], sets.get("val")
    B, accum, world = cfg.train.batch_size_per_device, cfg.train.grad_accum, info.world_size
    ipe = iters_per_epoch(len(train_set), B, world, accum)
    if ipe == 0:
        raise DataError(f"the training set has {len(train_set)} samples, fewer than one global batch "
                        f"(batch_size_per_device {B} x {world} processes x grad_accum {accum}); lower "
                        "train.batch_size_per_device or train.grad_accum")
    max_iters = cfg.train.epochs * ipe if cfg.train.epochs else cfg.train.max_iters
    for split, dataset in (("train", train_set), ("val", val_set)):
        classes = getattr(dataset, "classes", None)
        if classes is not None and len(classes) != cfg.model.num_classes:
            raise ConfigError(f"the {split} dataset has {len(classes)} classes but model.num_classes is "
                              f"{cfg.model.num_classes}; set model.num_classes={len(classes)} (or fix the "
                              "dataset's classes.txt)")

    # Model, optimiser, schedule (seeded identically on every rank so that all start from the same weights)
    seed_everything(cfg.train.seed)
    model = build_model(cfg)
    if getattr(train_set, "classes", None) is not None and len(train_set.classes) == cfg.model.num_classes:
        model.class_names = list(train_set.classes)
    if getattr(train_set, "palette", None) is not None:
        model.palette = [tuple(int(v) for v in c) for c in train_set.palette]
    if info.enabled and device.type == "cuda" and cfg.train.sync_bn:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    model.to(device).train()
    optimizer = build_optimizer(model, cfg.optim)
    schedule = PolyWarmupSchedule(optimizer, cfg.train, cfg.optim.lr, max_iters)
    scaler = torch.amp.GradScaler(device.type, enabled=cfg.train.amp == "fp16")
    ema = ModelEMA(model, cfg.train.ema) if cfg.train.ema else None
    best = {"metric": cfg.eval.metric, "value": None, "iteration": None}
    ckpts = CheckpointManager(work_dir / "checkpoints", cfg.log.keep_last)

    start_iter = 0
    resume_path = resolve_resume(resume, work_dir)
    state = None
    if resume_path is not None:
        state = load_state(resume_path)
        check_num_classes(state, cfg.model.num_classes, resume_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        scaler.load_state_dict(state["scaler"])
        if ema is not None and state.get("ema"):
            ema.load_state_dict(state["ema"])
        best = state.get("best", best)
        start_iter = int(state["iteration"])
        if state.get("world_size", world) != world:
            logger.warning(f"{resume_path}: saved with {state['world_size']} processes, resuming with {world}: "
                           "data order and RNG streams differ from the original run")
    elif resume == "auto":
        logger.info(f"--resume auto: no checkpoint in {work_dir / 'checkpoints'}, starting from scratch")

    log = RunLog(work_dir, info.is_main, cfg.log.tensorboard, start_iter if state is not None else None)
    if info.is_main:
        text = dump_config(cfg)
        digest = hashlib.sha256(text.encode()).hexdigest()[:12]
        atomic_write(work_dir / "config.yaml", lambda tmp: Path(tmp).write_text(f"# config hash {digest}\n{text}"))
        atomic_write(work_dir / "env.txt", lambda tmp: Path(tmp).write_text(_env_text(info)))
        logger.info(f"training {cfg.model.name} for {max_iters} iterations ({ipe} per epoch, global batch "
                    f"{B * world * accum}) on {device} x{world}; work dir {work_dir}"
                    + (f"; resumed from {resume_path} at iteration {start_iter}" if state is not None else ""))

    net: nn.Module = _LossModule(model)
    if info.enabled:
        net = nn.parallel.DistributedDataParallel(
            net, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=cfg.train.find_unused_parameters)

    # RNG last: building everything above consumed it; an uninterrupted run is in this state now.
    if state is not None:
        per_rank = state.get("rng_per_rank") or [state["rng"]]
        set_rng_state(per_rank[info.rank] if info.rank < len(per_rank) else state["rng"])
    else:
        torch.manual_seed(cfg.train.seed + info.rank)  # ranks draw different dropout masks

    def micro_batches(first_iter: int):
        it = first_iter
        while True:
            epoch, pos = divmod(it, ipe)
            if hasattr(train_set, "set_epoch"):
                train_set.set_epoch(epoch)
            plan = epoch_plan(len(train_set), cfg.train.seed, epoch, B, world, accum, info.rank)[pos * accum:]
            yield from _loader(train_set, plan, cfg.train.workers, device, cfg.train.seed * 1000 + epoch)
            it = (epoch + 1) * ipe

    from tqdm.auto import tqdm
    bar = tqdm(total=max_iters, initial=start_iter, dynamic_ncols=True, desc="train",
               disable=not (info.is_main and cfg.log.progress and sys.stderr.isatty()))
    losses: list[float] = []
    window: list[float] = []
    metrics: dict = {}
    t_start, it_start = time.perf_counter(), start_iter
    stream = micro_batches(start_iter)
    try:
        for it in range(start_iter, max_iters):
            schedule.apply(it)
            step_loss = 0.0
            for micro in range(accum):
                batch = next(stream)
                images = batch["image"].to(device, non_blocking=True)
                labels = batch["label"].to(device, non_blocking=True)
                sync = contextlib.nullcontext() if (not info.enabled or micro == accum - 1) else net.no_sync()
                with sync:
                    with _autocast(cfg.train.amp, device):
                        out = net(images, labels)
                    loss = out["loss"].float() / accum
                    if not torch.isfinite(loss):
                        raise TrainingError(
                            f"loss is {loss.item()} at iteration {it + 1} (micro-batch {micro + 1}/{accum}). "
                            f"Lower the learning rate (optim.lr={cfg.optim.lr}), set train.grad_clip, or turn "
                            f"AMP off (train.amp=off, now {cfg.train.amp}). Checkpoints and logs written so far "
                            f"in {work_dir} are intact; resume with --resume auto after changing the config.")
                    scaler.scale(loss).backward()
                step_loss += loss.item()
            scaler.unscale_(optimizer)
            grad_norm = clip_grad_norm(model.parameters(), cfg.train.grad_clip)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            if ema is not None:
                ema.update(model)
            done = it + 1
            losses.append(step_loss)
            window.append(step_loss)
            bar.update(1)
            bar.set_postfix(loss=f"{step_loss:.4f}", lr=f"{schedule.lr:.2e}")

            if done % cfg.log.interval == 0 or done == max_iters:
                mean_loss = all_reduce_mean(sum(window) / len(window), info)
                window = []
                per_iter = (time.perf_counter() - t_start) / max(done - it_start, 1)
                eta = per_iter * (max_iters - done)
                row = {"event": "train", "iter": done, "epoch": it // ipe, "loss": mean_loss, "lr": schedule.lr,
                       "grad_norm": grad_norm, "iter_time": per_iter, "eta_s": eta}
                log.event(row)
                if info.is_main:
                    logger.info(f"iter {done}/{max_iters} loss {mean_loss:.4f} lr {schedule.lr:.3e} "
                                f"grad_norm {grad_norm:.3f} {per_iter:.3f}s/it eta {_fmt_time(eta)}")

            interval = cfg.eval.interval
            if val_set is not None and ((interval and done % interval == 0) or done == max_iters):
                eval_model = ema.copy_model(model) if ema is not None else model
                metrics = evaluate_model(eval_model, val_set, cfg, info)
                if info.is_main:
                    from .evaluate import save_metrics
                    save_metrics(metrics, work_dir / "eval" / f"iter_{done:07d}")
                row = {"event": "eval", "iter": done, "epoch": it // ipe,
                       **{k: float(metrics[k]) for k in ("aAcc", "mIoU", "mAcc") if k in metrics}}
                log.event(row)
                value = metrics.get(cfg.eval.metric)
                if info.is_main:
                    logger.info(f"eval iter {done}: " + " ".join(f"{k} {row[k]:.2f}" for k in ("aAcc", "mIoU", "mAcc")
                                                                  if k in row))
                if value is not None and (best["value"] is None or value > best["value"]):
                    best = {"metric": cfg.eval.metric, "value": float(value), "iteration": done}
                    if info.is_main:
                        save_best(eval_model, work_dir / "checkpoints", metrics, done, cfg.eval.metric,
                                  config_to_dict(cfg), eval_settings(cfg))

            if done % cfg.train.checkpoint_interval == 0 or done == max_iters:
                rngs = gather_objects(rng_state(), info)
                if info.is_main:
                    ckpts.save(done, {
                        "model": model.state_dict(), "optimizer": optimizer.state_dict(),
                        "schedule": schedule.state_dict(), "scaler": scaler.state_dict(),
                        "ema": ema.state_dict() if ema is not None else None,
                        "rng": rngs[0], "rng_per_rank": rngs, "iteration": done, "epoch": done // ipe,
                        "sampler": {"seed": cfg.train.seed, "epoch": done // ipe, "position": done % ipe,
                                    "iters_per_epoch": ipe, "global_batch": B * world * accum},
                        "num_classes": cfg.model.num_classes, "arch": cfg.model.name, "world_size": world,
                        "best": best, "config": config_to_dict(cfg)})
    finally:
        bar.close()
        log.close()

    if info.is_main and max_iters > start_iter:
        final = ema.copy_model(model) if ema is not None else model
        save_best(final, work_dir / "checkpoints", metrics, max_iters, cfg.eval.metric, config_to_dict(cfg),
                  eval_settings(cfg), name="last")
    return {"iteration": max_iters, "losses": losses, "metrics": metrics, "best": best,
            "work_dir": str(work_dir), "model": model, "rank": info.rank}


def _fmt_time(seconds: float) -> str:
    if not math.isfinite(seconds):
        return "?"
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"
