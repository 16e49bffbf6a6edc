"""Mix Transformer (MiT-B0..B5), the SegFormer encoder.

Xie et al., "SegFormer: Simple and Efficient Design for Semantic Segmentation with Transformers", NeurIPS 2021.
Parameter names mirror the official NVlabs code (patch_embed{s}, block{s}.{j}, fused attn.kv, norm{s}) so
official files load without renames; HF transformers layouts are converted in heads/segformer.py.

LayerNorm eps is per site: the official code uses 1e-6 in blocks and stage-end norms and PyTorch's 1e-5 in
the patch-embedding and spatial-reduction norms; HF uses 1e-5 everywhere. `norm_eps` sets the former.

Layout: tokens [B, N, C] and channels-last maps [B, C, H, W] (strides of [B, H, W, C]) are the same memory,
so every sequence <-> map switch here is a free view (`layers.tokens_to_map`, `layers.map_to_tokens`) and the convolutions run on
channels-last input. The stage outputs are channels-last maps.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ...layers import DropPath, init_vit_weights, map_to_tokens, tokens_to_map
from ...layers.features import check_format, check_indices, deepest
from ..registry import PaperInfo, register_backbone

MIT_SETTINGS = {
    # name: (channels, depths)
    "b0": ((32, 64, 160, 256), (2, 2, 2, 2)),
    "b1": ((64, 128, 320, 512), (2, 2, 2, 2)),
    "b2": ((64, 128, 320, 512), (3, 4, 6, 3)),
    "b3": ((64, 128, 320, 512), (3, 4, 18, 3)),
    "b4": ((64, 128, 320, 512), (3, 8, 27, 3)),
    "b5": ((64, 128, 320, 512), (3, 6, 40, 3)),
}


class OverlapPatchEmbed(nn.Module):
    """Strided conv with overlapping windows (kernel > stride), then LayerNorm on the tokens."""

    def __init__(self, cin: int, cout: int, kernel: int, stride: int, eps: float = 1e-5):
        super().__init__()
        self.proj = nn.Conv2d(cin, cout, kernel, stride, padding=kernel // 2)
        self.norm = nn.LayerNorm(cout, eps=eps)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.proj(x.contiguous(memory_format=torch.channels_last))
        return self.norm(map_to_tokens(x)), (x.shape[2], x.shape[3])


class EfficientAttention(nn.Module):
    """Multi-head self-attention whose keys/values come from a sequence shrunk by an R×R strided conv."""

    def __init__(self, dim: int, heads: int, sr_ratio: int, qkv_bias: bool = True, sr_eps: float = 1e-5):
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(dim, dim, bias=qkv_bias)
        self.kv = nn.Linear(dim, 2 * dim, bias=qkv_bias)  # rows: [k (dim) ; v (dim)]
        self.proj = nn.Linear(dim, dim)
        self.sr_ratio = sr_ratio
        if sr_ratio > 1:
            self.sr = nn.Conv2d(dim, dim, sr_ratio, sr_ratio)
            self.norm = nn.LayerNorm(dim, eps=sr_eps)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        h, d = self.heads, c // self.heads
        q = self.q(x).view(b, n, h, d).transpose(1, 2)
        if self.sr_ratio > 1:
            x = self.norm(map_to_tokens(self.sr(tokens_to_map(x, hw))))
        k, v = self.kv(x).view(b, -1, 2, h, d).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class DWConv(nn.Module):
    """3×3 depthwise conv on the token grid (gives Mix-FFN its positional information)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 3, 1, 1, groups=dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return map_to_tokens(self.dwconv(tokens_to_map(x, hw)))


class MixFFN(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.dwconv = DWConv(hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        return self.fc2(self.act(self.dwconv(self.fc1(x), hw)))


class Block(nn.Module):
    def __init__(self, dim: int, heads: int, sr_ratio: int, mlp_ratio: float, drop_path: float,
                 qkv_bias: bool, norm_eps: float, sr_eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = EfficientAttention(dim, heads, sr_ratio, qkv_bias, sr_eps)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = MixFFN(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x), hw))
        return x + self.drop_path(self.mlp(self.norm2(x), hw))


class MixTransformer(nn.Module):
    """Four-stage hierarchical encoder; returns the four stage outputs [B, C_i, H/2^(i+1), W/2^(i+1)]."""

    def __init__(self, channels=(64, 128, 320, 512), depths=(3, 4, 6, 3), heads=(1, 2, 5, 8),
                 sr_ratios=(8, 4, 2, 1), mlp_ratios=(4, 4, 4, 4), patch_sizes=(7, 3, 3, 3), strides=(4, 2, 2, 2),
                 in_chans: int = 3, qkv_bias: bool = True, drop_path_rate: float = 0.1,
                 norm_eps: float = 1e-6, embed_norm_eps: float = 1e-5, out_indices=(0, 1, 2, 3)):
        super().__init__()
        self.channels, self.depths = tuple(channels), tuple(depths)
        self.out_indices = check_indices(out_indices, 4, "MiT stages")
        self.out_channels = [self.channels[i] for i in self.out_indices]
        dpr = torch.linspace(0, drop_path_rate, sum(depths)).tolist()
        cur = 0
        for s in range(4):
            cin = in_chans if s == 0 else channels[s - 1]
            setattr(self, f"patch_embed{s + 1}",
                    OverlapPatchEmbed(cin, channels[s], patch_sizes[s], strides[s], embed_norm_eps))
            setattr(self, f"block{s + 1}", nn.ModuleList(
                Block(channels[s], heads[s], sr_ratios[s], mlp_ratios[s], dpr[cur + j], qkv_bias,
                      norm_eps, embed_norm_eps) for j in range(depths[s])))
            setattr(self, f"norm{s + 1}", nn.LayerNorm(channels[s], eps=norm_eps))
            cur += depths[s]
        self.apply(init_vit_weights)

    def stage_end_blocks(self) -> list[int]:
        """Global index of the last block of each stage."""
        ends, total = [], 0
        for d in self.depths:
            total += d
            ends.append(total - 1)
        return ends

    @property
    def feature_info(self) -> list[dict]:
        ends, strides = self.stage_end_blocks(), [4, 8, 16, 32]
        return [{"index": ends[s], "channels": self.channels[s], "stride": strides[s]} for s in self.out_indices]

    def forward_intermediates(self, x: torch.Tensor, indices=None, norm: bool = False, fmt: str = "NCHW",
                              prefix: bool = False) -> list:
        """Block outputs at global block indices. A stage's norm (norm1..4) lies on the main path here (the
        next stage reads the normalised map); `norm=True` returns that normalised output for a stage's last
        block, which is what `forward` returns. Contract: vitseg/layers/features.py."""
        check_format(fmt)
        ends = self.stage_end_blocks()
        indices = ([ends[s] for s in self.out_indices] if indices is None
                   else check_indices(indices, sum(self.depths), "MiT"))
        found, g, run = {}, 0, deepest(indices)
        for s in range(4):
            if g >= run:
                break
            x, hw = getattr(self, f"patch_embed{s + 1}")(x)
            for blk in getattr(self, f"block{s + 1}"):
                if g >= run:
                    break
                x = blk(x, hw)
                if g in indices:
                    found[g] = (x, hw)
                g += 1
            if g - 1 == ends[s]:
                x = getattr(self, f"norm{s + 1}")(x)
                if norm and ends[s] in indices:
                    found[ends[s]] = (x, hw)
                x = tokens_to_map(x, hw)
        return [t if fmt == "NLC" else tokens_to_map(t, hw) for t, hw in (found[i] for i in indices)]

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        """The four stage outputs (after each stage's norm) at `out_indices` (stage numbers)."""
        return self.forward_intermediates(x, norm=True)

    def layer_id(self, name: str) -> int:
        """Depth index of a parameter (for layer-wise lr decay): 0 = first patch embedding."""
        offsets = [0]
        for d in self.depths:
            offsets.append(offsets[-1] + d)
        for s in range(4):
            if name.startswith(f"patch_embed{s + 1}."):
                return offsets[s] + (1 if s else 0)
            if name.startswith(f"block{s + 1}."):
                return offsets[s] + int(name.split(".")[1]) + 1
            if name.startswith(f"norm{s + 1}."):
                return offsets[s + 1]
        return offsets[-1]

    @property
    def num_layers(self) -> int:
        return sum(self.depths) + 1


def mit(variant: str, **kwargs) -> MixTransformer:
    channels, depths = MIT_SETTINGS[variant]
    return MixTransformer(channels=channels, depths=depths, **kwargs)


def _mit_paper(enc_m: float) -> PaperInfo:
    return PaperInfo(params_m=enc_m, input_size=(512, 512), num_classes=0, source="SegFormer Table 1 (encoder)")


@register_backbone(paper=_mit_paper(3.4))
def mit_b0(**kw): return mit("b0", **kw)


@register_backbone(paper=_mit_paper(13.1))
def mit_b1(**kw): return mit("b1", **kw)


@register_backbone(paper=_mit_paper(24.2))
def mit_b2(**kw): return mit("b2", **kw)


@register_backbone(paper=_mit_paper(44.0))
def mit_b3(**kw): return mit("b3", **kw)


@register_backbone(paper=_mit_paper(60.8))
def mit_b4(**kw): return mit("b4", **kw)


@register_backbone(paper=_mit_paper(81.4))
def mit_b5(**kw): return mit("b5", **kw)


def checkpoint_filter_fn(state_dict, model, source):
    """Encoder checkpoints: official ImageNet `mit_b*.pth` (classifier `head.*` dropped) or HF `segformer.*`."""
    from ..heads.segformer import convert_hf_segformer
    if any(k.startswith("segformer.") for k in state_dict):
        state_dict = {k[len("backbone."):]: v for k, v in convert_hf_segformer(state_dict).items()
                      if k.startswith("backbone.")}
    elif any(k.startswith("backbone.") for k in state_dict):
        state_dict = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    return {k: v for k, v in state_dict.items() if not k.startswith("head.")}


def config_from_checkpoint(source) -> dict:
    from ..heads.segformer import config_from_checkpoint as seg_cfg
    cfg = seg_cfg(source)
    cfg.pop("num_classes", None)
    cfg.pop("decoder_dim", None)
    return cfg
