"""`vitseg data check`: statistics of a good dataset, every bad file named, exit codes."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from vitseg.cli import main
from vitseg.data.check import check_dataset
from vitseg.errors import ConfigError, DataError


def _write(root: Path, split: str, name: str, label, size=(10, 14)):
    (root / "images" / split).mkdir(parents=True, exist_ok=True)
    (root / "labels" / split).mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full(size + (3,), 90, np.uint8)).save(root / "images" / split / f"{name}.png")
    if label is not None:
        Image.fromarray(np.asarray(label, np.uint8)).save(root / "labels" / split / f"{name}.png")


def _good_dataset(root: Path) -> Path:
    lbl = np.zeros((10, 14), np.uint8)
    lbl[:, 7:] = 2
    lbl[0, :] = 255
    _write(root, "train", "a", lbl)
    _write(root, "train", "b", np.ones((10, 14)))
    _write(root, "val", "c", lbl)
    (root / "classes.txt").write_text("zero\none\ntwo\n")
    return root


def test_check_reports_statistics_of_a_good_dataset(tmp_path):
    report = check_dataset(_good_dataset(tmp_path))
    assert report.ok and [s.split for s in report.splits] == ["train", "val"]
    train = report.splits[0]
    assert train.num_images == 2 and train.image_sizes == {(14, 10): 2}
    assert set(train.stored_values) == {0, 1, 2, 255}
    assert train.class_pixels.tolist() == [63, 140, 63] and train.ignored_pixels == 14
    text = report.summary()
    assert "split train: 2 images" in text and "0-2, 255" in text and "no problems found" in text
    assert "two" in text and "all agree" in text


def test_check_names_every_bad_file(tmp_path):
    root = _good_dataset(tmp_path)
    _write(root, "train", "bad_values", np.full((10, 14), 7))
    _write(root, "train", "bad_size", np.zeros((4, 4)))
    _write(root, "train", "no_label", None)
    (root / "images" / "train" / "corrupt.png").write_bytes(b"\x89PNG garbage")
    Image.fromarray(np.zeros((10, 14), np.uint8)).save(root / "labels" / "train" / "corrupt.png")
    report = check_dataset(root, splits=["train"])
    assert not report.ok
    text = "\n".join(report.problems)
    for name in ("bad_values.png", "bad_size.png", "no_label.png", "corrupt.png"):
        assert name in text, f"{name} not reported:\n{text}"
    assert "7" in text and report.splits[0].size_mismatches == 1
    assert len(report.problems) == 4


def test_check_reports_missing_split_and_bad_type(tmp_path):
    report = check_dataset(_good_dataset(tmp_path), splits=["train", "test"])
    assert [s.split for s in report.splits] == ["train", "test"]
    assert any("images" in p and "test" in p for p in report.problems)
    with pytest.raises(ConfigError, match="unknown dataset type"):
        check_dataset(tmp_path, type="imagenet")
    with pytest.raises(DataError, match="not found"):
        check_dataset(tmp_path / "nowhere")


def test_check_public_layout_uses_its_remap(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    (root / "images" / "validation").mkdir(parents=True)
    (root / "annotations" / "validation").mkdir(parents=True)
    Image.fromarray(np.zeros((6, 6, 3), np.uint8)).save(root / "images" / "validation" / "x.jpg")
    Image.fromarray(np.resize(np.array([0, 1, 150], np.uint8), (6, 6))).save(
        root / "annotations" / "validation" / "x.png")
    report = check_dataset(tmp_path, type="ade20k", splits=["validation"])
    assert report.ok and report.splits[0].class_pixels[0] == 12 and report.splits[0].class_pixels[149] == 12
    assert report.splits[0].ignored_pixels == 12


def test_cli_exit_codes(tmp_path, capsys):
    root = _good_dataset(tmp_path)
    assert main(["data", "check", str(root)]) == 0
    assert "no problems found" in capsys.readouterr().out
    _write(root, "val", "broken", np.full((10, 14), 9))
    assert main(["data", "check", str(root), "--splits", "val"]) == 3
    assert "broken.png" in capsys.readouterr().out
    assert main(["data", "check", str(tmp_path / "missing")]) == 3
    assert "not found" in capsys.readouterr().err
