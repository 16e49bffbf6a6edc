"""The model zoo table: measured params/MACs/FLOPs of every registered model beside the paper's figures.

Measuring the large models (ViT-L, MiT-B5 at 640x640) takes minutes on a small CPU, so the measured
figures are recorded in `zoo_figures.json` beside this file (name -> params, flops, size, num_classes) and
regenerated with `vitseg zoo --update`; `vitseg zoo` measures only models missing from the file.
Figures are taken at the paper's input size and class count (`model_info(name).paper`), on the inference
graph (training-only modules stripped), counting the graph as the paper wrote it (`paper_graph=True`).
"""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import ConfigError
from ..models.registry import create_model, list_models, model_info
from .flops import count_params, measure

FIGURES_PATH = Path(__file__).with_name("zoo_figures.json")
DEFAULT_SIZE, DEFAULT_CLASSES = (512, 512), 150


def paper_setting(name: str) -> tuple[tuple[int, int], int]:
    """(input size, class count) the paper's figures for `name` refer to."""
    paper = model_info(name).paper
    if paper is None:
        return DEFAULT_SIZE, DEFAULT_CLASSES
    return tuple(paper.input_size), paper.num_classes


@contextlib.contextmanager
def _parameters_on_meta():
    """While active, every nn.Parameter a module registers is moved to the meta device, so weight
    initialisation (most of the build time of a large model) does no work. Buffers and plain tensors stay
    real, so builders that compute with tensors still run. Used only to count parameters."""
    original = torch.nn.Module.register_parameter

    def register(module, name, param):
        if param is not None and param.device.type != "meta":
            param = torch.nn.Parameter(param.to("meta"), requires_grad=param.requires_grad)
        original(module, name, param)

    torch.nn.Module.register_parameter = register
    try:
        yield
    finally:
        torch.nn.Module.register_parameter = original


def build_for_count(name: str, num_classes: int) -> torch.nn.Module:
    """Build `name` cheaply for counting parameters (parameters on the meta device); falls back to a normal
    build when the family's initialisation needs real parameter values."""
    try:
        with _parameters_on_meta():
            return create_model(name, num_classes=num_classes)
    except (RuntimeError, NotImplementedError, ValueError):  # e.g. .item() on a meta parameter
        return create_model(name, num_classes=num_classes)


def count_model_params(name: str, num_classes: int | None = None) -> int:
    """Inference-graph parameters of `name` at the paper's class count (no forward pass)."""
    num_classes = num_classes or paper_setting(name)[1]
    model = build_for_count(name, num_classes)
    if hasattr(model, "strip_training_modules"):
        model.strip_training_modules()
    return count_params(model)


def measure_model(name: str) -> dict:
    """Params and FLOPs of `name` at its paper setting: the record stored in zoo_figures.json."""
    size, num_classes = paper_setting(name)
    model = create_model(name, num_classes=num_classes)
    graph = measure(model, size, paper_graph=True)
    executed = measure(model, size)
    return {"params": graph.params, "flops": graph.flops, "flops_executed": executed.flops,
            "size": list(size), "num_classes": num_classes}


def load_figures(path=FIGURES_PATH) -> dict[str, dict]:
    path = Path(path)
    if not path.exists():
        return {}
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ConfigError(f"{path}: not valid JSON ({e}); regenerate it with `vitseg zoo --update`") from e


def save_figures(figures: dict[str, dict], path=FIGURES_PATH) -> None:
    from ..weights import atomic_write
    text = json.dumps(dict(sorted(figures.items())), indent=1) + "\n"
    atomic_write(path, lambda tmp: Path(tmp).write_text(text))


def collect(pattern: str = "*", update: bool = False, path=FIGURES_PATH, log=print) -> dict[str, dict]:
    """Recorded figures for every model matching `pattern`; missing ones (all with update=True) are measured
    and written back to `path`."""
    names = list_models(pattern)
    if not names:
        raise ConfigError(f"no registered model matches '{pattern}'; see `vitseg list`")
    figures = load_figures(path)
    changed = False
    for name in names:
        size, num_classes = paper_setting(name)
        record = figures.get(name)
        stale = record is None or record.get("size") != list(size) or record.get("num_classes") != num_classes
        if update or stale:
            if log:
                log(f"measuring {name} at {size[0]}x{size[1]}, {num_classes} classes ...")
            figures[name] = measure_model(name)
            changed = True
    if changed:
        save_figures(figures, path)
    return {n: figures[n] for n in names}


@dataclass
class Row:
    name: str
    size: tuple[int, int]
    num_classes: int
    params_m: float
    gmacs: float
    gflops: float
    paper_params_m: float | None
    paper_gflops: float | None
    miou: dict[str, float]

    @property
    def params_ratio(self) -> float | None:
        return self.params_m / self.paper_params_m if self.paper_params_m else None

    @property
    def flops_ratio(self) -> float | None:
        # Papers print multiply-accumulates under the name FLOPs, so MACs is the figure to compare.
        return self.gmacs / self.paper_gflops if self.paper_gflops else None


def rows(figures: dict[str, dict]) -> list[Row]:
    out = []
    for name, rec in figures.items():
        paper = model_info(name).paper
        out.append(Row(name, tuple(rec["size"]), rec["num_classes"], rec["params"] / 1e6, rec["flops"] / 2e9,
                       rec["flops"] / 1e9, paper.params_m if paper else None, paper.gflops if paper else None,
                       dict(paper.miou) if paper else {}))
    return out


def _num(value, fmt: str = ".2f") -> str:
    return "–" if value is None else format(value, fmt)


def _miou(miou: dict[str, float]) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in miou.items()) or "–"


COLUMNS = ["model", "input", "classes", "params (M)", "paper params (M)", "ratio", "GMACs", "paper GFLOPs",
           "ratio", "GFLOPs", "paper mIoU (ss)"]


def _cells(r: Row) -> list[str]:
    return [r.name, f"{r.size[0]}x{r.size[1]}", str(r.num_classes), _num(r.params_m), _num(r.paper_params_m, "g"),
            _num(r.params_ratio, ".3f"), _num(r.gmacs), _num(r.paper_gflops, "g"), _num(r.flops_ratio, ".3f"),
            _num(r.gflops), _miou(r.miou)]


def format_table(table: list[Row]) -> str:
    """Plain-text table for the terminal."""
    lines = [COLUMNS] + [_cells(r) for r in table]
    widths = [max(len(line[i]) for line in lines) for i in range(len(COLUMNS))]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths)).rstrip() for line in lines)


NOTE = """Measured with `torch.utils.flop_counter` on the inference graph (training-only modules stripped), batch 1,
at the input size and class count the paper's figures refer to, counting the graph as the paper wrote it.
GFLOPs count 2 per multiply-accumulate; GMACs = GFLOPs / 2 is what most segmentation papers print as "FLOPs",
so the FLOPs ratio is GMACs / paper. Matmuls, convolutions and attention are counted; norms, activations,
softmax and interpolation count 0, whereas mmcv's counter (behind most paper tables) adds norms, biases and
activations, so ratios a little below 1 are expected. mIoU is the paper's single-scale figure, not
re-measured. Regenerate with `vitseg zoo --update --markdown docs/model_zoo.md`."""


def format_markdown(table: list[Row]) -> str:
    """docs/model_zoo.md."""
    head = "| " + " | ".join(COLUMNS) + " |"
    rule = "|" + "|".join("---" for _ in COLUMNS) + "|"
    body = ["| " + " | ".join(_cells(r)) + " |" for r in table]
    return "\n".join(["# Model zoo", "", NOTE, "", head, rule, *body, ""])
