"""BiT-style ResNet stems and the R+ViT hybrids (specs/backbones.md §0.2, §2, §7.7)."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from vitseg.models.backbones.resnetv2 import StdConv2dSame, resnetv2, same_padding
from vitseg.models.backbones.vit import to_augreg_npz
from vitseg.models.registry import create_backbone, model_info


@pytest.mark.parametrize("name,resnet,backbone", [("r26_vit_s32", 13_946_176, 36_046_912),
                                                  ("r50_vit_l32", 23_508_032, 327_969_856)])
def test_hybrid_counts(name, resnet, backbone):
    with torch.device("meta"):
        m = create_backbone(name)
    assert sum(p.numel() for p in m.patch_embed.backbone.parameters()) == resnet
    n = sum(p.numel() for p in m.parameters())
    assert n == backbone
    assert abs((n + m.embed_dim * 1000 + 1000) / 1e6 - model_info(name).paper.params_m) < 0.1
    assert m.patch_size == 32 and m.grid_size == (7, 7) and m.pos_embed.shape[1] == 50


def test_same_padding_stem_sizes():
    net = resnetv2((1, 1, 1, 1)).eval()
    with torch.no_grad():
        for size, expect in ((224, 56), (225, 57)):
            x = F.relu(net.stem(torch.randn(1, 3, size, size)))
            x = F.max_pool2d(F.pad(x, (*same_padding(x.shape[-1], 3, 2), *same_padding(x.shape[-2], 3, 2)),
                                   value=float("-inf")), 3, 2)
            assert x.shape[-2:] == (expect, expect)
    assert same_padding(224, 7, 2) == (2, 3) and same_padding(112, 3, 2) == (0, 1)
    conv = net.stem.conv
    x = torch.randn(1, 3, 224, 224)
    w = conv.weight
    w_std = (w - w.mean((1, 2, 3), keepdim=True)) / torch.sqrt(w.var((1, 2, 3), unbiased=False, keepdim=True) + 1e-8)
    with torch.no_grad():
        assert torch.allclose(conv(x), F.conv2d(F.pad(x, (2, 3, 2, 3)), w_std, stride=2), atol=1e-4)


def test_weight_standardisation_is_scale_invariant():
    conv = StdConv2dSame(4, 8, 3)
    x = torch.randn(1, 4, 9, 9)
    y = conv(x)
    with torch.no_grad():
        conv.weight.mul_(7.0).add_(0.3)
    assert torch.allclose(conv(x), y, atol=1e-4)


def test_hybrid_runs_non_square_and_gradients():
    m = create_backbone("r26_vit_s32", depth=2, out_indices=(0, 1))
    feats = m(torch.randn(1, 3, 96, 160))
    assert [f.shape for f in feats] == [(1, 384, 3, 5)] * 2
    sum(f.mean() for f in feats).backward()
    assert m.patch_embed.backbone.stem.conv.weight.grad is not None


def test_hybrid_npz_round_trip(tmp_path):
    torch.manual_seed(0)
    src = create_backbone("r26_vit_s32", depth=1)
    path = tmp_path / "r26.npz"
    to_augreg_npz(src.state_dict(), path, num_heads=6)
    with np.load(path) as z:
        assert z["conv_root/kernel"].shape == (7, 7, 3, 64)
        assert z["block2/unit1/conv_proj/kernel"].shape == (1, 1, 256, 512)
        assert z["embedding/kernel"].shape == (1, 1, 2048, 384)
    back = create_backbone("r26_vit_s32", depth=1, pretrained=str(path))
    for k, v in src.state_dict().items():
        assert torch.equal(back.state_dict()[k], v), k
