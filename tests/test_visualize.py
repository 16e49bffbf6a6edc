"""Visualisation: colours, indexed PNGs, overlays, legends, panels and plots."""
import sys

import numpy as np
import pytest
from PIL import Image

from vitseg.errors import ConfigError, DataError
from vitseg.tools import visualize as viz

PALETTE = [(200, 0, 0), (0, 150, 0), (0, 0, 250), (255, 255, 0)]
NAMES = ["red", "green", "blue", "yellow"]


def colours_in(array):
    return {tuple(int(v) for v in c) for c in array.reshape(-1, 3)}


def test_default_palette_deterministic_and_distinct():
    a, b = viz.default_palette(150), viz.default_palette(150)
    assert a == b and len(set(a)) == 150
    assert all(0 <= v <= 255 for c in a for v in c)
    assert (0, 0, 0) not in a  # black is reserved for ignore


def test_colorize_palette_and_ignore_black():
    mask = np.array([[0, 1], [3, 255]])
    out = viz.colorize(mask, PALETTE)
    assert out.dtype == np.uint8 and out.shape == (2, 2, 3)
    assert out[0, 0].tolist() == [200, 0, 0] and out[0, 1].tolist() == [0, 150, 0]
    assert out[1, 0].tolist() == [255, 255, 0] and out[1, 1].tolist() == [0, 0, 0]
    # ids past the palette get the default colours, not black
    assert viz.colorize(np.array([[5]]), PALETTE)[0, 0].tolist() == list(viz.default_palette(6)[5])
    with pytest.raises(DataError):
        viz.colorize(np.zeros((2, 2, 2), int), PALETTE)


def test_save_indexed_png_round_trip(tmp_path):
    mask = np.random.default_rng(0).integers(0, 4, (13, 17))
    mask[0, :5] = 255
    path = viz.save_indexed_png(mask, PALETTE, tmp_path / "sub" / "m.png")
    im = Image.open(path)
    assert im.mode == "P" and im.size == (17, 13)
    assert np.array_equal(np.array(im), mask)
    pal = im.getpalette()
    assert [tuple(pal[3 * i:3 * i + 3]) for i in range(4)] == PALETTE
    assert pal[3 * 255:3 * 256] == [0, 0, 0]
    assert np.array_equal(np.array(im.convert("RGB")), viz.colorize(mask, PALETTE))
    with pytest.raises(ConfigError, match="png"):
        viz.save_indexed_png(mask, PALETTE, tmp_path / "m.jpg")


def test_overlay_blends_and_keeps_ignored_pixels():
    image = np.full((4, 6, 3), 100, np.uint8)
    mask = np.zeros((4, 6), int)
    mask[:, 3:] = 2
    mask[0, 0] = 255
    out = viz.overlay(image, mask, PALETTE, alpha=0.5)
    assert out[1, 0].tolist() == [150, 50, 50]    # (100 + 200) / 2, (100 + 0) / 2, ...
    assert out[1, 5].tolist() == [50, 50, 175]
    assert out[0, 0].tolist() == [100, 100, 100]  # ignore: plain image
    with pytest.raises(DataError, match="size"):
        viz.overlay(image, mask[:, :5], PALETTE)


def test_legend_lists_only_present_classes():
    img = viz.legend(NAMES, PALETTE, [0, 2, 255])
    seen = colours_in(img)
    assert PALETTE[0] in seen and PALETTE[2] in seen
    assert PALETTE[1] not in seen and PALETTE[3] not in seen
    one = viz.legend(NAMES, PALETTE, [1])
    assert img.shape[0] > one.shape[0]  # a column: one row per class
    strip = viz.legend(NAMES, PALETTE, [0, 1, 2, 3], width=400)
    assert strip.shape[1] == 400 and strip.shape[0] == one.shape[0]  # all fit on one row


def test_overlay_with_legend_and_side_by_side_shapes():
    rng = np.random.default_rng(1)
    image = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    gt = np.zeros((40, 60), int)
    gt[10:, 20:] = 3
    pred = np.ones((40, 60), int)
    ov = viz.overlay_with_legend(image, pred, PALETTE, NAMES)
    assert ov.shape[1] == 60 and ov.shape[0] > 40
    panel = viz.side_by_side(image, gt, pred, PALETTE, NAMES)
    assert panel.dtype == np.uint8 and panel.shape[1] == 3 * 60 + 2 * 4 and panel.shape[0] > 40 + 18
    gt_panel = panel[18:58, 64:124]
    assert np.array_equal(gt_panel, viz.colorize(gt, PALETTE))
    seen = colours_in(panel[58:])  # the legend: classes of ground truth and prediction only
    assert {PALETTE[0], PALETTE[1], PALETTE[3]} <= seen and PALETTE[2] not in seen
    assert viz.side_by_side(image, None, pred, PALETTE, NAMES).shape[1] == 2 * 60 + 4


def test_denormalize_inverts_normalisation():
    image = np.random.default_rng(2).integers(0, 255, (5, 7, 3)).astype(np.uint8)
    mean, std = (123.675, 116.28, 103.53), (58.395, 57.12, 57.375)
    x = (image.transpose(2, 0, 1) - np.array(mean)[:, None, None]) / np.array(std)[:, None, None]
    assert np.array_equal(viz.denormalize(x, mean, std), image)


def test_plots_write_png(tmp_path):
    conf = np.array([[5, 1, 0], [2, 7, 1], [0, 0, 0]])
    p = viz.plot_confusion(conf, NAMES[:3], tmp_path / "confusion.png")
    q = viz.plot_per_class_iou({"IoU": [80.0, float("nan"), 0.0], "mIoU": 40.0}, NAMES[:3], tmp_path / "iou.png")
    for path in (p, q):
        with Image.open(path) as im:
            assert im.format == "PNG" and im.size[0] > 100
    with pytest.raises(DataError):
        viz.plot_confusion(conf, NAMES, tmp_path / "x.png")


def test_plots_without_matplotlib_say_how_to_install(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "matplotlib.figure", None)  # makes the import fail
    with pytest.raises(ConfigError, match=r"pip install vitseg\[viz\]"):
        viz.plot_confusion(np.eye(2), ["a", "b"], tmp_path / "c.png")


def test_save_prediction_writes_mask_overlay_and_panel(tmp_path):
    image = np.full((20, 30, 3), 90, np.uint8)
    pred = np.zeros((20, 30), int)
    pred[:, 15:] = 1
    gt = np.ones((20, 30), int)
    paths = viz.save_prediction(tmp_path, "frame", image, pred, PALETTE, NAMES, gt_mask=gt)
    assert [p.name for p in paths] == ["frame.png", "frame_overlay.png", "frame_panel.png"]
    assert np.array_equal(np.array(Image.open(paths[0])), pred)
    assert Image.open(paths[1]).size[0] == 30 and Image.open(paths[2]).size[0] == 3 * 30 + 8
    assert len(viz.save_prediction(tmp_path / "b", "frame", image, pred, PALETTE, NAMES)) == 2
