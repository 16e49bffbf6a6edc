"""`vitseg predict`: indexed PNG + overlay from a saved checkpoint; clear errors for bad inputs."""
import numpy as np
import pytest
import torch
from PIL import Image

import vitseg
from vitseg.cli import main
from vitseg.engine.inference import predict
from vitseg.engine.predict_cli import parse_scales, read_image, to_tensor

NAMES = ["sky", "road", "car", "tree", "person"]
PALETTE = [(70, 130, 180), (128, 64, 128), (0, 0, 142), (107, 142, 35), (220, 20, 60)]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    torch.manual_seed(0)
    model = vitseg.create_model("segformer_b0", num_classes=5)
    model.class_names, model.palette = NAMES, PALETTE
    path = tmp_path_factory.mktemp("ckpt") / "model.safetensors"
    vitseg.save_weights(model, path)
    return path


@pytest.fixture()
def images(tmp_path):
    rng = np.random.default_rng(0)
    folder = tmp_path / "in"
    folder.mkdir()
    Image.fromarray(rng.integers(0, 255, (48, 72, 3), dtype=np.uint8)).save(folder / "street.png")
    Image.fromarray(rng.integers(0, 255, (40, 40, 3), dtype=np.uint8)).save(folder / "park.jpg")
    (folder / "notes.txt").write_text("not an image")
    return folder


def test_predict_writes_indexed_png_and_overlay(checkpoint, images, tmp_path):
    out = tmp_path / "out"
    assert main(["predict", str(checkpoint), str(images), "--out", str(out), "--device", "cpu"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["park.png", "park_overlay.png", "street.png",
                                                     "street_overlay.png"]
    mask_im = Image.open(out / "street.png")
    assert mask_im.mode == "P" and mask_im.size == (72, 48)
    pal = mask_im.getpalette()
    assert [tuple(pal[3 * i:3 * i + 3]) for i in range(5)] == PALETTE
    mask = np.array(mask_im)
    assert mask.max() < 5

    # the mask is exactly what predict() gives for the same preprocessing (AlignedResize to /32)
    model = vitseg.load_checkpoint(checkpoint).eval()
    image = read_image(images / "street.png")
    x = to_tensor(image, model.mean, model.std, (64, 96), "cpu")
    expected = predict(model, x, out_size=(48, 72)).argmax(1)[0].numpy()
    assert np.array_equal(mask, expected)

    overlay = np.array(Image.open(out / "street_overlay.png"))
    assert overlay.shape[1] == 72 and overlay.shape[0] > 48
    legend = {tuple(c) for c in overlay[48:].reshape(-1, 3).tolist()}
    present = set(np.unique(mask).tolist())
    for i, colour in enumerate(PALETTE):  # the legend names exactly the classes present
        assert (colour in legend) == (i in present)


def test_predict_slide_flip_scales_and_size(checkpoint, images, tmp_path):
    out = tmp_path / "out"
    rc = main(["predict", str(checkpoint), str(images / "street.png"), "--out", str(out), "--mode", "slide",
               "--crop", "32", "32", "--stride", "24", "24", "--scales", "0.75,1", "--flip", "--size", "40"])
    assert rc == 0
    assert Image.open(out / "street.png").size == (72, 48)
    assert parse_scales(["0.5,0.75", "1"]) == [0.5, 0.75, 1.0]


def test_predict_errors_name_the_file(checkpoint, images, tmp_path, capsys):
    out = str(tmp_path / "out")
    assert main(["predict", str(checkpoint), str(tmp_path / "missing.png"), "--out", out]) == 3
    assert "missing.png" in capsys.readouterr().err
    (images / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    assert main(["predict", str(checkpoint), str(images / "broken.png"), "--out", out]) == 3
    assert "broken.png" in capsys.readouterr().err
    assert main(["predict", str(checkpoint), str(images / "street.png"), "--out", out, "--mode", "slide"]) == 2
    assert "--crop" in capsys.readouterr().err
    assert main(["predict", str(tmp_path / "nope.safetensors"), str(images), "--out", out]) == 4
    assert main(["predict", str(checkpoint), str(images / "street.png"), "--out", out, "--scales", "x"]) == 2
    empty = tmp_path / "empty"
    empty.mkdir()
    assert main(["predict", str(checkpoint), str(empty), "--out", out]) == 3
    assert "no images" in capsys.readouterr().err
