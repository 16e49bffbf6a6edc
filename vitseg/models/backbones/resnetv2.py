"""BiT-style ResNet used as the convolutional stem of the AugReg "R+ViT" hybrids (R26+S/32, R50+L/32).

Kolesnikov et al., "Big Transfer (BiT)", ECCV 2020; Dosovitskiy et al., ViT (hybrids), ICLR 2021.
Every convolution is weight-standardised, every norm is GroupNorm(32), and padding is TensorFlow 'SAME'
(asymmetric: the extra pixel goes bottom/right), because the weights were trained in JAX/Flax that way.
The hybrid blocks are *post*-activation bottlenecks (timm `preact=False`, Flax `ResidualUnit`), not BiT's
pre-activation ones (specs/backbones.md §2.1, §9). Parameter names follow timm's ResNetV2
(stem.conv, stem.norm, stages.S.blocks.U.{conv1..3,norm1..3,downsample.conv,downsample.norm}).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def same_padding(size: int, kernel: int, stride: int, dilation: int = 1) -> tuple[int, int]:
    """TF 'SAME' padding for one dimension: (before, after), the odd pixel after."""
    total = max((math.ceil(size / stride) - 1) * stride + (kernel - 1) * dilation + 1 - size, 0)
    return total // 2, total - total // 2


def pad_same(x: torch.Tensor, kernel: int, stride: int, value: float = 0.0) -> torch.Tensor:
    top, bottom = same_padding(x.shape[-2], kernel, stride)
    left, right = same_padding(x.shape[-1], kernel, stride)
    if top or bottom or left or right:
        x = F.pad(x, (left, right, top, bottom), value=value)
    return x


class StdConv2dSame(nn.Conv2d):
    """Conv2d with weight standardisation, w' = (w - mean) / sqrt(var + eps) per output channel
    (biased variance over in×kh×kw), and TF 'SAME' padding computed from the input size."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int = 1, eps: float = 1e-8):
        super().__init__(cin, cout, kernel, stride, padding=0, bias=False)
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        w = self.weight
        mean = w.mean(dim=(1, 2, 3), keepdim=True)
        var = w.var(dim=(1, 2, 3), unbiased=False, keepdim=True)
        w = (w - mean) / torch.sqrt(var + self.eps)
        x = pad_same(x, self.kernel_size[0], self.stride[0])
        return F.conv2d(x, w, None, self.stride)


class ConvNorm(nn.Module):
    """StdConv + GroupNorm, used for the stem and the projection shortcut."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, groups: int, conv_eps: float,
                 norm_eps: float):
        super().__init__()
        self.conv = StdConv2dSame(cin, cout, kernel, stride, conv_eps)
        self.norm = nn.GroupNorm(groups, cout, eps=norm_eps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.conv(x))


class Bottleneck(nn.Module):
    """Post-activation bottleneck: 1×1 → 3×3 (stride here) → 1×1, GN after each, ReLU(x + shortcut)."""

    def __init__(self, cin: int, cout: int, stride: int, groups: int, conv_eps: float, norm_eps: float):
        super().__init__()
        mid = cout // 4
        self.conv1 = StdConv2dSame(cin, mid, 1, 1, conv_eps)
        self.norm1 = nn.GroupNorm(groups, mid, eps=norm_eps)
        self.conv2 = StdConv2dSame(mid, mid, 3, stride, conv_eps)
        self.norm2 = nn.GroupNorm(groups, mid, eps=norm_eps)
        self.conv3 = StdConv2dSame(mid, cout, 1, 1, conv_eps)
        self.norm3 = nn.GroupNorm(groups, cout, eps=norm_eps)
        self.downsample = (ConvNorm(cin, cout, 1, stride, groups, conv_eps, norm_eps)
                           if stride != 1 or cin != cout else None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.downsample is None else self.downsample(x)
        x = F.relu(self.norm1(self.conv1(x)))
        x = F.relu(self.norm2(self.conv2(x)))
        x = self.norm3(self.conv3(x))
        return F.relu(x + shortcut)


class ResNetStage(nn.Module):
    def __init__(self, cin: int, cout: int, depth: int, stride: int, groups: int, conv_eps: float,
                 norm_eps: float):
        super().__init__()
        self.blocks = nn.Sequential(*(Bottleneck(cin if i == 0 else cout, cout, stride if i == 0 else 1, groups,
                                                 conv_eps, norm_eps) for i in range(depth)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.blocks(x)


class ResNetV2(nn.Module):
    """Stem (7×7/2 StdConv, GN, ReLU, 3×3/2 SAME max-pool) + bottleneck stages of widths 256·2^s.

    Returns the last stage's map: [B, 256·2^(n-1), ceil(H/s), ceil(W/s)] with s = 4·2^(n-1) (32 for 4 stages).
    """

    def __init__(self, layers=(3, 4, 6, 3), in_chans: int = 3, stem_width: int = 64, groups: int = 32,
                 conv_eps: float = 1e-8, norm_eps: float = 1e-5):
        super().__init__()
        self.layers = tuple(layers)
        self.stem = ConvNorm(in_chans, stem_width, 7, 2, groups, conv_eps, norm_eps)
        cin, stages = stem_width, []
        for s, depth in enumerate(self.layers):
            cout = 256 * 2 ** s
            stages.append(ResNetStage(cin, cout, depth, 1 if s == 0 else 2, groups, conv_eps, norm_eps))
            cin = cout
        self.stages = nn.ModuleList(stages)
        self.out_channels = cin
        self.stride = 4 * 2 ** (len(self.layers) - 1)
        self._init_weights()

    def _init_weights(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.GroupNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)
        for m in self.modules():  # zero-init the last norm of each residual branch (Flax inits its scale to 0)
            if isinstance(m, Bottleneck):
                nn.init.zeros_(m.norm3.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem(x))
        x = F.max_pool2d(pad_same(x, 3, 2, value=float("-inf")), 3, 2)
        for stage in self.stages:
            x = stage(x)
        return x


def resnetv2(layers, **kwargs) -> ResNetV2:
    """ResNet-26 = (2, 2, 2, 2), ResNet-50 = (3, 4, 6, 3) (both stride 32, 2048 channels)."""
    return ResNetV2(layers=layers, **kwargs)
