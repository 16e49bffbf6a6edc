"""Common corruptions: deterministic per seed, shape/dtype kept, stronger with severity; the robustness run."""
import json

import numpy as np
import pytest
import torch

from vitseg.errors import ConfigError, DataError
from vitseg.tools.corruptions import (GROUPS, Corruption, CorruptedPipeline, corrupt, format_robustness,
                                      list_corruptions, run_robustness, save_robustness)

# Corruptions whose output depends on the seed (the others are deterministic filters).
RANDOM = {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise", "glass_blur", "motion_blur", "snow",
          "frost", "fog", "elastic_transform"}


def scene(h=72, w=96, seed=0):
    """A small street-like test image: sky gradient, road, a few coloured boxes and some texture."""
    rng = np.random.default_rng(seed)
    img = np.zeros((h, w, 3), np.float64)
    img[: h // 2] = np.linspace(200, 120, h // 2)[:, None, None] * np.array([0.7, 0.85, 1.0])
    img[h // 2:] = 90
    for _ in range(5):
        y, x = rng.integers(0, h - 16), rng.integers(0, w - 16)
        img[y:y + rng.integers(6, 16), x:x + rng.integers(6, 16)] = rng.integers(0, 256, 3)
    img += rng.normal(scale=8, size=img.shape)
    return np.clip(img, 0, 255).astype(np.uint8)


def test_seventeen_corruptions_in_four_groups():
    names = list_corruptions()
    assert len(names) == len(set(names)) == 17
    assert {g: len(v) for g, v in GROUPS.items()} == {"noise": 4, "blur": 5, "weather": 4, "digital": 4}


@pytest.mark.parametrize("name", list_corruptions())
def test_corruption(name):
    image = scene()
    before = image.copy()
    outs = [corrupt(image, name, s, seed=3) for s in range(1, 6)]
    assert np.array_equal(image, before), "the input must not be modified"
    for out in outs:
        assert out.shape == image.shape and out.dtype == np.uint8
    # Deterministic for a seed.
    assert np.array_equal(corrupt(image, name, 4, seed=3), outs[3])
    if name in RANDOM:
        assert not np.array_equal(corrupt(image, name, 4, seed=4), outs[3]), "the seed must matter"
    diffs = [np.abs(o.astype(np.int64) - image).mean() for o in outs]
    assert diffs[0] > 0.5, f"{name} severity 1 barely changes the image: {diffs}"
    # Severity 5 damages the image more than severity 1: a larger mean absolute difference, or (for blends
    # such as frost, whose severity 1 adds a bright texture and severity 5 swaps image for texture) a larger
    # loss of correlation with the original.
    decorrelation = [1 - np.corrcoef(o.ravel().astype(float), image.ravel().astype(float))[0, 1] for o in outs]
    assert diffs[4] > diffs[0] * 1.1 or decorrelation[4] > decorrelation[0] * 1.1, \
        f"{name}: severity 5 should change the image more than 1: abs diff {diffs}, 1-corr {decorrelation}"


def test_bad_inputs():
    image = scene()
    with pytest.raises(ConfigError, match="unknown corruption 'rain'"):
        corrupt(image, "rain", 1)
    with pytest.raises(ConfigError, match="severity"):
        corrupt(image, "fog", 6)
    with pytest.raises(DataError, match="uint8"):
        corrupt(image.astype(np.float32), "fog", 1)
    with pytest.raises(DataError, match="HxWx3"):
        corrupt(image[..., 0], "fog", 1)


def test_corruption_seed_depends_on_image():
    a, b = scene(seed=1), scene(seed=2)
    c = Corruption("gaussian_noise", 2, seed=0)
    noise_a = c(a).astype(int) - a
    noise_b = c(b).astype(int) - b
    assert np.array_equal(c(a), c(a))
    assert not np.array_equal(noise_a, noise_b)


class TinySet(torch.utils.data.Dataset):
    """Four images whose label is 'bright (1) or dark (0) pixel', passed through a pipeline."""

    def __init__(self, pipeline):
        self.pipeline = pipeline
        self.items = [scene(32, 32, seed=i) for i in range(4)]

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        image = self.items[i]
        label = (image.mean(axis=2) > 120).astype(np.uint8)
        x, y = self.pipeline(image, label, np.random.default_rng(i))
        return {"image": x, "label": y, "name": str(i), "ori_size": image.shape[:2]}


class BrightnessModel(torch.nn.Module):
    """Predicts 'bright' from the mean channel value: good on clean images, fooled by corruptions."""
    num_classes = 2

    def __init__(self):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(1.0))

    def forward(self, x):
        m = x.mean(dim=1, keepdim=True) * self.scale * 10
        return torch.cat([-m, m], dim=1)


def normalise(image, label, rng):
    x = torch.from_numpy((image.astype(np.float32) - 120.0) / 60.0).permute(2, 0, 1)
    return x, torch.from_numpy(label.astype(np.int64))


def test_corrupted_pipeline_corrupts_raw_image():
    seen = []
    pipe = CorruptedPipeline(lambda im, lab, rng: seen.append(im) or (im, lab), Corruption("contrast", 5))
    image = scene()
    pipe(image, None, None)
    assert seen[0].dtype == np.uint8 and seen[0].std() < image.std()


def test_run_robustness_table(tmp_path):
    result = run_robustness(BrightnessModel(), lambda c: TinySet(CorruptedPipeline(normalise, c)),
                            corruptions=["contrast", "brightness"], severities=[1, 5], log=lambda s: None)
    assert result["clean"] == pytest.approx(100.0)
    assert set(result["corruptions"]) == {"contrast", "brightness"}
    bright = result["corruptions"]["brightness"]
    assert bright["5"] < bright["1"] <= 100.0
    assert bright["mean"] == pytest.approx((bright["1"] + bright["5"]) / 2)
    assert result["groups"] == {}  # no group is complete with two corruptions
    table = format_robustness(result)
    assert "brightness" in table and "clean" in table and "sev 5" in table
    json_path, csv_path = save_robustness(result, tmp_path)
    assert json.loads(json_path.read_text())["corruptions"]["contrast"]["1"] == pytest.approx(
        result["corruptions"]["contrast"]["1"])
    rows = csv_path.read_text().splitlines()
    assert rows[0] == "group,corruption,severity,mIoU" and len(rows) == 2 + 2 * 3


def test_run_robustness_rejects_unknown():
    with pytest.raises(ConfigError, match="unknown corruption"):
        run_robustness(BrightnessModel(), lambda c: TinySet(normalise), corruptions=["rain"])


def test_cli_robustness_on_folder_dataset(tmp_path, capsys):
    from PIL import Image

    from vitseg import create_model, save_weights
    from vitseg.cli import main
    pytest.importorskip("vitseg.data")
    root = tmp_path / "data"
    for sub in ("images/val", "labels/val"):
        (root / sub).mkdir(parents=True)
    for i in range(2):
        image = scene(32, 48, seed=i)
        Image.fromarray(image).save(root / "images" / "val" / f"im{i}.png")
        Image.fromarray((image.mean(axis=2) > 120).astype(np.uint8)).save(root / "labels" / "val" / f"im{i}.png")
    (root / "classes.txt").write_text("dark\nbright\n")
    ckpt = tmp_path / "m.safetensors"
    save_weights(create_model("segformer_b0", num_classes=2), ckpt)
    out = tmp_path / "rob"
    code = main(["robustness", str(ckpt), "--data-root", str(root), "--corruptions", "noise",
                 "--severities", "3", "--out", str(out)])
    assert code == 0
    text = capsys.readouterr().out
    assert "gaussian_noise" in text and "speckle_noise" in text and "(average)" in text
    result = json.loads((out / "robustness.json").read_text())
    assert set(result["corruptions"]) == {"gaussian_noise", "shot_noise", "impulse_noise", "speckle_noise"}
    assert set(result["groups"]) == {"noise"} and result["severities"] == [3]
    assert (out / "robustness.csv").read_text().count("\n") == 2 + 4 * 2
    assert main(["robustness", str(ckpt), "--data-root", str(root), "--corruptions", "rain"]) == 2
    assert main(["robustness", str(tmp_path / "none.safetensors"), "--data-root", str(root)]) == 4


def test_fft_filter_equals_direct_correlation():
    from vitseg.tools.corruptions import _filter2d
    rng = np.random.default_rng(0)
    x, k = rng.random((20, 23, 3)), rng.random((5, 7))
    padded = np.pad(x, ((2, 2), (3, 3), (0, 0)), mode="reflect")
    direct = sum(k[i, j] * padded[i:i + 20, j:j + 23] for i in range(5) for j in range(7))
    assert np.allclose(_filter2d(x, k), direct, atol=1e-10)
