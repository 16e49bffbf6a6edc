"""ONNX export of a segmentation model, checked against PyTorch in onnxruntime.

    path = export_onnx(model, "model.onnx", size=(512, 512))          # dynamic batch, height and width
    report = verify_onnx(model, "model.onnx", sizes=[(512, 512), (384, 640)])

The graph maps `images` float [B,3,H,W] (normalised) to `logits` [B,K,h,w] (the model's forward output, at its
output stride). Training-only modules are stripped first, so the file holds the inference graph only.

Exporter choice (torch 2.13): the TorchScript-based exporter (`dynamo=False`). The torch.export-based one
(`dynamo=True`, onnxscript) fails on SegFormer with dynamic shapes: torch.export specialises the batch
dimension (a guard `batch <= 2` from shape arithmetic in the attention reshape) and rejects the dynamic
range. The tracer records the shape arithmetic symbolically (Shape/Gather ops), so interpolation to
stage-1 size stays dynamic; `verify_onnx` runs a second input size to prove it.
"""
from __future__ import annotations

import copy
import math
import warnings
from pathlib import Path

import numpy as np
import torch

from ..errors import CheckpointError, ConfigError

INPUT_NAME, OUTPUT_NAME = "images", "logits"


def _require_onnx():
    try:
        import onnx
        import onnxruntime
    except ImportError as e:
        raise ConfigError(f"ONNX export needs the optional packages onnx and onnxruntime ({e}); install them "
                          "with `pip install vitseg[onnx]`.") from e
    return onnx, onnxruntime


def inference_copy(model: torch.nn.Module) -> torch.nn.Module:
    """A CPU fp32 copy in eval mode with training-only modules removed (the caller's model is untouched)."""
    model = copy.deepcopy(model).float().cpu().eval()
    if hasattr(model, "strip_training_modules"):
        model.strip_training_modules()
    return model


def _metadata(model) -> dict[str, str]:
    """Facts a deployment needs beside the graph, stored as ONNX metadata_props (all strings)."""
    import json
    meta = {"producer": "vitseg", "arch": str(getattr(model, "arch", type(model).__name__))}
    for key in ("num_classes", "class_names", "palette", "mean", "std", "output_stride"):
        value = getattr(model, key, None)
        if value is not None:
            meta[key] = json.dumps([list(v) if isinstance(v, tuple) else v for v in value]
                                   if isinstance(value, (list, tuple)) else value)
    return meta


def export_onnx(model: torch.nn.Module, path, size: tuple[int, int] = (512, 512), opset: int = 17,
                dynamic: bool = True, batch: int = 1) -> Path:
    """Export the inference graph of `model` to `path` (ONNX, `opset` >= 17) and run onnx.checker on it.

    dynamic=True makes batch, height and width free dimensions; `size` is the size traced (and the only size
    the file accepts when dynamic=False).
    """
    onnx, _ = _require_onnx()
    if opset < 17:
        raise ConfigError(f"--opset {opset}: vitseg exports with opset >= 17 (LayerNormalization, resize "
                          "semantics that match PyTorch); use 17 or newer.")
    if len(size) != 2 or min(size) < 1:
        raise ConfigError(f"export size must be (height, width) with positive values, got {size}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    model = inference_copy(model)
    example = torch.randn(batch, 3, *size)
    axes = None
    if dynamic:
        axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"},
                OUTPUT_NAME: {0: "batch", 2: "out_height", 3: "out_width"}}
    with warnings.catch_warnings():
        # The tracer warns about Python-level shape logic and the exporter about its own deprecation; the
        # parity check in verify_onnx, at a second size, is what tells whether the trace generalises.
        warnings.simplefilter("ignore")
        torch.onnx.export(model, (example,), str(path), dynamo=False, opset_version=opset,
                          input_names=[INPUT_NAME], output_names=[OUTPUT_NAME], dynamic_axes=axes,
                          do_constant_folding=True)
    proto = onnx.load(str(path))
    for key, value in _metadata(model).items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value
    onnx.save(proto, str(path))
    onnx.checker.check_model(str(path))
    return path


def second_size(size: tuple[int, int], multiple: int = 32) -> tuple[int, int]:
    """A different, non-square size near `size` (multiples of `multiple`), to prove shapes are dynamic."""
    h, w = size
    h2 = max(multiple, int(round(h * 0.75 / multiple)) * multiple)
    w2 = max(multiple, int(round(w * 1.25 / multiple)) * multiple)
    if (h2, w2) == (h, w):
        w2 += multiple
    return h2, w2


def verify_onnx(model: torch.nn.Module, path, sizes, batches=None, atol: float = 1e-4,
                seed: int = 0) -> list[dict]:
    """Run the ONNX file in onnxruntime (CPU) and PyTorch on the same random inputs.

    Returns one dict per size: {"size", "batch", "max_abs_diff", "max_abs_logit", "ok"}. `ok` holds when the
    max-abs difference is at most atol * max(1, max |logit|) (fp32 accumulation order differs between the two).
    """
    _, ort = _require_onnx()
    model = inference_copy(model)
    options = ort.SessionOptions()
    options.intra_op_num_threads = max(1, torch.get_num_threads())
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    generator = torch.Generator().manual_seed(seed)
    batches = batches or [1] * len(sizes)
    results = []
    for (h, w), b in zip(sizes, batches):
        x = torch.randn(b, 3, h, w, generator=generator)
        with torch.inference_mode():
            ref = model(x).numpy()
        try:
            out = session.run([OUTPUT_NAME], {INPUT_NAME: x.numpy()})[0]
        except Exception as e:  # onnxruntime raises its own exception types
            raise CheckpointError(f"{path}: onnxruntime failed on input {b}x3x{h}x{w}: {e}. Exported without "
                                  "dynamic shapes? Re-export, or check at the exported size.") from e
        if out.shape != ref.shape:
            diff = math.inf
        else:
            diff = float(np.abs(out - ref).max())
        peak = float(np.abs(ref).max())
        results.append({"size": (h, w), "batch": b, "onnx_shape": tuple(out.shape), "torch_shape": tuple(ref.shape),
                        "max_abs_diff": diff, "max_abs_logit": peak,
                        "ok": bool(diff <= atol * max(1.0, peak))})
    return results
