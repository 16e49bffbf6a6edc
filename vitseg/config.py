"""Training/evaluation configs: flat YAML files mapped one-to-one onto dataclasses.

A recipe is one complete file with the sections `model`, `data`, `train`, `optim`, `eval`, `log` (plus the
top-level `work_dir`). There is no inheritance. Every key is checked: an unknown or misspelt key is a
ConfigError naming it (with the closest known key), and every value is converted to the field's type.

    cfg = load_config("configs/segformer/segformer_b0_ade20k_512x512_160k.yaml",
                      overrides=["optim.lr=1e-4", "train.max_iters=1000"])
    print(dump_config(cfg))
"""
from __future__ import annotations

import dataclasses
import difflib
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

import yaml

from .errors import ConfigError


@dataclass
class ModelConfig:
    name: str = "segformer_b0"              # registered model name (`vitseg list`)
    num_classes: int = 150
    pretrained: str | None = None           # weight file / HF folder for the whole model or its encoder
    overrides: dict = field(default_factory=dict)  # extra builder arguments, e.g. {drop_path_rate: 0.0}


@dataclass
class DataConfig:
    type: str = "folder"                    # dataset adapter: folder, ade20k, cityscapes, camvid, synthetic, ...
    root: str = ""                          # dataset root (relative paths: to the current directory)
    train_split: str = "train"
    val_split: str = "val"
    crop_size: list[int] = field(default_factory=lambda: [512, 512])     # (h, w) training crop
    scale: list[int] | None = field(default_factory=lambda: [2048, 512])  # (long, short) base rescale
    ratio_range: list[float] | None = field(default_factory=lambda: [0.5, 2.0])
    cat_max_ratio: float = 0.75
    flip_prob: float = 0.5
    photometric: bool = True
    reduce_zero_label: bool = False
    test_scale: list[int] | None = field(default_factory=lambda: [2048, 512])  # eval keep-ratio resize
    align_to: int | None = 32               # eval: round the input size up to a multiple (AlignedResize)
    mean: list[float] = field(default_factory=lambda: [123.675, 116.28, 103.53])
    std: list[float] = field(default_factory=lambda: [58.395, 57.12, 57.375])
    options: dict = field(default_factory=dict)  # extra dataset arguments (e.g. synthetic num_images/size)


@dataclass
class TrainConfig:
    max_iters: int = 160000                 # optimiser steps; ignored when `epochs` is set
    epochs: int | None = None               # epoch-based run: max_iters = epochs * iterations per epoch
    batch_size_per_device: int = 2
    grad_accum: int = 1                     # micro-batches per optimiser step
    workers: int = 2                        # DataLoader worker processes per device
    warmup_iters: int = 1500
    warmup_ratio: float = 1e-6              # lr factor at iteration 0 of the linear warmup
    poly_power: float = 1.0
    min_lr: float = 0.0                     # lr at the end of the poly schedule (for the base lr)
    grad_clip: float | None = None          # max global gradient L2 norm; None = no clipping
    amp: str = "off"                        # off | bf16 | fp16 (fp16 needs CUDA)
    ema: float | None = None                # EMA decay of the weights (e.g. 0.999); None = off
    seed: int = 0
    deterministic: bool = False             # torch.use_deterministic_algorithms (slower on CUDA)
    device: str = "auto"                    # auto | cpu | cuda | cuda:N
    sync_bn: bool = True                    # convert BatchNorm to SyncBatchNorm under DDP on CUDA
    find_unused_parameters: bool = False    # DDP option for models with conditionally used modules
    checkpoint_interval: int = 16000


@dataclass
class OptimConfig:
    lr: float = 6e-5                        # AdamW base learning rate
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    weight_decay: float = 0.01
    head_lr_mult: float = 10.0              # lr multiplier for parameters whose name contains a head name
    head_names: list[str] = field(default_factory=lambda: ["head"])
    no_decay_names: list[str] = field(default_factory=lambda: ["norm", "pos_block"])  # substrings -> wd 0
    no_decay_1d: bool = False               # also no weight decay for every 1-D parameter (biases, norms)
    layer_decay: float | None = None        # BEiT-style layer-wise lr decay rate; None = off


@dataclass
class EvalConfig:
    interval: int = 16000                   # evaluate every N iterations (0 = only at the end)
    mode: str = "whole"                     # whole | slide
    crop: list[int] | None = None           # slide window (h, w)
    stride: list[int] | None = None         # slide stride (h, w)
    scales: list[float] = field(default_factory=lambda: [1.0])
    flip: bool = False
    metric: str = "mIoU"                    # metric that selects best.safetensors
    workers: int = 2


@dataclass
class LogConfig:
    interval: int = 50                      # log line every N iterations
    keep_last: int = 3                      # training-state checkpoints kept (older ones are pruned)
    tensorboard: bool = True                # write tb/ events when tensorboard is installed
    progress: bool = True                   # tqdm bar (only on a TTY and rank 0)


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    log: LogConfig = field(default_factory=LogConfig)
    work_dir: str | None = None             # default: work_dirs/<config file stem>


# Names HF Trainer users type, accepted in --set.
ALIASES = {
    "output_dir": "work_dir",
    "per_device_train_batch_size": "train.batch_size_per_device",
    "gradient_accumulation_steps": "train.grad_accum",
    "max_steps": "train.max_iters",
    "num_train_epochs": "train.epochs",
    "learning_rate": "optim.lr",
    "warmup_steps": "train.warmup_iters",
    "max_grad_norm": "train.grad_clip",
    "logging_steps": "log.interval",
    "save_steps": "train.checkpoint_interval",
    "eval_steps": "eval.interval",
    "save_total_limit": "log.keep_last",
}

_CHOICES = {("train", "amp"): ("off", "bf16", "fp16"), ("eval", "mode"): ("whole", "slide")}


def _suggest(name: str, known, prefix: str = "") -> str:
    close = difflib.get_close_matches(name, list(known), n=1, cutoff=0.5)
    if close:
        return f" Did you mean '{prefix}{close[0]}'?"
    return f" Known keys: {', '.join(prefix + k for k in sorted(known))}."


def _convert(value: Any, tp: Any, where: str) -> Any:
    """Convert a YAML/CLI value to the annotated type, or raise ConfigError naming `where`."""
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        args = typing.get_args(tp)
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null", "~")):
            if type(None) in args:
                return None
        inner = [a for a in args if a is not type(None)]
        return _convert(value, inner[0], where)
    if origin is list:
        (item,) = typing.get_args(tp) or (Any,)
        if isinstance(value, str):  # "0.5,0.75,1.0" from the command line
            value = [v.strip() for v in value.strip("[]()").split(",") if v.strip()]
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return [_convert(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if tp is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return dict(value)
    if tp is bool:
        if isinstance(value, bool):
            return value
        if isinstance(value, str) and value.lower() in ("true", "yes", "on", "1", "false", "no", "off", "0"):
            return value.lower() in ("true", "yes", "on", "1")
        raise ConfigError(f"{where}: expected true/false, got {value!r}")
    if tp is int:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        if isinstance(value, float) and value.is_integer():
            return int(value)
        if isinstance(value, int):
            return value
        try:
            return int(str(value))
        except ValueError:
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if tp is float:
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)  # YAML reads 1e-4 (no dot) as a string; float() accepts it
        except (ValueError, TypeError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if tp is str:
        if isinstance(value, (dict, list)) or value is None:
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return str(value)
    return value


def _section_types(cls) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _set(cfg: Config, dotted: str, value: Any, source: str) -> None:
    dotted = ALIASES.get(dotted, dotted)
    parts = dotted.split(".")
    top = _section_types(Config)
    if parts[0] not in top:
        raise ConfigError(f"{source}: unknown key '{parts[0]}'.{_suggest(parts[0], top)}")
    if len(parts) == 1:
        if dataclasses.is_dataclass(top[parts[0]]):
            if not isinstance(value, dict):
                raise ConfigError(f"{source}: section '{parts[0]}' must be a mapping, got {value!r}")
            for k, v in value.items():
                _set(cfg, f"{parts[0]}.{k}", v, source)
            return
        setattr(cfg, parts[0], _convert(value, top[parts[0]], f"{source}: {parts[0]}"))
        return
    section = getattr(cfg, parts[0])
    if not dataclasses.is_dataclass(section):
        raise ConfigError(f"{source}: '{parts[0]}' is not a section; use '{parts[0]}=VALUE'")
    fields = _section_types(type(section))
    key = parts[1]
    if key not in fields:
        raise ConfigError(f"{source}: unknown key '{parts[0]}.{key}'."
                          f"{_suggest(key, fields, parts[0] + '.')}")
    where = f"{source}: {parts[0]}.{key}"
    if len(parts) > 2:  # a.b.c into a dict field, e.g. model.overrides.drop_path_rate=0
        if fields[key] is not dict:
            raise ConfigError(f"{where} is not a mapping; '{dotted}' has too many parts")
        getattr(section, key)[".".join(parts[2:])] = value
        return
    converted = _convert(value, fields[key], where)
    choices = _CHOICES.get((parts[0], key))
    if choices and converted not in choices:
        raise ConfigError(f"{where}: '{converted}' is not one of {', '.join(choices)}")
    setattr(section, key, converted)


def parse_override(text: str) -> tuple[str, Any]:
    """'a.b=v' -> ('a.b', YAML-parsed v)."""
    if "=" not in text:
        raise ConfigError(f"override '{text}' must look like key=value, e.g. optim.lr=1e-4")
    key, raw = text.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return key.strip(), value


def config_from_dict(data: dict, source: str = "<dict>") -> Config:
    """Build a Config from a nested mapping, checking every key and value."""
    cfg = Config()
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: the top level must be a mapping of sections (model, data, ...)")
    for key, value in data.items():
        _set(cfg, str(key), value, source)
    return cfg


def load_config(path, overrides: list[str] | None = None) -> Config:
    """Read a YAML recipe and apply `key=value` overrides (e.g. ["optim.lr=1e-4"])."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{p}: config file not found")
    try:
        data = yaml.safe_load(p.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{p}: not valid YAML ({e})") from e
    cfg = config_from_dict(data, str(p))
    for text in overrides or []:
        key, value = parse_override(text)
        _set(cfg, key, value, f"--set {text}")
    if cfg.work_dir is None:
        cfg.work_dir = str(Path("work_dirs") / p.stem)
    return cfg


def config_to_dict(cfg: Config) -> dict:
    return dataclasses.asdict(cfg)


class _Dumper(yaml.SafeDumper):
    """Sections as blocks, short lists and dicts of values inline ([512, 512])."""


def _represent_list(dumper, data):
    return dumper.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True)


_Dumper.add_representer(list, _represent_list)


def dump_config(cfg: Config) -> str:
    """The resolved config as YAML (sections in declaration order); load_config reads it back."""
    return yaml.dump(config_to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False)
