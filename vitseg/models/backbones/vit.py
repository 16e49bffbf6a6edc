"""Plain Vision Transformer (ViT / DeiT / AugReg) and the R+ViT hybrids, as segmentation encoders.

Dosovitskiy et al., "An Image is Worth 16x16 Words", ICLR 2021; Touvron et al., "Training data-efficient image
transformers & distillation through attention" (DeiT), ICML 2021; Steiner et al., "How to train your ViT?"
(AugReg), TMLR 2022. The three share one architecture; DeiT-distilled adds a distillation token.

Parameter names follow timm (patch_embed.proj, cls_token, dist_token, pos_embed, blocks.N.{norm1,attn.qkv,
attn.proj,norm2,mlp.fc1,mlp.fc2}, norm), so timm files load as they are. Converters for mmseg, Google .npz
(classic AugReg and big_vision naming, hybrids included) and HF transformers ViT/DeiT layouts are at the end.

Segmentation conventions (specs/backbones.md §1):
- `forward(images)` returns the outputs of the blocks in `out_indices` as [B, C, h, w] maps, before the final
  LayerNorm (unless `final_norm=True`, which normalises the output of the last block only, as mmseg does) and
  with the class/distillation tokens dropped.
- Inputs whose size is not a multiple of the patch are zero-padded at the bottom/right (mmseg `PatchEmbed`
  padding='corner'), so the token grid is ceil(H/p) × ceil(W/p); decoders crop their output back.
- The stored position table covers the `img_size` grid; any other grid gets a bicubic resample of it at run time
  (align_corners=False, no antialias: the mmseg and HF behaviour; `pos_resize_mode='bilinear'` for SETR; timm's
  antialiased variant is not offered). Prefix rows are never interpolated. Checkpoint tables are resized to the
  model's grid at load time, with a notice.
- Hybrids (R26+S/32, R50+L/32): the ResNet of resnetv2.py replaces the patch convolution; tokens at stride 32.
- Init without weights: timm default (Linear trunc-normal 0.02, pos_embed trunc-normal 0.02, cls normal 1e-6).
"""
from __future__ import annotations

import math
import re

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ...errors import CheckpointError, ConfigError
from ...layers import DropPath, Mlp, resample_abs_pos_embed, trunc_normal_
from ...layers.features import EMBED, check_format, check_indices, deepest, format_tokens
from ..registry import PaperInfo, register_backbone
from .resnetv2 import ResNetV2, resnetv2

VIT_SETTINGS = {  # name: (embed_dim, depth, num_heads); MLP ratio 4, head dim 64
    "ti": (192, 12, 3),
    "s": (384, 12, 6),
    "b": (768, 12, 12),
    "l": (1024, 24, 16),
}


def _pair(v) -> tuple[int, int]:
    return (int(v), int(v)) if isinstance(v, (int, float)) else (int(v[0]), int(v[1]))


class PatchEmbed(nn.Module):
    """Non-overlapping p×p patches → C channels; pads bottom/right to a multiple of p first."""

    def __init__(self, patch_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.proj = nn.Conv2d(in_chans, embed_dim, patch_size, patch_size)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_size
        pad_h, pad_w = (-x.shape[2]) % p, (-x.shape[3]) % p
        if pad_h or pad_w:
            x = F.pad(x, (0, pad_w, 0, pad_h))
        return self.proj(x)


class HybridEmbed(nn.Module):
    """A CNN feature map (stride s) → 1×1 conv to C channels: each feature pixel is one token."""

    def __init__(self, backbone: ResNetV2, embed_dim: int):
        super().__init__()
        self.backbone = backbone
        self.patch_size = backbone.stride
        self.proj = nn.Conv2d(backbone.out_channels, embed_dim, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # 'SAME' padding inside the ResNet already gives a ceil(H/s) × ceil(W/s) grid for any input size.
        return self.proj(self.backbone(x))


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection (rows: q; k; v, each head-major)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        """Self-attention over x; with `context`, queries come from x and keys/values from context
        (same weights: SegViT's query-downsampling layers reuse pretrained blocks this way)."""
        b, n, c = x.shape
        h, d = self.num_heads, c // self.num_heads
        if context is None:
            q, k, v = self.qkv(x).view(b, n, 3, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        else:
            w_q, w_kv = self.qkv.weight.split([c, 2 * c])
            b_q, b_kv = self.qkv.bias.split([c, 2 * c]) if self.qkv.bias is not None else (None, None)
            q = F.linear(x, w_q, b_q).view(b, n, h, d).transpose(1, 2)
            k, v = F.linear(context, w_kv, b_kv).view(b, context.shape[1], 2, h, d).permute(2, 0, 3, 1, 4).unbind(0)
        out = F.scaled_dot_product_attention(q, k, v)
        return self.proj(out.transpose(1, 2).reshape(b, n, c))


class Block(nn.Module):
    """Pre-norm transformer block: x + DropPath(Attn(LN(x))), then x + DropPath(MLP(LN(x)))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 drop_path: float = 0.0, norm_eps: float = 1e-6):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=norm_eps)
        self.attn = Attention(dim, num_heads, qkv_bias)
        self.drop_path = DropPath(drop_path)
        self.norm2 = nn.LayerNorm(dim, eps=norm_eps)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class VisionTransformer(nn.Module):
    """ViT encoder returning block outputs as maps (see the module docstring for the conventions).

    Attributes used by heads: embed_dim, patch_size (the token stride; 32 for hybrids), num_prefix_tokens,
    depth, out_indices, out_channels, grid_size (the grid of the stored position table), blocks, norm.
    """

    def __init__(self, img_size=224, patch_size: int = 16, in_chans: int = 3, embed_dim: int = 768,
                 depth: int = 12, num_heads: int = 12, mlp_ratio: float = 4.0, qkv_bias: bool = True,
                 class_token: bool = True, distilled: bool = False, norm_eps: float = 1e-6,
                 drop_rate: float = 0.0, drop_path_rate: float = 0.0, out_indices=None, final_norm: bool = False,
                 pos_resize_mode: str = "bicubic", hybrid_layers=None):
        super().__init__()
        if embed_dim % num_heads:
            raise ConfigError(f"embed_dim {embed_dim} is not divisible by num_heads {num_heads}")
        if distilled and not class_token:
            raise ConfigError("distilled=True needs class_token=True (DeiT order is [cls, dist, patches])")
        if pos_resize_mode not in ("bicubic", "bilinear"):
            raise ConfigError(f"pos_resize_mode must be 'bicubic' or 'bilinear', got '{pos_resize_mode}'")
        self.embed_dim, self.depth, self.num_heads = embed_dim, depth, num_heads
        self.final_norm, self.pos_resize_mode = final_norm, pos_resize_mode
        if hybrid_layers:
            self.patch_embed = HybridEmbed(resnetv2(hybrid_layers, in_chans=in_chans), embed_dim)
        else:
            self.patch_embed = PatchEmbed(patch_size, in_chans, embed_dim)
        self.patch_size = self.patch_embed.patch_size
        img_size = _pair(img_size)
        self.grid_size = (math.ceil(img_size[0] / self.patch_size), math.ceil(img_size[1] / self.patch_size))
        self.num_prefix_tokens = int(class_token) + int(distilled)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if class_token else None
        self.dist_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if distilled else None
        self.pos_embed = nn.Parameter(torch.zeros(1, self.num_prefix_tokens + self.grid_size[0] * self.grid_size[1],
                                                  embed_dim))
        self.pos_drop = nn.Dropout(drop_rate)
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # cpu: builds under meta too
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, qkv_bias, rates[i], norm_eps)
                                    for i in range(depth))
        self.norm = nn.LayerNorm(embed_dim, eps=norm_eps)
        self.out_indices = check_indices(depth - 1 if out_indices is None else out_indices, depth, "ViT")
        self.out_channels = [embed_dim] * len(self.out_indices)
        self._init_weights()

    def _init_weights(self) -> None:
        trunc_normal_(self.pos_embed, std=0.02)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=1e-6)
        if self.dist_token is not None:
            trunc_normal_(self.dist_token, std=0.02)
        for m in self.modules():
            if isinstance(m, nn.Linear):
                trunc_normal_(m.weight, std=0.02)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def embed(self, images: torch.Tensor) -> tuple[torch.Tensor, tuple[int, int]]:
        """Images [B,3,H,W] → tokens [B, prefix + h·w, C] with position embeddings added, and the grid (h, w)."""
        x = self.patch_embed(images)
        hw = (x.shape[2], x.shape[3])
        x = x.flatten(2).transpose(1, 2)
        prefix = [t.expand(x.shape[0], -1, -1) for t in (self.cls_token, self.dist_token) if t is not None]
        x = torch.cat(prefix + [x], dim=1)
        return self.pos_drop(x + self.position_embedding(hw)), hw

    def position_embedding(self, hw: tuple[int, int]) -> torch.Tensor:
        """The position table for a grid (h, w), resampled from the stored grid when they differ."""
        return resample_abs_pos_embed(self.pos_embed, tuple(hw), self.grid_size, self.num_prefix_tokens,
                                      mode=self.pos_resize_mode)

    def token_grid(self, height: int, width: int) -> tuple[int, int]:
        """The token grid of an input size: ceil(H/p) × ceil(W/p) (inputs are padded bottom/right)."""
        return -(-height // self.patch_size), -(-width // self.patch_size)

    @property
    def feature_info(self) -> list[dict]:
        return [{"index": i, "channels": self.embed_dim, "stride": self.patch_size} for i in self.out_indices]

    def forward_intermediates(self, images: torch.Tensor, indices=None, norm: bool = False, fmt: str = "NCHW",
                              prefix: bool = False) -> list:
        """Outputs of the requested blocks (see vitseg/layers/features.py for the contract). "embed" is the
        token sequence after the position embedding, before block 0 (RegProxy's M = 0 tap)."""
        check_format(fmt)
        indices = self.out_indices if indices is None else check_indices(indices, self.depth, "ViT",
                                                                         allow_embed=True)
        x, hw = self.embed(images)
        found = {EMBED: x} if EMBED in indices else {}
        for i in range(deepest(indices)):
            x = self.blocks[i](x)
            if i in indices:
                found[i] = self.norm(x) if norm and i == self.depth - 1 else x
        return [format_tokens(found[i], hw, self.num_prefix_tokens, fmt, prefix) for i in indices]

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Images [B,3,H,W] → one map [B, C, ceil(H/p), ceil(W/p)] per out index (prefix tokens dropped)."""
        return self.forward_intermediates(images, norm=self.final_norm)

    def layer_id(self, name: str) -> int:
        """Depth index of a parameter for layer-wise lr decay: embeddings 0, blocks.i → i+1, rest num_layers."""
        if name.startswith(("patch_embed.", "cls_token", "dist_token", "pos_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.num_layers

    @property
    def num_layers(self) -> int:
        return self.depth + 1

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed", "cls_token", "dist_token"}


def vit(variant: str, patch_size: int = 16, **kwargs) -> VisionTransformer:
    """A ViT of size ti/s/b/l; keyword arguments override the size settings (e.g. depth=2 for tests)."""
    dim, depth, heads = VIT_SETTINGS[variant]
    return VisionTransformer(**{"embed_dim": dim, "depth": depth, "num_heads": heads, "patch_size": patch_size,
                                **kwargs})


def _paper(params_m: float, source: str, size: int = 224) -> PaperInfo:
    return PaperInfo(params_m=params_m, input_size=(size, size), num_classes=1000, source=source)


# Classification models with their 1000-class head (specs/backbones.md §0.1-0.2).
@register_backbone(paper=_paper(5.7, "DeiT Table 1 / AugReg: ViT-Ti/16 with 1000-class head"))
def vit_ti16(**kw): return vit("ti", **kw)


@register_backbone(paper=_paper(22.0, "RegProxy Table 2: ViT-S/16 with 1000-class head"))
def vit_s16(**kw): return vit("s", **kw)


@register_backbone(paper=_paper(86.6, "AugReg / timm: ViT-B/16 with 1000-class head (ViT paper: 86M)"))
def vit_b16(**kw): return vit("b", **kw)


@register_backbone(paper=_paper(304.3, "AugReg / timm: ViT-L/16 with 1000-class head"))
def vit_l16(**kw): return vit("l", **kw)


@register_backbone(paper=_paper(5.7, "DeiT Table 1 (printed 5M; 5.72M counted with head)"))
def deit_ti16(**kw): return vit("ti", **kw)


@register_backbone(paper=_paper(22.0, "DeiT Table 1 (22M)"))
def deit_s16(**kw): return vit("s", **kw)


@register_backbone(paper=_paper(86.6, "DeiT Table 1 (86M)"))
def deit_b16(**kw): return vit("b", **kw)


@register_backbone(paper=_paper(5.9, "DeiT Table 1, distilled (printed 6M; both heads)"))
def deit_ti16_distilled(**kw): return vit("ti", **{"distilled": True, **kw})


@register_backbone(paper=_paper(22.4, "DeiT Table 1, distilled (printed 22M; both heads)"))
def deit_s16_distilled(**kw): return vit("s", **{"distilled": True, **kw})


@register_backbone(paper=_paper(87.3, "DeiT Table 1, distilled (87M; both heads)"))
def deit_b16_distilled(**kw): return vit("b", **{"distilled": True, **kw})


@register_backbone(paper=_paper(36.4, "AugReg R26+S/32 with head (RegProxy Tables 2/4 print 37M/36M)"))
def r26_vit_s32(**kw): return vit("s", **{"hybrid_layers": (2, 2, 2, 2), **kw})


@register_backbone(paper=_paper(329.0, "AugReg R50+L/32 with head (RegProxy Tables 2/4 print 330M/323M)"))
def r50_vit_l32(**kw): return vit("l", **{"hybrid_layers": (3, 4, 6, 3), **kw})


# ---------------------------------------------------------------------------------------------------------------
# Weight import. Every foreign layout is first converted to the internal (timm) names by a pure function of the
# state dict; then heads are dropped and the position table is resized to the model's grid.

_DROPPED_PREFIXES = ("head.", "head_dist.", "pre_logits.", "fc_norm.", "pooler.", "classifier.", "cls_classifier.",
                     "distillation_classifier.", "mask_token", "embeddings.mask_token")


def _strip_prefix(sd: dict, prefixes) -> dict:
    for p in prefixes:
        if any(k.startswith(p) for k in sd):
            return {k[len(p):]: v for k, v in sd.items() if k.startswith(p)}
    return sd


def _merge_qkv(sd: dict) -> dict:
    """blocks.N.attn.{q,k,v}.{weight,bias} → blocks.N.attn.qkv.{weight,bias} (rows q; k; v)."""
    out, parts = {}, {}
    for k, v in sd.items():
        m = re.match(r"^(blocks\.\d+\.attn\.)([qkv])\.(weight|bias)$", k)
        if m:
            parts.setdefault((m[1], m[3]), {})[m[2]] = v
        else:
            out[k] = v
    for (base, kind), qkv in parts.items():
        if set(qkv) != {"q", "k", "v"}:
            raise CheckpointError(f"attention {base}: found only {sorted(qkv)} of the query/key/value {kind}s")
        out[f"{base}qkv.{kind}"] = torch.cat([qkv["q"], qkv["k"], qkv["v"]], dim=0)
    return out


_HF_RENAMES = [  # transformers v4 names (files on disk) and v5 in-memory names → internal
    (r"^embeddings\.cls_token$", "cls_token"),
    (r"^embeddings\.distillation_token$", "dist_token"),
    (r"^embeddings\.position_embeddings$", "pos_embed"),
    (r"^embeddings\.patch_embeddings\.projection\.", "patch_embed.proj."),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.layernorm_before\.", r"blocks.\1.norm1."),
    (r"^(?:encoder\.layer|layers)\.(\d+)\.layernorm_after\.", r"blocks.\1.norm2."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.query\.", r"blocks.\1.attn.q."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.key\.", r"blocks.\1.attn.k."),
    (r"^encoder\.layer\.(\d+)\.attention\.attention\.value\.", r"blocks.\1.attn.v."),
    (r"^layers\.(\d+)\.attention\.([qkv])_proj\.", r"blocks.\1.attn.\2."),
    (r"^encoder\.layer\.(\d+)\.attention\.output\.dense\.", r"blocks.\1.attn.proj."),
    (r"^layers\.(\d+)\.attention\.o_proj\.", r"blocks.\1.attn.proj."),
    (r"^encoder\.layer\.(\d+)\.intermediate\.dense\.", r"blocks.\1.mlp.fc1."),
    (r"^encoder\.layer\.(\d+)\.output\.dense\.", r"blocks.\1.mlp.fc2."),
    (r"^layers\.(\d+)\.mlp\.(fc[12])\.", r"blocks.\1.mlp.\2."),
    (r"^layernorm\.", "norm."),
]

_MMSEG_RENAMES = [
    (r"^patch_embed\.projection\.", "patch_embed.proj."),
    (r"^layers\.(\d+)\.ln1\.", r"blocks.\1.norm1."),
    (r"^layers\.(\d+)\.ln2\.", r"blocks.\1.norm2."),
    (r"^layers\.(\d+)\.attn\.attn\.in_proj_weight$", r"blocks.\1.attn.qkv.weight"),
    (r"^layers\.(\d+)\.attn\.attn\.in_proj_bias$", r"blocks.\1.attn.qkv.bias"),
    (r"^layers\.(\d+)\.attn\.attn\.out_proj\.", r"blocks.\1.attn.proj."),
    (r"^layers\.(\d+)\.ffn\.layers\.0\.0\.", r"blocks.\1.mlp.fc1."),
    (r"^layers\.(\d+)\.ffn\.layers\.1\.", r"blocks.\1.mlp.fc2."),
    (r"^ln1\.", "norm."),
]


def _rename(sd: dict, rules) -> dict:
    out = {}
    for k, v in sd.items():
        for pattern, repl in rules:
            new, n = re.subn(pattern, repl, k)
            if n:
                k = new
                break
        out[k] = v
    return out


def detect_layout(state_dict: dict) -> str:
    """'npz' (Google Flax), 'hf' (transformers ViT/DeiT), 'mmseg' or 'timm' (the internal names)."""
    keys = list(state_dict)
    if any(re.search(r"(^|/)(embedding/kernel|Transformer/)", k) for k in keys):
        return "npz"
    if any(k.endswith(("embeddings.patch_embeddings.projection.weight", "attention.attention.query.weight",
                       "attention.q_proj.weight")) for k in keys):
        return "hf"
    if any(k.endswith(("attn.attn.in_proj_weight", "patch_embed.projection.weight")) for k in keys):
        return "mmseg"
    return "timm"


def convert_to_internal(state_dict: dict) -> tuple[dict, str]:
    """Any supported ViT/DeiT/hybrid layout → internal names (heads kept). Returns (state dict, layout)."""
    layout = detect_layout(state_dict)
    if layout == "npz":
        return _from_npz(state_dict), layout
    if layout == "hf":
        sd = _strip_prefix(state_dict, ("vit.", "deit."))
        sd = {k: v for k, v in sd.items() if not k.startswith(("classifier.", "cls_classifier.",
                                                                "distillation_classifier."))}
        return _merge_qkv(_rename(sd, _HF_RENAMES)), layout
    sd = _strip_prefix(state_dict, ("backbone.",))
    if layout == "mmseg":
        return _rename(sd, _MMSEG_RENAMES), layout
    return sd, layout


def checkpoint_filter_fn(state_dict, model: VisionTransformer, source=None):
    """Convert a foreign checkpoint to this model: layouts timm, mmseg, Google .npz, HF ViT/DeiT.

    Classification heads, poolers and pre-logits are dropped; the position table is resized bicubically to the
    model's grid (with a notice). Everything else must match (weights.load_into checks strictly).
    """
    from ...weights import Converted
    sd, layout = convert_to_internal(state_dict)
    dropped = sorted({k.split(".")[0] for k in sd if k.startswith(_DROPPED_PREFIXES)})
    sd = {k: v for k, v in sd.items() if not k.startswith(_DROPPED_PREFIXES)}
    notes, allow_missing = [f"not used by the encoder, dropped: {', '.join(dropped)}"] if dropped else [], ()
    where = getattr(source, "path", "<state_dict>")
    if layout == "mmseg" and "norm.weight" not in sd:
        allow_missing = ("norm.",)  # mmseg files converted with final_norm=False carry no final LayerNorm
        notes.append("the checkpoint has no final LayerNorm (ln1): `norm` stays initialised")
    pos = sd.get("pos_embed")
    if pos is not None and pos.shape != model.pos_embed.shape:
        p = model.num_prefix_tokens
        rows = pos.shape[1] - p
        side = math.isqrt(max(rows, 0))
        if rows <= 0 or side * side != rows or pos.shape[2] != model.embed_dim:
            raise CheckpointError(f"{where}: pos_embed {tuple(pos.shape)} does not fit a model with {p} prefix "
                                  f"token(s) and width {model.embed_dim} (expected [1, {p} + h·w, "
                                  f"{model.embed_dim}] with a square grid). Check class_token/distilled.")
        sd["pos_embed"] = resample_abs_pos_embed(pos, model.grid_size, (side, side), p, mode=model.pos_resize_mode)
        notes.append(f"position embeddings resized from a {side}×{side} grid to "
                     f"{model.grid_size[0]}×{model.grid_size[1]} ({model.pos_resize_mode})")
    return Converted(sd, allow_missing=allow_missing, layout=layout, notes=notes)


def config_from_checkpoint(source) -> dict:
    """Builder settings a checkpoint implies: the whole architecture from an HF config.json; otherwise
    class/distillation tokens, qkv bias, head count (.npz) and `img_size` from the stored position grid."""
    cfg = source.config or {}
    if cfg.get("model_type") in ("vit", "deit"):
        if cfg.get("hidden_act", "gelu") != "gelu":
            raise CheckpointError(f"{source.path}: hidden_act '{cfg['hidden_act']}' is not supported "
                                  "(vitseg ViT uses exact GELU)")
        dim = cfg["hidden_size"]
        return {"embed_dim": dim, "depth": cfg["num_hidden_layers"], "num_heads": cfg["num_attention_heads"],
                "mlp_ratio": cfg["intermediate_size"] / dim, "norm_eps": cfg.get("layer_norm_eps", 1e-12),
                "qkv_bias": cfg.get("qkv_bias", True), "patch_size": cfg.get("patch_size", 16),
                "img_size": cfg.get("image_size", 224), "in_chans": cfg.get("num_channels", 3),
                "class_token": True,
                "distilled": any(k.endswith("embeddings.distillation_token") for k in source.state_dict)}
    sd, layout = convert_to_internal(source.state_dict)
    out = {"class_token": "cls_token" in sd, "distilled": "dist_token" in sd}
    if "blocks.0.attn.qkv.weight" in sd:
        out["qkv_bias"] = "blocks.0.attn.qkv.bias" in sd
    if layout == "npz":
        query = next((v for k, v in source.state_dict.items()
                      if re.search(r"MultiHeadDotProductAttention_\d/query/kernel$", k)), None)
        if query is not None:
            out["num_heads"] = query.shape[-2]
    pos = sd.get("pos_embed")
    if pos is not None:
        rows = pos.shape[1] - out["class_token"] - out["distilled"]
        side = math.isqrt(rows)
        stages = {k.split(".")[3] for k in sd if k.startswith("patch_embed.backbone.stages.")}
        patch = sd.get("patch_embed.proj.weight")
        stride = 4 * 2 ** (len(stages) - 1) if stages else (patch.shape[-1] if patch is not None else 0)
        if stride and side * side == rows:
            out["img_size"] = side * stride
    return out


# --- Google Flax .npz (AugReg / original ViT / big_vision) -----------------------------------------------------
# Each entry: (internal key, npz key(s), kind). Kinds: 'conv' HWIO↔OIHW, 'dense' [in,out]↔[out,in], 'qkv_w'/
# 'qkv_b' three [C,heads,d]/[heads,d] tensors ↔ one fused tensor, 'out_w' [heads,d,C] ↔ [C,C], 'plain' as is.

def _npz_table(depth: int, hybrid_layers, big_vision: bool, has_cls: bool) -> list[tuple[str, tuple, str]]:
    mha, ln1, ln2, mlp = (("MultiHeadDotProductAttention_0", "LayerNorm_0", "LayerNorm_1", "MlpBlock_0")
                          if big_vision else
                          ("MultiHeadDotProductAttention_1", "LayerNorm_0", "LayerNorm_2", "MlpBlock_3"))
    pos = "pos_embedding" if big_vision else "Transformer/posembed_input/pos_embedding"
    table = [("patch_embed.proj.weight", ("embedding/kernel",), "conv"),
             ("patch_embed.proj.bias", ("embedding/bias",), "plain"),
             ("pos_embed", (pos,), "plain"),
             ("norm.weight", ("Transformer/encoder_norm/scale",), "plain"),
             ("norm.bias", ("Transformer/encoder_norm/bias",), "plain")]
    if has_cls:
        table.append(("cls_token", ("cls",), "plain"))
    for i in range(depth):
        o, n = f"blocks.{i}.", f"Transformer/encoderblock_{i}/"
        table += [(o + "norm1.weight", (n + ln1 + "/scale",), "plain"),
                  (o + "norm1.bias", (n + ln1 + "/bias",), "plain"),
                  (o + "norm2.weight", (n + ln2 + "/scale",), "plain"),
                  (o + "norm2.bias", (n + ln2 + "/bias",), "plain"),
                  (o + "attn.qkv.weight", tuple(f"{n}{mha}/{p}/kernel" for p in ("query", "key", "value")), "qkv_w"),
                  (o + "attn.qkv.bias", tuple(f"{n}{mha}/{p}/bias" for p in ("query", "key", "value")), "qkv_b"),
                  (o + "attn.proj.weight", (f"{n}{mha}/out/kernel",), "out_w"),
                  (o + "attn.proj.bias", (f"{n}{mha}/out/bias",), "plain"),
                  (o + "mlp.fc1.weight", (f"{n}{mlp}/Dense_0/kernel",), "dense"),
                  (o + "mlp.fc1.bias", (f"{n}{mlp}/Dense_0/bias",), "plain"),
                  (o + "mlp.fc2.weight", (f"{n}{mlp}/Dense_1/kernel",), "dense"),
                  (o + "mlp.fc2.bias", (f"{n}{mlp}/Dense_1/bias",), "plain")]
    if hybrid_layers:
        r = "patch_embed.backbone."
        table += [(r + "stem.conv.weight", ("conv_root/kernel",), "conv"),
                  (r + "stem.norm.weight", ("gn_root/scale",), "plain"),
                  (r + "stem.norm.bias", ("gn_root/bias",), "plain")]
        for s, units in enumerate(hybrid_layers):
            for u in range(units):
                o, n = f"{r}stages.{s}.blocks.{u}.", f"block{s + 1}/unit{u + 1}/"
                for j in (1, 2, 3):
                    table += [(f"{o}conv{j}.weight", (f"{n}conv{j}/kernel",), "conv"),
                              (f"{o}norm{j}.weight", (f"{n}gn{j}/scale",), "plain"),
                              (f"{o}norm{j}.bias", (f"{n}gn{j}/bias",), "plain")]
                if u == 0:
                    table += [(f"{o}downsample.conv.weight", (f"{n}conv_proj/kernel",), "conv"),
                              (f"{o}downsample.norm.weight", (f"{n}gn_proj/scale",), "plain"),
                              (f"{o}downsample.norm.bias", (f"{n}gn_proj/bias",), "plain")]
    return table


def _npz_forward(kind: str, arrays: list[torch.Tensor]) -> torch.Tensor:
    a = arrays[0]
    if kind == "conv":
        return a.permute(3, 2, 0, 1)
    if kind == "dense":
        return a.t()
    if kind == "qkv_w":
        return torch.cat([t.reshape(t.shape[0], -1).t() for t in arrays], dim=0)
    if kind == "qkv_b":
        return torch.cat([t.reshape(-1) for t in arrays], dim=0)
    if kind == "out_w":
        return a.reshape(-1, a.shape[-1]).t()
    return a


def _npz_inverse(kind: str, w: torch.Tensor, num_heads: int) -> list[torch.Tensor]:
    if kind == "conv":
        return [w.permute(2, 3, 1, 0)]
    if kind == "dense":
        return [w.t()]
    if kind == "qkv_w":
        c = w.shape[1]
        return [t.t().reshape(c, num_heads, c // num_heads) for t in w.chunk(3, dim=0)]
    if kind == "qkv_b":
        return [t.reshape(num_heads, -1) for t in w.chunk(3, dim=0)]
    if kind == "out_w":
        c = w.shape[0]
        return [w.t().reshape(num_heads, c // num_heads, c)]
    return [w]


def _from_npz(arrays: dict) -> dict:
    """Google .npz → internal names. Handles 'opt/target/' and 'params/' prefixes, classic and big_vision block
    names, blocks stacked along a leading axis, and the R+ViT hybrid ResNet. Unknown arrays are kept under their
    own names (so the strict check reports them); heads and pre-logits are dropped."""
    sd = _strip_prefix(arrays, ("opt/target/", "params/"))
    big_vision = not any("MultiHeadDotProductAttention_1" in k for k in sd)
    stacked = any(k.startswith("Transformer/encoderblock/") for k in sd)
    if stacked:  # [L, ...] arrays under encoderblock/ → encoderblock_i/
        unstacked = {}
        for k, v in sd.items():
            if k.startswith("Transformer/encoderblock/"):
                for i in range(v.shape[0]):
                    unstacked[k.replace("encoderblock/", f"encoderblock_{i}/")] = v[i]
            else:
                unstacked[k] = v
        sd = unstacked
    depth = len({m[1] for k in sd if (m := re.match(r"Transformer/encoderblock_(\d+)/", k))})
    hybrid = [len({m[1] for k in sd if (m := re.match(rf"block{s}/unit(\d+)/", k))}) for s in range(1, 5)]
    hybrid = [n for n in hybrid if n] if "conv_root/kernel" in sd else None
    out, used = {}, set()
    for ours, keys, kind in _npz_table(depth, hybrid, big_vision, "cls" in sd):
        missing = [k for k in keys if k not in sd]
        if missing:
            raise CheckpointError(f".npz checkpoint lacks {', '.join(missing)} (needed for '{ours}'); "
                                  "is this a ViT/AugReg .npz?")
        out[ours] = _npz_forward(kind, [sd[k] for k in keys])
        used.update(keys)
    for k, v in sd.items():
        if k not in used and not k.startswith(("head/", "pre_logits/")):
            out[k] = v  # left for the strict check to name
    return out


def to_augreg_npz(state_dict: dict, path, num_heads: int) -> None:
    """Write an internal-layout ViT (or hybrid) state dict as a classic AugReg .npz (the inverse of the importer).

    Useful for tests and for handing weights to JAX code; `head.*` is written as head/kernel, head/bias.
    """
    sd = {k: v.detach().float().cpu() for k, v in state_dict.items()}
    depth = len({k.split(".")[1] for k in sd if k.startswith("blocks.")})
    stages = sorted({int(k.split(".")[3]) for k in sd if k.startswith("patch_embed.backbone.stages.")})
    hybrid = [len({k.split(".")[5] for k in sd if k.startswith(f"patch_embed.backbone.stages.{s}.")})
              for s in stages] or None
    arrays = {}
    for ours, keys, kind in _npz_table(depth, hybrid, False, "cls_token" in sd):
        if ours not in sd:
            raise CheckpointError(f"to_augreg_npz: the state dict lacks '{ours}'")
        for k, t in zip(keys, _npz_inverse(kind, sd[ours], num_heads)):
            arrays[k] = t.contiguous().numpy()
    if "head.weight" in sd:
        arrays["head/kernel"] = sd["head.weight"].t().contiguous().numpy()
        arrays["head/bias"] = sd["head.bias"].numpy()
    np.savez(path, **arrays)
