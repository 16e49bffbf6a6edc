"""SegViT: plain ViT + Attention-to-Mask (ATM) decoder, its cascade (multi-layer) and Shrunk (QD/QU) forms.

Zhang et al., "SegViT: Semantic Segmentation with Plain Vision Transformers", NeurIPS 2022.
Module and key names mirror the official code (zbwxp/SegVit, mmseg 0.24) so its decode-head keys load with a
plain rename of the prefix; the mmseg ViT backbone keys are mapped onto our ViT at the end of this file.

One ATM decoder layer = self-attention over the class queries, cross-attention from the queries to the
patch tokens, FFN (post-norm, like torch's TransformerDecoderLayer). The cross-attention's head-averaged,
scaled query-patch similarity *before* the softmax is the mask logit of each class (sigmoid -> mask).
There is one query per class (fixed assignment, no Hungarian matching).
"""
from __future__ import annotations

import math
import re

import torch
import torch.nn.functional as F
from torch import nn

from ...errors import ConfigError
from ...layers import DropPath, resample_abs_pos_embed, resize, trunc_normal_
from ..registry import PaperInfo, create_backbone, register_model
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


def _head_init(module: nn.Module) -> None:
    """Official ATMHead.init_weights: Linear trunc-normal(0.02) / bias 0, LayerNorm (1, 0)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            trunc_normal_(m.weight, std=0.02)
            nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


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
        _head_init(self)
        nn.init.normal_(self.q.weight)  # nn.Embedding default, untouched by the official init

    def forward(self, feats: list[torch.Tensor], hws: list[tuple[int, int]]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """feats: token sequences [B, L_s, C], shallow to deep, with their grids. Returns one
        (class logits [B, K, K+1], mask logits [B, K, h, w]) per stage, the final one last."""
        feats, hws = feats[::-1], hws[::-1]
        q = self.q.weight.unsqueeze(0).expand(feats[0].shape[0], -1, -1)
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
        q = self.q.weight.unsqueeze(0).expand(memory.shape[0], -1, -1)
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
        _head_init(self)
        nn.init.normal_(self.q.weight)
        nn.init.normal_(self.atm.q.weight)

    def queries(self, batch: int, hw: tuple[int, int]) -> torch.Tensor:
        """The up-sampling queries for a 1/16 grid `hw`. The paper trains at one crop size (queries =
        (crop/16)²); other grids get the table resized bicubically, like a position embedding."""
        q = self.q.weight.unsqueeze(0)
        if tuple(hw) != self.grid:
            q = resample_abs_pos_embed(q, hw, old_size=self.grid)
        return q.expand(batch, -1, -1)

    def forward(self, feats: list[torch.Tensor], hw: tuple[int, int]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """feats: [1/16 tokens of the shallow layer, 1/32 tokens of the last layer]; hw: the 1/16 grid."""
        q = self.queries(feats[0].shape[0], hw)
        for s, x in enumerate(feats, start=1):
            memory = getattr(self, f"proj_norm_{s}")(getattr(self, f"input_proj_{s}")(x))
            q, _ = getattr(self, f"decoder_{s}")(q, memory)
        return self.atm(q, hw)


# ----------------------------------------------------------------------------------------------------------
# Loss (fixed query <-> class assignment)

def sigmoid_focal_loss(logits: torch.Tensor, targets: torch.Tensor, alpha: float = 0.25,
                       gamma: float = 2.0) -> torch.Tensor:
    """Per-mask focal loss [M]: mean over pixels of alpha_t (1 - p_t)^gamma BCE (DETR form)."""
    prob = logits.sigmoid()
    ce = F.binary_cross_entropy_with_logits(logits, targets, reduction="none")
    p_t = prob * targets + (1 - prob) * (1 - targets)
    alpha_t = alpha * targets + (1 - alpha) * (1 - targets)
    return (alpha_t * ce * (1 - p_t) ** gamma).mean(dim=1)


def dice_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per-mask soft dice loss [M] with +1 smoothing."""
    prob = logits.sigmoid()
    return 1 - (2 * (prob * targets).sum(1) + 1) / (prob.sum(1) + targets.sum(1) + 1)


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
        loss_focal = sigmoid_focal_loss(pred, target).sum() / num_masks
        loss_dice = dice_loss(pred, target).sum() / num_masks
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

class SegViT(Segmentor):
    """Plain ViT + ATM decoder (cascade) or Shrunk ViT + QU + single ATM.

    forward() -> per-pixel class scores at the input resolution (softmax class probabilities × sigmoid
    masks, summed over the class queries); loss() supervises every ATM output.
    SegViT has no training-only modules: the earlier stages' decoders produce the final queries.
    """

    output_stride = 1

    def __init__(self, backbone: nn.Module, decode_head: nn.Module, num_classes: int, shrunk: bool = False,
                 no_object_weight: float = 0.1, focal_weight: float = 20.0, dice_weight: float = 1.0,
                 cls_weight: float = 1.0, **kw):
        super().__init__(num_classes, **kw)
        self.backbone, self.decode_head, self.shrunk = backbone, decode_head, shrunk
        self.loss_weights = dict(no_object_weight=no_object_weight, cls_weight=cls_weight,
                                 focal_weight=focal_weight, dice_weight=dice_weight)
        self.mean, self.std = AUGREG_MEAN, AUGREG_STD

    def forward_outputs(self, images: torch.Tensor) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """All supervised (class logits [B,K,K+1], mask logits [B,K,h,w]) pairs, the final one last."""
        tokens, hw = self.backbone.forward_tokens(images)
        if self.shrunk:
            return self.decode_head(tokens, hw)
        n = hw[0] * hw[1]
        tokens = [t[:, t.shape[1] - n:] for t in tokens]  # drop prefix (class) tokens
        return self.decode_head(tokens, [hw] * len(tokens))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        class_logits, mask_logits = self.forward_outputs(images)[-1]
        return semantic_scores(class_logits, resize(mask_logits, images.shape[-2:], align_corners=self.align_corners))

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
