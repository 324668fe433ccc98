"""Synchronised BatchNorm for every branch of every dataset-aware layer.

``torch.nn.SyncBatchNorm`` only runs on accelerators; :class:`GroupBatchNorm`
does the same on any device (CPU + gloo included): the per-channel sum, sum of
squares and count are all-reduced with an autograd-aware ``all_reduce``, so
the statistics and their gradients cover the whole global batch of *that
branch's* dataset. Because each dataset's branch is called only on its own
data (its own route or its own chunk of a fused batch), each dataset's
statistics are synchronised across processes, and only across that dataset.

:func:`convert_sync_batchnorm` swaps every BatchNorm, wrapped branches
included (the wrappers stay), for torch's SyncBatchNorm on CUDA and for
:class:`GroupBatchNorm` elsewhere.
"""
from __future__ import annotations

import torch
import torch.distributed as dist
from torch import nn


class GroupBatchNorm(nn.modules.batchnorm._BatchNorm):
    """BatchNorm whose training statistics are all-reduced over the default group."""

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {x.dim()}D input)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        self._check_input_dim(x)
        if not (self.training and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        import warnings

        with warnings.catch_warnings():  # the autograd-aware all_reduce is "deprecated" but current
            warnings.simplefilter("ignore", FutureWarning)
            from torch.distributed.nn.functional import all_reduce

        c = x.shape[1]
        dims = [0] + list(range(2, x.dim()))
        count = torch.full((1,), x.numel() // c, dtype=x.dtype, device=x.device)
        stats = torch.cat([x.sum(dims), (x * x).sum(dims), count])
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            stats = all_reduce(stats)  # sum over processes, differentiable
        total = stats[-1]
        mean = stats[:c] / total
        var = (stats[c:2 * c] / total - mean * mean).clamp_min(0)
        if self.track_running_stats:
            with torch.no_grad():
                self.num_batches_tracked.add_(1)
                m = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked)
                unbiased = var * total / (total - 1).clamp_min(1)
                self.running_mean.mul_(1 - m).add_(m * mean.detach())
                self.running_var.mul_(1 - m).add_(m * unbiased.detach())
        shape = [1, c] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            y = y * self.weight.view(shape) + self.bias.view(shape)
        return y


def _convert(module: nn.Module) -> nn.Module:
    out = module
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(
            module, (GroupBatchNorm, nn.SyncBatchNorm)):
        out = GroupBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                             module.track_running_stats)
        out.load_state_dict(module.state_dict())  # weights and running statistics
        ref = next(iter(module.state_dict().values()), None)
        if ref is not None:
            out = out.to(ref.device)
        out.train(module.training)
    for name, child in module.named_children():
        out.add_module(name, _convert(child))
    return out


def convert_sync_batchnorm(model: nn.Module) -> nn.Module:
    """Synchronise every BatchNorm (each dataset branch separately)."""
    param = next(model.parameters(), None)
    if param is not None and param.device.type == "cuda":
        # torch's converter recurses into the dataset-specific wrappers
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _convert(model)
