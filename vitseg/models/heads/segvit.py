"""SegViT: plain ViT + Attention-to-Mask (ATM) decoder, its cascade (multi-layer) and Shrunk (QD/QU) forms.

Zhang et al., "SegViT: Semantic Segmentation with Plain Vision Transformers", NeurIPS 2022.
Implementation notes: specs/segvit.md. Module and key names mirror the official code (zbwxp/SegVit, mmseg 0.24),
so its decode-head keys load as they are; its mmseg ViT backbone keys go through the ViT family's importer.

- ATM decoder layer: self-attention over the class queries, cross-attention from the queries to the patch
  tokens, FFN (post-norm, torch TransformerDecoderLayer order). The cross-attention's head-averaged, scaled
  query-patch similarity *before* the softmax is the mask logit of each class (sigmoid -> mask).
- Cascade: one 3-layer ATM stage per ViT block in `out_indices`, deepest first; class queries flow from stage to
  stage and the stages' mask logits are summed. One query per class: fixed assignment, no Hungarian matching.
- Shrunk: Query Down-sampling inside the ViT (one block attends from a 2x2-nearest subset of the tokens to all of
  them, later blocks run at 1/32), Query Up-sampling (learnable 1/16-grid queries attend to a 1/16 block and the
  1/32 last block), then a single ATM on the up-sampled tokens.
- forward(): softmax class probabilities × sigmoid masks, summed over queries, at the input resolution.
  loss(): classification (no-object weight 0.1) + focal (×20) + dice on every stage / layer.
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ...layers import init_linear_norm, resample_abs_pos_embed, resize
from ..backbones import vit as vit_family
from ..registry import PaperInfo, create_backbone, register_model
from ...losses import dice_loss, sigmoid_focal_loss
from ..segmentor import Segmentor, check_labels

AUGREG_MEAN = AUGREG_STD = (127.5, 127.5, 127.5)  # AugReg ("jax") ViT weights expect inputs in [-1, 1]


# ----------------------------------------------------------------------------------------------------------
# Decoder layers

def _split_heads(x: torch.Tensor, heads: int) -> torch.Tensor:
    b, n, c = x.shape
    return x.view(b, n, heads, c // heads).transpose(1, 2)


def _merge_heads(x: torch.Tensor) -> torch.Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


class FusedAttention(nn.Module):
    """Multi-head attention with nn.MultiheadAttention's parameters (in_proj_weight rows q;k;v, out_proj).

    Batch-first; the projections are applied separately to query and key/value, so a query set smaller
    than the memory costs only its own share (what the paper's FLOP counts assume).
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.1):
        super().__init__()
        self.dim, self.num_heads, self.attn_drop = dim, num_heads, attn_drop
        self.in_proj_weight = nn.Parameter(torch.empty(3 * dim, dim))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * dim))
        self.out_proj = nn.Linear(dim, dim)
        nn.init.xavier_uniform_(self.in_proj_weight)  # torch's MultiheadAttention init
        nn.init.zeros_(self.out_proj.bias)

    def forward(self, query: torch.Tensor, memory: torch.Tensor | None = None) -> torch.Tensor:
        w, b, d = self.in_proj_weight, self.in_proj_bias, self.dim
        if memory is None:
            q, k, v = F.linear(query, w, b).chunk(3, dim=-1)
        else:
            q = F.linear(query, w[:d], b[:d])
            k, v = F.linear(memory, w[d:], b[d:]).chunk(2, dim=-1)
        q, k, v = (_split_heads(t, self.num_heads) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.out_proj(_merge_heads(out))


class ATMAttention(nn.Module):
    """Cross-attention that also returns the mask logits: mean over heads of q·kᵀ/sqrt(head_dim).

    Official names: q, k, v, proj (separate Linears with bias).
    """

    def __init__(self, dim: int, num_heads: int, attn_drop: float = 0.1):
        super().__init__()
        self.num_heads, self.scale = num_heads, (dim // num_heads) ** -0.5
        self.q, self.k, self.v, self.proj = (nn.Linear(dim, dim) for _ in range(4))
        self.attn_drop = nn.Dropout(attn_drop)

    def forward(self, query: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        q = _split_heads(self.q(query), self.num_heads)
        k = _split_heads(self.k(memory), self.num_heads)
        v = _split_heads(self.v(memory), self.num_heads)
        sim = (q @ k.transpose(-2, -1)) * self.scale          # [B, heads, N, L]
        out = self.attn_drop(sim.softmax(dim=-1)) @ v
        return self.proj(_merge_heads(out)), sim.mean(dim=1)   # mask logits: pre-softmax, head mean


class DecoderLayer(nn.Module):
    """Post-norm transformer decoder layer (torch TransformerDecoderLayer order: self-attn, cross-attn, FFN).

    atm=True uses the ATM cross-attention (returns mask logits); atm=False the standard fused one (QU).
    """

    def __init__(self, dim: int, num_heads: int, ffn_ratio: int = 4, dropout: float = 0.1, atm: bool = True):
        super().__init__()
        self.atm = atm
        self.self_attn = FusedAttention(dim, num_heads, dropout)
        self.multihead_attn = ATMAttention(dim, num_heads, dropout) if atm else FusedAttention(dim, num_heads,
                                                                                              dropout)
        self.linear1 = nn.Linear(dim, ffn_ratio * dim)
        self.linear2 = nn.Linear(ffn_ratio * dim, dim)
        self.norm1, self.norm2, self.norm3 = (nn.LayerNorm(dim) for _ in range(3))
        self.dropout = nn.Dropout(dropout)
        self.dropout1, self.dropout2, self.dropout3 = (nn.Dropout(dropout) for _ in range(3))

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        x = self.norm1(x + self.dropout1(self.self_attn(x)))
        if self.atm:
            y, sim = self.multihead_attn(x, memory)
        else:
            y, sim = self.multihead_attn(x, memory), None
        x = self.norm2(x + self.dropout2(y))
        x = self.norm3(x + self.dropout3(self.linear2(self.dropout(F.relu(self.linear1(x))))))
        return x, sim


class Decoder(nn.Module):
    """A stack of decoder layers (official name: decoder_{s}.layers.{l})."""

    def __init__(self, num_layers: int, dim: int, num_heads: int, atm: bool = True):
        super().__init__()
        self.layers = nn.ModuleList(DecoderLayer(dim, num_heads, atm=atm) for _ in range(num_layers))

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> tuple[torch.Tensor, list]:
        sims = []
        for layer in self.layers:
            x, sim = layer(x, memory)
            sims.append(sim)
        return x, sims



def _to_grid(sim: torch.Tensor, hw: tuple[int, int]) -> torch.Tensor:
    """[B, N, h*w] mask logits -> [B, N, h, w]."""
    return sim.reshape(sim.shape[0], sim.shape[1], hw[0], hw[1])


# ----------------------------------------------------------------------------------------------------------
# Heads

class ATMHead(nn.Module):
    """Cascade ATM head: one ATM stage per backbone output, class queries passed from stage to stage.

    Stages run deepest layer first (official order: decoder_1 <-> deepest). Mask logits are summed across
    stages; every stage's (class logits, accumulated masks) is supervised.
    """

    def __init__(self, in_dim: int, num_classes: int, dim: int, num_heads: int, num_stages: int = 3,
                 layers_per_stage: int = 3, use_proj: bool = True):
        super().__init__()
        self.num_classes, self.num_stages, self.use_proj = num_classes, num_stages, use_proj
        for s in range(1, num_stages + 1):
            if use_proj:
                setattr(self, f"input_proj_{s}", nn.Linear(in_dim, dim))
                setattr(self, f"proj_norm_{s}", nn.LayerNorm(dim))
            setattr(self, f"decoder_{s}", Decoder(layers_per_stage, dim, num_heads, atm=True))
        self.q = nn.Embedding(num_classes, dim)
        self.class_embed = nn.Linear(dim, num_classes + 1)  # last index = "no object"
        self.apply(init_linear_norm)  # official ATMHead.init_weights
        nn.init.normal_(self.q.weight)  # nn.Embedding default, untouched by the official init

    def forward(self, feats: list[torch.Tensor], hws: list[tuple[int, int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """feats: token sequences [B, L_s, C], shallow to deep, with their grids. Returns one
        (class logits [B, K, K+1], mask logits [B, K, h, w]) per stage, the final one last."""
        feats, hws = feats[::-1], hws[::-1]
        q = self.q.weight.unsqueeze(0).repeat(feats[0].shape[0], 1, 1)
        outputs, masks = [], None
        for s, (x, hw) in enumerate(zip(feats, hws), start=1):
            if self.use_proj:
                x = getattr(self, f"proj_norm_{s}")(getattr(self, f"input_proj_{s}")(x))
            q, sims = getattr(self, f"decoder_{s}")(q, x)
            m = _to_grid(sims[-1], hw)  # the stage's last layer gives its masks
            masks = m if masks is None else resize(masks, hw) + m
            outputs.append((self.class_embed(q), masks))
        return outputs


class SingleATMHead(ATMHead):
    """The Shrunk model's ATM (official ATMSingleHead, use_proj=False): one stage, every layer supervised,
    masks not accumulated."""

    def __init__(self, num_classes: int, dim: int, num_heads: int, num_layers: int = 3):
        super().__init__(dim, num_classes, dim, num_heads, num_stages=1, layers_per_stage=num_layers,
                         use_proj=False)

    def forward(self, memory: torch.Tensor, hw: tuple[int, int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        q = self.q.weight.unsqueeze(0).repeat(memory.shape[0], 1, 1)
        outputs = []
        for layer in self.decoder_1.layers:
            q, sim = layer(q, memory)
            outputs.append((self.class_embed(q), _to_grid(sim, hw)))
        return outputs


class ShrunkHead(nn.Module):
    """Query Up-sampling (official TPNATMHead): learnable queries, one per 1/16 grid cell, attend first to the
    1/16 tokens of a shallow layer, then to the 1/32 tokens of the last layer (standard decoder layers);
    the resulting 1/16 tokens are the memory of a single ATM whose every layer is supervised."""

    def __init__(self, in_dim: int, num_classes: int, dim: int, num_heads: int, grid: tuple[int, int],
                 layers_per_stage: int = 3, atm_layers: int = 3):
        super().__init__()
        self.grid = tuple(grid)
        for s in (1, 2):
            setattr(self, f"input_proj_{s}", nn.Linear(in_dim, dim))
            setattr(self, f"proj_norm_{s}", nn.LayerNorm(dim))
            setattr(self, f"decoder_{s}", Decoder(layers_per_stage, dim, num_heads, atm=False))
        self.q = nn.Embedding(self.grid[0] * self.grid[1], dim)
        self.atm = SingleATMHead(num_classes, dim, num_heads, atm_layers)
        self.apply(init_linear_norm)  # official ATMHead.init_weights
        nn.init.normal_(self.q.weight)
        nn.init.normal_(self.atm.q.weight)

    def queries(self, batch: int, hw: tuple[int, int]) -> torch.Tensor:
        """The up-sampling queries for a 1/16 grid `hw`. The paper trains at one crop size (queries =
        (crop/16)²); other grids get the table resized bicubically, like a position embedding."""
        q = resample_abs_pos_embed(self.q.weight.unsqueeze(0), hw, old_size=self.grid)
        return q.repeat(batch, 1, 1)  # a copy, not a view: autograd hooks need one

    def forward(self, feats: list[torch.Tensor], hw: tuple[int, int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """feats: [1/16 tokens of the shallow layer, 1/32 tokens of the last layer]; hw: the 1/16 grid."""
        q = self.queries(feats[0].shape[0], hw)
        for s, x in enumerate(feats, start=1):
            memory = getattr(self, f"proj_norm_{s}")(getattr(self, f"input_proj_{s}")(x))
            q, _ = getattr(self, f"decoder_{s}")(q, memory)
        return self.atm(q, hw)


# ----------------------------------------------------------------------------------------------------------
# Loss (fixed query <-> class assignment)

def _global_mask_count(n: int, device) -> float:
    """Present-class count averaged over DDP workers (official num_masks), at least 1."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        t = torch.tensor(float(n), device=device)
        torch.distributed.all_reduce(t)
        n = t.item() / torch.distributed.get_world_size()
    return max(float(n), 1.0)


def atm_loss(class_logits: torch.Tensor, mask_logits: torch.Tensor, labels: torch.Tensor,
             ignore_index: int = 255, no_object_weight: float = 0.1, cls_weight: float = 1.0,
             focal_weight: float = 20.0, dice_weight: float = 1.0) -> dict[str, torch.Tensor]:
    """ATM loss of one supervised output.

    Query q is class q. Classification: every query, target = its class if present in the image, else
    "no object" (weight 0.1). Masks: the present classes' masks, upsampled bilinearly to the label size,
    against binary class masks (ignore pixels count as background, as in the official code).
    """
    b, n, _ = class_logits.shape
    targets = torch.full((b, n), n, dtype=torch.long, device=labels.device)
    preds, masks = [], []
    for i in range(b):
        present = labels[i].unique()
        present = present[present != ignore_index]
        targets[i, present] = present
        if present.numel():
            preds.append(mask_logits[i, present])
            masks.append((labels[i][None] == present[:, None, None]).to(mask_logits.dtype))
    weight = torch.ones(n + 1, device=class_logits.device)
    weight[-1] = no_object_weight
    loss_cls = F.cross_entropy(class_logits.transpose(1, 2).float(), targets, weight)
    if preds:
        pred = resize(torch.cat(preds)[:, None].float(), labels.shape[-2:])[:, 0].flatten(1)
        target = torch.cat(masks).float().flatten(1)
        num_masks = _global_mask_count(len(target), labels.device)
        # per mask: focal (α = 0.25, DETR form) averaged over pixels, dice over pixels; summed over masks
        loss_focal = sigmoid_focal_loss(pred, target, alpha=0.25).mean(dim=1).sum() / num_masks
        loss_dice = dice_loss(pred, target, dims=1).sum() / num_masks
    else:  # no labelled pixel in the batch: classification only, masks still in the graph
        _global_mask_count(0, labels.device)
        loss_focal = loss_dice = mask_logits.sum() * 0.0
    return {"loss_cls": cls_weight * loss_cls, "loss_focal": focal_weight * loss_focal,
            "loss_dice": dice_weight * loss_dice}


def semantic_scores(class_logits: torch.Tensor, mask_logits: torch.Tensor) -> torch.Tensor:
    """Per-pixel class scores: sum over queries of P(class | query) · mask(query), "no object" dropped."""
    probs = class_logits.softmax(dim=-1)[..., :-1]
    return torch.einsum("bqc,bqhw->bchw", probs, mask_logits.sigmoid())


# ----------------------------------------------------------------------------------------------------------
# Model

def query_downsample_block(block: nn.Module, x: torch.Tensor, hw: tuple[int, int]
                           ) -> tuple[torch.Tensor, tuple[int, int]]:
    """Query Down-sampling (QD): run a pretrained ViT block with queries taken on every second row and column
    of the token grid (2x2 nearest: the top-left token of each cell) and keys/values from all tokens, so the
    block's output has a quarter of the tokens. The residual adds the sampled tokens; weights are unchanged."""
    b, n, c = x.shape
    h, w = hw
    down = x.view(b, h, w, c)[:, ::2, ::2].reshape(b, -1, c)
    x = down + block.drop_path(block.attn(block.norm1(down), context=block.norm1(x)))
    x = x + block.drop_path(block.mlp(block.norm2(x)))
    return x, ((h + 1) // 2, (w + 1) // 2)


def vit_tokens(backbone: nn.Module, images: torch.Tensor, out_indices, shrink_index: int | None = None
               ) -> tuple[list[torch.Tensor], tuple[int, int]]:
    """Block outputs of a plain ViT as the official SegViT backbone computes them (mmseg VisionTransformer,
    with_cls_token=False): the class token and its position row are added, then dropped *before* the first
    block. With `shrink_index`, that block applies Query Down-sampling and later blocks run on 1/32 tokens.
    Returns token sequences [B, L_i, C] for `out_indices` and the 1/16 grid."""
    x, grid = backbone.embed(images)
    x = x[:, backbone.num_prefix_tokens:]
    hw, outs = grid, {}
    for i, block in enumerate(backbone.blocks[:max(out_indices) + 1]):
        if i == shrink_index:
            x, hw = query_downsample_block(block, x, hw)
        else:
            x = block(x)
        if i in out_indices:
            outs[i] = x
    return [outs[i] for i in out_indices], grid


class SegViT(Segmentor):
    """Plain ViT + ATM decoder (cascade) or Shrunk ViT + QU + single ATM.

    forward() -> per-pixel class scores at the input resolution (softmax class probabilities × sigmoid
    masks, summed over the class queries); loss() supervises every ATM output.
    SegViT has no training-only modules: the earlier stages' decoders produce the final queries.
    """

    output_stride = 1

    def __init__(self, backbone: nn.Module, decode_head: nn.Module, num_classes: int, out_indices,
                 shrink_index: int | None = None, no_object_weight: float = 0.1, focal_weight: float = 20.0, dice_weight: float = 1.0,
                 cls_weight: float = 1.0, **kw):
        super().__init__(num_classes, **kw)
        self.backbone, self.decode_head = backbone, decode_head
        self.out_indices, self.shrink_index = tuple(out_indices), shrink_index
        self.loss_weights = dict(no_object_weight=no_object_weight, cls_weight=cls_weight,
                                 focal_weight=focal_weight, dice_weight=dice_weight)
        self.mean, self.std = AUGREG_MEAN, AUGREG_STD

    def forward_outputs(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """All supervised (class logits [B,K,K+1], mask logits [B,K,h,w]) pairs, the final one last."""
        tokens, hw = vit_tokens(self.backbone, images, self.out_indices, self.shrink_index)
        if self.shrink_index is not None:
            return self.decode_head(tokens, hw)
        return self.decode_head(tokens, [hw] * len(tokens))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        class_logits, mask_logits = self.forward_outputs(images)[-1]
        h, w = images.shape[-2:]
        p = self.backbone.patch_size  # the ViT pads bottom/right to a patch multiple: upsample, then crop
        padded = (-(-h // p) * p, -(-w // p) * p)
        mask_logits = resize(mask_logits, padded, align_corners=self.align_corners)[..., :h, :w]
        return semantic_scores(class_logits, mask_logits)

    def loss(self, images: torch.Tensor, labels: torch.Tensor) -> dict[str, torch.Tensor]:
        check_labels(labels, self.num_classes, self.ignore_index)
        outputs = self.forward_outputs(images)
        total, parts = 0.0, {}
        for i, (class_logits, mask_logits) in enumerate(outputs):
            suffix = "" if i == len(outputs) - 1 else f"_{i}"
            terms = atm_loss(class_logits, mask_logits, labels, self.ignore_index, **self.loss_weights)
            for name, value in terms.items():
                total = total + value
                parts[name + suffix] = value.detach()
        return {"loss": total, **parts}


# ----------------------------------------------------------------------------------------------------------
# Builders and registrations

# Block indices (0-based) the cascade reads, ViT drop-path rate and default crop (spec §1.1, §3).
_VARIANTS = {
    "b16": dict(backbone="vit_b16", out_indices=(5, 7, 11), drop_path_rate=0.1, img_size=512),
    "l16": dict(backbone="vit_l16", out_indices=(7, 15, 23), drop_path_rate=0.3, img_size=640),
}
# Shrunk: Query Down-sampling before block `shrink_index`; QU reads a 1/16 block and the last block.
_SHRUNK = {"l16": dict(shrink_index=8, out_indices=(7, 23)),
           "b16": dict(shrink_index=6, out_indices=(5, 11))}  # INTERP (Tab. 8 ablation, no official config)


def _head_width(embed_dim: int) -> tuple[int, int]:
    """ATM width d = C/2 with 32-channel heads (B: 384/12, L: 512/16)."""
    dim = embed_dim // 2
    return dim, max(dim // 32, 1)


def segvit(variant: str, num_classes: int = 150, img_size: int | None = None, out_indices=None,
           drop_path_rate: float | None = None, layers_per_stage: int = 3, **backbone_kw) -> SegViT:
    """Cascade SegViT on a plain ViT: one ATM stage per entry of `out_indices` (shallow to deep)."""
    cfg = _VARIANTS[variant]
    img_size = img_size or cfg["img_size"]
    out_indices = tuple(out_indices if out_indices is not None else cfg["out_indices"])
    if list(out_indices) != sorted(set(out_indices)):
        raise ConfigError(f"segvit: out_indices must be distinct ViT block indices from shallow to deep (the "
                          f"cascade reverses them itself), e.g. {cfg['out_indices']}; got {out_indices}")
    backbone = create_backbone(cfg["backbone"], out_indices=out_indices, img_size=img_size,
                               drop_path_rate=cfg["drop_path_rate"] if drop_path_rate is None else drop_path_rate,
                               **backbone_kw)
    backbone.norm = nn.Identity()  # final_norm=False: the final LayerNorm is never used
    dim, heads = _head_width(backbone.embed_dim)
    head = ATMHead(backbone.embed_dim, num_classes, dim, heads, num_stages=len(out_indices),
                   layers_per_stage=layers_per_stage)
    return SegViT(backbone, head, num_classes, out_indices)


def segvit_shrunk(variant: str, num_classes: int = 150, img_size: int | None = None, out_indices=None,
                  shrink_index: int | None = None, drop_path_rate: float | None = None,
                  layers_per_stage: int = 3, **backbone_kw) -> SegViT:
    """Shrunk SegViT: QD inside the ViT at `shrink_index`, QU head over (1/16 block, last block), single ATM."""
    cfg, shrunk_cfg = _VARIANTS[variant], _SHRUNK[variant]
    img_size = img_size or cfg["img_size"]
    out_indices = tuple(out_indices if out_indices is not None else shrunk_cfg["out_indices"])
    shrink_index = shrunk_cfg["shrink_index"] if shrink_index is None else shrink_index
    if len(out_indices) != 2 or not out_indices[0] < shrink_index <= out_indices[1]:
        raise ConfigError(f"segvit_shrunk: out_indices must be (a block before the down-sampling, a block after "
                          f"it); got out_indices={out_indices} with shrink_index={shrink_index}")
    backbone = create_backbone(cfg["backbone"], out_indices=out_indices, img_size=img_size,
                               drop_path_rate=cfg["drop_path_rate"] if drop_path_rate is None else drop_path_rate,
                               **backbone_kw)
    backbone.norm = nn.Identity()  # final_norm=False: the final LayerNorm is never used
    dim, heads = _head_width(backbone.embed_dim)
    grid = (img_size // backbone.patch_size,) * 2
    head = ShrunkHead(backbone.embed_dim, num_classes, dim, heads, grid, layers_per_stage, layers_per_stage)
    return SegViT(backbone, head, num_classes, out_indices, shrink_index)


_ADE_SOURCE = ("SegViT Tab. 1 (ADE20K val, single scale); GFLOPs are fvcore multiply-accumulates incl. attention "
               "and the class×mask product; paper gives no parameter counts")


@register_model(paper=PaperInfo(gflops=120.9, input_size=(512, 512), num_classes=150, miou={"ade20k": 51.3},
                                source=_ADE_SOURCE))
def segvit_vit_b16(**kw): return segvit("b16", **kw)


@register_model(paper=PaperInfo(gflops=637.9, input_size=(640, 640), num_classes=150,
                                miou={"ade20k": 54.6, "coco_stuff10k": 49.9, "pascal_context59": 64.1},
                                source=_ADE_SOURCE + "; COCO-Stuff-10K / PASCAL-Context-59 single-scale from the "
                                "official README (the paper prints multi-scale only: 50.3 / 65.3)"))
def segvit_vit_l16(**kw): return segvit("l16", **kw)


@register_model(paper=PaperInfo(gflops=373.5, input_size=(640, 640), num_classes=150,
                                miou={"ade20k": 53.9, "coco_stuff10k": 49.1, "pascal_context59": 62.3},
                                source=_ADE_SOURCE + "; COCO-Stuff-10K / PASCAL-Context-59 single-scale from the "
                                "official README (the paper prints multi-scale only: 49.4 / 63.7)"))
def segvit_shrunk_vit_l16(**kw): return segvit_shrunk("l16", **kw)


# ----------------------------------------------------------------------------------------------------------
# Checkpoint layouts. Decode-head keys are the official ones; the official backbone is mmseg's
# VisionTransformer (layers.N.ln1 / attn.attn.in_proj_* / ffn.layers.*), read by the ViT family's importer.

_UNUSED_OFFICIAL = re.compile(r"(loss_decode\.criterion\.empty_weight|^decode_head\.conv_seg\.|^auxiliary_head\.)")


def convert_official_segvit(state_dict: dict, backbone: nn.Module) -> dict:
    """Official SegViT (mmseg) checkpoint -> ours. The backbone part goes through the ViT family's importer
    (any ViT layout; the position table is resized to `backbone`'s grid if it differs). Loss buffers, the
    unused conv_seg and the final LayerNorm (SegViT runs without one) are dropped."""
    head = {k: v for k, v in state_dict.items() if not k.startswith("backbone.") and not _UNUSED_OFFICIAL.search(k)}
    encoder = {k[len("backbone."):]: v for k, v in state_dict.items() if k.startswith("backbone.")}
    encoder = vit_family.checkpoint_filter_fn(encoder, backbone).state_dict
    return {**{"backbone." + k: v for k, v in encoder.items() if not k.startswith("norm.")}, **head}


def _rename(key: str, table) -> str:
    for pattern, replacement in table:
        new = re.sub(pattern, replacement, key)
        if new != key:
            return new
    return key


def to_official_segvit(state_dict: dict) -> dict:
    """Ours -> official SegViT (mmseg) key layout (tests and `vitseg convert`)."""
    inverse = [(r"^patch_embed\.proj\.", "patch_embed.projection."),
               (r"^blocks\.(\d+)\.norm1\.", r"layers.\1.ln1."), (r"^blocks\.(\d+)\.norm2\.", r"layers.\1.ln2."),
               (r"^blocks\.(\d+)\.attn\.qkv\.(weight|bias)$", r"layers.\1.attn.attn.in_proj_\2"),
               (r"^blocks\.(\d+)\.attn\.proj\.", r"layers.\1.attn.attn.out_proj."),
               (r"^blocks\.(\d+)\.mlp\.fc1\.", r"layers.\1.ffn.layers.0.0."),
               (r"^blocks\.(\d+)\.mlp\.fc2\.", r"layers.\1.ffn.layers.1.")]
    return {("backbone." + _rename(k[len("backbone."):], inverse) if k.startswith("backbone.") else k): v
            for k, v in state_dict.items()}


def checkpoint_filter_fn(state_dict, model, source):
    """Official SegViT checkpoints (mmseg: backbone + decode_head), or a bare ViT file in any layout the ViT
    family reads (e.g. the AugReg mmseg file `vit_large_p16_384_20220308-*.pth` SegViT starts from; timm,
    .npz, HF): then the encoder is loaded and the ATM decoder stays initialised."""
    from ...weights import Converted
    has_head = any(k.startswith("decode_head.") for k in state_dict)
    if has_head and vit_family.detect_layout(state_dict) == "mmseg":
        return Converted(convert_official_segvit(state_dict, model.backbone), layout="official-segvit")
    if has_head:  # our own names, without metadata
        return Converted(dict(state_dict), layout="vitseg")
    sd = {k[len("backbone."):] if k.startswith("backbone.") else k: v for k, v in state_dict.items()}
    encoder = vit_family.checkpoint_filter_fn(sd, model.backbone, source)
    return Converted({"backbone." + k: v for k, v in encoder.state_dict.items() if not k.startswith("norm.")},
                     allow_missing=("decode_head.",), layout=f"{encoder.layout}-vit-backbone",
                     notes=encoder.notes + ["the ATM decoder is initialised"])


def config_from_checkpoint(source) -> dict:
    """Class count and crop size a trained SegViT checkpoint implies (class_embed rows - 1; the stored
    position table, or the Shrunk head's up-sampling query count, gives the crop)."""
    sd, cfg = source.state_dict, {}
    for key in ("decode_head.class_embed.weight", "decode_head.atm.class_embed.weight"):
        if key in sd:
            cfg["num_classes"] = sd[key].shape[0] - 1
    if "num_classes" not in cfg:  # a backbone-only file: build at the recipe's crop, resize pos_embed
        return cfg
    rows = sd["decode_head.q.weight"].shape[0] if "decode_head.atm.q.weight" in sd else (
        sd["backbone.pos_embed"].shape[1] - 1 if "backbone.pos_embed" in sd else None)
    if rows:
        side = int(round(math.sqrt(rows)))
        patch = sd.get("backbone.patch_embed.projection.weight", sd.get("backbone.patch_embed.proj.weight"))
        cfg["img_size"] = side * (patch.shape[-1] if patch is not None else 16)
    return cfg
