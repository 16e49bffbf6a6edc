"""Datasets: our folder layout, every public-layout adapter (on tiny synthesised copies), remaps,
SyntheticShapes, build_dataset and every bad-input error."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from vitseg.data import (ADE20K, COCOStuff10k, COCOStuff164k, Cityscapes, FolderDataset, PascalContext, PascalVOC,
                         PascalVOCAug, SyntheticShapes, TestPipeline, TrainPipeline, build_dataset)
from vitseg.data import palettes as P
from vitseg.errors import ConfigError, DataError

CAMVID = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "camvid"


def save_image(path: Path, h=12, w=16, seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (h, w, 3), dtype=np.uint8)).save(path)


def save_label(path: Path, array, palette_mode=False):
    path.parent.mkdir(parents=True, exist_ok=True)
    im = Image.fromarray(np.asarray(array, np.uint8))
    if palette_mode:
        im = im.convert("P")
        im.putpalette([v for c in P.voc_colormap(256) for v in c])
    im.save(path)


def label_with(values, h=12, w=16):
    """A label map whose pixels cycle through `values` (row-major)."""
    flat = np.resize(np.asarray(values, np.uint8), h * w)
    return flat.reshape(h, w)


def make_folder(root: Path, split="train", n=3, num_classes=4, classes_txt=True, list_file=False):
    for i in range(n):
        save_image(root / "images" / split / f"img{i}.jpg", seed=i)
        save_label(root / "labels" / split / f"img{i}.png", label_with([0, 1, num_classes - 1, 255]))
    if classes_txt:
        (root / "classes.txt").write_text("\n".join(f"c{k}" for k in range(num_classes)) + "\n")
        (root / "palette.txt").write_text("\n".join(f"{k} {k} {k}" for k in range(num_classes)) + "\n")
    if list_file:
        (root / f"{split}.txt").write_text("img2\nimg0\n")
    return root


# ------------------------------------------------------------------------------------------- folder layout
def test_folder_dataset_reads_our_layout(tmp_path):
    ds = FolderDataset(make_folder(tmp_path), "train")
    assert len(ds) == 3 and ds.num_classes == 4 and ds.classes == ["c0", "c1", "c2", "c3"]
    assert ds.palette[2] == (2, 2, 2) and ds.ignore_index == 255
    item = ds[1]
    assert item["image"].shape == (3, 12, 16) and item["image"].dtype == torch.float32
    assert item["label"].dtype == torch.int64 and set(item["label"].unique().tolist()) == {0, 1, 3, 255}
    assert item["name"] == "img1" and item["ori_size"] == (12, 16)


def test_folder_dataset_split_list_meta_and_class_sources(tmp_path):
    root = make_folder(tmp_path, classes_txt=False, list_file=True)
    (root / "meta.json").write_text('{"classes": ["a", "b", "c", "d"], "palette": [[1,2,3],[4,5,6],[7,8,9],[0,0,1]]}')
    ds = FolderDataset(root, "train")
    assert [ds.sample_name(i) for i in range(len(ds))] == ["img2", "img0"]
    assert ds.classes == ["a", "b", "c", "d"] and ds.palette[1] == (4, 5, 6)
    ds = FolderDataset(root, "train", classes=["w", "x", "y", "z"])
    assert ds.classes == ["w", "x", "y", "z"] and len(ds.palette) == 4


def test_folder_dataset_reduce_zero_label(tmp_path):
    root = tmp_path / "d"
    save_image(root / "images" / "val" / "a.png")
    save_label(root / "labels" / "val" / "a.png", label_with([0, 1, 2, 255]))
    ds = FolderDataset(root, "val", num_classes=2, reduce_zero_label=True)
    assert set(np.unique(ds.load_label(0)).tolist()) == {0, 1, 255}
    counts = np.bincount(ds.load_label(0).ravel(), minlength=256)
    assert counts[255] == 12 * 16 // 2   # the zeros and the original 255s


def test_palette_mode_labels_are_read_as_indices(tmp_path):
    root = tmp_path / "d"
    save_image(root / "images" / "train" / "a.jpg")
    save_label(root / "labels" / "train" / "a.png", label_with([0, 2, 255]), palette_mode=True)
    ds = FolderDataset(root, "train", num_classes=3)
    assert set(np.unique(ds.load_label(0)).tolist()) == {0, 2, 255}


def test_seeded_samples_do_not_depend_on_order_and_change_with_epoch(tmp_path):
    root = make_folder(tmp_path, n=2)
    pipe = TrainPipeline(crop_size=(8, 8), scale=(32, 24))
    a, b = FolderDataset(root, "train", pipe, seed=5), FolderDataset(root, "train", pipe, seed=5)
    first = a[1]["image"]
    b[0]
    assert torch.equal(b[1]["image"], first)          # same (seed, epoch, index) -> same sample
    a.set_epoch(1)
    assert not torch.equal(a[1]["image"], first)      # a new epoch draws new augmentations


# ------------------------------------------------------------------------------------------------ errors
def test_label_value_out_of_range_names_file_and_values(tmp_path):
    root = make_folder(tmp_path, num_classes=4)
    save_label(root / "labels" / "train" / "img1.png", label_with([0, 7, 9]))
    ds = FolderDataset(root, "train")
    with pytest.raises(DataError, match=r"img1\.png.*7, 9.*reduce_zero_label"):
        ds[1]


def test_size_mismatch_names_both_files(tmp_path):
    root = make_folder(tmp_path)
    save_label(root / "labels" / "train" / "img0.png", np.zeros((5, 5)))
    with pytest.raises(DataError, match=r"img0\.jpg.*img0\.png"):
        FolderDataset(root, "train")[0]


def test_corrupt_image_names_file(tmp_path):
    root = make_folder(tmp_path)
    (root / "images" / "train" / "img2.jpg").write_bytes(b"not a jpeg at all")
    with pytest.raises(DataError, match=r"img2\.jpg.*cannot read"):
        FolderDataset(root, "train")[2]


def test_missing_label_names_file(tmp_path):
    root = make_folder(tmp_path)
    (root / "labels" / "train" / "img1.png").unlink()
    with pytest.raises(DataError, match=r"img1\.png"):
        FolderDataset(root, "train")


def test_empty_split_names_folder(tmp_path):
    root = make_folder(tmp_path)
    (root / "images" / "val").mkdir(parents=True)
    with pytest.raises(DataError, match=r"images[/\\]val.*no images"):
        FolderDataset(root, "val")
    with pytest.raises(DataError, match=r"images[/\\]test.*not found"):
        FolderDataset(root, "test")


def test_colour_label_and_missing_classes_are_rejected(tmp_path):
    root = make_folder(tmp_path, classes_txt=False)
    with pytest.raises(DataError, match="classes.txt"):
        FolderDataset(root, "train")
    Image.fromarray(np.zeros((12, 16, 3), np.uint8)).save(root / "labels" / "train" / "img0.png")
    with pytest.raises(DataError, match=r"img0\.png.*mode RGB"):
        FolderDataset(root, "train", num_classes=4)[0]


def test_listed_image_missing(tmp_path):
    root = make_folder(tmp_path, list_file=True)
    (root / "images" / "train" / "img2.jpg").unlink()
    with pytest.raises(DataError, match=r"img2.*train\.txt"):
        FolderDataset(root, "train")


# ----------------------------------------------------------------------------------------------- adapters
def test_ade20k_layout_and_reduce_zero_label(tmp_path):
    root = tmp_path / "ade" / "ADEChallengeData2016"
    for split in ("training", "validation"):
        save_image(root / "images" / split / f"ADE_{split}_1.jpg")
        save_label(root / "annotations" / split / f"ADE_{split}_1.png", label_with([0, 1, 150, 255]))
    ds = ADE20K(tmp_path / "ade", "val")        # parent folder and split alias both accepted
    assert len(ds) == 1 and ds.num_classes == 150 and ds.classes[7] == "bed"
    assert set(np.unique(ds.load_label(0)).tolist()) == {0, 149, 255}
    save_label(root / "annotations" / "training" / "ADE_training_1.png", label_with([151]))
    with pytest.raises(DataError, match="151"):
        ADE20K(root, "training")[0]


def test_cityscapes_label_ids_to_train_ids(tmp_path):
    root = tmp_path / "cityscapes"
    stem = "aachen_000000_000019"
    save_image(root / "leftImg8bit" / "train" / "aachen" / f"{stem}_leftImg8bit.png")
    save_label(root / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png",
               label_with([0, 7, 8, 26, 33, 9, 24]))
    ds = Cityscapes(root, "train")
    assert ds.num_classes == 19 and ds.sample_name(0) == stem
    lbl = ds.load_label(0)
    raw = label_with([0, 7, 8, 26, 33, 9, 24])
    expected = np.vectorize(P.CITYSCAPES_LABELID_TO_TRAINID.get)(raw)
    assert np.array_equal(lbl, expected)
    assert set(np.unique(lbl).tolist()) == {0, 1, 11, 13, 18, 255}
    save_label(root / "gtFine" / "train" / "aachen" / f"{stem}_gtFine_labelIds.png", label_with([40]))
    with pytest.raises(DataError, match="40"):
        Cityscapes(root, "train")[0]


def test_cityscapes_converted_train_ids(tmp_path):
    root = tmp_path / "cs"
    save_image(root / "leftImg8bit" / "val" / "lindau" / "lindau_000000_000019_leftImg8bit.png")
    save_label(root / "gtFine" / "val" / "lindau" / "lindau_000000_000019_gtFine_labelTrainIds.png",
               label_with([0, 18, 255]))
    assert set(np.unique(Cityscapes(root, "val").load_label(0)).tolist()) == {0, 18, 255}


def _voc_root(tmp_path, year="VOC2012"):
    return tmp_path / "VOCdevkit" / year


def test_voc_and_voc_aug(tmp_path):
    root = _voc_root(tmp_path)
    for n in ("2007_a", "2007_b", "2008_c", "2008_d"):
        save_image(root / "JPEGImages" / f"{n}.jpg")
    for n in ("2007_a", "2007_b"):
        save_label(root / "SegmentationClass" / f"{n}.png", label_with([0, 20, 255]), palette_mode=True)
    save_label(root / "SegmentationClassAug" / "2008_c.png", label_with([0, 15]))
    lists = root / "ImageSets" / "Segmentation"
    lists.mkdir(parents=True)
    (lists / "train.txt").write_text("2007_a\n")
    (lists / "val.txt").write_text("2007_b\n")
    (lists / "trainaug.txt").write_text("2007_a\n2008_c\n")
    voc = PascalVOC(tmp_path, "train")
    assert len(voc) == 1 and voc.num_classes == 21
    assert set(np.unique(voc.load_label(0)).tolist()) == {0, 20, 255}
    aug = PascalVOCAug(tmp_path / "VOCdevkit", "train_aug")
    assert [aug.sample_name(i) for i in range(len(aug))] == ["2007_a", "2008_c"]
    assert aug.samples[1].label.parent.name == "SegmentationClassAug"
    assert set(np.unique(aug.load_label(1)).tolist()) == {0, 15}
    assert len(PascalVOCAug(root, "val")) == 1
    (lists / "aug.txt").write_text("2008_d\n")       # an explicit aug list wins; its label is missing
    with pytest.raises(DataError, match=r"2008_d\.png"):
        PascalVOCAug(root, "trainaug")


def test_pascal_context_59_and_60(tmp_path):
    root = _voc_root(tmp_path, "VOC2010")
    save_image(root / "JPEGImages" / "2008_000002.jpg")
    save_label(root / "SegmentationClassContext" / "2008_000002.png", label_with([0, 1, 59]))
    (root / "ImageSets" / "SegmentationContext").mkdir(parents=True)
    (root / "ImageSets" / "SegmentationContext" / "val.txt").write_text("2008_000002\n")
    ds60 = build_dataset("pascal_context", tmp_path, "val")
    ds59 = build_dataset("pascal_context_59", tmp_path, "val")
    assert ds60.num_classes == 60 and ds59.num_classes == 59
    assert ds60.classes[0] == "background" and ds59.classes[0] == "aeroplane"
    assert set(np.unique(ds60.load_label(0)).tolist()) == {0, 1, 59}
    assert set(np.unique(ds59.load_label(0)).tolist()) == {0, 58, 255}
    with pytest.raises(ConfigError, match="59 or 60"):
        PascalContext(root, "val", num_classes=61)


def test_coco_stuff164k_raw_182_to_171(tmp_path):
    root = tmp_path / "coco_stuff164k"
    save_image(root / "images" / "val2017" / "000000000139.jpg")
    save_label(root / "annotations" / "val2017" / "000000000139.png", label_with([0, 10, 12, 66, 91, 181, 255]))
    ds = COCOStuff164k(root, "val")
    assert ds.num_classes == 171 and ds.classes[80] == "banner"
    assert set(np.unique(ds.load_label(0)).tolist()) == {0, 10, 11, 60, 80, 170, 255}
    save_label(root / "annotations" / "val2017" / "000000000139.png", label_with([11, 0]))  # unused raw slot
    with pytest.raises(DataError, match=r"000000000139\.png.*11"):
        ds[0]


def test_coco_stuff164k_converted_train_ids(tmp_path):
    root = tmp_path / "cs"
    save_image(root / "images" / "train2017" / "1.jpg")
    save_label(root / "annotations" / "train2017" / "1_labelTrainIds.png", label_with([0, 170, 255]))
    assert set(np.unique(COCOStuff164k(root, "train").load_label(0)).tolist()) == {0, 170, 255}


def test_coco_stuff10k_reduce_zero_label(tmp_path):
    root = tmp_path / "coco_stuff10k"
    name = "COCO_train2014_000000000077"
    save_image(root / "images" / "train2014" / f"{name}.jpg")
    save_label(root / "annotations" / "train2014" / f"{name}_labelTrainIds.png", label_with([0, 1, 171]))
    (root / "imageLists").mkdir()
    (root / "imageLists" / "train.txt").write_text(name + "\n")
    ds = COCOStuff10k(root, "train")
    assert set(np.unique(ds.load_label(0)).tolist()) == {0, 170, 255}


def test_camvid_type_defaults(tmp_path):
    root = make_folder(tmp_path, num_classes=11, classes_txt=False)
    ds = build_dataset("camvid", root, "train")
    assert ds.classes == P.CAMVID_CLASSES and ds.palette == P.CAMVID_PALETTE


@pytest.mark.skipif(not (CAMVID / "classes.txt").is_file(), reason="shared CamVid copy not present")
def test_real_camvid_sample():
    ds = build_dataset("folder", CAMVID, "val", TrainPipeline(crop_size=(96, 128), scale=(240, 180)))
    assert len(ds) == 101 and ds.num_classes == 11
    item = ds[0]
    assert item["image"].shape == (3, 96, 128) and item["ori_size"] == (360, 480)
    assert int(item["label"][item["label"] != 255].max()) < 11


# ------------------------------------------------------------------------------------------- synthetic
def test_synthetic_shapes_deterministic_and_splits_differ():
    a = SyntheticShapes(num_classes=6, num_images=4, size=(64, 64), seed=3)
    b = SyntheticShapes(num_classes=6, num_images=4, size=(64, 64), seed=3)
    img_a, lbl_a = a.generate(2)
    img_b, lbl_b = b.generate(2)
    assert np.array_equal(img_a, img_b) and np.array_equal(lbl_a, lbl_b)
    val = SyntheticShapes(num_classes=6, num_images=4, size=(64, 64), seed=3, split="val")
    assert not np.array_equal(val.generate(2)[0], img_a)
    assert not np.array_equal(SyntheticShapes(num_images=4, size=(64, 64), seed=4).generate(2)[0], img_a)
    item = a[2]
    assert item["image"].shape == (3, 64, 64) and item["label"].dtype == torch.int64
    assert item["name"] == "synthetic_train_00002" and item["ori_size"] == (64, 64)


def test_synthetic_shapes_class_coverage_and_names():
    ds = SyntheticShapes(num_classes=9, num_images=16, size=(64, 64))
    seen = set()
    for i in range(len(ds)):
        seen |= set(np.unique(ds.load_label(i)).tolist())
    assert seen == set(range(9))
    assert ds.classes[0] == "background" and len(set(ds.classes)) == 9 and len(ds.palette) == 9
    shapes = {name.split()[1] for name in ds.classes[1:]}
    textures = {name.split()[0] for name in ds.classes[1:]}
    assert len(shapes) > 1 and len(textures) > 1


def test_synthetic_shapes_rejects_bad_settings():
    with pytest.raises(ConfigError, match="num_classes"):
        SyntheticShapes(num_classes=40)
    with pytest.raises(ConfigError, match="split"):
        SyntheticShapes(split="holdout")


# ------------------------------------------------------------------------------------------- build_dataset
def test_build_dataset_types_and_errors(tmp_path):
    ds = build_dataset("synthetic", None, "val", TestPipeline(), num_images=2, size=(32, 32))
    assert isinstance(ds, SyntheticShapes) and len(ds) == 2
    assert isinstance(build_dataset("folder", make_folder(tmp_path), "train"), FolderDataset)
    with pytest.raises(ConfigError, match=r"unknown dataset type 'imagenet'.*ade20k.*synthetic"):
        build_dataset("imagenet", tmp_path, "train")
    with pytest.raises(ConfigError, match="root"):
        build_dataset("ade20k", None, "train")
    with pytest.raises(ConfigError, match="crop_size"):
        build_dataset("folder", tmp_path, "train", crop_size=3)


def test_build_dataset_reduce_zero_label_of_public_layouts(tmp_path):
    root = tmp_path / "ADEChallengeData2016"
    save_image(root / "images" / "training" / "a.jpg")
    save_label(root / "annotations" / "training" / "a.png", label_with([0, 1]))
    assert build_dataset("ade20k", root, "train", reduce_zero_label=True).reduce_zero_label
    with pytest.raises(ConfigError, match="reduce_zero_label=True"):
        build_dataset("ade20k", root, "train", reduce_zero_label=False)
