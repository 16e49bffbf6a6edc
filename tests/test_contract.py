"""The house contracts every family builds on: one feature interface for every backbone, the Segmentor's
neck / auxiliary-head wiring, the shared losses, and `train_modules=False` for every registered model."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import vitseg
from vitseg.errors import ConfigError
from vitseg.losses import bce_dice_loss, cross_entropy, dice_loss, sigmoid_focal_loss
from vitseg.models.segmentor import Segmentor
from vitseg.tools.zoo import _parameters_on_meta
from test_export import one_model_per_family

TINY = {  # name: (kwargs, the `norm` flag that reproduces backbone(x))
    "vit_ti16": (dict(depth=3, out_indices=(0, 2), final_norm=True), True),
    "deit_ti16_distilled": (dict(depth=2, out_indices=(1,)), False),
    "beit_b16": (dict(embed_dim=64, depth=3, num_heads=4, out_indices=(0, 2)), False),
    "cswin_t": (dict(depths=(1, 2, 1, 1), embed_dim=32, out_indices=(1, 3)), True),
    "mit_b0": (dict(out_indices=(0, 2, 3)), True),
}


@pytest.mark.parametrize("name", sorted(TINY))
def test_forward_is_forward_intermediates_and_feature_info_describes_it(name):
    kw, norm = TINY[name]
    torch.manual_seed(0)
    backbone = vitseg.create_backbone(name, **kw).eval()
    x = torch.randn(2, 3, 70, 90)
    with torch.no_grad():
        maps = backbone(x)
        again = backbone.forward_intermediates(x, norm=norm)
        tokens = backbone.forward_intermediates(x, [i["index"] for i in backbone.feature_info], norm=norm,
                                                fmt="NLC")
    assert len(maps) == len(backbone.feature_info) == len(backbone.out_indices)
    for m, a, t, info in zip(maps, again, tokens, backbone.feature_info):
        torch.testing.assert_close(m, a, atol=0, rtol=0)
        assert m.shape[1] == info["channels"]
        # each side is the input side over the stride, rounded either way by the stem's padding
        assert all(abs(n - side / info["stride"]) < 1 for n, side in zip(m.shape[2:], (70, 90)))
        torch.testing.assert_close(t, m.flatten(2).transpose(1, 2), atol=0, rtol=0)
    depth = sum(backbone.depths) if hasattr(backbone, "depths") else backbone.depth
    with pytest.raises(ConfigError, match=f"outside its {depth} blocks"):
        backbone.forward_intermediates(x, (depth,))
    with pytest.raises(ConfigError, match="outside"):
        backbone.forward_intermediates(x, (-depth - 1,))
    with pytest.raises(ConfigError, match="no feature index"):
        backbone.forward_intermediates(x, ())
    # negative indices count from the end; the order given is the order returned
    with torch.no_grad():
        last, first = backbone.forward_intermediates(x, (-1, 0))
        assert torch.equal(last, backbone.forward_intermediates(x, (depth - 1,))[0])
        assert torch.equal(first, backbone.forward_intermediates(x, (0,))[0])


def test_pyramid_out_indices_are_checked_stages():
    with pytest.raises(ConfigError, match="MiT stages"):
        vitseg.create_backbone("mit_b0", out_indices=(5,))  # was an IndexError
    last = vitseg.create_backbone("mit_b0", out_indices=(-1,))  # was an empty list
    assert last.out_indices == (3,) and len(last(torch.randn(1, 3, 64, 64))) == 1
    with pytest.raises(ConfigError, match="CSWin stages"):
        vitseg.create_backbone("cswin_t", out_indices=(4,))


def test_mit_stage_norm_lies_on_the_main_path():
    torch.manual_seed(0)
    m = vitseg.create_backbone("mit_b0").eval()
    with torch.no_grad():
        for p in m.norm1.parameters():
            p.add_(torch.randn_like(p))
        x = torch.randn(1, 3, 64, 64)
        raw, normed = m.forward_intermediates(x, (1,)), m.forward_intermediates(x, (1,), norm=True)
        assert not torch.allclose(raw[0], normed[0])
        ln = m.norm1(raw[0].flatten(2).transpose(1, 2)).transpose(1, 2).reshape(raw[0].shape)
        torch.testing.assert_close(normed[0], ln)
        torch.testing.assert_close(normed[0], m(x)[0], atol=0, rtol=0)


def test_vit_prefix_tokens_and_embed_tap():
    torch.manual_seed(0)
    vit = vitseg.create_backbone("deit_ti16_distilled", depth=2).eval()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        (grid, prefix), = vit.forward_intermediates(x, (1,), prefix=True)
        seq, = vit.forward_intermediates(x, (1,), fmt="NLC", prefix=True)
        embed, = vit.forward_intermediates(x, ("embed",), fmt="NLC")
    assert prefix.shape == (1, 2, 192) and grid.shape == (1, 192, 3, 4) and seq.shape == (1, 2 + 12, 192)
    torch.testing.assert_close(seq[:, :2], prefix, atol=0, rtol=0)
    assert embed.shape == (1, 12, 192)
    with pytest.raises(ConfigError, match="not valid"):
        vitseg.create_backbone("mit_b0").forward_intermediates(x, ("embed",))  # pyramids have no single stem map


class _AuxHead(nn.Module):
    def __init__(self, cin, k, in_index, loss_weight):
        super().__init__()
        self.conv, self.in_index, self.loss_weight = nn.Conv2d(cin, k, 1), in_index, loss_weight

    def forward(self, feats):
        return self.conv(feats[self.in_index])


class _Neck(nn.Module):
    def forward(self, feats):
        return [f * 2 for f in feats]


def _segmentor(train_modules=True):
    torch.manual_seed(0)
    backbone = vitseg.create_backbone("vit_ti16", depth=2, out_indices=(0, 1))
    return Segmentor(5, train_modules=train_modules, backbone=backbone, neck=_Neck(),
                     decode_head=_AuxHead(192, 5, 1, None), aux={"fcn": _AuxHead(192, 5, 0, 0.4)})


def test_segmentor_neck_and_auxiliary_head_losses():
    model = _segmentor()
    x, labels = torch.randn(2, 3, 32, 32), torch.randint(0, 5, (2, 32, 32))
    labels[0, :4] = 255
    out = model.loss(x, labels)
    feats = [f * 2 for f in model.backbone(x)]
    torch.testing.assert_close(model.forward_features(x), feats)
    main = cross_entropy(model.decode_head(feats), labels)
    aux = 0.4 * F.cross_entropy(F.interpolate(model.aux["fcn"](feats), (32, 32), mode="bilinear"), labels,
                                ignore_index=255)
    torch.testing.assert_close(out["loss_ce"], main)
    torch.testing.assert_close(out["loss_fcn"], aux)
    torch.testing.assert_close(out["loss"], main + aux)
    out["loss"].backward()
    assert model.aux["fcn"].conv.weight.grad.abs().sum() > 0
    logits = model(x)
    model.strip_training_modules()
    assert len(model.aux) == 0 and not model.train_modules and torch.equal(model(x), logits)
    assert set(model.loss(x, labels)) == {"loss", "loss_ce"}
    assert len(_segmentor(train_modules=False).aux) == 0  # never built


def test_every_family_builds_without_training_modules():
    for name in one_model_per_family():  # the flag is handled once, in the registry, for every builder
        with _parameters_on_meta():
            model = vitseg.create_model(name, train_modules=False)
        assert not model.train_modules and len(model.aux) == 0, name
    with pytest.raises(ConfigError, match="segmentation models"):
        vitseg.create_backbone("vit_ti16", train_modules=False)


def test_shared_losses_against_their_formulas():
    torch.manual_seed(0)
    x, t = torch.randn(3, 50), (torch.rand(3, 50) > 0.5).float()
    p = x.sigmoid()
    bce = -(t * p.log() + (1 - t) * (1 - p).log())
    p_t = p * t + (1 - p) * (1 - t)
    torch.testing.assert_close(sigmoid_focal_loss(x, t), bce * (1 - p_t) ** 2)
    torch.testing.assert_close(sigmoid_focal_loss(x, t, alpha=0.25, gamma=1.5),
                               (0.25 * t + 0.75 * (1 - t)) * bce * (1 - p_t) ** 1.5)
    torch.testing.assert_close(dice_loss(x, t, dims=1), 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1))
    whole = dice_loss(x, t, dims=(0, 1), eps=0.5)
    torch.testing.assert_close(whole, 1 - (2 * (p * t).sum() + 0.5) / (p.sum() + t.sum() + 0.5))
    maps, target = torch.randn(2, 1, 8, 8), (torch.rand(2, 1, 8, 8) > 0.7).float()
    expect = (F.binary_cross_entropy_with_logits(maps, target)
              + dice_loss(maps.flatten(1), target.flatten(1), dims=1).mean())
    torch.testing.assert_close(bce_dice_loss(maps, target), expect)
    # CE: mean over labelled pixels, or over all pixels (mmseg 0.17); an all-ignore crop gives 0 with a graph
    logits, labels = torch.randn(1, 4, 6, 6, requires_grad=True), torch.randint(0, 4, (1, 6, 6))
    labels[0, :3] = 255
    per_pixel = F.cross_entropy(logits, labels, ignore_index=255, reduction="none")
    torch.testing.assert_close(cross_entropy(logits, labels), per_pixel.sum() / 18)
    torch.testing.assert_close(cross_entropy(logits, labels, reduction="all_pixels"), per_pixel.sum() / 36)
    zero = cross_entropy(logits, torch.full((1, 6, 6), 255))
    assert zero.item() == 0 and zero.requires_grad
