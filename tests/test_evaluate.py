"""Metrics on hand-made examples, evaluate() end to end, saving, and the cross-process sum."""
import json
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from vitseg.engine.evaluate import ConfusionMatrix, evaluate, format_table, save_metrics
from vitseg.errors import DataError

ROOT = Path(__file__).resolve().parents[1]

# 2x4 example (K=3). Pairs (gt, pred) over labelled pixels: (0,0) (0,1) (1,1) (1,1) (2,2) (2,0) (0,0).
LABEL = torch.tensor([[[0, 0, 1, 1], [255, 2, 2, 0]]])
PRED = torch.tensor([[[0, 1, 1, 1], [2, 2, 0, 0]]])


def test_confusion_matrix_counts_and_metrics():
    cm = ConfusionMatrix(3)
    cm.update(PRED, LABEL)
    assert cm.matrix.tolist() == [[2, 1, 0], [0, 2, 0], [1, 0, 1]]
    m = cm.compute()
    assert m["IoU"] == pytest.approx([50.0, 200 / 3, 50.0])   # 2/4, 2/3, 1/2
    assert m["Acc"] == pytest.approx([200 / 3, 100.0, 50.0])  # 2/3, 2/2, 1/2
    assert m["aAcc"] == pytest.approx(500 / 7)
    assert m["mIoU"] == pytest.approx((50 + 200 / 3 + 50) / 3)
    assert m["mAcc"] == pytest.approx((200 / 3 + 100 + 50) / 3)
    assert m["num_pixels"] == 7


def test_absent_classes_are_nan_and_left_out_of_means():
    cm = ConfusionMatrix(5)  # class 3: in neither; class 4: predicted but not in the ground truth
    pred = PRED.clone()
    pred[0, 0, 0] = 4  # was a correct class-0 pixel
    cm.update(pred, LABEL)
    m = cm.compute()
    assert math.isnan(m["IoU"][3]) and math.isnan(m["Acc"][3])
    assert m["IoU"][4] == 0.0 and math.isnan(m["Acc"][4])
    assert m["IoU"][0] == pytest.approx(100 / 4)  # TP 1, gt 3, pred 2
    assert m["mIoU"] == pytest.approx((25 + 200 / 3 + 50 + 0) / 4)
    assert m["mAcc"] == pytest.approx((100 / 3 + 100 + 50) / 3)


def test_ignore_index_and_streaming_equal_one_batch():
    torch.manual_seed(0)
    label = torch.randint(0, 4, (3, 9, 11))
    label[:, :2] = 255
    pred = torch.randint(0, 4, (3, 9, 11))
    whole = ConfusionMatrix(4)
    whole.update(pred, label)
    parts = ConfusionMatrix(4)
    for i in range(3):
        parts.update(pred[i:i + 1], label[i:i + 1])
    assert torch.equal(whole.matrix, parts.matrix)
    assert whole.matrix.sum() == (label != 255).sum()
    # changing predictions on ignored pixels changes nothing
    pred2 = pred.clone()
    pred2[:, :2] = (pred2[:, :2] + 1) % 4
    other = ConfusionMatrix(4)
    other.update(pred2, label)
    assert torch.equal(other.matrix, whole.matrix)
    assert whole.matrix.dtype == torch.int64


def test_bad_labels_and_shapes_raise_data_error():
    cm = ConfusionMatrix(3)
    with pytest.raises(DataError, match=r"\[7\]"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.tensor([[[0, 7], [1, 255]]]))
    with pytest.raises(DataError, match="shape"):
        cm.update(torch.zeros(1, 2, 2, dtype=torch.long), torch.zeros(1, 2, 3, dtype=torch.long))


def test_empty_matrix_gives_nan_not_error():
    m = ConfusionMatrix(2).compute()
    assert math.isnan(m["aAcc"]) and math.isnan(m["mIoU"]) and math.isnan(m["mAcc"])


class ChannelOracle(nn.Module):
    """Predicts the class stored in image channel 0 (one-hot logits at stride 1); optionally wrong on class 1."""

    def __init__(self, num_classes, confuse_1_as_2=False):
        super().__init__()
        self.num_classes = num_classes
        self.class_names = [f"c{i}" for i in range(num_classes)]
        self.dummy = nn.Parameter(torch.zeros(1))
        self.confuse = confuse_1_as_2

    def forward(self, x):
        ids = x[:, 0].round().long().clamp(0, self.num_classes - 1)
        if self.confuse:
            ids = torch.where(ids == 1, torch.full_like(ids, 2), ids)
        return nn.functional.one_hot(ids, self.num_classes).permute(0, 3, 1, 2).float() * 10 + self.dummy


def make_batches(n=4, k=3, size=(12, 16), seed=0):
    g = torch.Generator().manual_seed(seed)
    batches = []
    for i in range(n):
        label = torch.randint(0, k, (1, *size), generator=g)
        label[:, 0, :3] = 255
        image = torch.randn(1, 3, *size, generator=g)
        image[:, 0] = label.clamp(max=k - 1).float()
        image[:, 0][label == 255] = 0
        batches.append({"image": image, "label": label, "name": [f"img{i}"]})
    return batches


def test_evaluate_perfect_and_confused_models_and_mode_restored():
    batches = make_batches()
    model = ChannelOracle(3).train()
    m = evaluate(model, batches, progress=False)
    assert model.training  # restored
    assert m["mIoU"] == pytest.approx(100.0) and m["aAcc"] == pytest.approx(100.0)
    assert m["num_images"] == 4 and m["class_names"] == ["c0", "c1", "c2"]

    m = evaluate(ChannelOracle(3, confuse_1_as_2=True), batches, progress=False, return_confusion=True)
    conf = m["confusion"]
    assert conf[1, 1] == 0 and conf[1, 2] > 0 and conf[0, 0] == conf[0].sum()
    assert m["IoU"][1] == 0.0 and m["IoU"][0] == pytest.approx(100.0)
    assert conf.sum() == sum(int((b["label"] != 255).sum()) for b in batches)


def test_evaluate_predicts_at_label_resolution_with_slide_and_tta():
    # labels at twice the image resolution: predictions are upsampled to them
    batches = make_batches(n=2, size=(16, 16))
    for b in batches:
        b["label"] = torch.nn.functional.interpolate(b["label"][:, None].float(), scale_factor=2,
                                                     mode="nearest")[:, 0].long()
    m = evaluate(ChannelOracle(3), batches, mode="slide", crop=8, stride=6, scales=(1.0, 2.0), flip=True,
                 progress=False)
    assert m["num_pixels"] == sum(int((b["label"] != 255).sum()) for b in batches)
    assert m["mIoU"] > 60  # upsampling a nearest-exact map only blurs class borders
    assert m["eval"] == {"mode": "slide", "crop": 8, "stride": 6, "scales": [1.0, 2.0], "flip": True}


def test_evaluate_matches_manual_loop_for_a_real_model():
    import vitseg
    from vitseg.engine.inference import predict
    torch.manual_seed(0)
    model = vitseg.create_model("segformer_b0", num_classes=3)
    batches = make_batches(n=2, size=(64, 64))
    m = evaluate(model, batches, progress=False, return_confusion=True)
    model.eval()
    cm = ConfusionMatrix(3)
    for b in batches:
        cm.update(predict(model, b["image"]).argmax(1), b["label"])
    assert np.array_equal(m["confusion"], cm.matrix.numpy())


def test_format_table_and_save_metrics(tmp_path):
    cm = ConfusionMatrix(4)
    cm.update(PRED, LABEL)
    m = cm.compute()
    names = ["sky", "road", "a-long-class-name", "unused"]
    table = format_table(m, names)
    assert "a-long-class-name" in table and "66.67" in table
    unused_row = [ln for ln in table.splitlines() if "unused" in ln][0]
    assert unused_row.count("-") >= 2 and "nan" not in table.lower()
    assert "mIoU 55.56" in table

    path = save_metrics(dict(m, confusion=cm.matrix.numpy()), tmp_path / "eval", class_names=names)
    data = json.loads(path.read_text())
    assert path.name == "results.json"
    assert data["mIoU"] == pytest.approx(m["mIoU"]) and data["IoU"][3] is None
    assert data["per_class"]["road"]["IoU"] == pytest.approx(200 / 3)
    csv_lines = (tmp_path / "eval" / "per_class.csv").read_text().splitlines()
    assert csv_lines[0] == "class_id,class,IoU,Acc" and csv_lines[4] == "3,unused,,"
    assert np.array_equal(np.load(tmp_path / "eval" / "confusion.npy", allow_pickle=False), cm.matrix.numpy())

    single = save_metrics(m, tmp_path / "only.json")
    assert json.loads(single.read_text())["class_names"] == ["0", "1", "2", "3"]
    assert not (tmp_path / "per_class.csv").exists()


DIST_SCRIPT = textwrap.dedent("""
    import json, sys, torch, torch.distributed as dist
    sys.path.insert(0, sys.argv[3])
    from test_evaluate import ChannelOracle, make_batches
    from vitseg.engine.evaluate import evaluate
    rank, world = int(sys.argv[1]), 2
    dist.init_process_group("gloo", init_method="file://" + sys.argv[2], rank=rank, world_size=world)
    batches = make_batches(n=5)[rank::world]          # an uneven split: 3 + 2 images
    m = evaluate(ChannelOracle(3, confuse_1_as_2=True), batches, progress=False)
    print(json.dumps({"mIoU": m["mIoU"], "aAcc": m["aAcc"], "IoU": m["IoU"], "n": m["num_images"]}))
    dist.destroy_process_group()
""")


def test_two_processes_score_like_one(tmp_path):
    script = tmp_path / "dist_eval.py"
    script.write_text(DIST_SCRIPT)
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    procs = [subprocess.Popen([sys.executable, str(script), str(r), str(tmp_path / "store"),
                               str(Path(__file__).parent)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              env=env, text=True) for r in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate()
        assert p.returncode == 0, err
        outs.append(json.loads(out.strip().splitlines()[-1]))
    single = evaluate(ChannelOracle(3, confuse_1_as_2=True), make_batches(n=5), progress=False)
    for o in outs:
        assert o["n"] == 5
        assert o["mIoU"] == pytest.approx(single["mIoU"]) and o["aAcc"] == pytest.approx(single["aAcc"])
        assert o["IoU"] == pytest.approx(single["IoU"], nan_ok=True)
