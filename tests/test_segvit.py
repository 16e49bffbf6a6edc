"""SegViT: ATM decoder, cascade and Shrunk heads, ATM loss, official checkpoints, FLOPs against the paper."""
import functools
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitseg.models.heads.segvit import ATMHead, Decoder, ShrunkHead, atm_loss, semantic_scores


def n_params(m: nn.Module) -> int:
    return sum(p.numel() for p in m.parameters())


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: on a shared 2-core machine, thread hand-offs cost more than they save."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# ---------------------------------------------------------------------------------------------- heads

@pytest.mark.parametrize("in_dim,classes,dim,heads,expected", [
    (768, 150, 384, 12, 22_303_255),   # ViT-B ADE (spec §4: 22.303M)
    (1024, 150, 512, 16, 39_568_023),  # ViT-L ADE (39.568M)
    (1024, 171, 512, 16, 39_589_548),  # ViT-L COCO-Stuff-10K (39.590M)
    (1024, 60, 512, 16, 39_475_773)])  # ViT-L PASCAL-Context 60 (39.476M)
def test_cascade_head_params_match_spec(in_dim, classes, dim, heads, expected):
    with torch.device("meta"):  # shapes only
        assert n_params(ATMHead(in_dim, classes, dim, heads)) == expected


@pytest.mark.parametrize("classes,crop,expected", [(150, 640, 39_861_399), (171, 512, 39_588_012),
                                                   (60, 480, 39_410_749)])
def test_shrunk_head_params_match_spec(classes, crop, expected):
    with torch.device("meta"):
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
    # written out independently of vitseg.losses: DETR focal (α 0.25, γ 2) mean over pixels, dice +1 smoothing
    x = up.flatten(1)
    p = x.sigmoid()
    p_t, a_t = p * t + (1 - p) * (1 - t), 0.25 * t + 0.75 * (1 - t)
    bce = -(t * torch.log(p) + (1 - t) * torch.log(1 - p))
    focal = (a_t * (1 - p_t) ** 2 * bce).mean(1)
    dice = 1 - (2 * (p * t).sum(1) + 1) / (p.sum(1) + t.sum(1) + 1)
    torch.testing.assert_close(out["loss_focal"], 20 * focal.sum() / 2)
    torch.testing.assert_close(out["loss_dice"], dice.sum() / 2)
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


# ---------------------------------------------------------------------------------------------- full models

import vitseg  # noqa: E402
from vitseg.errors import ConfigError  # noqa: E402
from vitseg.models.heads.segvit import (query_downsample_block, segvit_shrunk, to_official_segvit,  # noqa: E402
                                        vit_tokens)
from vitseg.tools.flops import measure  # noqa: E402

needs_vit = pytest.mark.skipif("vit_b16" not in vitseg.list_backbones(), reason="the vit backbone is not merged")
TINY = dict(img_size=64, depth=4, embed_dim=64, num_heads=2)


def tiny(name="segvit_vit_b16", num_classes=5, **kw):
    torch.manual_seed(0)
    if "shrunk" in name:
        return vitseg.create_model(name, num_classes=num_classes, out_indices=(1, 3), shrink_index=2, **TINY, **kw)
    return vitseg.create_model(name, num_classes=num_classes, out_indices=(1, 2, 3), **TINY, **kw)


def synthetic_batch(n=2, size=64, classes=5, seed=0):
    """Images whose colour (per quadrant) says the class: learnable in a few steps."""
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n, 2, 2), generator=g).repeat_interleave(size // 2, 1).repeat_interleave(
        size // 2, 2)
    colours = torch.randn(classes, 3, generator=g)
    images = colours[labels].permute(0, 3, 1, 2) + 0.1 * torch.randn(n, 3, size, size, generator=g)
    labels[:, :2] = 255
    return images, labels


# Paper GFLOPs (fvcore MACs: linear/conv + attention matmuls + class×mask product) and derived parameters.
PAPER = [("segvit_vit_b16", {}, 512, 120.9, 108.74), ("segvit_vit_l16", {}, 640, 637.9, 344.31),
         ("segvit_shrunk_vit_l16", {}, 640, 373.5, 344.60),
         ("segvit_vit_l16", {"num_classes": 171}, 512, 383.9, None),      # COCO-Stuff-10K (Tab. 2)
         ("segvit_shrunk_vit_l16", {"num_classes": 171}, 512, 224.8, None)]


@functools.lru_cache(maxsize=None)
def _meta_complexity(name, size, num_classes):
    with torch.device("meta"):  # shapes only: no memory, no arithmetic
        model = vitseg.create_model(name, img_size=size, num_classes=num_classes)
        return measure(model, (size, size))


def meta_complexity(name, size, num_classes=150):
    return _meta_complexity(name, size, num_classes)


@needs_vit
@pytest.mark.parametrize("name,kw,size,gflops,params_m", PAPER)
def test_flops_and_params_match_paper(name, kw, size, gflops, params_m):
    c = meta_complexity(name, size, **kw)
    assert abs(c.macs / 1e9 - gflops) / gflops < 0.03, (c.macs / 1e9, gflops)
    if params_m is not None:  # spec §4 derived totals (the paper prints none)
        assert abs(c.params / 1e6 - params_m) < 0.01, c.params


@needs_vit
def test_shrunk_saves_flops_in_the_paper_ratio():
    plain = meta_complexity("segvit_vit_l16", 640).macs
    shrunk = meta_complexity("segvit_shrunk_vit_l16", 640).macs
    assert abs(shrunk / plain - 373.5 / 637.9) < 0.01
    with torch.device("meta"):  # ViT-B Shrunk of the Tab. 8 ablation (512 crop): 97.1 GFLOPs
        b = measure(segvit_shrunk("b16", num_classes=150, img_size=512), (512, 512))
    assert abs(b.macs / 1e9 - 97.1) / 97.1 < 0.03


@needs_vit
def test_query_downsampling_is_nearest_sampling_of_the_queries():
    """QD attends from the sampled queries to all tokens: identical to running the block on every token and
    keeping the top-left token of each 2×2 cell (queries are independent of each other)."""
    model = tiny("segvit_shrunk_vit_l16").eval()
    block = model.backbone.blocks[2]
    x = torch.randn(2, 6 * 6, 64)
    with torch.no_grad():
        down, hw = query_downsample_block(block, x, (6, 6))
        full = block(x).view(2, 6, 6, 64)[:, ::2, ::2].reshape(2, 9, 64)
    assert hw == (3, 3)
    torch.testing.assert_close(down, full, atol=1e-5, rtol=0)
    with torch.no_grad():
        tokens, grid = vit_tokens(model.backbone, torch.randn(1, 3, 64, 64), (1, 3), shrink_index=2)
    assert grid == (4, 4) and [t.shape[1] for t in tokens] == [16, 4]


@needs_vit
@pytest.mark.parametrize("name", ["segvit_vit_b16", "segvit_shrunk_vit_l16"])
def test_forward_scores_and_masks(name):
    model = tiny(name).eval()
    images, _ = synthetic_batch()
    with torch.no_grad():
        scores = model(images)
        outputs = model.forward_outputs(images)
    assert scores.shape == (2, 5, 64, 64) and len(outputs) == 3
    class_logits, mask_logits = outputs[-1]
    masks = torch.nn.functional.interpolate(mask_logits, size=(64, 64), mode="bilinear").sigmoid()
    assert masks.min() >= 0 and masks.max() <= 1
    torch.testing.assert_close(scores, torch.einsum("bqc,bqhw->bchw", class_logits.softmax(-1)[..., :-1], masks))


@needs_vit
@pytest.mark.parametrize("name", ["segvit_vit_b16", "segvit_shrunk_vit_l16"])
def test_loss_falls_on_synthetic_data(name):
    model = tiny(name)
    images, labels = synthetic_batch()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(12):
        out = model.loss(images, labels)
        opt.zero_grad()
        out["loss"].backward()
        opt.step()
        losses.append(out["loss"].item())
    assert {"loss_cls", "loss_focal", "loss_dice", "loss_cls_0", "loss_dice_1"} <= set(out)
    assert losses[-1] < 0.85 * losses[0], losses


def _official_checkpoint(model) -> dict:
    """Our weights in the official SegViT (mmseg) layout, with the extras the official files carry."""
    sd = to_official_segvit(model.state_dict())
    c = model.backbone.embed_dim
    sd["backbone.ln1.weight"], sd["backbone.ln1.bias"] = torch.ones(c), torch.zeros(c)  # unused final LN
    k = model.num_classes
    sd["decode_head.loss_decode.criterion.empty_weight"] = torch.ones(k + 1)
    if "decode_head.atm.q.weight" in sd:
        sd["decode_head.atm.loss_decode.criterion.empty_weight"] = torch.ones(k + 1)
    return sd


@needs_vit
@pytest.mark.parametrize("name", ["segvit_vit_b16", "segvit_shrunk_vit_l16"])
def test_official_checkpoint_loads_strictly(name, tmp_path):
    src = tiny(name, num_classes=7).eval()
    sd = _official_checkpoint(src)
    assert any(k.startswith("backbone.layers.0.attn.attn.in_proj_weight") for k in sd)
    assert all(not k.startswith("backbone.blocks.") for k in sd)
    path = tmp_path / "segvit_official.pth"
    torch.save({"meta": {}, "state_dict": sd}, path)
    kw = {"out_indices": (1, 3), "shrink_index": 2} if "shrunk" in name else {"out_indices": (1, 2, 3)}
    loaded = vitseg.create_model(name, pretrained=path, depth=4, embed_dim=64, num_heads=2, **kw).eval()
    assert loaded.num_classes == 7 and loaded.build_args["img_size"] == 64  # read from the tensors
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), src(x))
    vitseg.save_weights(loaded, tmp_path / "converted.safetensors")  # `vitseg convert` round trip
    again = vitseg.load_checkpoint(tmp_path / "converted.safetensors").eval()
    with torch.no_grad():
        torch.testing.assert_close(again(x), src(x))
    sd.pop("decode_head.class_embed.weight" if "shrunk" not in name else "decode_head.atm.class_embed.weight")
    torch.save(sd, path)
    with pytest.raises(vitseg.CheckpointError, match="class_embed"):
        vitseg.create_model(name, pretrained=path, num_classes=7, depth=4, embed_dim=64, num_heads=2, **kw)


@needs_vit
def test_mmseg_vit_backbone_file_initialises_the_encoder(tmp_path):
    """The AugReg mmseg file SegViT starts from: no prefix, 24×24+1 position rows, a final LN."""
    src = tiny()
    bb = {k[len("backbone."):]: v for k, v in to_official_segvit(src.state_dict()).items()
          if k.startswith("backbone.")}
    bb["pos_embed"] = torch.randn(1, 1 + 24 * 24, 64)
    bb["ln1.weight"], bb["ln1.bias"] = torch.ones(64), torch.zeros(64)
    torch.save(bb, tmp_path / "vit_p16_384.pth")
    model = tiny(pretrained=tmp_path / "vit_p16_384.pth")
    assert model.backbone.pos_embed.shape == (1, 17, 64)
    torch.testing.assert_close(model.backbone.blocks[3].mlp.fc2.weight, src.backbone.blocks[3].mlp.fc2.weight)


def test_bad_indices_are_config_errors():
    with pytest.raises(ConfigError, match="out_indices"):
        segvit_shrunk("l16", out_indices=(9, 23), shrink_index=8)
    with pytest.raises(ConfigError, match="shallow to deep"):
        vitseg.create_model("segvit_vit_b16", out_indices=(11, 7, 5))


@needs_vit
def test_recipes_build_their_models():
    """Each configs/segvit recipe names a registered model that builds with its overrides and class count."""
    import yaml
    from pathlib import Path
    files = sorted((Path(__file__).resolve().parents[1] / "configs" / "segvit").glob("*.yaml"))
    assert len(files) == 7
    for f in files:
        cfg = yaml.safe_load(f.read_text())
        m, d = cfg["model"], cfg["data"]
        assert m["overrides"]["img_size"] == d["crop_size"][0] == cfg["eval"]["crop"][0], f
        assert d["mean"] == d["std"] == [127.5] * 3, f  # AugReg weights
        with torch.device("meta"):
            model = vitseg.create_model(m["name"], num_classes=m["num_classes"], **m["overrides"])
        assert model.backbone.grid_size == (d["crop_size"][0] // 16,) * 2


@needs_vit
def test_class_token_is_dropped_before_the_blocks():
    """mmseg with_cls_token=False: the class token never takes part in attention, so it cannot change outputs."""
    model = tiny().eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        before = model(x)
        model.backbone.cls_token.normal_(0, 5.0)
        after = model(x)
    torch.testing.assert_close(before, after)


@needs_vit
@pytest.mark.parametrize("name", ["segvit_vit_b16", "segvit_shrunk_vit_l16"])
def test_non_square_and_unpadded_inputs(name):
    """Whole-image inference on any size: grids need not be square, sizes need not be patch multiples."""
    model = tiny(name).eval()
    with torch.no_grad():
        scores = model(torch.randn(1, 3, 70, 100))
    assert scores.shape == (1, 5, 70, 100) and torch.isfinite(scores).all()


@needs_vit
def test_cpu_count_equals_meta_count():
    """Attention run on CPU is counted too (tools/flops registers the CPU attention kernel)."""
    cpu = measure(tiny(), (64, 64))
    with torch.device("meta"):
        meta = measure(tiny(), (64, 64))
    assert cpu.flops == meta.flops and cpu.params == meta.params


@needs_vit
def test_slide_prediction_with_square_windows():
    """The recipes' test mode: square crop windows over a wider image (Shrunk queries stay at the crop grid)."""
    from vitseg.engine.inference import predict
    model = tiny("segvit_shrunk_vit_l16").eval()
    with torch.no_grad():
        scores = predict(model, torch.randn(1, 3, 64, 100), mode="slide", crop=64, stride=48)
    assert scores.shape == (1, 5, 64, 100) and torch.isfinite(scores).all()
