"""Parameter groups (no-decay, head lr multiplier, layer-wise decay) and the warmup + poly schedule."""
import pytest
import torch

from vitseg import create_model
from vitseg.config import OptimConfig, TrainConfig
from vitseg.engine.optim import PolyWarmupSchedule, build_optimizer, param_groups, poly_warmup_factor
from vitseg.errors import ConfigError


@pytest.fixture(scope="module")
def model():
    return create_model("segformer_b0", num_classes=4)


def group_of(groups, name):
    return next(g for g in groups if name in g["names"])


def test_segformer_paper_groups(model):
    """Spec: 'norm' in the name -> wd 0; 'head' -> lr x10 (including the decoder BN); biases keep decay."""
    groups = param_groups(model, OptimConfig())
    assert sum(len(g["params"]) for g in groups) == len(list(model.parameters()))
    norm = group_of(groups, "backbone.block1.0.norm1.weight")
    assert norm["weight_decay"] == 0.0 and norm["lr_mult"] == 1.0
    assert group_of(groups, "backbone.block1.0.attn.q.bias")["weight_decay"] == 0.01
    assert group_of(groups, "backbone.block1.0.attn.q.weight")["weight_decay"] == 0.01
    head_bn = group_of(groups, "decode_head.linear_fuse.bn.weight")
    assert head_bn["lr_mult"] == 10.0 and head_bn["weight_decay"] == 0.01
    opt = build_optimizer(model, OptimConfig(lr=6e-5))
    lrs = {n: g["lr"] for g in opt.param_groups for n in g["names"]}
    assert lrs["decode_head.linear_pred.weight"] == pytest.approx(6e-4)
    assert lrs["backbone.patch_embed1.proj.weight"] == pytest.approx(6e-5)


def test_no_decay_for_1d_params(model):
    groups = param_groups(model, OptimConfig(no_decay_1d=True))
    assert group_of(groups, "backbone.block1.0.attn.q.bias")["weight_decay"] == 0.0
    assert group_of(groups, "decode_head.linear_fuse.bn.bias")["weight_decay"] == 0.0
    assert group_of(groups, "backbone.block1.0.attn.q.weight")["weight_decay"] == 0.01


def test_layer_decay_values(model):
    rate = 0.9
    groups = param_groups(model, OptimConfig(layer_decay=rate, head_lr_mult=1.0))
    bb = model.backbone
    depth = bb.num_layers  # 2+2+2+2 blocks + 1 (patch embedding) for MiT-B0
    assert group_of(groups, "backbone.patch_embed1.proj.weight")["lr_mult"] == pytest.approx(rate ** depth)
    assert group_of(groups, "backbone.block1.0.mlp.fc1.weight")["lr_mult"] == pytest.approx(rate ** (depth - 1))
    # The last block and the final norm share the deepest id (num_layers - 1); only the head gets 1.
    assert group_of(groups, "backbone.block4.1.mlp.fc1.weight")["lr_mult"] == pytest.approx(rate)
    assert group_of(groups, "backbone.norm4.weight")["lr_mult"] == pytest.approx(rate)
    assert group_of(groups, "decode_head.linear_pred.weight")["lr_mult"] == 1.0
    with pytest.raises(ConfigError, match="layer_decay"):
        param_groups(torch.nn.Sequential(torch.nn.Linear(2, 2)), OptimConfig(layer_decay=0.9))


def test_warmup_then_poly():
    f = lambda it: poly_warmup_factor(it, max_iters=100, warmup_iters=10, warmup_ratio=1e-6, power=1.0)
    assert f(0) == pytest.approx(1e-6)                                    # warmup starts at warmup_ratio
    assert f(5) == pytest.approx((1 - 0.05) * (1 - 0.5 * (1 - 1e-6)))     # linear warmup x poly value
    assert f(10) == pytest.approx(0.9)
    assert f(55) == pytest.approx(0.45) and f(100) == 0.0
    assert poly_warmup_factor(50, 100, 0, power=2.0) == pytest.approx(0.25)
    assert poly_warmup_factor(100, 100, 0, min_ratio=0.1) == pytest.approx(0.1)


def test_schedule_sets_group_lrs_and_restores():
    model = torch.nn.Linear(2, 2)
    opt = build_optimizer(model, OptimConfig(lr=1e-3, head_names=["head"]))
    sched = PolyWarmupSchedule(opt, TrainConfig(warmup_iters=0), base_lr=1e-3, max_iters=10)
    sched.apply(5)
    assert opt.param_groups[0]["lr"] == pytest.approx(5e-4)
    other = PolyWarmupSchedule(opt, TrainConfig(warmup_iters=0), base_lr=1e-3, max_iters=10)
    other.load_state_dict(sched.state_dict())
    assert other.iteration == 5 and opt.param_groups[0]["lr"] == pytest.approx(5e-4)
