"""`vitseg train`, `vitseg eval`, `vitseg config show` and `vitseg demo`.

    vitseg train configs/segformer/segformer_b0_ade20k_512x512_160k.yaml --set train.max_iters=1000
    vitseg train CFG --resume                    # continue the newest checkpoint in the work dir
    torchrun --nproc-per-node 2 -m vitseg train CFG            # the same command, DDP
    vitseg eval CFG work_dirs/x/checkpoints/best.safetensors --mode slide --crop 512 512 --stride 341 341 --flip
    vitseg eval work_dirs/x/checkpoints/best.safetensors       # settings from the weights' metadata
"""
from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from ..config import Config, config_from_dict, dump_config, load_config
from ..errors import CheckpointError, ConfigError
from ..logging import logger

TTA_SCALES = [0.5, 0.75, 1.0, 1.25, 1.5, 1.75]
DEMO_CONFIG = Path(__file__).resolve().parents[2] / "configs" / "demo" / "segformer_b0_synthetic.yaml"


def _add_set(p: argparse.ArgumentParser) -> None:
    p.add_argument("--set", "--cfg-options", dest="overrides", nargs="+", action="extend", default=[],
                   metavar="KEY=VALUE", help="override config keys, e.g. --set optim.lr=1e-4 train.max_iters=2000 "
                   "(unknown keys are errors; HF names such as max_steps=... are accepted)")


def add_parser(sub) -> None:
    fmt = argparse.RawDescriptionHelpFormatter
    p = sub.add_parser("train", help="train a model from a YAML recipe (also under torchrun for DDP)",
                       formatter_class=fmt, description=(
                           "Train as the recipe says. Writes config.yaml, env.txt, log.txt, metrics.jsonl/.csv, "
                           "checkpoints/ (step_*.pt, latest, best.safetensors) to the work dir.\n"
                           "Multi-process: torchrun --nproc-per-node N -m vitseg train CONFIG (gloo on CPU, NCCL "
                           "on CUDA); the global batch is batch_size_per_device x N x grad_accum."))
    p.add_argument("config", help="YAML recipe, e.g. configs/segformer/segformer_b0_ade20k_512x512_160k.yaml")
    p.add_argument("--work-dir", default=None, help="output folder (default: work_dirs/<config name>)")
    p.add_argument("--resume", nargs="?", const="auto", default=None, metavar="auto|PATH",
                   help="continue a run: 'auto' (the default when the flag is given alone) picks the newest "
                   "checkpoint in the work dir; or give a step_*.pt file. The resumed run equals an "
                   "uninterrupted one.")
    _add_set(p)
    p.add_argument("--amp", choices=("off", "bf16", "fp16"), default=None,
                   help="mixed precision: bf16 autocast (CPU or CUDA) or fp16 with loss scaling (CUDA only)")
    p.add_argument("--seed", type=int, default=None, help="random seed (train.seed)")
    p.add_argument("--deterministic", action="store_true", help="use deterministic algorithms (slower on CUDA)")
    p.add_argument("--device", default=None, help="cpu, cuda or auto (train.device)")
    p.add_argument("--workers", type=int, default=None, help="data loader processes per device (train.workers)")
    p.set_defaults(func=cmd_train)

    p = sub.add_parser("eval", help="score a checkpoint on a dataset split (mIoU, per-class IoU)",
                       formatter_class=fmt, description=(
                           "Evaluate weights (.safetensors from training or `vitseg convert`, or a step_*.pt "
                           "training state) on the config's validation split and print a per-class table.\n"
                           "  vitseg eval CONFIG CHECKPOINT [options]\n"
                           "  vitseg eval CHECKPOINT [options]      (config taken from the weights' metadata)"))
    p.add_argument("target", help="YAML recipe, or a checkpoint whose metadata holds its training config")
    p.add_argument("checkpoint", nargs="?", default=None,
                   help="weights to score (default with a config: <work_dir>/checkpoints/best.safetensors)")
    p.add_argument("--split", default=None, help="dataset split to score (default: data.val_split)")
    p.add_argument("--mode", choices=("whole", "slide"), default=None, help="whole-image or sliding-window inference")
    p.add_argument("--crop", nargs=2, type=int, metavar=("H", "W"), default=None, help="slide window size")
    p.add_argument("--stride", nargs=2, type=int, metavar=("H", "W"), default=None, help="slide window stride")
    p.add_argument("--scales", nargs="+", default=None, metavar="S",
                   help="test scales, e.g. --scales 0.5 0.75 1 1.25 (or 0.5,0.75,1,1.25); probabilities averaged")
    p.add_argument("--flip", action="store_true", help="also average horizontally flipped predictions")
    p.add_argument("--tta", action="store_true", help=f"multi-scale + flip preset: scales {TTA_SCALES}, --flip")
    p.add_argument("--out", default=None, help="results JSON path (default: <work_dir>/eval/results.json)")
    p.add_argument("--show-dir", default=None, help="also write coloured predictions/overlays here")
    p.add_argument("--visualize", type=int, default=0, metavar="N",
                   help="write image | ground truth | prediction panels for the first N images, a confusion-"
                   "matrix plot and a per-class IoU plot (to --show-dir, default <work_dir>/eval/vis; "
                   "plots need matplotlib: pip install vitseg[viz])")
    p.add_argument("--device", default=None, help="cpu, cuda or auto")
    p.add_argument("--workers", type=int, default=None, help="data loader processes")
    _add_set(p)
    p.set_defaults(func=cmd_eval)

    p = sub.add_parser("config", help="inspect configs: `vitseg config show CONFIG`",
                       description="Config utilities.")
    csub = p.add_subparsers(dest="config_command", metavar="ACTION")
    show = csub.add_parser("show", help="print the fully resolved config (after --set overrides)",
                           description="Load a recipe, apply overrides, check every key, print the result as YAML.")
    show.add_argument("config", help="YAML recipe")
    _add_set(show)
    show.set_defaults(func=cmd_config_show)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])

    p = sub.add_parser("demo", help="train SegFormer-B0 on synthetic shapes in a few CPU minutes, evaluate, predict",
                       description="Train segformer_b0 from scratch on the built-in SyntheticShapes data (no "
                       "download), evaluate it (prints mIoU beside the chance level) and write coloured "
                       "predictions with overlays to <work_dir>/predictions.")
    p.add_argument("--config", default=str(DEMO_CONFIG), help="demo recipe (default: configs/demo/...)")
    p.add_argument("--work-dir", default=None, help="output folder (default: work_dirs/demo)")
    p.add_argument("--num-predictions", type=int, default=8, help="validation images to draw")
    _add_set(p)
    p.set_defaults(func=cmd_demo)


# ---------------------------------------------------------------------------------------------------- train
def cmd_train(args) -> int:
    from .train import train
    overrides = list(args.overrides)
    for flag, key in (("amp", "train.amp"), ("seed", "train.seed"), ("device", "train.device"),
                      ("workers", "train.workers"), ("work_dir", "work_dir")):
        value = getattr(args, flag)
        if value is not None:
            overrides.append(f"{key}={value}")
    if args.deterministic:
        overrides.append("train.deterministic=true")
    cfg = load_config(args.config, overrides)
    summary = train(cfg, resume=args.resume)
    if summary["rank"] == 0 and summary["best"].get("value") is not None:
        logger.info(f"best {summary['best']['metric']} {summary['best']['value']:.2f} at iteration "
                    f"{summary['best']['iteration']}: {Path(cfg.work_dir) / 'checkpoints' / 'best.safetensors'}")
    return 0


# ----------------------------------------------------------------------------------------------------- eval
def _is_config(path: str) -> bool:
    return Path(path).suffix.lower() in (".yaml", ".yml")


def _load_for_eval(args) -> tuple[Config, object]:
    """(config, model) from CONFIG [CHECKPOINT] or CHECKPOINT alone."""
    from ..weights import load_checkpoint, read_weights
    from .checkpoint import check_num_classes, load_state
    from .train import build_model
    ckpt_path = args.checkpoint
    cfg = None
    if _is_config(args.target):
        cfg = load_config(args.target, args.overrides)
        ckpt_path = ckpt_path or str(Path(cfg.work_dir) / "checkpoints" / "best.safetensors")
    else:
        if ckpt_path is not None:
            raise ConfigError(f"eval: '{args.target}' is not a .yaml config; use `vitseg eval CONFIG CHECKPOINT` "
                              "or `vitseg eval CHECKPOINT`")
        ckpt_path = args.target
    path = Path(ckpt_path)
    if path.suffix == ".pt":
        state = load_state(path)
        if cfg is None:
            cfg = _config_from_saved(state.get("config"), path, args.overrides)
        check_num_classes(state, cfg.model.num_classes, path)
        cfg.model.pretrained = None
        model = build_model(cfg)
        model.load_state_dict(state["model"])
        return cfg, model
    source = read_weights(path)
    meta = source.metadata or {}
    if cfg is None:
        cfg = _config_from_saved(meta.get("config"), path, args.overrides)
    check_num_classes(meta, cfg.model.num_classes, path)
    if meta.get("arch"):
        model = load_checkpoint(source)
    else:  # foreign weights: build the config's model and convert
        from ..models import create_model
        model = create_model(cfg.model.name, num_classes=cfg.model.num_classes, pretrained=source,
                             **cfg.model.overrides)
    return cfg, model


def _config_from_saved(saved, path, overrides) -> Config:
    if not saved:
        raise CheckpointError(f"{path}: holds no training config; pass one: vitseg eval CONFIG {path}")
    from ..config import _set, parse_override
    cfg = config_from_dict(saved, f"{path} (saved config)")
    for text in overrides:
        key, value = parse_override(text)
        _set(cfg, key, value, f"--set {text}")
    return cfg


def cmd_eval(args) -> int:
    import torch

    from ..data.transforms import TestPipeline
    from ..data import build_dataset
    from .dist import init_distributed
    from .evaluate import format_table, save_metrics
    from .predict_cli import parse_scales
    from .train import _dataset_kwargs, evaluate_model

    cfg, model = _load_for_eval(args)
    e = cfg.eval
    if args.mode:
        e.mode = args.mode
    if args.crop:
        e.crop = list(args.crop)
    if args.stride:
        e.stride = list(args.stride)
    if args.tta:
        e.scales, e.flip = list(TTA_SCALES), True
    if args.scales:
        e.scales = parse_scales(args.scales)
    if args.flip:
        e.flip = True
    if args.workers is not None:
        e.workers = args.workers
    if e.mode == "slide" and not e.crop:
        raise ConfigError("--mode slide needs a window: --crop H W (and optionally --stride H W)")
    info = init_distributed(args.device or "auto")
    d = cfg.data
    split = args.split or d.val_split
    dataset = build_dataset(d.type, d.root, split, TestPipeline(scale=d.test_scale, align_to=d.align_to,
                                                                mean=d.mean, std=d.std),
                            **_dataset_kwargs(cfg))
    model.to(info.device).eval()
    with torch.inference_mode():
        metrics = evaluate_model(model, dataset, cfg, info, progress=True,
                                 return_confusion=bool(args.visualize))
    if info.is_main:
        names = getattr(dataset, "classes", None) or getattr(model, "class_names", None)
        print(format_table(metrics, names))
        out = Path(args.out) if args.out else Path(cfg.work_dir) / "eval" / "results.json"
        written = save_metrics(metrics, out, names)
        print(f"mIoU {metrics['mIoU']:.2f}  aAcc {metrics['aAcc']:.2f}  mAcc {metrics['mAcc']:.2f}  "
              f"({metrics.get('num_images', len(dataset))} images, {split} split) -> {written}")
        if args.show_dir and not args.visualize:
            _draw_predictions(model, dataset, cfg, Path(args.show_dir), len(dataset), info.device)
        if args.visualize:
            from ..tools import visualize
            vis_dir = Path(args.show_dir) if args.show_dir else Path(cfg.work_dir) / "eval" / "vis"
            names = list(names or [str(i) for i in range(cfg.model.num_classes)])
            files = _draw_predictions(model, dataset, cfg, vis_dir, args.visualize, info.device)
            files.append(visualize.plot_confusion(metrics["confusion"], names, vis_dir / "confusion.png"))
            files.append(visualize.plot_per_class_iou(metrics, names, vis_dir / "per_class_iou.png"))
            print(f"visualisations: {vis_dir} ({len(files)} files)")
    return 0


def _draw_predictions(model, dataset, cfg: Config, out_dir: Path, limit: int, device) -> list[Path]:
    """Coloured masks and overlays (+ image | truth | prediction panels) for the first `limit` samples."""
    import torch

    from ..tools import visualize
    from .inference import predict
    e = cfg.eval
    names = list(getattr(dataset, "classes", None) or model.class_names or
                 [str(i) for i in range(cfg.model.num_classes)])
    palette = getattr(dataset, "palette", None) or model.palette
    written = []
    model.eval()
    for i in range(min(limit, len(dataset))):
        sample = dataset[i]
        image, label = dataset.load(i)
        with torch.inference_mode():
            scores = predict(model, sample["image"][None].to(device), mode=e.mode, crop=e.crop, stride=e.stride,
                             scales=e.scales, flip=e.flip, out_size=tuple(label.shape[:2]))
        mask = scores.argmax(1)[0].cpu().numpy().astype(np.uint8)
        stem = dataset.sample_name(i) if hasattr(dataset, "sample_name") else f"{i:05d}"
        written += visualize.save_prediction(out_dir, stem, image, mask, palette, names, gt_mask=label)
    return written


# --------------------------------------------------------------------------------------------------- config
def cmd_config_show(args) -> int:
    cfg = load_config(args.config, args.overrides)
    sys.stdout.write(dump_config(cfg))
    return 0


# ----------------------------------------------------------------------------------------------------- demo
def cmd_demo(args) -> int:
    import time

    from .train import train
    if not Path(args.config).is_file():
        raise ConfigError(f"{args.config}: demo recipe not found; run from the repository root or pass "
                          "--config configs/demo/segformer_b0_synthetic.yaml")
    overrides = list(args.overrides) + ([f"work_dir={args.work_dir}"] if args.work_dir else [])
    cfg = load_config(args.config, overrides)
    start = time.perf_counter()
    summary = train(cfg)
    metrics, model = summary["metrics"], summary["model"]
    from .train import build_datasets
    val = build_datasets(cfg, splits=("val",))["val"]
    counts = np.zeros(cfg.model.num_classes, np.int64)
    for i in range(len(val)):
        counts += np.bincount(val.load_label(i).ravel(), minlength=256)[:cfg.model.num_classes]
    # Chance level: always predicting the most frequent class (IoU = its pixel share, others 0).
    chance = 100.0 * counts.max() / counts.sum() / cfg.model.num_classes
    out_dir = Path(cfg.work_dir) / "predictions"
    written = _draw_predictions(model, val, cfg, out_dir, args.num_predictions, next(model.parameters()).device)
    from .evaluate import format_table
    print(format_table(metrics, val.classes))
    print(f"\ndemo: mIoU {metrics['mIoU']:.1f}% on {len(val)} validation images after {summary['iteration']} "
          f"iterations (chance level, predicting the most frequent class everywhere: {chance:.1f}%); "
          f"{time.perf_counter() - start:.0f} s in total.")
    print(f"predictions and overlays: {out_dir} ({len(written)} files); weights: "
          f"{Path(cfg.work_dir) / 'checkpoints' / 'best.safetensors'}")
    if not math.isfinite(metrics["mIoU"]) or metrics["mIoU"] <= chance:
        logger.warning("the demo model did not beat the chance level; the run may have been cut short")
    return 0
