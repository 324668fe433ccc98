"""BatchNorm folding for deployment: each eval-mode BatchNorm that directly
follows a convolution is folded into it (``cdcl export``, benchmarks).

It runs on a plain network, e.g. one dataset's :func:`common.dataset_specific.collapse`::

    plain = fold_bn(collapse(model, "nuscenes"))
"""
from __future__ import annotations

import copy
from typing import Dict

import torch
from torch import nn

from .dataset_specific import dataset_specific_modules


def _fold_pair(conv: nn.Module, bn: nn.modules.batchnorm._BatchNorm) -> nn.Module:
    fused = copy.deepcopy(conv)
    w = fused.weight
    scale = bn.weight.detach() / torch.sqrt(bn.running_var + bn.eps) if bn.affine else \
        1.0 / torch.sqrt(bn.running_var + bn.eps)
    shift = bn.bias.detach() if bn.affine else torch.zeros_like(bn.running_mean)
    bias = fused.bias.detach() if fused.bias is not None else torch.zeros_like(bn.running_mean)
    # ConvTranspose keeps output channels in dim 1 of the weight.
    if isinstance(conv, nn.modules.conv._ConvTransposeNd):
        shape = [1, -1] + [1] * (w.dim() - 2)
    else:
        shape = [-1] + [1] * (w.dim() - 1)
    fused.weight = nn.Parameter(w.detach() * scale.reshape(shape))
    fused.bias = nn.Parameter((bias - bn.running_mean) * scale + shift)
    return fused


def fold_bn(model: nn.Module) -> nn.Module:
    """Fold every eval-mode BatchNorm that directly follows a convolution into it.

    Works on a collapsed (plain) model. The graph is traced with ``torch.fx``,
    so only a BatchNorm whose input is a convolution's output used by nothing
    else is folded; BatchNorms after an activation (SalsaNext's conv → act →
    bn order) cannot be folded exactly and are left as they are. Returns a new
    ``GraphModule`` (or a copy of the model if tracing fails) in eval mode,
    with ``folded_bn`` (how many were folded) and ``unfolded_bn`` (a dict:
    each BatchNorm left, by path, -> what its input comes from, e.g.
    ``"LeakyReLU"``; None when the model could not be traced).
    """
    import torch.fx as fx

    if any(True for _ in dataset_specific_modules(model)):
        raise ValueError("fold_bn needs a plain model: call collapse(model, name) first")
    model = copy.deepcopy(model).eval()
    try:
        gm = fx.symbolic_trace(model)
    except Exception:  # data-dependent control flow: nothing can be folded safely
        model.folded_bn = 0  # type: ignore[attr-defined]
        model.unfolded_bn = None  # type: ignore[attr-defined]
        return model
    modules = dict(gm.named_modules())
    conv_types = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d,
                  nn.ConvTranspose3d)
    folded = 0
    unfolded: Dict[str, str] = {}
    for node in list(gm.graph.nodes):
        if node.op != "call_module" or not isinstance(modules.get(node.target),
                                                        nn.modules.batchnorm._BatchNorm):
            continue
        prev = node.args[0]
        if not isinstance(prev, fx.Node) or prev.op != "call_module":
            unfolded[node.target] = _node_kind(prev)
            continue
        conv = modules.get(prev.target)
        if not isinstance(conv, conv_types) or len(prev.users) != 1:
            unfolded[node.target] = (type(conv).__name__ if not isinstance(conv, conv_types) else
                                     f"{type(conv).__name__} whose output is used elsewhere too")
            continue
        bn = modules[node.target]
        if bn.running_mean is None:
            unfolded[node.target] = f"{type(conv).__name__} (no running statistics)"
            continue
        new_conv = _fold_pair(conv, bn)
        parent, _, child = prev.target.rpartition(".")
        setattr(gm.get_submodule(parent) if parent else gm, child, new_conv)
        modules[prev.target] = new_conv
        node.replace_all_uses_with(prev)
        gm.graph.erase_node(node)
        folded += 1
    gm.graph.lint()
    gm.delete_all_unused_submodules()
    gm.recompile()
    gm.folded_bn = folded  # type: ignore[attr-defined]
    gm.unfolded_bn = unfolded  # type: ignore[attr-defined]
    return gm


def _node_kind(node) -> str:
    """What an fx graph node computes, in a word (for :func:`fold_bn`'s report)."""
    import torch.fx as fx

    if not isinstance(node, fx.Node):
        return "a constant"
    if node.op == "placeholder":
        return "the network input"
    if node.op == "call_function":
        return getattr(node.target, "__name__", str(node.target))
    return str(node.target)  # call_method, get_attr
