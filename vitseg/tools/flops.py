"""Parameter and FLOP counting on the inference graph.

FLOPs come from torch.utils.flop_counter (matmul, conv, scaled_dot_product_attention, ... counted as
2 × multiply-accumulates; norms, softmax and interpolation count 0). Papers mostly print multiply-accumulates
(fvcore/mmcv "FLOPs"), so MACs = FLOPs / 2 is the figure to hold beside them.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import torch
from torch.utils.flop_counter import FlopCounterMode, sdpa_backward_flop_count, sdpa_flop_count


def _cpu_sdpa_flop(query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query, key, value)


def _cpu_sdpa_backward_flop(grad_out, query, key, value, *args, out_shape=None, **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out, query, key, value)


def _conv_backward_flop(grad_out, x, w, _bias, _stride, _padding, _dilation, transposed, _output_padding,
                        _groups, output_mask, out_shape=None, **kwargs) -> int:
    """Each of grad-input and grad-weight costs what the forward conv costs. torch's own formula treats a
    grouped conv as dense (a depthwise 3×3 on 256 channels is counted 256× too high)."""
    direct_out = x if transposed else grad_out  # the output of the equivalent non-transposed conv
    forward = 2 * math.prod(direct_out) * w[1] * math.prod(w[2:])
    return forward * (int(output_mask[0]) + int(output_mask[1]))


# torch counts the CUDA / meta attention kernels but not the CPU ones that F.scaled_dot_product_attention
# dispatches to here (without these, every attention matmul of a CPU count would be missing), and it
# over-counts grouped convolutions in backward.
_EXTRA_FORMULAS = {
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu: _cpu_sdpa_flop,
    torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward: _cpu_sdpa_backward_flop,
    torch.ops.aten.convolution_backward: _conv_backward_flop,
}


def count_flops(fn) -> int:
    """FLOPs (2 per multiply-accumulate) of one call of `fn`, backward included when `fn` runs it."""
    with FlopCounterMode(display=False, custom_mapping=_EXTRA_FORMULAS) as counter:
        fn()
    return counter.get_total_flops()


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
    return Complexity(count_params(model), count_flops(lambda: model(x)), tuple(size))
