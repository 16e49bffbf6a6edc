"""FLOP counting: attention on CPU and grouped-conv backward are counted correctly."""
import torch
import torch.nn.functional as F

from vitseg.tools.flops import count_flops


def test_grouped_conv_backward_costs_twice_its_forward():
    conv = torch.nn.Conv2d(64, 64, 3, padding=1, groups=64)
    x = torch.randn(1, 64, 16, 16, requires_grad=True)
    forward = count_flops(lambda: conv(x))
    assert forward == 2 * 64 * 16 * 16 * 9
    assert count_flops(lambda: conv(x).sum().backward()) == 3 * forward


def test_cpu_attention_forward_and_backward_are_counted():
    q, k, v = (torch.randn(1, 2, 32, 16, requires_grad=True) for _ in range(3))
    forward = count_flops(lambda: F.scaled_dot_product_attention(q, k, v))
    assert forward == 2 * (2 * 2 * 32 * 32 * 16)  # QK^T and AV
    total = count_flops(lambda: F.scaled_dot_product_attention(q, k, v).sum().backward())
    assert total >= 3 * forward
