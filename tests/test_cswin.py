"""CSWin: published parameter counts, cross-shaped attention against a loop-based reference (with and without
padding), stripe orientation, four pyramid levels on odd sizes, official checkpoint import, strict errors."""
import pytest
import torch
import torch.nn.functional as F

import vitseg
from vitseg import weights
from vitseg.errors import CheckpointError, ConfigError
from vitseg.models.backbones.cswin import CSWinBlock, LePEAttention
from vitseg.models.registry import get_entry

SMALL = dict(depths=(1, 2, 2, 1), embed_dim=32)  # dims 32..256, head dim 16


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def small(seed=0, **kw):
    torch.manual_seed(seed)
    model = vitseg.create_backbone("cswin_t", **{**SMALL, **kw})
    with torch.no_grad():  # non-trivial LN/bias values so that a wrong wiring cannot hide
        for p in model.parameters():
            p.add_(torch.randn(p.shape) * 0.05)
    return model.eval()


# ---------------------------------------------------------------------------------------------------------------
# Parameter counts


@pytest.mark.parametrize("name,seg_count,cls_count", [
    ("cswin_t", 21_808_448, 22_320_552), ("cswin_s", 34_131_200, 34_643_304), ("cswin_b", 76_614_528, 77_382_184)])
def test_param_counts_match_published(name, seg_count, cls_count):
    with torch.device("meta"):
        model = vitseg.create_backbone(name)
    assert n_params(model) == seg_count
    # The ImageNet model has one final norm (same shape as norm4) instead of norm1..4, plus a 1000-class head.
    c4 = model.dims[3]
    seg_norms = sum(n_params(getattr(model, f"norm{s}")) for s in (1, 2, 3))
    classifier = seg_count - seg_norms + c4 * 1000 + 1000
    assert classifier == cls_count
    paper = vitseg.model_info(name).paper.params_m  # README: 23M / 35M / 78M (rounded up)
    assert paper - 1 < classifier / 1e6 <= paper


# ---------------------------------------------------------------------------------------------------------------
# Reference: attention computed stripe by stripe with explicit slicing and a hand-written softmax


def ref_branch(attn: LePEAttention, qkv: torch.Tensor) -> torch.Tensor:
    b, _, c, h, w = qkv.shape
    sh, sw = {"vertical": (h, attn.split_size), "horizontal": (attn.split_size, w), "full": (h, w)}[attn.mode]
    ph, pw = (sh - h % sh) % sh, (sw - w % sw) % sw
    qkv = F.pad(qkv, (pw // 2, pw - pw // 2, ph // 2, ph - ph // 2))
    out = torch.zeros(b, c, h + ph, w + pw)
    heads, d = attn.num_heads, c // attn.num_heads
    for i in range(0, h + ph, sh):
        for j in range(0, w + pw, sw):
            win = qkv[:, :, :, i:i + sh, j:j + sw]
            q, k, v = (win[:, n].flatten(2).transpose(1, 2).reshape(b, sh * sw, heads, d).transpose(1, 2)
                       for n in range(3))
            probs = torch.softmax(q @ k.transpose(-1, -2) / d ** 0.5, dim=-1)
            lepe = attn.get_v(win[:, 2])
            o = (probs @ v).transpose(1, 2).reshape(b, sh * sw, c).transpose(1, 2).reshape(b, c, sh, sw)
            out[:, :, i:i + sh, j:j + sw] = o + lepe
    return out[:, :, ph // 2:ph // 2 + h, pw // 2:pw // 2 + w]


def ref_block(blk: CSWinBlock, x: torch.Tensor, hw) -> torch.Tensor:
    b, n, c = x.shape
    y = blk.qkv(blk.norm1(x)).reshape(b, hw[0], hw[1], 3, c).permute(0, 3, 4, 1, 2)
    if len(blk.attns) == 2:
        a = torch.cat([ref_branch(blk.attns[0], y[:, :, :c // 2]), ref_branch(blk.attns[1], y[:, :, c // 2:])], 1)
    else:
        a = ref_branch(blk.attns[0], y)
    x = x + blk.proj(a.flatten(2).transpose(1, 2))
    return x + blk.mlp(blk.norm2(x))


def ref_forward(model, images):
    x = model.stage1_conv_embed[0](images)
    hw = x.shape[2:]
    x = model.stage1_conv_embed[2](x.flatten(2).transpose(1, 2))
    outs = []
    for s in range(4):
        if s:
            merge = getattr(model, f"merge{s}")
            y = merge.conv(x.transpose(1, 2).reshape(x.shape[0], -1, *hw))
            hw = y.shape[2:]
            x = merge.norm(y.flatten(2).transpose(1, 2))
        for blk in getattr(model, f"stage{s + 1}"):
            x = ref_block(blk, x, hw)
        outs.append(getattr(model, f"norm{s + 1}")(x).transpose(1, 2).reshape(x.shape[0], -1, *hw))
    return outs


@pytest.mark.parametrize("dim,heads,split,last,hw", [
    (64, 2, 1, False, (14, 14)), (64, 2, 1, False, (13, 17)), (128, 4, 2, False, (9, 11)),
    (256, 8, 7, False, (14, 14)), (256, 8, 7, False, (13, 17)), (512, 16, 7, True, (4, 5))])
def test_block_matches_reference(dim, heads, split, last, hw):
    torch.manual_seed(0)
    blk = CSWinBlock(dim, heads, split, last, 4.0, 0.0, 1e-5).eval()
    x = torch.randn(2, hw[0] * hw[1], dim)
    with torch.no_grad():
        torch.testing.assert_close(blk(x, hw), ref_block(blk, x, hw), atol=1e-5, rtol=0)


@pytest.mark.parametrize("size", [(224, 224), (200, 264)])  # divisible / padding path
def test_model_matches_reference(size):
    model = small()
    x = torch.randn(1, 3, *size)
    with torch.no_grad():
        for a, b in zip(model(x), ref_forward(model, x)):
            torch.testing.assert_close(a, b, atol=1e-4, rtol=0)


@pytest.mark.parametrize("mode", ["vertical", "horizontal"])
def test_stripe_orientation(mode):
    torch.manual_seed(0)
    attn = LePEAttention(8, 2, mode, split_size=1)
    qkv = torch.randn(1, 3, 8, 6, 7, requires_grad=True)
    attn(qkv)[0, :, 3, 4].sum().backward()
    touched = qkv.grad.abs().sum(dim=(0, 1, 2)) > 0  # [H, W]
    expected = torch.zeros(6, 7, dtype=torch.bool)
    if mode == "vertical":  # first half of the heads: one column, full height
        expected[:, 4] = True
    else:
        expected[3, :] = True
    assert torch.equal(touched, expected)


# ---------------------------------------------------------------------------------------------------------------
# Contract: four levels, block outputs, gradients, lr-decay ids


def test_four_levels_on_non_square_non_multiple_input():
    model = small()
    x = torch.randn(2, 3, 100, 150)
    with torch.no_grad():
        stages = model(x)
        blocks = model.forward_intermediates(x, (2, 4, 0))
    assert [tuple(s.shape) for s in stages] == [(2, 32, 25, 37), (2, 64, 13, 19), (2, 128, 7, 10), (2, 256, 4, 5)]
    assert model.out_channels == [32, 64, 128, 256] and model.strides == [4, 8, 16, 32]
    assert [tuple(b.shape[1:]) for b in blocks] == [(64, 13, 19), (128, 7, 10), (32, 25, 37)]
    # block 4 is the last block of stage 3: its stage output is that block after norm3
    normed = model.norm3(blocks[1].flatten(2).transpose(1, 2)).transpose(1, 2).reshape(2, 128, 7, 10)
    torch.testing.assert_close(stages[2], normed)
    torch.testing.assert_close(model.forward_intermediates(x, (4, -1), norm=True)[0], stages[2])
    assert [b.shape for b in model.forward_intermediates(x, (0,), fmt="NLC")] == [(2, 25 * 37, 32)]
    assert model.feature_info == [{"index": i, "channels": c, "stride": s}
                                  for i, c, s in ((0, 32, 4), (2, 64, 8), (4, 128, 16), (5, 256, 32))]
    with pytest.raises(ConfigError, match="outside its 6 blocks"):
        model.forward_intermediates(x, (6,))
    with pytest.raises(ConfigError, match="outside its 4 blocks"):
        vitseg.create_backbone("cswin_t", out_indices=(4,), **SMALL)
    two = vitseg.create_backbone("cswin_t", out_indices=(1, 2), **SMALL)
    assert two.out_channels == [64, 128] and len(two(x)) == 2


def test_gradients_reach_every_parameter():
    model = vitseg.create_backbone("cswin_t", drop_path_rate=0.3, **SMALL).train()
    sum(f.square().mean() for f in model(torch.randn(2, 3, 72, 100))).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing


def test_layer_ids():
    with torch.device("meta"):
        model = vitseg.create_backbone("cswin_t")
    assert model.num_layers == 26
    assert model.layer_id("stage1_conv_embed.0.weight") == 0
    assert model.layer_id("stage1.0.qkv.weight") == 1
    assert model.layer_id("merge1.conv.weight") == model.layer_id("stage2.0.norm1.weight") == 2
    assert model.layer_id("stage3.20.mlp.fc2.bias") == 24 and model.layer_id("stage4.0.proj.weight") == 25
    assert model.layer_id("norm4.weight") == 26


# ---------------------------------------------------------------------------------------------------------------
# Official checkpoints


def imagenet_checkpoint(model) -> dict:
    sd = {k: v.clone() for k, v in model.state_dict().items() if not k.startswith(("norm1.", "norm2.", "norm3.",
                                                                                     "norm4."))}
    c4 = model.dims[3]
    sd.update({"norm.weight": torch.ones(c4), "norm.bias": torch.zeros(c4),
               "head.weight": torch.zeros(1000, c4), "head.bias": torch.zeros(1000)})
    return sd


@pytest.mark.parametrize("wrapper", ["state_dict_ema", "model", "module"])
def test_official_imagenet_checkpoint_loads(tmp_path, wrapper):
    src = small()
    sd = imagenet_checkpoint(src)
    if wrapper == "module":
        obj = {"module." + k: v for k, v in sd.items()}
    else:
        obj = {wrapper: sd, "epoch": 300}
    torch.save(obj, tmp_path / "cswin.pth")
    model = vitseg.create_backbone("cswin_t", **SMALL)
    conv = weights.load_into(model, tmp_path / "cswin.pth", get_entry("cswin_t"))
    assert any("head" in n for n in conv.notes) and any("norm1..norm4" in n for n in conv.notes)
    assert torch.equal(model.norm2.weight, torch.ones(64))  # new seg norms stay at LN init
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        ours = model.eval().forward_intermediates(x, range(6))
        ref = src.forward_intermediates(x, range(6))
    for a, b in zip(ours, ref):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_official_segmentation_checkpoint_loads(tmp_path):
    src = small()
    sd = {"backbone." + k: v for k, v in src.state_dict().items()}
    sd.update({"decode_head.conv_seg.weight": torch.zeros(150, 256, 1, 1), "auxiliary_head.conv_seg.bias":
               torch.zeros(150)})
    torch.save({"state_dict": sd, "meta": {"iter": 160000}}, tmp_path / "upernet_cswin.pth")
    model = vitseg.create_backbone("cswin_t", pretrained=tmp_path / "upernet_cswin.pth", **SMALL).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for a, b in zip(model(x), src(x)):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_strict_errors_name_keys(tmp_path):
    sd = imagenet_checkpoint(small())
    del sd["stage3.1.attns.1.get_v.weight"]
    sd["stage2.0.attns.0.rel_table"] = torch.zeros(3)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as err:
        vitseg.create_backbone("cswin_t", pretrained=tmp_path / "bad.pth", **SMALL)
    assert "stage3.1.attns.1.get_v.weight" in str(err.value) and "stage2.0.attns.0.rel_table" in str(err.value)
    torch.save(imagenet_checkpoint(small()), tmp_path / "t.pth")  # depth mismatch: CSWin-S expects more blocks
    with pytest.raises(CheckpointError, match="stage1.1.qkv.weight"):
        vitseg.create_backbone("cswin_s", pretrained=tmp_path / "t.pth", depths=(2, 2, 2, 1), embed_dim=32)


def test_onnx_export_padding_path(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = small()
    x = torch.randn(1, 3, 40, 60)  # stage grids not divisible by the stripe widths
    torch.onnx.export(model, (x,), str(tmp_path / "cswin.onnx"), dynamo=False, opset_version=17)
    sess = ort.InferenceSession(str(tmp_path / "cswin.onnx"))
    outs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        for a, b in zip(outs, model(x)):
            torch.testing.assert_close(torch.from_numpy(a), b, atol=1e-4, rtol=0)
