"""Small tensor helpers used across heads."""
import torch
import torch.nn.functional as F
from torch import nn


def resize(x: torch.Tensor, size, mode: str = "bilinear", align_corners: bool = False) -> torch.Tensor:
    """Bilinear resize with align_corners=False by default (the convention of every method here)."""
    if tuple(x.shape[-2:]) == tuple(size):
        return x
    if mode == "nearest":
        return F.interpolate(x, size=tuple(size), mode="nearest")
    return F.interpolate(x, size=tuple(size), mode=mode, align_corners=align_corners)


def tokens_to_map(x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """[B, N, C] tokens -> [B, C, H, W] map: a view (channels-last strides for contiguous tokens), no copy."""
    return x.reshape(x.shape[0], hw[0], hw[1], x.shape[2]).permute(0, 3, 1, 2)


def map_to_tokens(x: torch.Tensor) -> torch.Tensor:
    """[B, C, H, W] map -> [B, N, C] tokens: a view for contiguous and channels-last maps alike, no copy."""
    return x.flatten(2).transpose(1, 2)


class ConvBNReLU(nn.Module):
    """Conv2d -> BatchNorm2d -> ReLU (mmcv ConvModule layout: .conv, .bn)."""

    def __init__(self, cin: int, cout: int, kernel: int = 1, padding: int | None = None, bias: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(cin, cout, kernel, padding=kernel // 2 if padding is None else padding, bias=bias)
        self.bn = nn.BatchNorm2d(cout)
        self.act = nn.ReLU(inplace=True)

    def forward(self, x):
        return self.act(self.bn(self.conv(x)))
