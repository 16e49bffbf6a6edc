"""A killed run resumed with --resume equals an uninterrupted run bit-exactly on CPU (losses and weights)."""
import pytest
import torch

from tests.test_train import ToyShapes, read_losses, tiny_config
from vitseg.engine import checkpoint as ckpt
from vitseg.engine.train import train
from vitseg.errors import CheckpointError

torch.set_num_threads(1)


class Killed(Exception):
    """Stands in for SIGKILL: the process dies right after a checkpoint was written."""


def test_resume_is_bit_exact(tmp_path, monkeypatch):
    # Dropout and drop-path stay on (defaults) and the toy data flips per (seed, epoch, index): the resumed run
    # only matches if the torch RNG and the data order are restored. 8 samples / batch 2 = 4 iterations per
    # epoch, so iterations 4-6 also cross an epoch boundary.
    settings = dict(train={"max_iters": 6, "checkpoint_interval": 3, "ema": 0.9})
    full = train(tiny_config(tmp_path / "full", **settings), train_set=ToyShapes(n=8))

    original_save = ckpt.CheckpointManager.save

    def save_then_die(self, iteration, state):
        path = original_save(self, iteration, state)
        if iteration == 3:
            raise Killed
        return path

    monkeypatch.setattr(ckpt.CheckpointManager, "save", save_then_die)
    with pytest.raises(Killed):
        train(tiny_config(tmp_path / "killed", **settings), train_set=ToyShapes(n=8))
    monkeypatch.setattr(ckpt.CheckpointManager, "save", original_save)
    resumed = train(tiny_config(tmp_path / "killed", **settings), resume="auto", train_set=ToyShapes(n=8))

    assert read_losses(tmp_path / "killed") == read_losses(tmp_path / "full") == full["losses"]
    assert resumed["losses"] == full["losses"][3:]
    a = ckpt.load_state(tmp_path / "full" / "checkpoints" / "step_0000006.pt")
    b = ckpt.load_state(tmp_path / "killed" / "checkpoints" / "step_0000006.pt")
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    for key in a["ema"]["shadow"]:
        assert torch.equal(a["ema"]["shadow"][key], b["ema"]["shadow"][key]), key
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])


def test_resume_explicit_path_and_missing_file(tmp_path):
    cfg = tiny_config(tmp_path, train={"max_iters": 2, "checkpoint_interval": 1})
    train(cfg, train_set=ToyShapes(n=8))
    out = train(tiny_config(tmp_path, train={"max_iters": 3, "checkpoint_interval": 1}),
                resume=str(tmp_path / "checkpoints" / "step_0000001.pt"), train_set=ToyShapes(n=8))
    assert len(out["losses"]) == 2  # iterations 2 and 3
    with pytest.raises(CheckpointError, match="step_0000009.pt.*not found"):
        train(cfg, resume=str(tmp_path / "checkpoints" / "step_0000009.pt"), train_set=ToyShapes(n=8))
