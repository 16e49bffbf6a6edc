"""`vitseg list`, `vitseg flops`, `vitseg convert`."""
from __future__ import annotations


from ..errors import CheckpointError, ConfigError


def add_parser(sub) -> None:
    p = sub.add_parser("list", help="list registered models, backbones and dataset types",
                       description="List every registered model (with --backbones every encoder, with --datasets "
                       "every dataset type that data.type accepts).")
    p.add_argument("pattern", nargs="?", default="*", help="shell-style filter, e.g. 'segformer_*'")
    what = p.add_mutually_exclusive_group()
    what.add_argument("--backbones", action="store_true", help="list encoders instead of segmentation models")
    what.add_argument("--datasets", action="store_true", help="list dataset types (the values data.type accepts) and their layouts")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("flops", help="parameters, MACs and FLOPs of a model, beside the paper's figures",
                       description="Count parameters and FLOPs (torch.utils.flop_counter, attention included) "
                       "of a model's inference graph at a given input size, with the paper's figures beside them.")
    p.add_argument("model", help="registered model name, e.g. segformer_b0")
    p.add_argument("--size", nargs=2, type=int, metavar=("H", "W"), default=None,
                   help="input height and width (default: the size the paper's figures refer to)")
    p.add_argument("--num-classes", type=int, default=None,
                   help="class count (default: the one the paper's figures refer to)")
    p.set_defaults(func=cmd_flops)

    p = sub.add_parser("convert", help="re-save foreign weights (HF, official, timm, ...) in vitseg's layout",
                       description="Read weights in any supported layout (HF model folder, official/mmseg .pth, "
                       "timm, AugReg .npz, ...), convert them for MODEL and save a safetensors file that holds "
                       "the architecture name, class names and palette in its metadata.")
    p.add_argument("src", help="weight file or HF model folder")
    p.add_argument("dst", help="output .safetensors path")
    p.add_argument("--model", required=True, help="architecture the weights belong to, e.g. segformer_b2")
    p.add_argument("--num-classes", type=int, default=None, help="class count (default: read from the weights)")
    p.add_argument("--classes", default=None, help="text file with one class name per line")
    p.add_argument("--palette", default=None, help="text file with one 'R G B' colour per line")
    p.add_argument("--no-strict", action="store_true", help="allow missing/unexpected keys (they are listed)")
    p.set_defaults(func=cmd_convert)


def cmd_list(args) -> int:
    from ..models.registry import list_models, model_info
    if args.datasets:
        return _list_datasets(args.pattern)
    kind = "backbone" if args.backbones else "model"
    names = list_models(args.pattern, kind=kind)
    if not names:
        raise ConfigError(f"no {kind} matches '{args.pattern}'")
    for name in names:
        paper = model_info(name).paper
        extra = ""
        if paper and paper.params_m:
            extra = f"  paper: {paper.params_m:g}M params"
            if paper.gflops:
                extra += f", {paper.gflops:g} GFLOPs @ {paper.input_size[0]}x{paper.input_size[1]}"
        print(f"{name:28s}{extra}")
    return 0


def _list_datasets(pattern: str) -> int:
    import fnmatch

    from ..data import DATASET_TYPES
    names = [n for n in DATASET_TYPES if fnmatch.fnmatch(n, pattern)]
    if not names:
        raise ConfigError(f"no dataset type matches '{pattern}'")
    for name in names:
        cls = DATASET_TYPES[name]
        doc = (cls.__doc__ or "").strip().splitlines()[0] if cls.__doc__ else ""
        print(f"{name:20s}{doc}")
    return 0


def cmd_flops(args) -> int:
    from ..models.registry import create_model, model_info
    from ..tools.flops import measure
    paper = model_info(args.model).paper
    size = tuple(args.size) if args.size else (paper.input_size if paper else (512, 512))
    num_classes = args.num_classes or (paper.num_classes if paper else 150)
    model = create_model(args.model, num_classes=num_classes)
    c = measure(model, size)
    ref = measure(model, size, paper_graph=True)
    print(f"model               {args.model} ({num_classes} classes, input {size[0]}x{size[1]}, batch 1)")
    print(f"params              {c.params / 1e6:10.3f} M" + (f"    paper {paper.params_m:g} M" if paper and paper.params_m
                                                       else ""))
    line = f"MACs (paper graph)  {ref.macs / 1e9:10.3f} G"
    if paper and paper.gflops and tuple(paper.input_size) == size:
        line += f"    paper {paper.gflops:g} G, ratio {ref.macs / 1e9 / paper.gflops:.3f}  ({paper.source})"
    print(line)
    print(f"FLOPs (paper graph) {ref.flops / 1e9:10.3f} G    (= 2 x MACs)")
    if c.flops != ref.flops:
        print(f"MACs as executed    {c.macs / 1e9:10.3f} G    (vitseg runs an equivalent, cheaper graph)")
    print("counted with torch.utils.flop_counter: matmuls, convs and attention; norms, softmax and "
          "interpolation count 0")
    return 0


def _read_lines(path):
    from pathlib import Path
    p = Path(path)
    if not p.exists():
        raise ConfigError(f"{p}: file not found")
    return [ln.strip() for ln in p.read_text().splitlines() if ln.strip()]


def cmd_convert(args) -> int:
    from ..models.registry import create_model
    from ..weights import save_weights
    model = create_model(args.model, num_classes=args.num_classes, pretrained=args.src, strict=not args.no_strict)
    if args.classes:
        names = _read_lines(args.classes)
        if len(names) != model.num_classes:
            raise ConfigError(f"{args.classes}: {len(names)} class names for a model with {model.num_classes} classes")
        model.class_names = names
    if args.palette:
        model.palette = [tuple(int(v) for v in ln.replace(",", " ").split()[:3]) for ln in _read_lines(args.palette)]
    if not str(args.dst).endswith(".safetensors"):
        raise CheckpointError(f"{args.dst}: the output must be a .safetensors file")
    save_weights(model, args.dst, source=str(args.src))
    print(f"saved {args.dst} ({args.model}, {model.num_classes} classes)")
    return 0
