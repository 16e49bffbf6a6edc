"""ViT / DeiT / AugReg backbone: counts, HF parity, importers, shapes, gradients (specs/backbones.md §7)."""
import numpy as np
import pytest
import torch

from vitseg import weights
from vitseg.errors import CheckpointError, ConfigError
from vitseg.models.backbones.vit import (VisionTransformer, checkpoint_filter_fn, convert_to_internal,
                                        to_augreg_npz)
from vitseg.models.registry import create_backbone, model_info

transformers = pytest.importorskip("transformers")


def _count(m):
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("name,backbone,with_head", [
    ("vit_ti16", 5_524_416, 5_717_416), ("vit_s16", 21_665_664, 22_050_664),
    ("vit_b16", 85_798_656, 86_567_656), ("vit_l16", 303_301_632, 304_326_632)])
def test_param_counts_match_published(name, backbone, with_head):
    with torch.device("meta"):  # shapes only: no memory, no init cost
        m = create_backbone(name)
    n = _count(m)
    assert n == backbone
    n_head = n + m.embed_dim * 1000 + 1000
    assert n_head == with_head
    # The published figure (millions, classification model with head) within its printed rounding.
    assert abs(n_head / 1e6 - model_info(name).paper.params_m) < 0.1


def test_param_count_equals_hf_vitmodel():
    from transformers import ViTConfig, ViTModel
    for name, (dim, depth, heads) in {"vit_ti16": (192, 12, 3), "vit_b16": (768, 12, 12)}.items():
        cfg = ViTConfig(hidden_size=dim, num_hidden_layers=depth, num_attention_heads=heads,
                        intermediate_size=4 * dim)
        with torch.device("meta"):
            hf = ViTModel(cfg, add_pooling_layer=False)
            ours = create_backbone(name)
        assert _count(ours) == sum(p.numel() for p in hf.parameters())


def test_deit_distilled_counts_and_tokens():
    with torch.device("meta"):
        m = create_backbone("deit_b16_distilled")
    assert m.num_prefix_tokens == 2 and m.pos_embed.shape == (1, 2 + 196, 768)
    # with both 1000-class heads: 87,338,192 (DeiT paper "87M")
    assert _count(m) + 2 * (768 * 1000 + 1000) == 87_338_192
    small = create_backbone("deit_ti16_distilled", depth=2, out_indices=(0, 1))
    feats = small(torch.randn(1, 3, 64, 96))
    assert [f.shape for f in feats] == [(1, 192, 4, 6)] * 2  # both prefix tokens dropped
    tokens = small.forward_intermediates(torch.randn(1, 3, 64, 96), fmt="NLC", prefix=True)
    assert tokens[0].shape == (1, 2 + 24, 192) and small.token_grid(64, 96) == (4, 6)


def _random_hf(num_layers=4, hidden=192, heads=3, deit=False, seed=0):
    from transformers import DeiTConfig, DeiTModel, ViTConfig, ViTModel
    kw = dict(hidden_size=hidden, num_hidden_layers=num_layers, num_attention_heads=heads,
              intermediate_size=4 * hidden, image_size=224, patch_size=16, qkv_bias=True, layer_norm_eps=1e-6)
    model = DeiTModel(DeiTConfig(**kw), add_pooling_layer=False) if deit else \
        ViTModel(ViTConfig(**kw), add_pooling_layer=False)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():  # default init leaves LN/biases trivial; randomise everything
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.05)
    return model.eval()


@pytest.mark.parametrize("size", [(224, 224), (320, 480)])
def test_hf_vitmodel_parity(tmp_path, size):
    hf = _random_hf()
    hf.save_pretrained(tmp_path)
    ours = create_backbone("vit_ti16", pretrained=str(tmp_path), out_indices=(0, 1, 3)).eval()
    assert ours.depth == 4 and ours.blocks[0].norm1.eps == 1e-6
    x = torch.randn(1, 3, *size, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states
        tokens = ours.forward_intermediates(x, (0, 1, 3), fmt="NLC", prefix=True)
        maps = ours(x)
    hw = ours.token_grid(*size)
    assert hw == (size[0] // 16, size[1] // 16)
    for t, i in zip(tokens, (0, 1, 3)):
        assert (t - ref[i + 1]).abs().max() < 1e-4
    for m, i in zip(maps, (0, 1, 3)):
        expect = ref[i + 1][:, 1:].transpose(1, 2).reshape(1, 192, *hw)
        assert (m - expect).abs().max() < 1e-4


def test_hf_inmemory_v5_names_and_deit(tmp_path):
    hf = _random_hf(num_layers=2, deit=True)
    sd = hf.state_dict()
    assert any(k.startswith("layers.0.attention.q_proj") for k in sd)  # transformers >= 5 names
    ours = create_backbone("deit_ti16_distilled", pretrained=sd, depth=2, out_indices=(1,), norm_eps=1e-6).eval()
    x = torch.randn(1, 3, 224, 224)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True).hidden_states
        tokens = ours.forward_intermediates(x, fmt="NLC", prefix=True)
    assert (tokens[0] - ref[2]).abs().max() < 1e-4
    # the saved folder (v4 names, DeiT config) gives the same model
    hf.save_pretrained(tmp_path)
    folder = create_backbone("deit_ti16_distilled", pretrained=str(tmp_path)).eval()
    assert folder.num_prefix_tokens == 2
    with torch.no_grad():
        assert (folder.forward_intermediates(x, (1,), fmt="NLC", prefix=True)[0] - ref[2]).abs().max() < 1e-4


def test_vit_b16_hf_shape_mapping_reduced_depth(tmp_path):
    hf = _random_hf(num_layers=2, hidden=768, heads=12)
    sd = {("vit." + k): v for k, v in hf.state_dict().items()}
    sd["classifier.weight"], sd["classifier.bias"] = torch.zeros(10, 768), torch.zeros(10)
    ours = create_backbone("vit_b16", pretrained=sd, depth=2, out_indices=(1,), norm_eps=1e-6).eval()
    x = torch.randn(1, 3, 64, 80)
    with torch.no_grad():
        ref = hf(pixel_values=x, output_hidden_states=True, interpolate_pos_encoding=True).hidden_states[2]
        assert (ours.forward_intermediates(x, fmt="NLC", prefix=True)[0] - ref).abs().max() < 1e-4


def _small_vit(**kw):
    torch.manual_seed(0)
    return create_backbone("vit_ti16", depth=2, **kw).eval()


def test_augreg_npz_round_trip(tmp_path):
    src = _small_vit()
    sd = src.state_dict()
    path = tmp_path / "augreg.npz"
    to_augreg_npz(sd, path, num_heads=3)
    with np.load(path) as z:
        assert z["Transformer/encoderblock_0/MultiHeadDotProductAttention_1/query/kernel"].shape == (192, 3, 64)
        assert z["embedding/kernel"].shape == (16, 16, 3, 192)
    back = create_backbone("vit_ti16", pretrained=str(path), depth=2).eval()
    for k, v in sd.items():
        assert torch.equal(back.state_dict()[k], v), k


def test_npz_stacked_big_vision_and_flax_attention(tmp_path):
    src = _small_vit()
    path = tmp_path / "a.npz"
    to_augreg_npz(src.state_dict(), path, num_heads=3)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    # rewrite as big_vision: params/ prefix, stacked blocks, renamed sub-modules, top-level pos_embedding
    rename = {"MultiHeadDotProductAttention_1": "MultiHeadDotProductAttention_0", "LayerNorm_2": "LayerNorm_1",
              "MlpBlock_3": "MlpBlock_0"}
    bv, stacks = {}, {}
    for k, v in arrays.items():
        for a, b in rename.items():
            k = k.replace(a, b)
        if k.startswith("Transformer/encoderblock_"):
            i, rest = k[len("Transformer/encoderblock_"):].split("/", 1)
            stacks.setdefault(rest, {})[int(i)] = v
        else:
            bv["params/" + k.replace("Transformer/posembed_input/pos_embedding", "pos_embedding")] = v
    for rest, per in stacks.items():
        bv["params/Transformer/encoderblock/" + rest] = np.stack([per[i] for i in sorted(per)])
    sd, layout = convert_to_internal({k: torch.from_numpy(v) for k, v in bv.items()})
    assert layout == "npz"
    for k, v in src.state_dict().items():
        assert torch.equal(sd[k], v), k
    # Flax-semantics attention on the npz arrays equals our attention module
    x = torch.randn(1, 5, 192)
    n = "Transformer/encoderblock_0/MultiHeadDotProductAttention_1/"
    t = {k: torch.from_numpy(arrays[n + k]) for k in ("query/kernel", "query/bias", "key/kernel", "key/bias",
                                                     "value/kernel", "value/bias", "out/kernel", "out/bias")}
    q, k, v = (torch.einsum("bnc,chd->bnhd", x, t[f"{p}/kernel"]) + t[f"{p}/bias"] for p in ("query", "key", "value"))
    attn = torch.softmax(torch.einsum("bqhd,bkhd->bhqk", q, k) / 8.0, dim=-1)
    out = torch.einsum("bqhd,hdc->bqc", torch.einsum("bhqk,bkhd->bqhd", attn, v), t["out/kernel"]) + t["out/bias"]
    with torch.no_grad():
        assert (src.blocks[0].attn(x) - out).abs().max() < 1e-5


def test_mmseg_layout_and_backbone_prefix():
    src = _small_vit()
    rename = [("patch_embed.proj.", "patch_embed.projection."), ("norm1.", "ln1."), ("norm2.", "ln2."),
              ("attn.qkv.weight", "attn.attn.in_proj_weight"), ("attn.qkv.bias", "attn.attn.in_proj_bias"),
              ("attn.proj.", "attn.attn.out_proj."), ("mlp.fc1.", "ffn.layers.0.0."), ("mlp.fc2.", "ffn.layers.1.")]
    mm = {}
    for k, v in src.state_dict().items():
        k = "layers." + k[len("blocks."):] if k.startswith("blocks.") else k
        for a, b in rename:
            k = k.replace(a, b)
        k = "ln1." + k[len("norm."):] if k.startswith("norm.") else k
        mm["backbone." + k] = v
    mm["decode_head.conv_seg.weight"] = torch.zeros(3, 192, 1, 1)
    out = checkpoint_filter_fn(mm, src)
    assert out.layout == "mmseg"
    for k, v in src.state_dict().items():
        assert torch.equal(out.state_dict[k], v), k


def test_pos_embed_resized_at_load_with_notice():
    src = _small_vit()  # 14×14 grid
    target = create_backbone("vit_ti16", depth=2, img_size=(320, 480))
    out = checkpoint_filter_fn(src.state_dict(), target)
    assert out.state_dict["pos_embed"].shape == (1, 1 + 20 * 30, 192)
    assert any("14×14" in n and "20×30" in n for n in out.notes)
    assert torch.equal(out.state_dict["pos_embed"][:, :1], src.pos_embed[:, :1])  # class row untouched
    weights.load_into(target, src.state_dict(), model_info("vit_ti16"))
    # the config a timm file implies: its own grid (so it reproduces exactly unless img_size is given)
    reloaded = create_backbone("vit_ti16", pretrained=src.state_dict(), depth=2)
    assert reloaded.grid_size == (14, 14)


def test_strict_loading_names_the_keys():
    sd = _small_vit().state_dict()
    sd.pop("blocks.1.mlp.fc2.weight")
    sd["blocks.1.extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as e:
        create_backbone("vit_ti16", pretrained=sd, depth=2)
    assert "blocks.1.mlp.fc2.weight" in str(e.value) and "blocks.1.extra.weight" in str(e.value)


def test_outputs_shapes_padding_and_final_norm():
    m = _small_vit(out_indices=(0, -1))
    x = torch.randn(2, 3, 70, 100)  # not divisible by 16: padded to 80×112
    feats = m(x)
    assert m.out_indices == (0, 1) and m.out_channels == [192, 192]
    assert [f.shape for f in feats] == [(2, 192, 5, 7)] * 2
    # padding is bottom/right zeros: equal to running on the explicitly padded image
    padded = torch.nn.functional.pad(x, (0, 12, 0, 10))
    assert torch.allclose(m(padded)[1], feats[1], atol=1e-6)
    normed = _small_vit(out_indices=(0, 1), final_norm=True)
    f0, f1 = normed(x)
    assert torch.allclose(f0, feats[0], atol=1e-6)
    tokens = m.forward_intermediates(x, (1,), fmt="NLC", prefix=True)
    assert torch.allclose(f1, m.norm(tokens[0])[:, 1:].transpose(1, 2).reshape(2, 192, 5, 7), atol=1e-5)
    with pytest.raises(ConfigError):
        _small_vit(out_indices=(2,))
    torch.testing.assert_close(m.forward_intermediates(x, (1,), norm=True)[0], f1)
    with pytest.raises(ConfigError, match="outside its 2 blocks"):
        m.forward_intermediates(x, (2,))
    with pytest.raises(ConfigError, match="not valid"):
        m.forward_intermediates(x, ("cls",))
    with pytest.raises(ConfigError, match="format"):
        m.forward_intermediates(x, fmt="NHWC")
    assert m.feature_info == [{"index": 0, "channels": 192, "stride": 16}, {"index": 1, "channels": 192, "stride": 16}]


def test_intermediates_run_only_the_blocks_needed():
    m = _small_vit(out_indices=(1,))
    calls = []
    m.blocks[1].register_forward_hook(lambda *a: calls.append(1))
    x = torch.randn(1, 3, 32, 48)
    embed, first = m.forward_intermediates(x, ("embed", 0), fmt="NLC")
    assert not calls and embed.shape == first.shape == (1, 6, 192)
    tokens, hw = m.embed(x)  # "embed": stem + position embedding, prefix dropped
    torch.testing.assert_close(embed, tokens[:, 1:], atol=0, rtol=0)
    torch.testing.assert_close(first, m.blocks[0](tokens)[:, 1:], atol=0, rtol=0)


def test_gradients_flow_and_drop_path():
    m = create_backbone("vit_ti16", depth=3, out_indices=(1, 2), drop_path_rate=0.2).train()
    rates = [b.drop_path.drop_prob for b in m.blocks]
    assert rates == pytest.approx([0.0, 0.1, 0.2])
    loss = sum(f.square().mean() for f in m(torch.randn(2, 3, 48, 64)))
    loss.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for n, p in m.named_parameters()
               if not n.startswith("norm."))  # final norm is unused without final_norm


def test_layer_id():
    m = _small_vit()
    assert m.num_layers == 3
    assert m.layer_id("pos_embed") == 0 and m.layer_id("patch_embed.proj.weight") == 0
    assert m.layer_id("cls_token") == 0 and m.layer_id("blocks.1.attn.qkv.weight") == 2
    assert m.layer_id("norm.weight") == 3


def test_attention_with_context_matches_self_attention():
    m = _small_vit()
    x = torch.randn(1, 7, 192)
    attn = m.blocks[0].attn
    assert torch.allclose(attn(x), attn(x, context=x), atol=1e-6)


def test_bad_config_errors():
    with pytest.raises(ConfigError):
        VisionTransformer(embed_dim=100, num_heads=3)
    with pytest.raises(ConfigError):
        VisionTransformer(depth=1, class_token=False, distilled=True)


def test_hf_classification_folder_drops_classifier(tmp_path):
    from transformers import ViTConfig, ViTForImageClassification
    cfg = ViTConfig(hidden_size=192, num_hidden_layers=1, num_attention_heads=3, intermediate_size=768,
                    image_size=32, num_labels=7)
    hf = ViTForImageClassification(cfg).eval()
    hf.save_pretrained(tmp_path)
    source = weights.read_weights(str(tmp_path))
    assert any(k.startswith("vit.encoder.layer.0") for k in source.state_dict)  # v4 names on disk
    ours = create_backbone("vit_ti16", pretrained=str(tmp_path)).eval()
    assert ours.grid_size == (2, 2) and ours.blocks[0].norm1.eps == 1e-12  # the folder's own settings
    x = torch.randn(1, 3, 32, 32)
    with torch.no_grad():
        ref = hf.vit(pixel_values=x, output_hidden_states=True).hidden_states[1]
        assert (ours.forward_intermediates(x, fmt="NLC", prefix=True)[0] - ref).abs().max() < 1e-4
