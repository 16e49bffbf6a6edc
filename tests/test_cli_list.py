"""`vitseg list`: models, backbones, dataset types; unknown patterns are errors."""
from vitseg.cli import main


def test_list_models_backbones_datasets(capsys):
    assert main(["list"]) == 0
    out = capsys.readouterr().out
    assert "segformer_b0" in out and "segvit_vit_b16" in out and "paper:" in out
    assert main(["list", "--backbones", "vit_*"]) == 0
    out = capsys.readouterr().out
    assert "vit_b16" in out and "segformer_b0" not in out
    assert main(["list", "--datasets"]) == 0
    out = capsys.readouterr().out
    assert all(t in out for t in ("folder", "ade20k", "cityscapes", "coco_stuff164k", "camvid", "synthetic"))


def test_list_unknown_pattern_is_an_error(capsys):
    assert main(["list", "nothing_like_this*"]) == 2
    assert "no model matches" in capsys.readouterr().err
