"""inference.predict: whole, slide (windows, padding, overlap averaging), multi-scale + flip."""
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vitseg.engine.inference import predict, slide_windows, window_starts
from vitseg.errors import ConfigError


class XRecorder(nn.Module):
    """Records each window's input shape and its left column (image channel 0 holds the column index)."""

    def __init__(self, k=2):
        super().__init__()
        self.k = k
        self.calls = []

    def forward(self, x):
        self.calls.append((tuple(x.shape[-2:]), int(x[0, 0, 0, 0]), int(x[0, 1, 0, 0])))
        return x.new_zeros(x.shape[0], self.k, x.shape[2] // 4, x.shape[3] // 4)


class PixelModel(nn.Module):
    """1x1 conv at stride 1: translation and mirror equivariant."""

    def __init__(self, k=4):
        super().__init__()
        torch.manual_seed(0)
        self.conv = nn.Conv2d(3, k, 1)

    def forward(self, x):
        return self.conv(x)


class ConvModel(nn.Module):
    """3x3 conv at stride 2: neither mirror symmetric nor border-free."""

    def __init__(self, k=4):
        super().__init__()
        torch.manual_seed(1)
        self.conv = nn.Conv2d(3, k, 3, stride=2, padding=1)

    def forward(self, x):
        return self.conv(x)


def coord_image(h, w):
    x = torch.zeros(1, 3, h, w)
    x[:, 0] = torch.arange(w).float()
    x[:, 1] = torch.arange(h).float()[:, None]
    return x


def test_window_starts_last_window_flush():
    assert window_starts(2048, 1024, 768) == [0, 768, 1024]
    assert window_starts(1024, 1024, 768) == [0]
    assert window_starts(500, 512, 341) == [0]
    assert window_starts(10, 6, 4) == [0, 4]
    assert window_starts(11, 6, 4) == [0, 4, 5]
    assert len(slide_windows(1024, 2048, 1024, 768)) == 3


def test_slide_visits_cityscapes_windows():
    model = XRecorder()
    out = predict(model, coord_image(1024, 2048), mode="slide", crop=1024, stride=768)
    assert out.shape == (1, 2, 1024, 2048)
    assert [c[0] for c in model.calls] == [(1024, 1024)] * 3
    assert sorted(c[1] for c in model.calls) == [0, 768, 1024]


def test_slide_grid_rectangular_crop():
    model = XRecorder()
    predict(model, coord_image(40, 70), mode="slide", crop=(16, 32), stride=(12, 20))
    xs = sorted({c[1] for c in model.calls})
    ys = sorted({c[2] for c in model.calls})
    assert xs == [0, 20, 38] and ys == [0, 12, 24]
    assert len(model.calls) == 9 and all(c[0] == (16, 32) for c in model.calls)


def test_small_image_is_padded_to_the_crop():
    model = XRecorder()
    out = predict(model, coord_image(20, 30), mode="slide", crop=32, stride=24)
    assert model.calls == [((32, 32), 0, 0)]
    assert out.shape == (1, 2, 20, 30)
    pixel = PixelModel()
    image = torch.randn(1, 3, 20, 30)
    assert torch.allclose(predict(pixel, image, mode="slide", crop=32, stride=24), pixel(image), atol=1e-6)


def test_slide_equals_whole_for_translation_equivariant_model():
    model = PixelModel()
    image = torch.randn(2, 3, 37, 53)
    whole = predict(model, image)
    slide = predict(model, image, mode="slide", crop=(16, 24), stride=(10, 16))
    assert torch.allclose(whole, slide, atol=1e-5)
    assert torch.allclose(whole, model(image), atol=1e-6)


def test_slide_averages_overlapping_logits():
    class Counter(nn.Module):
        """Constant logits equal to the call number: window 1 -> 1, window 2 -> 2."""

        def __init__(self):
            super().__init__()
            self.n = 0

        def forward(self, x):
            self.n += 1
            return torch.full((x.shape[0], 1, x.shape[2], x.shape[3]), float(self.n))

    out = predict(Counter(), torch.zeros(1, 3, 6, 10), mode="slide", crop=6, stride=4)  # x0 = 0, 4
    row = out[0, 0, 0]
    assert row[:4].tolist() == [1.0] * 4 and row[4:6].tolist() == [1.5] * 2 and row[6:].tolist() == [2.0] * 4


def test_whole_mode_upsamples_bilinear_to_input_or_out_size():
    model = ConvModel()
    image = torch.randn(1, 3, 30, 42)
    expected = F.interpolate(model(image), size=(30, 42), mode="bilinear", align_corners=False)
    assert torch.allclose(predict(model, image), expected, atol=1e-6)
    out = predict(model, image, out_size=(60, 84))
    assert out.shape == (1, 4, 60, 84)
    assert torch.allclose(out, F.interpolate(model(image), size=(60, 84), mode="bilinear"), atol=1e-6)


def test_multi_scale_and_flip_average_softmax():
    model = ConvModel()
    image = torch.randn(1, 3, 32, 48)
    out = predict(model, image, scales=(0.5, 1.0), flip=True)
    assert out.shape == (1, 4, 32, 48)
    assert torch.allclose(out.sum(1), torch.ones(1, 32, 48), atol=1e-5)
    expected = 0
    for size in ((16, 24), (32, 48)):
        x = F.interpolate(image, size=size, mode="bilinear", align_corners=False)
        for flipped in (False, True):
            xi = x.flip(-1) if flipped else x
            y = F.interpolate(model(xi), size=(32, 48), mode="bilinear", align_corners=False)
            expected = expected + (y.flip(-1) if flipped else y).softmax(1)
    assert torch.allclose(out, expected / 4, atol=1e-5)


def test_flip_with_symmetric_model_equals_plain_softmax():
    model = PixelModel()
    image = torch.randn(1, 3, 24, 31)
    assert torch.allclose(predict(model, image, flip=True), model(image).softmax(1), atol=1e-6)
    # a non-symmetric model: the flipped pass differs, so the average differs from the plain softmax
    conv = ConvModel()
    assert not torch.allclose(predict(conv, image, flip=True), predict(conv, image).softmax(1), atol=1e-4)


def test_real_model_all_modes_shapes():
    import vitseg
    model = vitseg.create_model("segformer_b0", num_classes=5).eval()
    image = torch.randn(1, 3, 64, 64)
    assert predict(model, image).shape == (1, 5, 64, 64)
    out = predict(model, image, mode="slide", crop=48, stride=32, scales=(0.75, 1.0), flip=True, out_size=(50, 70))
    assert out.shape == (1, 5, 50, 70)
    assert torch.allclose(out.sum(1), torch.ones(1, 50, 70), atol=1e-5)


def test_bad_arguments_raise_config_error():
    model = PixelModel()
    image = torch.randn(1, 3, 8, 8)
    with pytest.raises(ConfigError, match="crop"):
        predict(model, image, mode="slide")
    with pytest.raises(ConfigError, match="stride"):
        predict(model, image, mode="slide", crop=4, stride=6)
    with pytest.raises(ConfigError, match="mode"):
        predict(model, image, mode="tiles")
    with pytest.raises(ConfigError, match=r"\[B,3,H,W\]"):
        predict(model, torch.randn(3, 8, 8))
