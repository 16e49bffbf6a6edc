"""Training, evaluation and inference engines.

`train(cfg)` runs the training loop (vitseg.engine.train); optimiser groups and schedules live in
vitseg.engine.optim, training-state checkpoints in vitseg.engine.checkpoint.
"""
from .train import train

__all__ = ["train"]
