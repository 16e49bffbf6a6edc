"""Training/test pipelines: shapes, dtypes, label handling, crop rule, determinism."""
import numpy as np
import torch

from vitseg.data.transforms import (IMAGENET_MEAN, IMAGENET_STD, TestPipeline, TrainPipeline, hsv_to_rgb,
                                    photometric_distortion, random_crop, rescale_size, resize_image, resize_label,
                                    rgb_to_hsv)


def _sample(h=60, w=80, seed=0):
    rng = np.random.default_rng(seed)
    image = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    label = np.zeros((h, w), np.uint8)
    label[:, w // 3:] = 3
    label[h // 2:, :] = 7
    label[:5, :5] = 255
    return image, label


def test_train_pipeline_shapes_dtypes_and_padding():
    image, label = _sample(60, 80)
    pipe = TrainPipeline(crop_size=(64, 96), scale=(80, 60), ratio_range=(0.5, 0.6))  # always smaller than crop
    img, lbl = pipe(image, label, np.random.default_rng(0))
    assert img.shape == (3, 64, 96) and img.dtype == torch.float32
    assert lbl.shape == (64, 96) and lbl.dtype == torch.int64
    # the resized image is at most 48x40, so the bottom/right margins are padding: label 255, image 0
    assert (lbl[48:, :] == 255).all() and (lbl[:, 48:] == 255).all()
    assert (img[:, 48:, :] == 0).all()
    assert set(lbl.unique().tolist()) <= {0, 3, 7, 255}


def test_train_pipeline_normalises_with_imagenet_statistics():
    image = np.full((32, 32, 3), 200, np.uint8)
    label = np.zeros((32, 32), np.uint8)
    pipe = TrainPipeline(crop_size=(32, 32), scale=None, flip_prob=0.0, photometric=False, cat_max_ratio=1.0)
    img, _ = pipe(image, label, np.random.default_rng(0))
    expected = (200 - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    assert torch.allclose(img[:, 0, 0], torch.tensor(expected, dtype=torch.float32), atol=1e-5)


def test_label_resize_is_nearest_and_creates_no_values():
    rng = np.random.default_rng(1)
    label = rng.choice(np.array([2, 5, 9, 255], np.uint8), size=(37, 53))
    for size in [(100, 131), (11, 17), (37, 80)]:
        out = resize_label(label, size)
        assert out.shape == size and out.dtype == np.uint8
        assert set(np.unique(out)) <= {2, 5, 9, 255}
    image, label = _sample(61, 83)
    for seed in range(5):
        _, lbl = TrainPipeline(crop_size=(50, 50), scale=(200, 150))(image, label, np.random.default_rng(seed))
        assert set(lbl.unique().tolist()) <= {0, 3, 7, 255}


def test_resize_image_bilinear_values():
    image = np.zeros((2, 2, 3), np.uint8)
    image[:, 1] = 200
    up = resize_image(image, (2, 4))
    # half-pixel centres: columns sample at x = -0.25 (clamped to 0), 0.25, 0.75, 1.25 (clamped to 1)
    assert up[0, :, 0].tolist() == [0, 50, 150, 200]
    assert resize_image(image, (2, 2)) is image


def test_rescale_size_keeps_ratio_within_limits():
    assert rescale_size((512, 683), (2048, 512)) == (512, 683)
    assert rescale_size((1024, 2048), (2048, 512)) == (512, 1024)
    h, w = rescale_size((300, 1000), (2048, 512))   # the long side limits: 1000 -> 2048 would exceed
    assert max(h, w) <= 2048 and min(h, w) <= 512 and abs(w / h - 1000 / 300) < 0.01


def test_cat_max_ratio_rejects_single_class_windows():
    # 200x200 label: one class everywhere except a 40x40 corner; 40x40 crops mostly fall in the big class
    label = np.zeros((200, 200), np.uint8)
    label[:40, :40] = 1
    image = np.zeros((200, 200, 3), np.uint8)
    accepted = 0
    for seed in range(40):
        _, lbl = random_crop(image, label, (40, 40), np.random.default_rng(seed), cat_max_ratio=0.75)
        counts = np.bincount(lbl.ravel(), minlength=2)
        accepted += int(counts.min() > 0 and counts.max() / counts.sum() < 0.75)
    unchecked = 0
    for seed in range(40):
        _, lbl = random_crop(image, label, (40, 40), np.random.default_rng(seed), cat_max_ratio=1.0)
        counts = np.bincount(lbl.ravel(), minlength=2)
        unchecked += int(counts.min() > 0 and counts.max() / counts.sum() < 0.75)
    assert accepted > unchecked + 5


def test_cat_max_ratio_ignores_255():
    label = np.full((20, 20), 255, np.uint8)
    label[:, :10] = 0
    label[:, 10:12] = 1           # non-ignored: 0 covers 10/12 > 0.75 -> every window rejected, last one kept
    image = np.zeros((20, 20, 3), np.uint8)
    _, lbl = random_crop(image, label, (20, 20), np.random.default_rng(0))
    assert lbl.shape == (20, 20)


def test_pipelines_are_deterministic_for_a_fixed_rng():
    image, label = _sample(90, 120)
    pipe = TrainPipeline(crop_size=(64, 64), scale=(120, 90))
    a = pipe(image, label, np.random.default_rng(42))
    b = pipe(image, label, np.random.default_rng(42))
    c = pipe(image, label, np.random.default_rng(43))
    assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])
    assert not torch.equal(a[0], c[0])


def test_flip_moves_image_and_label_together():
    image = np.zeros((8, 8, 3), np.uint8)
    image[:, :2] = 255
    label = np.zeros((8, 8), np.uint8)
    label[:, :2] = 1
    pipe = TrainPipeline(crop_size=(8, 8), scale=None, flip_prob=1.0, photometric=False, cat_max_ratio=1.0)
    img, lbl = pipe(image, label, np.random.default_rng(0))
    assert (lbl[:, 6:] == 1).all() and (lbl[:, :6] == 0).all()
    assert (img[0, :, 6:] > img[0, :, :6].max()).all()


def test_hsv_round_trip_and_opencv_scale():
    rng = np.random.default_rng(3)
    image = rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)
    hsv = rgb_to_hsv(image)
    assert hsv[..., 0].max() < 180
    assert np.abs(hsv_to_rgb(hsv).astype(int) - image).max() <= 4   # hue is quantised to 2 degrees
    pure_blue = np.array([[[0, 0, 255]]], np.uint8)
    assert rgb_to_hsv(pure_blue)[0, 0].tolist() == [120, 255, 255]


def test_photometric_distortion_changes_image_but_keeps_dtype():
    image, _ = _sample(20, 20)
    outs = [photometric_distortion(image, np.random.default_rng(s)) for s in range(6)]
    assert all(o.dtype == np.uint8 and o.shape == image.shape for o in outs)
    assert any(not np.array_equal(o, image) for o in outs)


def test_test_pipeline_resizes_image_only_and_aligns():
    image, label = _sample(60, 80)
    pipe = TestPipeline(scale=(160, 100), align_to=32)
    img, lbl = pipe(image, label)
    assert pipe.output_size((60, 80)) == (128, 160)   # 60x80 -> 100x133 -> aligned up to 128x160
    assert img.shape == (3, 128, 160)
    assert lbl.shape == (60, 80) and torch.equal(lbl, torch.from_numpy(label).long())
    img, lbl = TestPipeline()(image, None)
    assert img.shape == (3, 60, 80) and lbl is None
