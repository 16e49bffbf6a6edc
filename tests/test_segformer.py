"""SegFormer: parameter counts, HF and official-layout parity, strict loading, training signal."""
import json

import pytest
import torch

import vitseg
from vitseg.errors import CheckpointError
from vitseg.models.heads.segformer import to_hf_segformer

transformers = pytest.importorskip("transformers")
from transformers import SegformerConfig, SegformerForSemanticSegmentation  # noqa: E402

VARIANTS = {  # hidden sizes, depths, decoder width
    "b0": ([32, 64, 160, 256], [2, 2, 2, 2], 256), "b1": ([64, 128, 320, 512], [2, 2, 2, 2], 256),
    "b2": ([64, 128, 320, 512], [3, 4, 6, 3], 768), "b3": ([64, 128, 320, 512], [3, 4, 18, 3], 768),
    "b4": ([64, 128, 320, 512], [3, 8, 27, 3], 768), "b5": ([64, 128, 320, 512], [3, 6, 40, 3], 768)}
# Encoder + decoder with 150 classes, counted on the HF reference (spec §4.1).
MEASURED_TOTAL = {"b0": 3_752_694, "b1": 13_715_798, "b2": 27_461_974, "b3": 47_337_814, "b4": 64_108_374,
                  "b5": 84_708_694}


def hf_model(variant: str, num_labels: int, seed: int = 0) -> SegformerForSemanticSegmentation:
    hidden, depths, dim = VARIANTS[variant]
    torch.manual_seed(seed)
    cfg = SegformerConfig(hidden_sizes=hidden, depths=depths, decoder_hidden_size=dim, num_labels=num_labels)
    model = SegformerForSemanticSegmentation(cfg).eval()
    with torch.no_grad():  # non-trivial BN statistics, so folding them is actually tested
        bn = model.decode_head.batch_norm
        bn.running_mean.normal_(0, 0.1)
        bn.running_var.uniform_(0.5, 2.0)
        bn.weight.uniform_(0.5, 1.5)
        bn.bias.normal_(0, 0.1)
    return model


def n_params(m) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_param_counts_match_paper_and_reference(variant):
    ours = vitseg.create_model(f"segformer_{variant}", num_classes=150)
    paper = vitseg.model_info(f"segformer_{variant}").paper
    assert ours.num_params() == MEASURED_TOTAL[variant] == n_params(hf_model(variant, 150))
    assert abs(ours.num_params() / 1e6 - paper.params_m) / paper.params_m < 0.03


@pytest.mark.parametrize("variant", list(VARIANTS))
def test_hf_folder_parity_every_variant(variant, tmp_path):
    ref = hf_model(variant, num_labels=11)
    ref.save_pretrained(tmp_path)
    ours = vitseg.create_model(f"segformer_{variant}", pretrained=tmp_path).eval()
    assert ours.num_classes == 11
    x = torch.randn(1, 3, 96, 128)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(pixel_values=x).logits, atol=1e-4, rtol=0)


@pytest.mark.parametrize("variant,size", [("b0", (256, 256)), ("b0", (250, 333)), ("b2", (256, 256)),
                                          ("b2", (250, 333))])
def test_hf_parity_sizes(variant, size, tmp_path):
    ref = hf_model(variant, num_labels=19, seed=1)
    ref.save_pretrained(tmp_path)
    ours = vitseg.create_model(f"segformer_{variant}", pretrained=tmp_path).eval()
    x = torch.randn(2, 3, *size)
    with torch.no_grad():
        a, b = ours(x), ref(pixel_values=x).logits
    assert a.shape == b.shape
    assert (a - b).abs().max().item() <= 1e-4 * max(1.0, b.abs().max().item())


def test_hf_in_memory_state_dict_v5_names():
    ref = hf_model("b0", num_labels=5)
    assert any(k.startswith("segformer.stages.") for k in ref.state_dict())  # transformers >= 5 names
    ours = vitseg.create_model("segformer_b0", pretrained=ref.state_dict()).eval()
    x = torch.randn(1, 3, 64, 96)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(pixel_values=x).logits, atol=1e-4, rtol=0)


def test_hf_v4_file_names_roundtrip():
    ours = vitseg.create_model("segformer_b0", num_classes=7, norm_eps=1e-5).eval()
    v4 = to_hf_segformer(ours.state_dict())
    assert "segformer.encoder.block.0.0.attention.self.key.weight" in v4
    back = vitseg.create_model("segformer_b0", pretrained=v4).eval()
    for k, v in ours.state_dict().items():
        assert torch.equal(v, back.state_dict()[k]), k


def official_layout(model) -> dict:
    """What an NVlabs/mmseg SegFormer checkpoint holds: our names + the unused conv_seg, under 'state_dict'."""
    sd = dict(model.state_dict())
    k = model.num_classes
    sd["decode_head.conv_seg.weight"] = torch.randn(k, 128, 1, 1)
    sd["decode_head.conv_seg.bias"] = torch.randn(k)
    return {"state_dict": sd, "meta": {"CLASSES": ["x"] * k}}


def test_official_mmseg_checkpoint(tmp_path):
    ref = hf_model("b1", num_labels=19)
    src = vitseg.create_model("segformer_b1", pretrained=ref.state_dict()).eval()
    torch.save(official_layout(src), tmp_path / "segformer.b1.1024x1024.city.160k.pth")
    ours = vitseg.create_model("segformer_b1", pretrained=tmp_path / "segformer.b1.1024x1024.city.160k.pth",
                               norm_eps=1e-5).eval()
    x = torch.randn(1, 3, 128, 160)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), ref(pixel_values=x).logits, atol=1e-4, rtol=0)


def test_official_default_eps_is_per_site():
    m = vitseg.create_model("segformer_b0")
    bb = m.backbone
    assert bb.block1[0].norm1.eps == 1e-6 and bb.norm1.eps == 1e-6
    assert bb.patch_embed1.norm.eps == 1e-5 and bb.block1[0].attn.norm.eps == 1e-5


def test_imagenet_encoder_checkpoint_loads_encoder_only(tmp_path, caplog):
    enc = vitseg.create_backbone("mit_b0")
    sd = dict(enc.state_dict())
    sd["head.weight"], sd["head.bias"] = torch.randn(1000, 256), torch.randn(1000)
    torch.save(sd, tmp_path / "mit_b0.pth")
    model = vitseg.create_model("segformer_b0", num_classes=19, pretrained=tmp_path / "mit_b0.pth")
    for k, v in enc.state_dict().items():
        assert torch.equal(model.backbone.state_dict()[k], v)
    backbone = vitseg.create_backbone("mit_b0", pretrained=tmp_path / "mit_b0.pth")
    assert all(torch.equal(backbone.state_dict()[k], v) for k, v in enc.state_dict().items())


def test_strict_errors_name_keys(tmp_path):
    model = vitseg.create_model("segformer_b0", num_classes=5)
    sd = dict(model.state_dict())
    del sd["backbone.block2.1.attn.q.weight"]
    sd["backbone.extra.weight"] = torch.zeros(1)
    torch.save(sd, tmp_path / "bad.pth")
    with pytest.raises(CheckpointError) as e:
        vitseg.create_model("segformer_b0", num_classes=5, pretrained=tmp_path / "bad.pth")
    msg = str(e.value)
    assert "backbone.block2.1.attn.q.weight" in msg and "backbone.extra.weight" in msg and "bad.pth" in msg
    # strict=False loads the rest and reports what it skipped
    m = vitseg.create_model("segformer_b0", num_classes=5, pretrained=tmp_path / "bad.pth", strict=False)
    assert torch.equal(m.backbone.block1[0].attn.q.weight, model.backbone.block1[0].attn.q.weight)


def test_class_count_mismatch_is_named(tmp_path):
    vitseg.save_weights(vitseg.create_model("segformer_b0", num_classes=5), tmp_path / "w.safetensors")
    with pytest.raises(CheckpointError, match="linear_pred.weight"):
        vitseg.create_model("segformer_b0", num_classes=7, pretrained=tmp_path / "w.safetensors")


def test_corrupt_and_missing_files(tmp_path):
    (tmp_path / "broken.pth").write_bytes(b"not a pickle")
    with pytest.raises(CheckpointError, match="broken.pth"):
        vitseg.create_model("segformer_b0", pretrained=tmp_path / "broken.pth")
    with pytest.raises(CheckpointError, match="nowhere.safetensors"):
        vitseg.create_model("segformer_b0", pretrained=tmp_path / "nowhere.safetensors")


def test_save_and_load_checkpoint_roundtrip(tmp_path):
    model = vitseg.create_model("segformer_b0", num_classes=3).eval()
    model.class_names, model.palette = ["a", "b", "c"], [(1, 2, 3), (4, 5, 6), (7, 8, 9)]
    vitseg.save_weights(model, tmp_path / "m.safetensors")
    back = vitseg.load_checkpoint(tmp_path / "m.safetensors").eval()
    assert back.class_names == ["a", "b", "c"] and back.palette[2] == (7, 8, 9)
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(model(x), back(x))


def test_fused_decoder_equals_literal_graph():
    model = vitseg.create_model("segformer_b0", num_classes=9)
    with torch.no_grad():
        bn = model.decode_head.linear_fuse.bn
        bn.running_mean.normal_(0, 0.1)
        bn.running_var.uniform_(0.5, 2.0)
    x = torch.randn(2, 3, 100, 75)
    for train in (False, True):
        model.train(train)
        torch.manual_seed(0)
        head = model.decode_head
        head.dropout.p = 0.0
        feats = model.backbone(x)
        fused = head(feats)
        head.fused = False
        literal = head(feats)
        head.fused = True
        torch.testing.assert_close(fused, literal, atol=1e-4, rtol=1e-4)


def test_deepcopy_after_a_training_step():
    """The head caches sparse resize matrices; copies (EMA, evaluation) must not try to copy them."""
    import copy
    model = vitseg.create_model("segformer_b0", num_classes=3)
    x = torch.randn(2, 3, 64, 64)
    model.loss(x, torch.randint(0, 3, (2, 64, 64)))["loss"].backward()
    clone = copy.deepcopy(model).eval()
    with torch.no_grad():
        torch.testing.assert_close(clone(x), model.eval()(x))


def test_drop_path_schedule():
    bb = vitseg.create_model("segformer_b2").backbone
    rates = [blk.drop_path.drop_prob for s in range(1, 5) for blk in getattr(bb, f"block{s}")]
    total = len(rates)
    assert rates == pytest.approx([k * 0.1 / (total - 1) for k in range(total)])


def test_any_input_size_follows_conv_arithmetic():
    model = vitseg.create_model("segformer_b0", num_classes=4).eval()
    feats = model.backbone(torch.randn(1, 3, 500, 375))
    assert [tuple(f.shape[-2:]) for f in feats] == [(125, 94), (63, 47), (32, 24), (16, 12)]


def test_loss_decreases_on_synthetic_batch():
    torch.manual_seed(0)
    model = vitseg.create_model("segformer_b0", num_classes=3, drop_path_rate=0.0)
    x = torch.randn(2, 3, 64, 64)
    yy, xx = torch.meshgrid(torch.arange(64), torch.arange(64), indexing="ij")
    labels = torch.stack([(xx > 32).long(), (yy > 20).long() * 2]).clone()
    x[0, 0] += (xx > 32).float() * 2
    x[1, 1] += (yy > 20).float() * 2
    labels[0, :4] = 255  # ignored pixels
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss = model.loss(x, labels)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.5 * losses[0]


def test_labels_out_of_range_are_named():
    model = vitseg.create_model("segformer_b0", num_classes=3)
    with pytest.raises(vitseg.DataError, match=r"\[7\]"):
        model.loss(torch.randn(1, 3, 32, 32), torch.full((1, 32, 32), 7))


def test_flops_command(capsys):
    from vitseg.cli import main
    assert main(["flops", "segformer_b0", "--size", "128", "128", "--num-classes", "19"]) == 0
    out = capsys.readouterr().out
    assert "params" in out and "MACs" in out and "FLOPs" in out


def test_convert_command(tmp_path, capsys):
    from vitseg.cli import main
    ref = hf_model("b0", num_labels=4)
    ref.config.id2label = {i: n for i, n in enumerate(["sky", "road", "car", "tree"])}
    ref.save_pretrained(tmp_path / "hf")
    out = tmp_path / "b0.safetensors"
    assert main(["convert", str(tmp_path / "hf"), str(out), "--model", "segformer_b0"]) == 0
    from safetensors import safe_open
    with safe_open(str(out), "pt") as f:
        meta = json.loads(f.metadata()["vitseg"])
    assert meta["arch"] == "segformer_b0" and meta["class_names"] == ["sky", "road", "car", "tree"]
    model = vitseg.load_checkpoint(out).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), ref(pixel_values=x).logits, atol=1e-4, rtol=0)
