"""`vitseg zoo`, `vitseg export`, `vitseg robustness`, `vitseg bench`."""
from __future__ import annotations

import json
from pathlib import Path

from ..errors import CheckpointError, ConfigError

SOURCE_HELP = ("a vitseg .safetensors checkpoint (its metadata names the architecture) or a registered model "
               "name for random initialisation (see `vitseg list`)")


def add_parser(sub) -> None:
    p = sub.add_parser("zoo", help="table of every model: measured params/MACs/FLOPs beside the paper's",
                       description="Print the model zoo: every registered model's parameters, MACs and FLOPs at "
                       "its paper input size and class count (torch.utils.flop_counter, attention included), "
                       "the paper's params/GFLOPs/mIoU beside them and the ratios. Figures are read from "
                       "vitseg/tools/zoo_figures.json; models missing there are measured and added.")
    p.add_argument("--pattern", default="*", help="shell-style filter on model names, e.g. 'segformer_*'")
    p.add_argument("--markdown", metavar="PATH", default=None, help="also write the table as Markdown "
                   "(e.g. docs/model_zoo.md)")
    p.add_argument("--update", action="store_true", help="re-measure every matching model and rewrite "
                   "zoo_figures.json (slow for large models)")
    p.set_defaults(func=cmd_zoo)

    p = sub.add_parser("export", help="export a model to ONNX and check it in onnxruntime",
                       description="Export the inference graph (training-only modules stripped) to ONNX with "
                       "dynamic batch, height and width, run onnx.checker, then compare onnxruntime with PyTorch "
                       "on random inputs at the export size and at a second size (max-abs difference printed; "
                       "exit code 4 if it exceeds the tolerance).")
    p.add_argument("checkpoint", nargs="?", default=None, help="vitseg .safetensors checkpoint")
    p.add_argument("--model", default=None, help="registered model name to export with random weights instead "
                   "of a checkpoint")
    p.add_argument("--num-classes", type=int, default=None, help="class count for --model (default 150)")
    p.add_argument("--onnx", required=True, metavar="OUT", help="output .onnx path")
    p.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17; default 17)")
    p.add_argument("--size", nargs=2, type=int, default=(512, 512), metavar=("H", "W"),
                   help="input size to trace (default 512 512)")
    p.add_argument("--no-dynamic", action="store_true", help="fix batch and spatial size to the traced ones")
    # --check is accepted because mmseg/timm users type it; the comparison runs unless --no-check is given.
    p.add_argument("--check", dest="check", action="store_true", default=True,
                   help="compare onnxruntime with PyTorch (the default)")
    p.add_argument("--no-check", dest="check", action="store_false", help="skip the onnxruntime comparison")
    p.add_argument("--atol", type=float, default=1e-4, help="tolerance on max |difference| relative to "
                   "max(1, max |logit|) (default 1e-4)")
    p.set_defaults(func=cmd_export)

    p = sub.add_parser("robustness", help="mIoU under the 17 common corruptions x 5 severities (Cityscapes-C)",
                       description="Evaluate a model on clean and corrupted copies of a dataset (ImageNet-C / "
                       "Cityscapes-C corruptions applied to the raw images before the test pipeline) and print "
                       "the table of mIoU per corruption and severity with the averages; saved as "
                       "robustness.json and robustness.csv in --out.")
    p.add_argument("source", help="vitseg .safetensors checkpoint, or a config .yaml (model, data and eval "
                   "settings are read from it)")
    p.add_argument("checkpoint", nargs="?", default=None, help="weights for a config (default: the config's "
                   "model.pretrained)")
    p.add_argument("--data-type", default=None, help="dataset type (folder, cityscapes, ade20k, camvid, ...; "
                   "default: the config's data.type, else folder)")
    p.add_argument("--data-root", default=None, help="dataset root folder (default: the config's data.root)")
    p.add_argument("--split", default=None, help="split to evaluate (default: the config's data.val_split, "
                   "else val)")
    p.add_argument("--corruptions", nargs="+", default=None, metavar="NAME",
                   help="corruptions to run (default all 17; also group names noise, blur, weather, digital)")
    p.add_argument("--severities", nargs="+", type=int, default=[1, 2, 3, 4, 5], help="severities (1-5)")
    p.add_argument("--out", default="robustness", help="output folder (default ./robustness)")
    p.add_argument("--mode", choices=["whole", "slide"], default=None, help="inference mode (default: the "
                   "config's eval.mode, else whole)")
    p.add_argument("--crop", nargs=2, type=int, default=None, metavar=("H", "W"), help="slide window")
    p.add_argument("--stride", nargs=2, type=int, default=None, metavar=("H", "W"), help="slide stride")
    p.add_argument("--scale", nargs=2, type=int, default=None, metavar=("LONG", "SHORT"),
                   help="test-time resize (keep ratio), e.g. 2048 1024; default: the config's "
                   "data.test_scale, else the original size")
    p.add_argument("--num-classes", type=int, default=None, help="class count when it differs from the model's")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--workers", type=int, default=0, help="data loader workers")
    p.add_argument("--seed", type=int, default=0, help="corruption seed (default 0)")
    p.set_defaults(func=cmd_robustness)

    p = sub.add_parser("bench", help="latency, throughput and peak memory of a model",
                       description="Time a model's forward pass (or a training step) on random input: median "
                       "latency with its spread over repeated runs (warm-up excluded), throughput and peak "
                       "memory, with device, threads and precision printed.")
    p.add_argument("source", help=SOURCE_HELP)
    p.add_argument("--num-classes", type=int, default=None, help="class count for a model name (default 150)")
    p.add_argument("--batch", type=int, default=1, help="batch size (default 1)")
    p.add_argument("--size", nargs=2, type=int, default=(512, 512), metavar=("H", "W"), help="input size")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument("--runs", type=int, default=20, help="timed runs (default 20)")
    p.add_argument("--warmup", type=int, default=5, help="untimed warm-up runs (default 5)")
    p.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    p.add_argument("--amp", choices=["off", "bf16", "fp16"], default="off", help="autocast precision")
    p.add_argument("--train-step", action="store_true", help="time forward + loss + backward + SGD step")
    p.add_argument("--json", default=None, metavar="PATH", help="also write the figures as JSON")
    p.set_defaults(func=cmd_bench)


def load_model(source: str | None, model_name: str | None = None, num_classes: int | None = None):
    """A checkpoint file (vitseg safetensors) or a registered model name -> model."""
    from ..models.registry import create_model, list_models
    from ..weights import load_checkpoint
    if source and model_name:
        raise ConfigError("give either a checkpoint or --model NAME, not both")
    if model_name:
        return create_model(model_name, num_classes=num_classes)
    if not source:
        raise ConfigError("give a checkpoint file or --model NAME")
    path = Path(source)
    if path.exists():
        overrides = {} if num_classes is None else {"num_classes": num_classes}
        return load_checkpoint(path, **overrides)
    if source in list_models():
        return create_model(source, num_classes=num_classes)
    if path.suffix:
        raise CheckpointError(f"{source}: file not found")
    raise ConfigError(f"'{source}' is neither a file nor a registered model name; see `vitseg list`")


def cmd_zoo(args) -> int:
    from .zoo import collect, format_markdown, format_table, rows
    figures = collect(args.pattern, update=args.update)
    table = rows(figures)
    print(format_table(table))
    if args.markdown:
        from ..weights import atomic_write
        text = format_markdown(table)
        atomic_write(args.markdown, lambda tmp: Path(tmp).write_text(text))
        print(f"wrote {args.markdown}")
    return 0


def cmd_export(args) -> int:
    from .export_onnx import export_onnx, second_size, verify_onnx
    model = load_model(args.checkpoint, args.model, args.num_classes)
    size = tuple(args.size)
    dynamic = not args.no_dynamic
    path = export_onnx(model, args.onnx, size=size, opset=args.opset, dynamic=dynamic)
    mb = path.stat().st_size / 2 ** 20
    print(f"exported {getattr(model, 'arch', type(model).__name__)} -> {path} ({mb:.1f} MiB, opset {args.opset}, "
          f"{'dynamic batch/height/width' if dynamic else f'fixed 1x3x{size[0]}x{size[1]}'}); onnx.checker passed")
    if not args.check:
        return 0
    sizes, batches = [size], [1]
    if dynamic:
        sizes.append(second_size(size))
        batches.append(2)
    failed = False
    for r in verify_onnx(model, path, sizes, batches, atol=args.atol):
        h, w = r["size"]
        print(f"onnxruntime vs PyTorch  input {r['batch']}x3x{h}x{w}  output {r['onnx_shape']}  "
              f"max |diff| {r['max_abs_diff']:.3g} (max |logit| {r['max_abs_logit']:.3g})  "
              f"{'ok' if r['ok'] else 'FAILED'}")
        failed |= not r["ok"]
    if failed:
        raise CheckpointError(f"{path}: onnxruntime output differs from PyTorch beyond --atol {args.atol}; the "
                              "exported graph does not reproduce the model (see the sizes above)")
    return 0


def _expand_corruptions(names):
    from .corruptions import GROUPS, list_corruptions
    if not names:
        return list_corruptions()
    out = []
    for n in names:
        out.extend(GROUPS.get(n, [n]))
    known = set(list_corruptions())
    unknown = [n for n in out if n not in known]
    if unknown:
        raise ConfigError(f"unknown corruption(s) {', '.join(unknown)}. Known: {', '.join(list_corruptions())} "
                          f"or a group: {', '.join(GROUPS)}")
    return out


def _robustness_setup(args) -> tuple:
    """(model, dataset kwargs, test pipeline kwargs, eval kwargs) from a checkpoint + flags, or from a config
    (+ optional checkpoint); flags given on the command line win over the config."""
    from ..models.registry import create_model
    from ..weights import load_checkpoint
    path = Path(args.source)
    if not path.exists():
        raise CheckpointError(f"{args.source}: file not found")
    data = {"type": "folder", "root": None, "split": "val", "options": {}}
    pipeline = {"scale": None, "align_to": None}
    evaluation = {"mode": "whole", "crop": None, "stride": None}
    if path.suffix in (".yaml", ".yml"):
        try:
            from ..config import load_config
        except ImportError as e:
            raise ConfigError(f"{path}: reading configs needs vitseg.config ({e}); pass a checkpoint") from e
        cfg = load_config(path, [])
        num_classes = args.num_classes or cfg.model.num_classes
        if args.checkpoint:
            model = load_checkpoint(args.checkpoint, num_classes=num_classes)
        else:
            model = create_model(cfg.model.name, num_classes=num_classes, pretrained=cfg.model.pretrained or None,
                                 **cfg.model.overrides)
        model.mean, model.std = tuple(cfg.data.mean), tuple(cfg.data.std)
        options = dict(cfg.data.options)
        if cfg.data.reduce_zero_label:
            options["reduce_zero_label"] = True
        data = {"type": cfg.data.type, "root": cfg.data.root or None, "split": cfg.data.val_split,
                "options": options}
        pipeline = {"scale": cfg.data.test_scale, "align_to": cfg.data.align_to}
        evaluation = {"mode": cfg.eval.mode, "crop": cfg.eval.crop, "stride": cfg.eval.stride}
    else:
        if args.checkpoint:
            raise ConfigError(f"a second positional argument ({args.checkpoint}) only goes with a config .yaml")
        model = load_model(str(path), num_classes=args.num_classes)
    data["type"] = args.data_type or data["type"]
    data["root"] = args.data_root or data["root"]
    data["split"] = args.split or data["split"]
    if args.scale:
        pipeline["scale"] = tuple(args.scale)
    for key in ("mode", "crop", "stride"):
        if getattr(args, key) is not None:
            evaluation[key] = getattr(args, key)
    if data["type"] != "synthetic" and not data["root"]:
        raise ConfigError("--data-root is required (the dataset folder to corrupt)")
    return model, data, pipeline, evaluation


def cmd_robustness(args) -> int:
    import torch

    from .corruptions import CorruptedPipeline, format_robustness, run_robustness, save_robustness
    try:
        from ..data import build_dataset
        from ..data.transforms import TestPipeline
    except ImportError as e:
        raise ConfigError(f"vitseg robustness needs vitseg.data (build_dataset, TestPipeline): {e}") from e
    corruptions = _expand_corruptions(args.corruptions)
    model, data, pipeline_kwargs, evaluation = _robustness_setup(args)
    device = torch.device(args.device)
    model.to(device)
    pipeline = TestPipeline(mean=model.mean, std=model.std, **pipeline_kwargs)

    def make_dataset(corruption):
        return build_dataset(data["type"], data["root"], data["split"], CorruptedPipeline(pipeline, corruption),
                             **data["options"])

    result = run_robustness(model, make_dataset, corruptions, args.severities, seed=args.seed,
                            workers=args.workers, device=device, num_classes=args.num_classes, **evaluation)
    result.update({"source": str(args.source), "checkpoint": args.checkpoint, "data_type": data["type"],
                   "data_root": data["root"], "split": data["split"], **evaluation})
    print(format_robustness(result))
    json_path, csv_path = save_robustness(result, args.out)
    print(f"saved {json_path} and {csv_path}")
    return 0


def cmd_bench(args) -> int:
    from .benchmark import benchmark, format_benchmark
    model = load_model(args.source, num_classes=args.num_classes)
    stats = benchmark(model, batch=args.batch, size=tuple(args.size), device=args.device, runs=args.runs,
                      warmup=args.warmup, train_step=args.train_step, amp=args.amp, threads=args.threads)
    print(format_benchmark(stats, getattr(model, "arch", args.source)))
    if args.json:
        from ..weights import atomic_write
        text = json.dumps(stats, indent=1) + "\n"
        atomic_write(args.json, lambda tmp: Path(tmp).write_text(text))
        print(f"wrote {args.json}")
    return 0
