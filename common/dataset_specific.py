"""Dataset-specific modules: one copy of a layer per dataset, routed per forward pass.

The paper's "dataset-aware block" is a BatchNorm with one set of statistics and
affine parameters per dataset, everything else shared. Here that is one
generic wrapper, :class:`DatasetSpecific`, holding an ``nn.ModuleDict`` of
ordinary modules keyed by dataset name, and one converter,
:func:`convert_dataset_specific`, that swaps chosen layer types for it — the
way ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` swaps BatchNorm. The
same converter on convolutions gives the "conv not shared" ablation, and
:func:`convert_heads` gives per-dataset classifiers with their own class
counts.

Routing is set for a whole forward pass with :func:`route`::

    with route(model, "semantickitti"):          # the batch is one dataset
        logits = model(x)
    with route(model, {"semantickitti": 4, "nuscenes": 2}):   # fused batch
        out = model(torch.cat([xa, xb]))          # heads return {name: logits}

A forward with no route raises. Because the wrapper is not a ``_BatchNorm``,
``SyncBatchNorm.convert_sync_batchnorm`` recurses into it and converts each
branch, and DDP wrapping is transparent (``route`` walks ``model.modules()``).
:func:`collapse` returns a plain network holding one dataset's branches.
"""
from __future__ import annotations

import contextlib
import copy
from typing import Any, Callable, Dict, Iterable, Iterator, List, Mapping, Optional, Sequence, Tuple, Type, Union

import torch
from torch import nn

Route = Union[str, Mapping[str, int]]

BATCHNORM_TYPES: Tuple[Type[nn.Module], ...] = (
    nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm)
CONV_TYPES: Tuple[Type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d)


class RouteError(RuntimeError):
    """A dataset-specific module ran without a valid route."""


class DatasetSpecific(nn.Module):
    """One copy of a module per dataset; the active route picks the copy.

    ``split_output=False`` (norms, shared-shape layers): under a fused route
    each branch processes its own chunk of the batch (dim 0) and the chunks are
    concatenated back. ``split_output=True`` (classifier heads, whose class
    counts may differ): under a fused route the result is ``{name: chunk}``.
    """

    def __init__(self, branches: Mapping[str, nn.Module], split_output: bool = False) -> None:
        super().__init__()
        if not branches:
            raise ValueError("DatasetSpecific needs at least one branch")
        self.branches = nn.ModuleDict(dict(branches))
        self.split_output = split_output
        # Not a buffer: routing is transient and never saved in a state dict.
        self._route: Optional[Route] = None

    @property
    def names(self) -> List[str]:
        return list(self.branches.keys())

    def extra_repr(self) -> str:
        return f"names={self.names}, split_output={self.split_output}"

    def forward(self, x: torch.Tensor, *args: Any, **kwargs: Any):
        r = self._route
        if r is None:
            raise RouteError(
                "dataset-specific module called without a route; wrap the forward pass in "
                f"`with common.dataset_specific.route(model, name):` (datasets: {self.names})")
        if isinstance(r, str):
            return self.branches[r](x, *args, **kwargs)
        sizes = list(r.values())
        if sum(sizes) != x.shape[0]:
            raise RouteError(f"fused route sizes {dict(r)} sum to {sum(sizes)} but the batch has "
                             f"{x.shape[0]} rows")
        outs = {name: self.branches[name](chunk, *args, **kwargs)
                for name, chunk in zip(r.keys(), torch.split(x, sizes, dim=0))}
        if self.split_output:
            return outs
        return torch.cat(list(outs.values()), dim=0)


def _check_route(names: Sequence[str], r: Route) -> Route:
    if isinstance(r, str):
        if r not in names:
            raise RouteError(f"unknown dataset {r!r}; this model knows {list(names)}")
        return r
    if isinstance(r, Mapping):
        if not r:
            raise RouteError("a fused route needs at least one dataset")
        for name, size in r.items():
            if name not in names:
                raise RouteError(f"unknown dataset {name!r} in fused route; this model knows {list(names)}")
            if int(size) < 1:
                raise RouteError(f"fused route size for {name!r} must be >= 1, got {size}")
        return dict((k, int(v)) for k, v in r.items())
    raise RouteError(f"route must be a dataset name or {{name: batch_size}}, not {type(r).__name__}")


def dataset_specific_modules(model: nn.Module) -> Iterator[Tuple[str, DatasetSpecific]]:
    for name, m in model.named_modules():
        if isinstance(m, DatasetSpecific):
            yield name, m


def dataset_names(model: nn.Module) -> List[str]:
    """Dataset names of the model's wrappers (in branch order); [] if none."""
    for _, m in dataset_specific_modules(model):
        return m.names
    return []


def set_route(model: nn.Module, r: Optional[Route]) -> None:
    """Set (or clear with ``None``) the route on every wrapper of ``model``."""
    for _, m in dataset_specific_modules(model):
        m._route = None if r is None else _check_route(m.names, r)


@contextlib.contextmanager
def route(model: nn.Module, r: Route) -> Iterator[nn.Module]:
    """Route every dataset-specific module of ``model`` for the enclosed forward.

    ``r`` is a dataset name (the whole batch is that dataset) or an ordered
    ``{name: batch_size}`` mapping (the batch is the concatenation of those
    chunks, in that order). Works through DDP/any wrapper: it walks
    ``model.modules()``. Nested routes restore the outer one on exit.
    """
    mods = [m for _, m in dataset_specific_modules(model)]
    previous = [m._route for m in mods]
    try:
        for m in mods:
            m._route = _check_route(m.names, r)
        yield model
    finally:
        for m, p in zip(mods, previous):
            m._route = p


def _replace_module(root: nn.Module, dotted: str, new: nn.Module) -> None:
    parent_name, _, child = dotted.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, new)


def convert_dataset_specific(
    model: nn.Module,
    names: Sequence[str],
    types: Tuple[Type[nn.Module], ...] = BATCHNORM_TYPES,
    factory: Optional[Callable[[str, nn.Module], nn.Module]] = None,
    split_output: bool = False,
    only: Optional[Iterable[str]] = None,
) -> nn.Module:
    """Swap every instance of ``types`` in ``model`` for a :class:`DatasetSpecific`.

    Each branch is ``copy.deepcopy`` of the original (weights and running
    statistics cloned) unless ``factory(name, module)`` builds it. ``only``
    restricts the conversion to those dotted module paths. Returns the model
    (converted in place; a matching root module is returned wrapped).
    Modules already inside a wrapper are left alone.
    """
    names = list(names)
    if not names or len(set(names)) != len(names):
        raise ValueError(f"dataset names must be non-empty and unique, got {names}")
    only_set = set(only) if only is not None else None

    def make(module: nn.Module) -> DatasetSpecific:
        return DatasetSpecific({n: (factory(n, module) if factory else copy.deepcopy(module))
                                for n in names}, split_output=split_output)

    if isinstance(model, types) and (only_set is None or "" in only_set):
        return make(model)
    targets = []
    inside_wrapper = set()
    for path, m in model.named_modules():
        if any(path.startswith(p + ".") for p in inside_wrapper):
            continue
        if isinstance(m, DatasetSpecific):
            inside_wrapper.add(path)
            continue
        if path and isinstance(m, types) and (only_set is None or path in only_set):
            targets.append(path)
    if only_set is not None:
        missing = only_set - set(targets)
        if missing:
            raise KeyError(f"modules not found or not of types {[t.__name__ for t in types]}: {sorted(missing)}")
    for path in targets:
        _replace_module(model, path, make(model.get_submodule(path)))
    return model


def _rebuild_head(module: nn.Module, out_features: int) -> nn.Module:
    """A fresh classifier like ``module`` with ``out_features`` outputs."""
    if isinstance(module, nn.Linear):
        new = nn.Linear(module.in_features, out_features, bias=module.bias is not None)
    elif isinstance(module, (nn.Conv1d, nn.Conv2d, nn.Conv3d)):
        new = type(module)(module.in_channels, out_features, module.kernel_size, module.stride,
                           module.padding, module.dilation, module.groups, module.bias is not None,
                           module.padding_mode)
    else:
        raise TypeError(f"cannot rebuild a head of type {type(module).__name__}; "
                        "use a Linear or Conv layer as the classifier")
    return new.to(next(module.parameters()).device)


def convert_heads(model: nn.Module, num_classes: Mapping[str, int],
                  heads: Optional[Sequence[str]] = None) -> nn.Module:
    """Give every dataset its own classifier (its own class count).

    ``heads`` defaults to ``model.heads`` (dotted paths of the classifier
    layers). A dataset whose class count equals the original head's starts
    from a copy of it; others get freshly initialised layers.
    """
    heads = list(heads if heads is not None else getattr(model, "heads", []))
    if not heads:
        raise ValueError(f"{type(model).__name__} declares no classifier heads "
                         "(set `heads = [dotted paths]` on the model)")

    def factory(name: str, module: nn.Module) -> nn.Module:
        k = int(num_classes[name])
        out = module.out_features if isinstance(module, nn.Linear) else module.out_channels
        return copy.deepcopy(module) if k == out else _rebuild_head(module, k)

    for path in heads:
        m = model.get_submodule(path)
        if isinstance(m, DatasetSpecific):
            continue
        _replace_module(model, path, DatasetSpecific(
            {n: factory(n, m) for n in num_classes}, split_output=True))
    return model


def collapse(model: nn.Module, name: str) -> nn.Module:
    """A plain copy of ``model`` holding only dataset ``name``'s branches.

    The result has the parameter count and FLOPs of the single-dataset
    network and computes exactly what ``model`` computes under
    ``route(model, name)``. The input model is not modified.
    """
    names = dataset_names(model)
    if names and name not in names:
        raise KeyError(f"unknown dataset {name!r}; this model knows {names}")
    out = copy.deepcopy(model)
    for path, m in list(dataset_specific_modules(out)):
        if path == "":
            return m.branches[name]
        try:
            out.get_submodule(path)
        except AttributeError:  # inside a wrapper already replaced
            continue
        _replace_module(out, path, m.branches[name])
    return out


def map_logits(fn: Callable[[torch.Tensor], torch.Tensor], x):
    """Apply ``fn`` to logits that may be a per-dataset dict (fused route)."""
    if isinstance(x, dict):
        return {k: fn(v) for k, v in x.items()}
    return fn(x)


def select_output(out: Any, name: str, sizes: Optional[Mapping[str, int]] = None) -> Any:
    """Dataset ``name``'s part of a model output.

    ``out`` is a tensor, a per-dataset dict from a head under a fused route,
    or a dict/list/tuple of those. With ``sizes`` (the fused route) plain
    tensors are split along dim 0; without, they are returned as they are.
    """
    if isinstance(out, torch.Tensor):
        if sizes is None:
            return out
        keys = list(sizes.keys())
        return torch.split(out, list(sizes.values()), dim=0)[keys.index(name)]
    if isinstance(out, dict):
        if sizes is not None and set(out.keys()) == set(sizes.keys()):
            return out[name]
        return {k: select_output(v, name, sizes) for k, v in out.items()}
    if isinstance(out, (list, tuple)):
        return type(out)(select_output(v, name, sizes) for v in out)
    return out


# -- BatchNorm folding ----------------------------------------------------------

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
