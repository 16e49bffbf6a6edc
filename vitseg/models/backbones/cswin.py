"""CSWin Transformer (T/S/B) as a four-level segmentation encoder.

Dong et al., "CSWin Transformer: A General Vision Transformer Backbone with Cross-Shaped Windows", CVPR 2022.
Follows the official segmentation backbone (microsoft/CSWin-Transformer: segmentation/backbone/
cswin_transformer.py): parameter names are the official ones (`stage1_conv_embed.0`, `stage{s}.N.attns.0.get_v`,
`merge{s}`, `norm{s}`), so official ImageNet and segmentation checkpoints load without renames.

Cross-shaped attention: in stages 1-3 half of the heads attend inside vertical stripes (full height × sw
columns), the other half inside horizontal stripes (sw rows × full width); stage 4 attends over the whole map.
LePE adds a depthwise 3×3 conv of V, computed inside each stripe. Any input size works: as in the official
segmentation code, each branch zero-pads its q/k/v map symmetrically to a multiple of the stripe width
(padded tokens take part in the attention, unmasked) and crops the result back.
"""
from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ...layers import DropPath, Mlp, map_to_tokens, tokens_to_map, init_linear_norm
from ...layers.features import check_format, check_indices, deepest
from ..registry import PaperInfo, register_backbone

CSWIN_SETTINGS = {  # stem width, depths, heads, seg drop-path (official configs)
    "t": (64, (1, 2, 21, 1), (2, 4, 8, 16), 0.3),
    "s": (64, (2, 4, 32, 2), (2, 4, 8, 16), 0.4),
    "b": (96, (2, 4, 32, 2), (4, 8, 16, 32), 0.6),
}


class MapToTokens(nn.Module):
    """[B, C, H, W] -> [B, H*W, C] (the parameter-free index 1 of the official stem Sequential)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return map_to_tokens(x)


class LePEAttention(nn.Module):
    """Attention inside stripes of one orientation ("vertical", "horizontal") or the whole map ("full"),
    plus the locally-enhanced positional term: a depthwise 3×3 conv of V within each stripe."""

    def __init__(self, dim: int, num_heads: int, mode: str, split_size: int):
        super().__init__()
        self.num_heads, self.mode, self.split_size = num_heads, mode, split_size
        self.get_v = nn.Conv2d(dim, dim, 3, padding=1, groups=dim)

    def forward(self, qkv: torch.Tensor) -> torch.Tensor:
        """qkv [B, 3, C, H, W] -> [B, C, H, W]."""
        b, _, c, h, w = qkv.shape
        sh, sw = {"vertical": (h, self.split_size), "horizontal": (self.split_size, w), "full": (h, w)}[self.mode]
        pad_h, pad_w = (-h) % sh, (-w) % sw
        top, left = pad_h // 2, pad_w // 2
        if pad_h or pad_w:
            qkv = F.pad(qkv, (left, pad_w - left, top, pad_h - top))
        hp, wp = h + pad_h, w + pad_w
        nh, nw = hp // sh, wp // sw
        # [B, 3, C, nh, sh, nw, sw] -> 3 × [B·nh·nw, C, sh, sw]: one image per stripe
        q, k, v = qkv.reshape(b, 3, c, nh, sh, nw, sw).permute(1, 0, 3, 5, 2, 4, 6).reshape(3, -1, c, sh, sw)
        lepe = self.get_v(v)

        def split_heads(t):  # [B', C, sh, sw] -> [B', heads, sh*sw, C/heads] (channel = head·d + j)
            return t.reshape(t.shape[0], self.num_heads, c // self.num_heads, sh * sw).transpose(-1, -2)

        out = F.scaled_dot_product_attention(split_heads(q), split_heads(k), split_heads(v)) + split_heads(lepe)
        out = out.transpose(-1, -2).reshape(b, nh, nw, c, sh, sw).permute(0, 3, 1, 4, 2, 5).reshape(b, c, hp, wp)
        return out[:, :, top:top + h, left:left + w]


class CSWinBlock(nn.Module):
    def __init__(self, dim: int, num_heads: int, split_size: int, last_stage: bool, mlp_ratio: float,
                 drop_path: float, norm_eps: float):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        if last_stage:
            self.attns = nn.ModuleList([LePEAttention(dim, num_heads, "full", split_size)])
        else:  # first half of the channels/heads: vertical stripes; second half: horizontal stripes
            self.attns = nn.ModuleList([LePEAttention(dim // 2, num_heads // 2, "vertical", split_size),
                                        LePEAttention(dim // 2, num_heads // 2, "horizontal", split_size)])
        self.proj = nn.Linear(dim, dim)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
        b, n, c = x.shape
        qkv = self.qkv(self.norm1(x)).reshape(b, hw[0], hw[1], 3, c).permute(0, 3, 4, 1, 2)  # [B, 3, C, H, W]
        if len(self.attns) == 2:
            out = torch.cat([self.attns[0](qkv[:, :, :c // 2]), self.attns[1](qkv[:, :, c // 2:])], dim=1)
        else:
            out = self.attns[0](qkv)
        x = x + self.drop_path(self.proj(map_to_tokens(out)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class MergeBlock(nn.Module):
    """3×3 stride-2 conv between stages (channels double), then LayerNorm on the tokens."""

    def __init__(self, dim: int, dim_out: int, norm_eps: float):
        super().__init__()
        self.conv = nn.Conv2d(dim, dim_out, 3, 2, 1)
        self.norm = nn.LayerNorm(dim_out, eps=norm_eps)

    def forward(self, x: torch.Tensor, hw: tuple[int, int]) -> tuple[torch.Tensor, tuple[int, int]]:
        x = self.conv(tokens_to_map(x, hw))
        return self.norm(map_to_tokens(x)), (x.shape[2], x.shape[3])


class CSWin(nn.Module):
    """Four stages at strides 4, 8, 16, 32; `forward` returns the stage outputs after the seg norms norm1..4."""

    def __init__(self, embed_dim: int = 64, depths=(1, 2, 21, 1), num_heads=(2, 4, 8, 16),
                 split_sizes=(1, 2, 7, 7), mlp_ratio: float = 4.0, in_chans: int = 3, drop_path_rate: float = 0.3,
                 norm_eps: float = 1e-5, out_indices=(0, 1, 2, 3)):
        super().__init__()
        if len(depths) != 4 or len(num_heads) != 4 or len(split_sizes) != 4:
            raise ConfigError("CSWin needs 4 entries in depths, num_heads and split_sizes")
        self.dims = [embed_dim * 2 ** s for s in range(4)]  # always doubles (also for CSWin-L's 24->24 heads)
        self.depths, self.num_heads, self.split_sizes = tuple(depths), tuple(num_heads), tuple(split_sizes)
        self.out_indices = check_indices(out_indices, 4, "CSWin stages")
        self.out_channels = [self.dims[i] for i in self.out_indices]
        self.strides = [4, 8, 16, 32]
        self.stage1_conv_embed = nn.Sequential(nn.Conv2d(in_chans, embed_dim, 7, 4, 2), MapToTokens(),
                                               nn.LayerNorm(embed_dim, eps=norm_eps))
        total = sum(depths)  # the linspace continues across stages
        dpr = [drop_path_rate * i / max(total - 1, 1) for i in range(total)]
        start = 0
        for s in range(4):
            if s > 0:
                setattr(self, f"merge{s}", MergeBlock(self.dims[s - 1], self.dims[s], norm_eps))
            setattr(self, f"stage{s + 1}", nn.ModuleList(
                CSWinBlock(self.dims[s], num_heads[s], split_sizes[s], s == 3, mlp_ratio, dpr[start + j], norm_eps)
                for j in range(depths[s])))
            setattr(self, f"norm{s + 1}", nn.LayerNorm(self.dims[s], eps=norm_eps))
            start += depths[s]
        self.apply(init_linear_norm)  # official init; convs keep PyTorch's default

    def stage_end_blocks(self) -> list[int]:
        """Global index of the last block of each stage."""
        ends, total = [], 0
        for d in self.depths:
            total += d
            ends.append(total - 1)
        return ends

    @property
    def feature_info(self) -> list[dict]:
        ends = self.stage_end_blocks()
        return [{"index": ends[s], "channels": self.dims[s], "stride": self.strides[s]} for s in self.out_indices]

    def forward_intermediates(self, images: torch.Tensor, indices=None, norm: bool = False, fmt: str = "NCHW",
                              prefix: bool = False) -> list:
        """Block outputs at global block indices (position in the concatenation of all stages' blocks); with
        `norm=True` a stage's last block is passed through that stage's output norm (norm1..4), which is what
        `forward` returns. Contract: vitseg/layers/features.py."""
        check_format(fmt)
        ends = self.stage_end_blocks()
        indices = ([ends[s] for s in self.out_indices] if indices is None
                   else check_indices(indices, sum(self.depths), "CSWin"))
        x = self.stage1_conv_embed[0](images)
        hw = (x.shape[2], x.shape[3])
        x = self.stage1_conv_embed[2](self.stage1_conv_embed[1](x))
        found, g, run = {}, 0, deepest(indices)
        for s in range(4):
            if g >= run:
                break
            if s > 0:
                x, hw = getattr(self, f"merge{s}")(x, hw)
            for blk in getattr(self, f"stage{s + 1}"):
                if g >= run:
                    break
                x = blk(x, hw)
                if g in indices:
                    y = getattr(self, f"norm{s + 1}")(x) if norm and g == ends[s] else x
                    found[g] = y if fmt == "NLC" else tokens_to_map(y, hw)
                g += 1
        return [found[i] for i in indices]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Stage outputs after the segmentation norms norm1..4, at `out_indices` (stage numbers)."""
        return self.forward_intermediates(images, norm=True)

    def layer_id(self, name: str) -> int:
        """Depth index for layer-wise lr decay: stem 0, global block g -> g+1, a merge takes the id of the
        first block after it, the (new, seg-only) output norms and anything else -> num_layers."""
        offsets = [0]
        for d in self.depths:
            offsets.append(offsets[-1] + d)
        if name.startswith("stage1_conv_embed."):
            return 0
        m = re.match(r"stage(\d)\.(\d+)\.", name)
        if m:
            return offsets[int(m[1]) - 1] + int(m[2]) + 1
        m = re.match(r"merge(\d)\.", name)
        if m:
            return offsets[int(m[1])] + 1
        return self.num_layers

    @property
    def num_layers(self) -> int:
        return sum(self.depths) + 1


def cswin(variant: str, **kwargs) -> CSWin:
    dim, depths, heads, dpr = CSWIN_SETTINGS[variant]
    args = dict(embed_dim=dim, depths=depths, num_heads=heads, split_sizes=(1, 2, 7, 7), drop_path_rate=dpr)
    args.update(kwargs)
    return CSWin(**args)


def _cswin_paper(params_m: float, name: str) -> PaperInfo:
    return PaperInfo(params_m=params_m, input_size=(224, 224), num_classes=1000,
                     source=f"CSWin (Dong et al., CVPR 2022) Table 1 / README: {name}, ImageNet-1k classifier")


@register_backbone(paper=_cswin_paper(23.0, "CSWin-T"))
def cswin_t(**kw): return cswin("t", **kw)


@register_backbone(paper=_cswin_paper(35.0, "CSWin-S"))
def cswin_s(**kw): return cswin("s", **kw)


@register_backbone(paper=_cswin_paper(78.0, "CSWin-B"))
def cswin_b(**kw): return cswin("b", **kw)


# ---------------------------------------------------------------------------------------------------------------
# Weight import: official checkpoints (ImageNet classifiers and mmseg-trained segmentors) = our layout.

_SEG_NORMS = ("norm1.", "norm2.", "norm3.", "norm4.")


def checkpoint_filter_fn(state_dict, model: CSWin, source):
    """Official CSWin checkpoints -> ours. ImageNet files: the classifier (`head.*`) and its final `norm.*` are
    dropped and the seg output norms norm1..4 stay initialised (as the official seg code does); segmentation
    files: the `backbone.` part is kept. Wrappers (`state_dict`, `state_dict_ema`, `model`, `module.`) are
    removed by vitseg.weights."""
    from ...weights import Converted
    sd, notes = dict(state_dict), []
    if any(k.startswith("backbone.") for k in sd):
        others = [k for k in sd if not k.startswith("backbone.")]
        sd = {k[len("backbone."):]: v for k, v in sd.items() if k.startswith("backbone.")}
        if others:
            notes.append(f"ignored {len(others)} tensors outside the backbone (decode/auxiliary heads)")
        layout = "cswin-official-seg"
    else:
        layout = "cswin-official"
    dropped = [k for k in sd if k.startswith(("head.", "norm.")) or k.endswith("atten_mask_matrix")]
    if dropped:
        notes.append("ignored the ImageNet classifier and its final norm (head.*, norm.*)")
    sd = {k: v for k, v in sd.items() if k not in dropped}
    allow = ()
    if not any(k.startswith(_SEG_NORMS) for k in sd):
        allow = _SEG_NORMS
        notes.append("output norms norm1..norm4 are new (not in an ImageNet checkpoint) and stay initialised")
    return Converted(sd, allow_missing=allow, layout=layout, notes=notes)


def config_from_checkpoint(source) -> dict:
    """Official CSWin checkpoints carry no settings beyond the architecture, which the name fixes."""
    return {}
