"""Training loop: learning, NaN stop, class-count mismatch, atomic checkpoints, AMP checks."""
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from vitseg.config import config_from_dict
from vitseg.engine import checkpoint as ckpt
from vitseg.engine.train import epoch_plan, train
from vitseg.errors import CheckpointError, ConfigError, TrainingError

torch.set_num_threads(1)  # the test machine is small and shared; one thread is fastest there


class ToyShapes(torch.utils.data.Dataset):
    """A square of class 1 on class 0, with a per-sample random flip drawn from rng(seed, epoch, index)."""

    classes = ["background", "square"]
    palette = [(0, 0, 0), (255, 0, 0)]

    def __init__(self, n=16, size=32, seed=0, nan=False):
        g = torch.Generator().manual_seed(seed)
        self.items, self.seed, self.epoch = [], seed, 0
        for _ in range(n):
            label = torch.zeros(size, size, dtype=torch.long)
            y, x = torch.randint(0, size // 2, (2,), generator=g).tolist()
            label[y:y + size // 2, x:x + size // 2] = 1
            image = torch.randn(3, size, size, generator=g) * 0.3 + label.float()
            if nan:
                image[:] = float("nan")
            self.items.append((image, label))

    def set_epoch(self, epoch):
        self.epoch = epoch

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        image, label = self.items[i]
        if np.random.default_rng([self.seed, self.epoch, i]).random() < 0.5:
            image, label = image.flip(-1), label.flip(-1)
        return {"image": image, "label": label}


def tiny_config(work_dir, **sections):
    """segformer_b0 on 32x32 toy images, a few iterations, one log line per iteration."""
    data = {"model": {"name": "segformer_b0", "num_classes": 2},
            "train": {"max_iters": 4, "batch_size_per_device": 2, "workers": 0, "warmup_iters": 1,
                      "checkpoint_interval": 2},
            "optim": {"lr": 1e-3}, "log": {"interval": 1, "progress": False, "tensorboard": False},
            "work_dir": str(work_dir)}
    for name, values in sections.items():
        data.setdefault(name, {}).update(values)
    return config_from_dict(data)


def read_losses(work_dir):
    rows = [json.loads(line) for line in (Path(work_dir) / "metrics.jsonl").read_text().splitlines()]
    return [r["loss"] for r in rows if r["event"] == "train"]


def test_loss_decreases_and_work_dir_layout(tmp_path):
    cfg = tiny_config(tmp_path, train={"max_iters": 8, "checkpoint_interval": 4})
    out = train(cfg, train_set=ToyShapes())
    losses = out["losses"]
    assert len(losses) == 8 and np.mean(losses[-3:]) < 0.7 * np.mean(losses[:2])
    for name in ("config.yaml", "env.txt", "log.txt", "metrics.jsonl", "metrics.csv"):
        assert (tmp_path / name).is_file(), name
    assert read_losses(tmp_path) == pytest.approx(losses)
    steps = sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*.pt"))
    assert steps == ["step_0000004.pt", "step_0000008.pt"]
    assert (tmp_path / "checkpoints" / "latest").read_text().strip() == "step_0000008.pt"
    state = ckpt.load_state(tmp_path / "checkpoints" / "step_0000008.pt")  # weights_only=True
    assert state["iteration"] == 8 and state["num_classes"] == 2
    meta_model = __import__("vitseg").load_checkpoint(tmp_path / "checkpoints" / "last.safetensors")
    assert meta_model.class_names == ToyShapes.classes


def test_keep_last_prunes(tmp_path):
    cfg = tiny_config(tmp_path, train={"max_iters": 3, "checkpoint_interval": 1}, log={"keep_last": 2})
    train(cfg, train_set=ToyShapes(n=8))
    assert sorted(p.name for p in (tmp_path / "checkpoints").glob("step_*.pt")) == \
        ["step_0000002.pt", "step_0000003.pt"]


def test_nan_loss_stops_with_iteration_and_keeps_files(tmp_path):
    cfg = tiny_config(tmp_path, train={"max_iters": 2})
    train(cfg, train_set=ToyShapes(n=8))
    before = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()}
    with pytest.raises(TrainingError, match=r"iteration 3 .*optim\.lr.*amp"):
        train(tiny_config(tmp_path, train={"max_iters": 4}), resume="auto", train_set=ToyShapes(n=8, nan=True))
    after = {p.name: p.read_bytes() for p in (tmp_path / "checkpoints").iterdir()}
    assert after == before
    assert len(read_losses(tmp_path)) == 2


def test_class_count_mismatch_names_both_numbers(tmp_path):
    train(tiny_config(tmp_path, train={"max_iters": 2}), train_set=ToyShapes(n=8))
    cfg = tiny_config(tmp_path, model={"num_classes": 5}, train={"max_iters": 4})
    five = ToyShapes(n=8)
    five.classes = ["a", "b", "c", "d", "e"]  # the data agrees with the new config; the checkpoint does not
    with pytest.raises(CheckpointError, match=r"step_0000002\.pt.* 2 classes .* 5 .*model\.num_classes"):
        train(cfg, resume="auto", train_set=five)
    with pytest.raises(ConfigError, match="train dataset has 2 classes but model.num_classes is 5"):
        train(tiny_config(tmp_path / "new", model={"num_classes": 5}), train_set=ToyShapes(n=8))


def test_atomic_save_keeps_old_file_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "state.pt"
    ckpt.save_state(path, {"model": {"w": torch.ones(3)}, "iteration": 1})
    good = path.read_bytes()

    def broken_save(obj, f, *a, **k):
        Path(f).write_bytes(b"half a file")
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        ckpt.save_state(path, {"model": {"w": torch.zeros(3)}, "iteration": 2})
    assert path.read_bytes() == good
    assert [p.name for p in tmp_path.iterdir()] == ["state.pt"]  # no temp file left behind


def test_rng_state_round_trip():
    state = ckpt.rng_state()
    a = (np.random.rand(), torch.rand(2), __import__("random").random())
    ckpt.set_rng_state(state)
    b = (np.random.rand(), torch.rand(2), __import__("random").random())
    assert a[0] == b[0] and torch.equal(a[1], b[1]) and a[2] == b[2]


def test_fp16_on_cpu_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="fp16.*bf16"):
        train(tiny_config(tmp_path, train={"amp": "fp16", "device": "cpu"}), train_set=ToyShapes(n=8))


def test_bf16_autocast_trains_on_cpu(tmp_path):
    out = train(tiny_config(tmp_path, train={"amp": "bf16", "max_iters": 2}), train_set=ToyShapes(n=8))
    assert all(np.isfinite(out["losses"]))


def test_epoch_plan_shards_match_grad_accum():
    """World 2 x accum 1 sees the same micro-batches as world 1 x accum 2, and batches cover distinct samples."""
    single = epoch_plan(20, seed=3, epoch=1, batch_size=2, world_size=1, grad_accum=2, rank=0)
    rank0 = epoch_plan(20, seed=3, epoch=1, batch_size=2, world_size=2, grad_accum=1, rank=0)
    rank1 = epoch_plan(20, seed=3, epoch=1, batch_size=2, world_size=2, grad_accum=1, rank=1)
    assert single[0::2] == rank0 and single[1::2] == rank1
    flat = [i for b in single for i in b]
    assert len(flat) == len(set(flat)) == 20
    assert epoch_plan(20, 3, 2, 2, 1, 2, 0) != single  # a new permutation each epoch
