"""Parameter and FLOP counting on the inference graph.

FLOPs come from torch.utils.flop_counter (matmul, conv, scaled_dot_product_attention, ... counted as
2 × multiply-accumulates; norms, softmax and interpolation count 0). Papers mostly print multiply-accumulates
(fvcore/mmcv "FLOPs"), so MACs = FLOPs / 2 is the figure to hold beside them.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_flop_count


def _cpu_sdpa_flop(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


# torch counts the CUDA / meta attention kernels but not the CPU one that F.scaled_dot_product_attention
# dispatches to here: without this, every attention matmul of a CPU count would be missing.
_EXTRA_FORMULAS = {torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop}


@dataclass
class Complexity:
    params: int
    flops: int          # floating-point operations (2 per multiply-accumulate)
    input_size: tuple[int, int]

    @property
    def macs(self) -> int:
        return self.flops // 2


def count_params(model: torch.nn.Module) -> int:
    """Parameters of the inference graph (training-only modules in `aux` excluded)."""
    if hasattr(model, "num_params"):
        return model.num_params()
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def measure(model: torch.nn.Module, size: tuple[int, int] = (512, 512), batch: int = 1,
            paper_graph: bool = False) -> Complexity:
    """Params and FLOPs of one forward pass at `size` (eval mode; the model is not modified).

    paper_graph=True counts the graph as the paper wrote it: modules with a faster, equivalent execution
    (an attribute `fused`, e.g. SegFormer's decoder) are switched to their literal form.
    """
    model = copy.deepcopy(model).eval()
    if hasattr(model, "strip_training_modules"):
        model.strip_training_modules()
    if paper_graph:
        for m in model.modules():
            if hasattr(m, "fused"):
                m.fused = False
    x = torch.zeros(batch, 3, *size)
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
        model(x)
    return Complexity(count_params(model), counter.get_total_flops(), tuple(size))
