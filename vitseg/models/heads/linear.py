"""ViT + linear head: the simplest plain-ViT segmenter ("Linear" in Segmenter, "ViT-Linear" in RSSeg).

Strudel et al., "Segmenter: Transformer for Semantic Segmentation", ICCV 2021 (linear decoder baseline).
The last block's output, after the backbone's final LayerNorm, is classified per token by a 1×1 convolution
(mmseg `FCNHead(num_convs=0)`, key decode_head.conv_seg; the same math as Segmenter's `DecoderLinear`).
Logits come out at the patch stride, [B, K, ceil(H/16), ceil(W/16)]; the loss and the inference path upsample.
The position table is stored at the training-crop grid (512 → 32×32, 640 → 40×40), as the published parameter
counts assume (specs/baselines.md §1).
"""
from __future__ import annotations

import torch
from torch import nn

from ..backbones import vit as vit_family
from ..backbones.vit import VisionTransformer, vit
from ..registry import PaperInfo, register_model
from ..segmentor import Segmentor


class LinearHead(nn.Module):
    """Dropout (p=0 in the recipes) then a 1×1 conv classifier on one [B, C, h, w] map."""

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0):
        super().__init__()
        self.dropout = nn.Dropout2d(dropout)
        self.conv_seg = nn.Conv2d(in_channels, num_classes, 1)
        nn.init.trunc_normal_(self.conv_seg.weight, std=0.02)
        nn.init.zeros_(self.conv_seg.bias)

    def forward(self, feats: list[torch.Tensor]) -> torch.Tensor:
        return self.conv_seg(self.dropout(feats[-1]))


class LinearSegmenter(Segmentor):
    def __init__(self, backbone: VisionTransformer, num_classes: int = 150, dropout: float = 0.0, **kw):
        super().__init__(num_classes, **kw)
        self.backbone = backbone
        self.decode_head = LinearHead(backbone.embed_dim, num_classes, dropout)
        self.output_stride = backbone.patch_size


def linear_vit(variant: str, num_classes: int = 150, dropout: float = 0.0, img_size=512,
               drop_path_rate: float = 0.1, **backbone_kw) -> LinearSegmenter:
    """Backbone settings follow Segmenter's linear baseline: final LayerNorm on, last block only, drop path 0.1."""
    backbone_kw.setdefault("final_norm", True)
    backbone_kw.setdefault("out_indices", (-1,))
    backbone = vit(variant, img_size=img_size, drop_path_rate=drop_path_rate, **backbone_kw)
    return LinearSegmenter(backbone, num_classes, dropout)


def _paper(params_m: float, size: int = 512, gflops: float | None = None, miou: dict | None = None,
           source: str = "") -> PaperInfo:
    return PaperInfo(params_m=params_m, gflops=gflops, input_size=(size, size), num_classes=150,
                     miou=miou or {}, source=source)


@register_model(paper=_paper(5.7, source="counted (specs/baselines.md §1); no published ADE20K run"))
def linear_vit_ti16(**kw): return linear_vit("ti", **kw)


@register_model(paper=_paper(22.0, miou={"ade20k": 45.75},
                             source="mmseg Segmenter README, Seg-S/16 linear, ADE20K 160k"))
def linear_vit_s16(**kw): return linear_vit("s", **kw)


@register_model(paper=_paper(86.6, gflops=107.2, miou={"ade20k": 49.3},
                             source="RSSeg Table 4, ViT-Linear-B (AugReg), ADE20K 80k"))
def linear_vit_b16(**kw): return linear_vit("b", **kw)


@register_model(paper=_paper(304.9, size=640, gflops=612.0, miou={"ade20k": 51.04},
                             source="RSSeg Table 11, ViT-Linear-L* (AugReg) at 640, ADE20K 80k"))
def linear_vit_l16(**kw): return linear_vit("l", **{"img_size": 640, **kw})


def checkpoint_filter_fn(state_dict, model: LinearSegmenter, source=None):
    """Full segmentor checkpoints (`backbone.*` + `decode_head.conv_seg.*`, mmseg or timm-named backbone) or
    encoder-only checkpoints in any layout vit.py reads (the head then stays initialised)."""
    from ...weights import Converted
    head = {k: v for k, v in state_dict.items() if k.startswith("decode_head.")}
    body = {k: v for k, v in state_dict.items() if not k.startswith(("decode_head.", "auxiliary_head."))}
    inner = vit_family.checkpoint_filter_fn(body, model.backbone, source)
    sd = {"backbone." + k: v for k, v in inner.state_dict.items()}
    sd.update(head)
    allow = tuple("backbone." + p for p in inner.allow_missing) + (() if head else ("decode_head.",))
    return Converted(sd, allow_missing=allow, layout=inner.layout + ("" if head else " (encoder only)"),
                     notes=inner.notes)


def config_from_checkpoint(source) -> dict:
    """The encoder settings the checkpoint implies, except its grid: the model keeps its crop-size table and the
    checkpoint's is resized at load. The class count comes from a stored classifier."""
    cfg = vit_family.config_from_checkpoint(source)
    cfg.pop("img_size", None)
    conv = source.state_dict.get("decode_head.conv_seg.weight")
    if conv is not None:
        cfg["num_classes"] = conv.shape[0]
    return cfg
