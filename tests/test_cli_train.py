"""`vitseg train | eval | config show` on a tiny SyntheticShapes config (32x32 images, a few iterations)."""
import json

import pytest
import torch

from vitseg.cli import main
from vitseg.config import config_from_dict, dump_config, load_config

torch.set_num_threads(1)


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Train once for the module: returns (config path, work dir)."""
    root = tmp_path_factory.mktemp("cli")
    cfg = config_from_dict({
        "model": {"name": "segformer_b0", "num_classes": 3, "overrides": {"drop_path_rate": 0.0}},
        "data": {"type": "synthetic", "crop_size": [32, 32], "scale": [32, 32], "ratio_range": [0.75, 1.25],
                 "test_scale": None, "options": {"num_images": 6, "size": [32, 32]}},
        "train": {"max_iters": 3, "batch_size_per_device": 2, "workers": 0, "warmup_iters": 1,
                  "checkpoint_interval": 3},
        "optim": {"lr": 1e-3}, "eval": {"interval": 3, "workers": 0},
        "log": {"interval": 1, "progress": False, "tensorboard": False}, "work_dir": str(root / "work")})
    path = root / "tiny.yaml"
    path.write_text(dump_config(cfg))
    assert main(["train", str(path), "--seed", "1"]) == 0
    return path, root / "work"


def test_train_writes_work_dir(run):
    path, work = run
    assert load_config(work / "config.yaml").train.seed == 1
    events = [json.loads(line)["event"] for line in (work / "metrics.jsonl").read_text().splitlines()]
    assert events.count("train") == 3 and events.count("eval") == 1
    assert (work / "checkpoints" / "best.safetensors").is_file()
    assert json.loads((work / "checkpoints" / "best.json").read_text())["iteration"] == 3
    assert (work / "eval" / "iter_0000003" / "results.json").is_file()


def test_eval_with_config_and_from_checkpoint_alone(run, tmp_path, capsys):
    path, work = run
    out = tmp_path / "r.json"
    assert main(["eval", str(path), "--out", str(out)]) == 0
    first = json.loads(out.read_text())
    text = capsys.readouterr().out
    assert "mIoU" in text and "background" in text  # per-class table
    best = json.loads((work / "checkpoints" / "best.json").read_text())
    assert first["mIoU"] == pytest.approx(best["mIoU"])  # same weights, same data, same score
    # Config from the weights' metadata; slide + multi-scale + flip.
    out2 = tmp_path / "r2.json"
    assert main(["eval", str(work / "checkpoints" / "best.safetensors"), "--mode", "slide", "--crop", "32", "32",
                 "--stride", "16", "16", "--scales", "0.75,1", "--flip", "--out", str(out2),
                 "--show-dir", str(tmp_path / "show")]) == 0
    second = json.loads(out2.read_text())
    assert second["eval"] == {"mode": "slide", "crop": [32, 32], "stride": [16, 16], "scales": [0.75, 1.0],
                              "flip": True}
    assert len(list((tmp_path / "show").glob("*_overlay.png"))) == 6
    # A training state works too.
    assert main(["eval", str(path), str(work / "checkpoints" / "step_0000003.pt"), "--out", str(tmp_path / "r3.json")]) == 0


def test_eval_visualize_writes_panels_and_plots(run, tmp_path, capsys):
    pytest.importorskip("matplotlib")
    path, work = run
    vis = tmp_path / "vis"
    assert main(["eval", str(path), "--out", str(tmp_path / "r.json"), "--visualize", "2",
                 "--show-dir", str(vis)]) == 0
    assert len(list(vis.glob("*_panel.png"))) == 2
    assert (vis / "confusion.png").stat().st_size > 0 and (vis / "per_class_iou.png").stat().st_size > 0
    assert "visualisations" in capsys.readouterr().out


def test_eval_class_count_mismatch_exit_code(run, capsys):
    path, work = run
    code = main(["eval", str(path), str(work / "checkpoints" / "best.safetensors"), "--set", "model.num_classes=5"])
    assert code == 4
    assert "3 classes" in capsys.readouterr().err


def test_config_show_and_errors(run, capsys):
    path, _ = run
    assert main(["config", "show", str(path), "--cfg-options", "optim.lr=2e-4"]) == 0
    assert load_config(path, ["optim.lr=2e-4"]).optim.lr == 2e-4
    assert "lr: 0.0002" in capsys.readouterr().out
    assert main(["config", "show", str(path), "--set", "optim.lrr=1"]) == 2
    assert "Did you mean 'optim.lr'" in capsys.readouterr().err
    # Synthetic data follows model.num_classes, so the resumed checkpoint (3 classes) is what disagrees.
    assert main(["train", str(path), "--set", "model.num_classes=4", "--resume"]) == 4
    assert "3 classes but the config asks for 4 (model.num_classes)" in capsys.readouterr().err


def test_resume_flag_continues(run, tmp_path):
    path, work = run
    assert main(["train", str(path), "--resume", "--set", "train.max_iters=4", "train.checkpoint_interval=1",
                 f"work_dir={work}", "train.seed=1"]) == 0
    assert (work / "checkpoints" / "step_0000004.pt").is_file()


def test_every_command_has_help(capsys):
    for cmd in (["train"], ["eval"], ["config", "show"], ["demo"]):
        with pytest.raises(SystemExit):
            main(cmd + ["--help"])
        text = capsys.readouterr().out
        assert "usage:" in text


def test_demo_command_small(tmp_path, capsys):
    """The demo path end to end (train, evaluate, chance level, drawings) on a shrunken setting."""
    assert main(["demo", "--work-dir", str(tmp_path), "--num-predictions", "2", "--set", "train.max_iters=2",
                 "data.options.num_images=8", "data.options.size=[32,32]", "data.crop_size=[32,32]",
                 "data.scale=[32,32]", "log.progress=false", "log.tensorboard=false"]) == 0
    out = capsys.readouterr().out
    assert "demo: mIoU" in out and "chance level" in out
    assert len(list((tmp_path / "predictions").glob("*_overlay.png"))) == 2
