"""BEiT: published parameter counts, HF BeitModel parity (224 and non-square), official/timm/mmseg import,
relative-position table resizing (unilm geometric recipe), padding, gradients, strict key errors."""
import math
import re

import pytest
import torch
import torch.nn.functional as F

import vitseg
from vitseg import weights
from vitseg.errors import CheckpointError, ConfigError
from vitseg.models.backbones.beit import (geometric_coords, geometric_ratio, relative_position_index,
                                          resize_rel_pos_table)
from vitseg.models.registry import get_entry

TINY = dict(embed_dim=64, depth=3, num_heads=4, out_indices=(0, 1, 2))


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


def tiny(img_size=64, **kw):
    torch.manual_seed(0)
    model = vitseg.create_backbone("beit_b16", img_size=img_size, **{**TINY, **kw})
    randomize(model)
    return model.eval()


def randomize(model, seed=0):
    """Non-trivial values everywhere (tables and layer scales init to constants), strong enough that a wrong
    table resize or a dropped bias shows up in the outputs."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("relative_position_bias_table"):
                p.copy_(torch.randn(p.shape, generator=g))
            elif re.search(r"gamma_\d$|lambda_\d$", name):
                p.copy_(torch.rand(p.shape, generator=g) + 0.5)
            else:
                p.copy_(torch.randn(p.shape, generator=g) * 0.05)


# ---------------------------------------------------------------------------------------------------------------
# Parameter counts (meta device: no memory, no init cost)


@pytest.mark.parametrize("name,img,expected", [
    ("beit_b16", 224, 85_760_448), ("beit_b16", 512, 86_227_008), ("beit_b16", 640, 86_554_176),
    ("beit_l16", 224, 303_403_520), ("beit_l16", 512, 304_647_680), ("beit_l16", 640, 305_520_128)])
def test_param_counts_match_spec(name, img, expected):
    with torch.device("meta"):
        model = vitseg.create_backbone(name, img_size=img)
    assert n_params(model) == expected
    paper = vitseg.model_info(name).paper
    if img == 224:  # BEiT paper: 86M (B) / 304M (L, with its final norm and head)
        assert abs(n_params(model) / 1e6 - paper.params_m) / paper.params_m < 0.01


@pytest.mark.parametrize("name,dim,depth,heads", [("beit_b16", 768, 12, 12), ("beit_l16", 1024, 24, 16)])
def test_param_counts_equal_hf_beitmodel(name, dim, depth, heads):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BeitConfig(hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads,
                                  intermediate_size=4 * dim, image_size=224, use_absolute_position_embeddings=False,
                                  use_relative_position_bias=True, use_shared_relative_position_bias=False,
                                  layer_scale_init_value=0.1, use_mask_token=False, use_mean_pooling=False)
    with torch.device("meta"):
        ref = transformers.BeitModel(cfg, add_pooling_layer=False)
        ours = vitseg.create_backbone(name)
    # Same parts: HF adds only the final `layernorm` that the segmentation encoder does not have.
    assert n_params(ours) == n_params(ref) - 2 * dim


# ---------------------------------------------------------------------------------------------------------------
# HF transformers parity (random init, no download)


def hf_beit(shared: bool = False, mask_token: bool = False, eps: float = 1e-6):
    transformers = pytest.importorskip("transformers")
    cfg = transformers.BeitConfig(hidden_size=64, num_hidden_layers=3, num_attention_heads=4, intermediate_size=256,
                                  image_size=224, patch_size=16, use_absolute_position_embeddings=False,
                                  use_relative_position_bias=not shared, use_shared_relative_position_bias=shared,
                                  layer_scale_init_value=0.1, use_mask_token=mask_token, use_mean_pooling=False,
                                  layer_norm_eps=eps)
    torch.manual_seed(0)
    model = transformers.BeitModel(cfg, add_pooling_layer=False).eval()
    randomize(model, seed=1)
    return model


def hf_hidden(model, x):
    with torch.no_grad():
        return model(pixel_values=x, output_hidden_states=True).hidden_states


def test_hf_folder_parity_square_and_non_square(tmp_path):
    ref = hf_beit(eps=1e-12)
    ref.save_pretrained(tmp_path)
    ours = vitseg.create_backbone("beit_b16", pretrained=tmp_path, **TINY).eval()
    assert ours.window_size == (14, 14) and ours.rel_pos_resize == "bilinear"
    # HF runs any size: its per-layer bias bilinearly resizes the 27x27 offset table to the new grid.
    for size in [(224, 224), (320, 480)]:
        x = torch.randn(2, 3, *size)
        hs = hf_hidden(ref, x)
        with torch.no_grad():
            tokens = ours.forward_intermediates(x, fmt="NLC", prefix=True)
            maps = ours(x)
        grid = ours.token_grid(*size)
        assert grid == (size[0] // 16, size[1] // 16)
        for i, t in enumerate(tokens):
            torch.testing.assert_close(t, hs[i + 1], atol=1e-4, rtol=0)
            torch.testing.assert_close(maps[i], hs[i + 1][:, 1:].transpose(1, 2).reshape(2, 64, *grid))
    # The comparison is sensitive to the resize rule: the unilm recipe gives different numbers off-grid.
    geo = vitseg.create_backbone("beit_b16", pretrained=tmp_path, rel_pos_resize="geometric", **TINY).eval()
    with torch.no_grad():
        diff = (geo.forward_intermediates(x, fmt="NLC", prefix=True)[-1] - hs[-1]).abs().max()
    assert diff > 1e-3


def test_hf_shared_table_and_v5_in_memory_names(tmp_path):
    ref = hf_beit(shared=True, mask_token=True)  # pretraining layout: one shared table, a mask token
    ref.save_pretrained(tmp_path)
    x = torch.randn(1, 3, 224, 224)
    hs = hf_hidden(ref, x)
    from_folder = vitseg.create_backbone("beit_b16", pretrained=tmp_path, **TINY).eval()
    # transformers >= 5 in-memory names (layers.N.attention.q_proj, shared_position_bias, ...)
    sd = ref.state_dict()
    assert any(k.startswith("layers.0.attention.q_proj") for k in sd)
    from_memory = vitseg.create_backbone("beit_b16", pretrained=sd, **TINY).eval()
    for model in (from_folder, from_memory):
        tables = [b.attn.relative_position_bias_table for b in model.blocks]
        assert all(torch.equal(t, tables[0]) for t in tables)  # per-block copies of the shared table
        with torch.no_grad():
            tokens = model.forward_intermediates(x, fmt="NLC", prefix=True)
        for i, t in enumerate(tokens):
            torch.testing.assert_close(t, hs[i + 1], atol=1e-4, rtol=0)


def test_hf_key_bias_is_an_error_naming_the_key():
    sd = dict(hf_beit().state_dict())
    sd["layers.1.attention.k_proj.bias"] = torch.zeros(64)
    with pytest.raises(CheckpointError, match=r"blocks\.1\.attn\.k\.bias"):
        vitseg.create_backbone("beit_b16", pretrained=sd, **TINY)


# ---------------------------------------------------------------------------------------------------------------
# Official (unilm) / timm / mmseg layouts


def official_checkpoint(model, pretraining: bool = False) -> dict:
    """Our state dict written the way unilm saves it: {'model': ...} with index buffers and unused heads."""
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    c = model.embed_dim
    for i in range(model.depth):
        sd[f"blocks.{i}.attn.relative_position_index"] = relative_position_index(model.window_size)
    if pretraining:  # one shared table, a mask token, the MIM head and the final norm
        shared = sd["blocks.0.attn.relative_position_bias_table"]
        for i in range(model.depth):
            del sd[f"blocks.{i}.attn.relative_position_bias_table"]
        sd.update({"rel_pos_bias.relative_position_bias_table": shared, "mask_token": torch.zeros(1, 1, c),
                   "norm.weight": torch.ones(c), "norm.bias": torch.zeros(c),
                   "lm_head.weight": torch.zeros(8192, c), "lm_head.bias": torch.zeros(8192)})
    else:  # fine-tuned classifier
        sd.update({"fc_norm.weight": torch.ones(c), "fc_norm.bias": torch.zeros(c),
                   "head.weight": torch.zeros(10, c), "head.bias": torch.zeros(10)})
    return {"model": sd}


def test_official_checkpoints_load_strictly(tmp_path):
    src = tiny()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        expected = src(x)
    path = tmp_path / "beit_ft.pth"
    torch.save(official_checkpoint(src), path)
    ours = vitseg.create_backbone("beit_b16", pretrained=path, **TINY).eval()
    assert ours.window_size == (4, 4)  # read from the table size
    with torch.no_grad():
        for a, b in zip(ours(x), expected):
            torch.testing.assert_close(a, b, atol=0, rtol=0)

    # Pretraining layout: shared table copied into every block.
    for blk in src.blocks[1:]:
        blk.attn.relative_position_bias_table.data.copy_(src.blocks[0].attn.relative_position_bias_table)
    with torch.no_grad():
        expected = src(x)
    torch.save(official_checkpoint(src, pretraining=True), path)
    model = vitseg.create_backbone("beit_b16", **TINY, img_size=64)
    conv = weights.load_into(model, path, get_entry("beit_b16"))
    assert any("shared relative-position table" in n for n in conv.notes)
    assert any("mask_token" in n and "lm_head" in n for n in conv.notes)
    with torch.no_grad():
        for a, b in zip(model.eval()(x), expected):
            torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_timm_safetensors_and_mmseg_layouts(tmp_path):
    from safetensors.torch import save_file
    src = tiny()
    x = torch.randn(1, 3, 48, 64)
    with torch.no_grad():
        expected = src(x)[-1]
    save_file({k: v.contiguous() for k, v in src.state_dict().items()}, str(tmp_path / "timm.safetensors"))
    mmseg = {}
    for k, v in src.state_dict().items():  # rename as mmseg's beit2mmseg converter does
        k = k.replace("blocks.", "layers.").replace(".norm1.", ".ln1.").replace(".norm2.", ".ln2.")
        k = k.replace("mlp.fc1.", "ffn.layers.0.0.").replace("mlp.fc2.", "ffn.layers.1.")
        mmseg["backbone." + k.replace("patch_embed.proj.", "patch_embed.projection.")] = v
    mmseg["decode_head.conv_seg.weight"] = torch.zeros(3, 64, 1, 1)
    torch.save({"state_dict": mmseg, "meta": {"iter": 1}}, tmp_path / "mmseg.pth")
    for name in ("timm.safetensors", "mmseg.pth"):
        model = vitseg.create_backbone("beit_b16", pretrained=tmp_path / name, **TINY).eval()
        with torch.no_grad():
            torch.testing.assert_close(model(x)[-1], expected, atol=0, rtol=0)


def test_strict_errors_name_missing_and_unexpected_keys(tmp_path):
    sd = official_checkpoint(tiny())["model"]
    del sd["blocks.1.mlp.fc2.weight"]
    sd["blocks.0.attn.extra_scale"] = torch.ones(1)
    torch.save(sd, tmp_path / "broken.pth")
    with pytest.raises(CheckpointError) as err:
        vitseg.create_backbone("beit_b16", pretrained=tmp_path / "broken.pth", **TINY)
    msg = str(err.value)
    assert "blocks.1.mlp.fc2.weight" in msg and "blocks.0.attn.extra_scale" in msg and "broken.pth" in msg
    with pytest.raises(CheckpointError, match="not .*window"):
        bad = official_checkpoint(tiny())["model"]
        bad["blocks.0.attn.relative_position_bias_table"] = torch.zeros(50, 4)
        torch.save(bad, tmp_path / "bad_table.pth")
        vitseg.create_backbone("beit_b16", pretrained=tmp_path / "bad_table.pth", **TINY)


# ---------------------------------------------------------------------------------------------------------------
# Relative-position table resizing


def test_geometric_recipe_constants():
    # spec §3.3 / §7.6: ratios of unilm's bisection and the outermost source offset
    for dst, q in [(63, 1.134918), (79, 1.168504), (59, 1.125056), (95, 1.195487)]:
        assert abs(geometric_ratio(27, dst) - q) < 1e-5
    coords = geometric_coords(27, 63)
    assert len(coords) == 27 and coords[13] == 0 and abs(coords[-1] - 31.0) < 1e-3 and coords[0] == -coords[-1]


def test_resize_identity_crop_and_cls_rows():
    table = torch.randn(27 * 27 + 3, 4)
    assert resize_rel_pos_table(table, (14, 14), (14, 14)) is table
    small = resize_rel_pos_table(table, (14, 14), (5, 7))  # smaller grid: exact central offsets
    assert small.shape == (9 * 13 + 3, 4)
    torch.testing.assert_close(small[:-3].reshape(9, 13, 4), table[:-3].reshape(27, 27, 4)[9:18, 7:20])
    big = resize_rel_pos_table(table, (14, 14), (32, 32))
    assert big.shape == (63 * 63 + 3, 4)
    assert torch.equal(big[-3:], table[-3:])
    assert not torch.equal(big[:-3].reshape(63, 63, 4)[16:47, 16:47], table[:-3].reshape(27, 27, 4))
    bil = resize_rel_pos_table(table, (14, 14), (20, 30), mode="bilinear")
    ref = F.interpolate(table[:-3].reshape(1, 27, 27, 4).permute(0, 3, 1, 2), size=(39, 59), mode="bilinear",
                        align_corners=False)
    torch.testing.assert_close(bil[:-3], ref[0].permute(1, 2, 0).reshape(-1, 4))
    with pytest.raises(ConfigError, match="rel_pos_resize"):
        resize_rel_pos_table(table, (14, 14), (20, 20), mode="bicubic")


def test_resize_reproduces_linear_tables_exactly():
    # A cubic spline reproduces linear data, so a table linear in the *source coordinates* must become the
    # same linear function of the target offsets (the outermost source coordinate is ≈ ±dst//2).
    for src, dst in [((14, 14), (32, 32)), ((14, 14), (20, 30)), ((7, 9), (12, 10))]:
        ch = torch.tensor(geometric_coords(2 * src[0] - 1, 2 * dst[0] - 1) if dst[0] > src[0] else
                          list(range(-(src[0] - 1), src[0])), dtype=torch.float32)
        cw = torch.tensor(geometric_coords(2 * src[1] - 1, 2 * dst[1] - 1) if dst[1] > src[1] else
                          list(range(-(src[1] - 1), src[1])), dtype=torch.float32)
        table = (0.3 * ch[:, None] - 0.7 * cw[None, :] + 2.0).reshape(-1, 1)
        table = torch.cat([table, torch.tensor([[5.0], [6.0], [7.0]])])
        out = resize_rel_pos_table(table, src, dst)
        th = torch.arange(-(dst[0] - 1), dst[0], dtype=torch.float32)
        tw = torch.arange(-(dst[1] - 1), dst[1], dtype=torch.float32)
        expected = 0.3 * th.clamp(ch[0], ch[-1])[:, None] - 0.7 * tw.clamp(cw[0], cw[-1])[None, :] + 2.0
        torch.testing.assert_close(out[:-3, 0].reshape(len(th), len(tw)), expected, atol=1e-4, rtol=0)


def test_resize_matches_scipy_spline():
    interpolate = pytest.importorskip("scipy.interpolate")
    torch.manual_seed(0)
    table = torch.randn(27 * 27 + 3, 3)
    out = resize_rel_pos_table(table, (14, 14), (20, 30))
    ch, cw = geometric_coords(27, 39), geometric_coords(27, 59)
    for h in range(3):
        spline = interpolate.RectBivariateSpline(ch, cw, table[:-3, h].reshape(27, 27).double().numpy(),
                                                 kx=3, ky=3, s=0)
        ref = torch.from_numpy(spline(list(range(-19, 20)), list(range(-29, 30)))).float()
        torch.testing.assert_close(out[:-3, h].reshape(39, 59), ref, atol=1e-5, rtol=0)


def test_load_time_resize_equals_run_time_resize(tmp_path):
    src = tiny(img_size=64)  # 4x4 window
    torch.save(src.state_dict(), tmp_path / "w.pth")
    big = vitseg.create_backbone("beit_b16", pretrained=tmp_path / "w.pth", img_size=(96, 128), **TINY).eval()
    assert big.window_size == (6, 8)
    conv = weights.load_into(vitseg.create_backbone("beit_b16", img_size=(96, 128), **TINY), tmp_path / "w.pth",
                             get_entry("beit_b16"))
    assert any("from a 4x4 to a 6x8 window (geometric)" in n for n in conv.notes)
    expected = resize_rel_pos_table(src.blocks[2].attn.relative_position_bias_table, (4, 4), (6, 8))
    torch.testing.assert_close(big.blocks[2].attn.relative_position_bias_table, expected)
    x = torch.randn(1, 3, 96, 128)  # the 64-px model resizes on the fly to the same 6x8 grid
    with torch.no_grad():
        for a, b in zip(src(x), big(x)):
            torch.testing.assert_close(a, b, atol=1e-5, rtol=0)


# ---------------------------------------------------------------------------------------------------------------
# Forward contract, padding, gradients, lr-decay ids


def test_padding_to_patch_multiple_and_out_indices():
    model = tiny()
    x = torch.randn(2, 3, 70, 90)
    with torch.no_grad():
        maps = model(x)
        padded = model(F.pad(x, (0, 6, 0, 10)))
    assert [tuple(m.shape) for m in maps] == [(2, 64, 5, 6)] * 3 and model.out_channels == [64] * 3
    for a, b in zip(maps, padded):
        torch.testing.assert_close(a, b, atol=0, rtol=0)
    embed, first = model.forward_intermediates(x, ("embed", 0), fmt="NLC", prefix=True)
    assert model.token_grid(70, 90) == (5, 6) and first.shape == embed.shape == (2, 31, 64)
    (grid_map, cls), = model.forward_intermediates(x, (-1,), prefix=True)
    torch.testing.assert_close(grid_map, maps[-1], atol=1e-5, rtol=0)  # maps came from a no_grad run
    assert cls.shape == (2, 1, 64)
    with pytest.raises(ConfigError, match="outside its 12 blocks"):
        vitseg.create_backbone("beit_b16", out_indices=(12,))
    with pytest.raises(ConfigError, match="outside its"):
        model.forward_intermediates(x, (6,))  # was wrapped modulo depth: block 6 of 4 quietly gave block 2
    with pytest.raises(ConfigError, match="no final norm"):
        model.forward_intermediates(x, norm=True)
    with torch.device("meta"):
        assert vitseg.create_backbone("beit_l16").out_indices == (7, 11, 15, 23)


def test_gradients_reach_every_parameter():
    model = vitseg.create_backbone("beit_b16", img_size=64, drop_path_rate=0.2, **TINY).train()
    x = torch.randn(2, 3, 48, 80)  # off-window grid: gradients also flow through the run-time resize
    sum(m.square().mean() for m in model(x)).backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not p.grad.abs().sum() > 0]
    assert not missing, missing
    assert not hasattr(model.blocks[0].attn, "k_bias")


def test_layer_ids_follow_beit_rule():
    with torch.device("meta"):
        model = vitseg.create_backbone("beit_b16")
    assert model.num_layers == 13
    assert model.layer_id("patch_embed.proj.weight") == model.layer_id("cls_token") == 0
    assert model.layer_id("blocks.0.attn.q_bias") == 1 and model.layer_id("blocks.11.gamma_2") == 12
    assert model.layer_id("fpn1.0.weight") == 13
    decay = 0.9  # spec §6: patch embed 0.9^13, block 11 0.9^1
    assert math.isclose(decay ** (model.num_layers - model.layer_id("patch_embed.proj.weight")), 0.9 ** 13)


def test_onnx_export_off_window_grid(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    model = tiny(img_size=64)
    x = torch.randn(1, 3, 80, 96)  # 5x6 grid: the geometric resize must export as constants + matmuls
    torch.onnx.export(model, (x,), str(tmp_path / "beit.onnx"), dynamo=False, opset_version=17)
    sess = ort.InferenceSession(str(tmp_path / "beit.onnx"))
    outs = sess.run(None, {sess.get_inputs()[0].name: x.numpy()})
    with torch.no_grad():
        for a, b in zip(outs, model(x)):
            torch.testing.assert_close(torch.from_numpy(a), b, atol=1e-4, rtol=0)
