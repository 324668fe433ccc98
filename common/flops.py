"""Parameter and multiply-accumulate counts (forward hooks on conv/linear layers)."""
from __future__ import annotations

import math

import torch
from torch import nn


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


@torch.no_grad()
def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Multiply-accumulates of one forward pass on ``example`` (convs + linears).

    FLOPs are usually quoted as 2 x MACs; norms and activations are ignored as
    is customary in segmentation papers.
    """
    total = [0]

    def conv_hook(m, inp, out):
        k = math.prod(m.kernel_size) * (m.in_channels // m.groups)
        total[0] += out.numel() * k

    def tconv_hook(m, inp, out):
        k = math.prod(m.kernel_size) * (m.out_channels // m.groups)
        total[0] += inp[0].numel() * k

    def linear_hook(m, inp, out):
        total[0] += out.numel() * m.in_features

    hooks = []
    for m in model.modules():
        if isinstance(m, nn.modules.conv._ConvTransposeNd):
            hooks.append(m.register_forward_hook(tconv_hook))
        elif isinstance(m, nn.modules.conv._ConvNd):
            hooks.append(m.register_forward_hook(conv_hook))
        elif isinstance(m, nn.Linear):
            hooks.append(m.register_forward_hook(linear_hook))
    was = model.training
    model.eval()
    try:
        model(example)
    finally:
        for h in hooks:
            h.remove()
        model.train(was)
    return int(total[0])
