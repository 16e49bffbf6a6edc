"""The model pairs compared by the benchmarks: ours and the HF transformers reference with the same weights.

A `Pair` knows how to run inference and one training step (forward + loss + backward + AdamW) on both, and how
to read the reference's gradients under our parameter names, so that outputs, losses and gradients can be
checked in the same process that times them. Dropout and drop path are 0 in both models, so a training step is
deterministic and the two can be compared exactly (up to fp32 rounding).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
from torch import nn

from common import ROOT  # noqa: F401  (puts the checkout on sys.path)

import vitseg  # noqa: E402

SEGFORMER = {  # hidden sizes, depths, decoder width (SegFormer Table 1 / the HF hub configs)
    "b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256),
    "b1": ([64, 128, 320, 512], [2, 2, 2, 2], 256),
    "b2": ([64, 128, 320, 512], [3, 4, 6, 3], 768),
}
NUM_CLASSES = 150  # ADE20K


@dataclass
class Pair:
    name: str
    ours: nn.Module
    ref: nn.Module
    ours_logits: Callable[[torch.Tensor], torch.Tensor]
    ref_logits: Callable[[torch.Tensor], torch.Tensor]
    ours_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ref_loss: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    ref_grads_as_ours: Callable[[], dict[str, torch.Tensor]]
    size: tuple[int, int] = (512, 512)


def _randomise_bn(model: nn.Module) -> None:
    """Non-trivial BatchNorm statistics, so that folding them at inference is actually exercised."""
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
                m.weight.copy_(torch.rand(m.num_features, generator=g) + 0.5)
                m.bias.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def segformer_pair(variant: str, device: torch.device, seed: int = 0) -> Pair:
    """SegFormer-<variant>: HF SegformerForSemanticSegmentation (its default attention, SDPA) vs ours loaded
    from the HF state dict."""
    from transformers import SegformerConfig, SegformerForSemanticSegmentation

    from vitseg.models.heads.segformer import convert_hf_segformer
    hidden, depths, dim = SEGFORMER[variant]
    torch.manual_seed(seed)
    cfg = SegformerConfig(hidden_sizes=hidden, depths=depths, decoder_hidden_size=dim, num_labels=NUM_CLASSES,
                          drop_path_rate=0.0, classifier_dropout_prob=0.0, semantic_loss_ignore_index=255)
    ref = SegformerForSemanticSegmentation(cfg)
    _randomise_bn(ref)
    ours = vitseg.create_model(f"segformer_{variant}", pretrained=ref.state_dict(), drop_path_rate=0.0,
                               dropout=0.0)
    ref, ours = ref.to(device), ours.to(device)

    def ref_grads():
        grads = {k: p.grad for k, p in ref.named_parameters() if p.grad is not None}
        return convert_hf_segformer(grads)

    return Pair(f"segformer_{variant}", ours, ref,
                ours_logits=ours, ref_logits=lambda x: ref(pixel_values=x).logits,
                ours_loss=lambda x, y: ours.loss(x, y)["loss"],
                ref_loss=lambda x, y: ref(pixel_values=x, labels=y).loss,
                ref_grads_as_ours=ref_grads)


class _HFViTLinear(nn.Module):
    """HF ViTModel + our linear head (the same module class and weights as ours): the reference for
    `linear_vit_b16`. The patch tokens of the last hidden state (after ViTModel's final LayerNorm) become a map."""

    def __init__(self, vit: nn.Module, head: nn.Module, grid: tuple[int, int]):
        super().__init__()
        self.vit, self.decode_head, self.grid = vit, head, grid

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        tokens = self.vit(pixel_values=x).last_hidden_state[:, 1:]
        fmap = tokens.transpose(1, 2).reshape(x.shape[0], -1, *self.grid)
        return self.decode_head([fmap])


def vit_linear_pair(device: torch.device, seed: int = 0) -> Pair:
    """ViT-B/16 + linear head at 512×512: HF ViTModel (SDPA) + our head vs `linear_vit_b16`."""
    from transformers import ViTConfig, ViTModel

    from vitseg.losses import cross_entropy
    size = 512
    torch.manual_seed(seed)
    cfg = ViTConfig(image_size=size, patch_size=16, hidden_size=768, num_hidden_layers=12, num_attention_heads=12,
                    intermediate_size=3072, layer_norm_eps=1e-6, hidden_dropout_prob=0.0,
                    attention_probs_dropout_prob=0.0)
    hf = ViTModel(cfg, add_pooling_layer=False)
    ours = vitseg.create_model("linear_vit_b16", num_classes=NUM_CLASSES, img_size=size, drop_path_rate=0.0,
                               pretrained=hf.state_dict())
    head = type(ours.decode_head)(cfg.hidden_size, NUM_CLASSES)
    head.load_state_dict(ours.decode_head.state_dict())
    ref = _HFViTLinear(hf, head, (size // 16, size // 16))
    ref, ours = ref.to(device), ours.to(device)

    def ref_grads():
        from vitseg.models.backbones.vit import convert_to_internal
        grads = {k: p.grad for k, p in ref.named_parameters() if p.grad is not None}
        body, _ = convert_to_internal({k[len("vit."):]: g for k, g in grads.items() if k.startswith("vit.")})
        out = {"backbone." + k: g for k, g in body.items()}
        out.update({k: g for k, g in grads.items() if k.startswith("decode_head.")})
        return out

    return Pair("linear_vit_b16", ours, ref, ours_logits=ours, ref_logits=ref,
                ours_loss=lambda x, y: ours.loss(x, y)["loss"],
                ref_loss=lambda x, y: cross_entropy(ref(x), y, 255), ref_grads_as_ours=ref_grads)


def make_pair(name: str, device: torch.device) -> Pair:
    if name.startswith("segformer_"):
        return segformer_pair(name.split("_")[1], device)
    if name == "linear_vit_b16":
        return vit_linear_pair(device)
    raise ValueError(f"unknown benchmark model '{name}' (known: segformer_b0/b1/b2, linear_vit_b16)")


def batch(pair: Pair, n: int, device: torch.device, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalised-looking images and labels (10% ignore) of the pair's crop size."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 3, *pair.size, generator=g)
    y = torch.randint(0, NUM_CLASSES, (n, *pair.size), generator=g)
    y[torch.rand(n, *pair.size, generator=g) < 0.1] = 255
    return x.to(device), y.to(device)


def train_step(model: nn.Module, loss_fn, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor
               ) -> torch.Tensor:
    """One optimisation step; returns the (detached) loss."""
    opt.zero_grad(set_to_none=True)
    loss = loss_fn(x, y)
    loss.backward()
    opt.step()
    return loss.detach()


def make_optimizer(model: nn.Module) -> torch.optim.Optimizer:
    # foreach=True: the default multi-tensor AdamW, the same implementation for both models.
    return torch.optim.AdamW(model.parameters(), lr=6e-5, weight_decay=0.01, foreach=True)
