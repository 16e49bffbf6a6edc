"""ViT + linear head: counts, output stride, training on synthetic data, weight import."""
import pytest
import torch

from vitseg.models.registry import create_backbone, create_model, model_info
from vitseg.weights import save_weights, load_checkpoint


def _tiny(**kw):
    torch.manual_seed(0)
    return create_model("linear_vit_ti16", num_classes=3, depth=2, img_size=64, **kw)


@pytest.mark.parametrize("name,count", [("linear_vit_ti16", 5_712_342), ("linear_vit_s16", 22_041_366),
                                        ("linear_vit_b16", 86_549_910)])
def test_param_counts(name, count):
    with torch.device("meta"):
        m = create_model(name, num_classes=150)
    n = m.num_params()
    assert n == count  # specs/baselines.md §1: backbone with final LN, 32×32 table, K=150 classifier
    assert abs(n / 1e6 - model_info(name).paper.params_m) < 0.1


def test_l16_at_640_count():
    with torch.device("meta"):
        m = create_model("linear_vit_l16", num_classes=150)
    assert m.backbone.grid_size == (40, 40) and m.num_params() == 304_893_078


def test_forward_shape_is_patch_stride():
    m = _tiny().eval()
    with torch.no_grad():
        assert m(torch.randn(2, 3, 64, 96)).shape == (2, 3, 4, 6)
        assert m(torch.randn(1, 3, 70, 90)).shape == (1, 3, 5, 6)  # padded to 80×96
    assert m.output_stride == 16 and m.backbone.final_norm


def test_trains_loss_falls():
    m = _tiny(drop_path_rate=0.0).train()
    g = torch.Generator().manual_seed(0)
    images = torch.randn(4, 3, 64, 64, generator=g)
    labels = torch.zeros(4, 64, 64, dtype=torch.long)
    labels[:, :, 32:] = 1  # left/right halves: learnable from position
    labels[:, 48:, :] = 2
    images[:, 0, 48:, :] += 2.0
    labels[0, :4, :4] = 255
    opt = torch.optim.AdamW(m.parameters(), lr=1e-3)
    losses = []
    for _ in range(8):
        loss = m.loss(images, labels)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.7 * losses[0]


def test_loads_encoder_only_and_full_checkpoints(tmp_path):
    enc = create_backbone("vit_ti16", depth=2)  # a 14×14 table, as from an ImageNet checkpoint
    m = create_model("linear_vit_ti16", num_classes=3, depth=2, img_size=64, pretrained=enc.state_dict())
    assert m.backbone.grid_size == (4, 4)
    assert torch.equal(m.backbone.blocks[1].mlp.fc2.weight, enc.blocks[1].mlp.fc2.weight)
    # a full checkpoint without metadata (e.g. mmseg-style keys) brings its class count
    full = {**{"backbone." + k: v for k, v in m.backbone.state_dict().items()},
            "decode_head.conv_seg.weight": torch.randn(5, 192, 1, 1), "decode_head.conv_seg.bias": torch.zeros(5)}
    m5 = create_model("linear_vit_ti16", depth=2, img_size=64, pretrained=full)
    assert m5.num_classes == 5 and torch.equal(m5.decode_head.conv_seg.weight, full["decode_head.conv_seg.weight"])
    # our own safetensors round trip
    path = tmp_path / "m.safetensors"
    save_weights(m5, path)
    again = load_checkpoint(path).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(again(x), m5.eval()(x))


def test_onnx_export_keeps_output_shape(tmp_path):
    ort = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnx")
    m = create_model("linear_vit_ti16", num_classes=3, depth=1, img_size=64).eval()
    x = torch.randn(1, 3, 64, 96)  # a 4×6 grid: exercises the run-time position resize in the graph
    path = tmp_path / "linear.onnx"
    torch.onnx.export(m, (x,), str(path), input_names=["images"], output_names=["logits"], dynamo=False)
    y = ort.InferenceSession(str(path)).run(None, {"images": x.numpy()})[0]
    assert y.shape == (1, 3, 4, 6)
    with torch.no_grad():
        assert abs(y - m(x).numpy()).max() < 1e-4
