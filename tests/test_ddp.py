"""2-process DDP (gloo, CPU) equals single-process training with the same global batch.

Choice for BatchNorm (the SegFormer decoder has one): the single process runs batch 2 with grad_accum 2, the
two processes run batch 2 each. Every BN forward then normalises the same 2 images in both setups, so the
gradients, and therefore all trainable parameters, agree. BN *running statistics* are excluded from the
comparison: DDP keeps rank 0's (updated once per step), the single process updates them twice per step.
SyncBatchNorm is CUDA-only in PyTorch, so it cannot be the reference here. Dropout/drop-path are off
because each rank draws its own masks.
"""
import os
import socket

import torch
import torch.multiprocessing as mp

from tests.test_train import ToyShapes, read_losses, tiny_config
from vitseg.engine import checkpoint as ckpt
from vitseg.engine.train import train

torch.set_num_threads(1)
SETTINGS = dict(model={"overrides": {"drop_path_rate": 0.0, "dropout": 0.0}},
                train={"max_iters": 2, "checkpoint_interval": 2, "batch_size_per_device": 2}, optim={"lr": 1e-4})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, work_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    try:
        train(tiny_config(work_dir, **SETTINGS), train_set=ToyShapes(n=8))
    finally:
        if torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def test_two_process_ddp_matches_single_process(tmp_path):
    single_cfg = tiny_config(tmp_path / "single", **SETTINGS)
    single_cfg.train.grad_accum = 2
    train(single_cfg, train_set=ToyShapes(n=8))

    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, start_method="spawn")

    a = ckpt.load_state(tmp_path / "single" / "checkpoints" / "step_0000002.pt")
    b = ckpt.load_state(tmp_path / "ddp" / "checkpoints" / "step_0000002.pt")
    assert b["world_size"] == 2 and len(b["rng_per_rank"]) == 2
    compared = 0
    for key, value in a["model"].items():
        if key.endswith(("running_mean", "running_var", "num_batches_tracked")):
            continue
        torch.testing.assert_close(b["model"][key], value, rtol=0, atol=1e-6, msg=key)
        compared += 1
    assert compared > 100
    # The logged loss of the DDP run is the mean over ranks: equal to the single-process loss.
    torch.testing.assert_close(torch.tensor(read_losses(tmp_path / "ddp")),
                               torch.tensor(read_losses(tmp_path / "single")), rtol=0, atol=1e-5)
    # Only rank 0 wrote: one set of logs, one checkpoint folder.
    assert sorted(p.name for p in (tmp_path / "ddp" / "checkpoints").glob("step_*.pt")) == ["step_0000002.pt"]
