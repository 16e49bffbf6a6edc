"""SegViT: ATM decoder, cascade and Shrunk heads, ATM loss, official checkpoints, FLOPs against the paper."""
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitseg.models.heads.segvit import (ATMHead, Decoder, ShrunkHead, atm_loss, dice_loss, semantic_scores,
                                        sigmoid_focal_loss)


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


# ---------------------------------------------------------------------------------------------- heads

@pytest.mark.parametrize("in_dim,classes,dim,heads,expected", [
    (768, 150, 384, 12, 22_303_255),   # ViT-B ADE (spec §4: 22.303M)
    (1024, 150, 512, 16, 39_568_023),  # ViT-L ADE (39.568M)
    (1024, 171, 512, 16, 39_589_548),  # ViT-L COCO-Stuff-10K (39.590M)
    (1024, 60, 512, 16, 39_475_773)])  # ViT-L PASCAL-Context 60 (39.476M)
def test_cascade_head_params_match_spec(in_dim, classes, dim, heads, expected):
    assert n_params(ATMHead(in_dim, classes, dim, heads)) == expected


@pytest.mark.parametrize("classes,crop,expected", [(150, 640, 39_861_399), (171, 512, 39_588_012),
                                                   (60, 480, 39_410_749)])
def test_shrunk_head_params_match_spec(classes, crop, expected):
    assert n_params(ShrunkHead(1024, classes, 512, 16, (crop // 16, crop // 16))) == expected


def test_qu_decoder_equals_torch_transformer_decoder_layer():
    """The QU decoder layers are torch TransformerDecoderLayers (same keys, same function)."""
    torch.manual_seed(0)
    ours = Decoder(2, 32, 4, atm=False).eval()
    ref = nn.TransformerDecoder(nn.TransformerDecoderLayer(32, 4, 128, dropout=0.1, batch_first=True), 2).eval()
    ref.load_state_dict(ours.state_dict(), strict=True)
    q, mem = torch.randn(2, 10, 32), torch.randn(2, 7, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(q, mem)[0], ref(q, mem), atol=1e-5, rtol=0)


def test_atm_layer_mask_is_head_mean_of_scaled_logits():
    torch.manual_seed(0)
    layer = Decoder(1, 32, 4, atm=True).layers[0].eval()
    q, mem = torch.randn(2, 5, 32), torch.randn(2, 12, 32)
    with torch.no_grad():
        _, sim = layer(q, mem)
        x = layer.norm1(q + layer.self_attn(q))  # the cross-attention sees the self-attended queries
        a = layer.multihead_attn
        qh = a.q(x).view(2, 5, 4, 8).transpose(1, 2)
        kh = a.k(mem).view(2, 12, 4, 8).transpose(1, 2)
        expected = (qh @ kh.transpose(-2, -1) / math.sqrt(8)).mean(1)
    torch.testing.assert_close(sim, expected, atol=1e-5, rtol=0)


def test_cascade_masks_accumulate_and_queries_flow():
    torch.manual_seed(0)
    head = ATMHead(24, 6, 16, 4).eval()
    feats = [torch.randn(1, 9, 24) for _ in range(3)]
    with torch.no_grad():
        outs = head(feats, [(3, 3)] * 3)
        # stage 1 consumes the deepest output (last in the list) with decoder_1 on the initial queries
        x = head.proj_norm_1(head.input_proj_1(feats[2]))
        q1, sims1 = head.decoder_1(head.q.weight[None], x)
        x = head.proj_norm_2(head.input_proj_2(feats[1]))
        q2, sims2 = head.decoder_2(q1, x)
    assert len(outs) == 3 and all(o[0].shape == (1, 6, 7) for o in outs)
    torch.testing.assert_close(outs[0][1], sims1[-1].view(1, 6, 3, 3))
    torch.testing.assert_close(outs[1][1], outs[0][1] + sims2[-1].view(1, 6, 3, 3))
    torch.testing.assert_close(outs[1][0], head.class_embed(q2))


def test_shrunk_single_atm_supervises_every_layer_without_accumulation():
    torch.manual_seed(0)
    head = ShrunkHead(24, 5, 16, 4, (4, 4)).eval()
    with torch.no_grad():
        feats = [torch.randn(1, 16, 24), torch.randn(1, 4, 24)]
        outs = head(feats, (4, 4))
        q = head.q.weight[None]
        for s, x in enumerate(feats, start=1):
            q, _ = getattr(head, f"decoder_{s}")(q, getattr(head, f"proj_norm_{s}")(getattr(head, f"input_proj_{s}")(x)))
        g, sims = head.atm.q.weight[None], []
        for layer in head.atm.decoder_1.layers:  # memory = QU output, no input projection
            g, sim = layer(g, q)
            sims.append(sim.view(1, 5, 4, 4))
    assert len(outs) == 3
    for (cls, masks), sim in zip(outs, sims):
        torch.testing.assert_close(masks, sim)  # each layer's own masks, not a running sum
    torch.testing.assert_close(outs[-1][0], head.atm.class_embed(g))
    with torch.no_grad():  # a different grid resizes the up-sampling queries instead of failing
        outs6 = head([torch.randn(1, 36, 24), torch.randn(1, 9, 24)], (6, 6))
    assert outs6[-1][1].shape == (1, 5, 6, 6)


def test_semantic_scores_combine_probabilities_and_masks():
    torch.manual_seed(0)
    logits, masks = torch.randn(2, 4, 5), torch.randn(2, 4, 8, 8) * 5
    scores = semantic_scores(logits, masks)
    probs = logits.softmax(-1)[..., :4]
    manual = (probs[:, :, :, None, None] * masks.sigmoid()[:, :, None]).sum(1)
    torch.testing.assert_close(scores, manual)
    assert (scores >= 0).all() and (scores <= probs.sum(1)[..., None, None] + 1e-6).all()


# ---------------------------------------------------------------------------------------------- loss

def test_loss_fixed_assignment_no_object_weight_and_ignore():
    torch.manual_seed(0)
    k = 10
    labels = torch.full((1, 16, 16), 3)
    labels[:, :, 8:] = 7
    labels[:, :4] = 255
    class_logits = torch.randn(1, k, k + 1, requires_grad=True)
    mask_logits = torch.randn(1, k, 4, 4, requires_grad=True)
    out = atm_loss(class_logits, mask_logits, labels)
    # classification: queries 3 and 7 -> their class, all others -> no-object with weight 0.1
    target = torch.full((k,), k)
    target[3], target[7] = 3, 7
    w = torch.ones(k + 1)
    w[-1] = 0.1
    ce = F.cross_entropy(class_logits[0], target, reduction="none")
    torch.testing.assert_close(out["loss_cls"], (ce * w[target]).sum() / w[target].sum())
    # masks: only queries 3 and 7; ignore pixels are negatives in both binary masks
    up = F.interpolate(mask_logits[0, [3, 7]][:, None], size=(16, 16), mode="bilinear", align_corners=False)
    t = torch.stack([(labels[0] == 3), (labels[0] == 7)]).float().flatten(1)
    torch.testing.assert_close(out["loss_focal"], 20 * sigmoid_focal_loss(up.flatten(1), t).sum() / 2)
    torch.testing.assert_close(out["loss_dice"], dice_loss(up.flatten(1), t).sum() / 2)
    (out["loss_focal"] + out["loss_dice"]).backward()
    touched = mask_logits.grad[0].abs().flatten(1).sum(1) > 0
    assert touched.tolist() == [i in (3, 7) for i in range(k)]


def test_loss_all_ignore_is_finite_classification_only():
    class_logits = torch.randn(2, 4, 5, requires_grad=True)
    mask_logits = torch.randn(2, 4, 3, 3, requires_grad=True)
    out = atm_loss(class_logits, mask_logits, torch.full((2, 12, 12), 255))
    total = sum(out.values())
    assert torch.isfinite(total) and out["loss_focal"] == 0 and out["loss_dice"] == 0
    total.backward()
    assert mask_logits.grad.abs().sum() == 0 and class_logits.grad.abs().sum() > 0
