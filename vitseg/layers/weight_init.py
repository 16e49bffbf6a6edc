"""Weight initialisers shared by the model families."""
import math

import torch
from torch import nn


def trunc_normal_(tensor: torch.Tensor, std: float = 0.02, a: float = -2.0, b: float = 2.0) -> torch.Tensor:
    """Truncated normal with *absolute* cut-offs a, b (timm convention)."""
    return nn.init.trunc_normal_(tensor, mean=0.0, std=std, a=a, b=b)


def init_linear_norm(module: nn.Module) -> None:
    """Linear: trunc-normal(0.02), zero bias; LayerNorm/GroupNorm: (1, 0). Use with `model.apply`."""
    if isinstance(module, nn.Linear):
        trunc_normal_(module.weight, std=0.02)
        if module.bias is not None:
            nn.init.zeros_(module.bias)
    elif isinstance(module, (nn.LayerNorm, nn.GroupNorm)):
        if module.weight is not None:
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)


def init_vit_weights(module: nn.Module) -> None:
    """init_linear_norm, plus convs: He fan-out normal (MiT/PVT style). Use with `model.apply`."""
    init_linear_norm(module)
    if isinstance(module, nn.Conv2d):
        fan_out = module.kernel_size[0] * module.kernel_size[1] * module.out_channels // module.groups
        nn.init.normal_(module.weight, 0.0, math.sqrt(2.0 / fan_out))
        if module.bias is not None:
            nn.init.zeros_(module.bias)
