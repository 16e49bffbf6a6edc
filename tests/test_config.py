"""Config files: strict keys with suggestions, typed overrides, aliases, round trip, every recipe loads."""
from pathlib import Path

import pytest

from vitseg.config import Config, config_from_dict, dump_config, load_config
from vitseg.errors import ConfigError

REPO = Path(__file__).resolve().parents[1]
RECIPES = sorted((REPO / "configs").glob("*/*.yaml"))


def write(tmp_path, text):
    path = tmp_path / "cfg.yaml"
    path.write_text(text)
    return path


def test_unknown_key_in_file_is_named_with_suggestion(tmp_path):
    path = write(tmp_path, "optim:\n  lr: 1.0e-4\n  weight_decya: 0.1\n")
    with pytest.raises(ConfigError, match=r"cfg\.yaml.*'optim\.weight_decya'.*Did you mean 'optim\.weight_decay'"):
        load_config(path)
    with pytest.raises(ConfigError, match=r"unknown key 'trian'.*'train'"):
        load_config(write(tmp_path, "trian:\n  max_iters: 10\n"))


def test_override_typing_and_conversion(tmp_path):
    path = write(tmp_path, "model:\n  name: segformer_b0\n")
    cfg = load_config(path, ["optim.lr=1e-4", "train.max_iters=2000", "eval.scales=0.5,1.0,1.5",
                             "train.grad_clip=1", "train.ema=null", "eval.flip=true", "data.crop_size=[64,64]",
                             "model.overrides.drop_path_rate=0.2"])
    assert cfg.optim.lr == 1e-4 and isinstance(cfg.optim.lr, float)
    assert cfg.train.max_iters == 2000 and cfg.eval.scales == [0.5, 1.0, 1.5]
    assert cfg.train.grad_clip == 1.0 and isinstance(cfg.train.grad_clip, float)
    assert cfg.train.ema is None and cfg.eval.flip is True and cfg.data.crop_size == [64, 64]
    assert cfg.model.overrides == {"drop_path_rate": 0.2}
    assert cfg.work_dir == str(Path("work_dirs") / "cfg")  # default: named after the file
    with pytest.raises(ConfigError, match=r"train\.max_iters: expected an integer, got 'many'"):
        load_config(path, ["train.max_iters=many"])
    with pytest.raises(ConfigError, match=r"train\.amp: 'fp32' is not one of off, bf16, fp16"):
        load_config(path, ["train.amp=fp32"])
    with pytest.raises(ConfigError, match="key=value"):
        load_config(path, ["optim.lr"])
    with pytest.raises(ConfigError, match="unknown key 'optim.learning_rat'"):
        load_config(path, ["optim.learning_rat=1"])


def test_hf_trainer_aliases(tmp_path):
    cfg = load_config(write(tmp_path, "{}\n"), ["max_steps=500", "per_device_train_batch_size=4",
                                                "gradient_accumulation_steps=2", "output_dir=out"])
    assert (cfg.train.max_iters, cfg.train.batch_size_per_device, cfg.train.grad_accum, cfg.work_dir) == \
        (500, 4, 2, "out")


def test_dump_round_trips(tmp_path):
    cfg = config_from_dict({"optim": {"layer_decay": 0.9}, "eval": {"mode": "slide", "crop": [512, 512]},
                           "work_dir": "runs/x"})
    again = load_config(write(tmp_path, dump_config(cfg)))
    assert again == cfg and isinstance(again, Config)


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_recipes_load_and_are_complete(path):
    cfg = load_config(path)
    assert cfg.model.name in path.name
    if "ade20k" in path.name:  # SegFormer paper settings (spec segformer.md §3)
        assert (cfg.optim.lr, cfg.optim.weight_decay, cfg.optim.head_lr_mult) == (6e-5, 0.01, 10.0)
        assert (cfg.train.max_iters, cfg.train.warmup_iters, cfg.model.num_classes) == (160000, 1500, 150)
        assert cfg.data.crop_size == ([640, 640] if "b5" in path.name else [512, 512])
    # Every recipe names every key: loading it with defaults removed changes nothing.
    import yaml
    data = yaml.safe_load(path.read_text())
    for section in ("model", "data", "train", "optim", "eval"):
        assert set(data[section]) == set(getattr(Config(), section).__dataclass_fields__), section


def test_recipe_set_is_complete():
    names = {p.name for p in RECIPES}
    for v in ("b0", "b1", "b2", "b3", "b4"):
        assert f"segformer_{v}_ade20k_512x512_160k.yaml" in names
    assert {"segformer_b5_ade20k_640x640_160k.yaml", "segformer_b0_cityscapes_1024x1024_160k.yaml",
            "segformer_b0_coco_stuff164k_512x512_80k.yaml", "segformer_b0_synthetic.yaml"} <= names
    assert any(n.startswith("segformer_b0_camvid_") for n in names)
