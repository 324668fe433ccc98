"""Dataset-specific modules: one copy of a layer per dataset, routed per forward pass.

The paper's "dataset-aware block" is a BatchNorm with one set of statistics and
affine parameters per dataset, everything else shared. Here that is one
generic wrapper, :class:`DatasetSpecific`, holding an ``nn.ModuleDict`` of
ordinary modules keyed by dataset name, and one converter,
:func:`convert_dataset_specific`, that swaps chosen layer types for it — the
way ``torch.nn.SyncBatchNorm.convert_sync_batchnorm`` swaps BatchNorm. The
same converter on convolutions gives the "conv not shared" ablation, and
:func:`convert_heads` (the same converter again) gives per-dataset
classifiers with their own class counts.

Routing is set for a whole forward pass with :func:`route`::

    with route(model, "semantickitti"):          # the batch is one dataset
        logits = model(x)
    with route(model, {"semantickitti": 4, "nuscenes": 2}):   # fused batch
        out = model(torch.cat([xa, xb]))          # heads return {name: logits}

A forward with no route raises. :func:`set_aliases` lets an unseen dataset
name a trained one's branch (``data.<name>.branch``): routes and collapses
by its own name then use that branch. Because the wrapper is not a ``_BatchNorm``,
``SyncBatchNorm.convert_sync_batchnorm`` recurses into it and converts each
branch, and DDP wrapping is transparent (``route`` walks ``model.modules()``).
:func:`collapse` returns a plain network holding one dataset's branches
(:mod:`common.fold` folds its BatchNorms for deployment).
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
        # Not state: routing is transient and never saved in a state dict;
        # aliases (set_aliases) come from the config each time the model is built.
        self._route: Optional[Route] = None
        self.aliases: Dict[str, str] = {}

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


def _check_route(m: DatasetSpecific, r: Route) -> Route:
    names = m.names
    if isinstance(r, str):
        r = m.aliases.get(r, r)
        if r not in names:
            raise RouteError(f"unknown dataset {r!r}; this model knows {names}")
        return r
    if isinstance(r, Mapping):
        if not r:
            raise RouteError("a fused route needs at least one dataset")
        for name, size in r.items():
            if name not in names:
                raise RouteError(f"unknown dataset {name!r} in fused route; this model knows {names}")
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
        m._route = None if r is None else _check_route(m, r)


def set_aliases(model: nn.Module, aliases: Mapping[str, str]) -> None:
    """Serve each dataset ``alias`` through branch ``aliases[alias]`` in every
    :func:`route` and :func:`collapse` of ``model`` (an unseen dataset,
    ``data.<name>.branch``): set once where the model is built from its config."""
    for _, m in dataset_specific_modules(model):
        unknown = {a: b for a, b in aliases.items() if b not in m.names}
        if unknown:
            raise RouteError(f"aliases {unknown} name no branch; this model knows {m.names}")
        m.aliases = dict(aliases)


def branch_name(model: nn.Module, name: str) -> str:
    """The branch that serves dataset ``name`` (itself unless it is an alias)."""
    for _, m in dataset_specific_modules(model):
        return m.aliases.get(name, name)
    return name


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
            m._route = _check_route(m, r)
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

    todo = [p for p in heads if not isinstance(model.get_submodule(p), DatasetSpecific)]
    return convert_dataset_specific(model, list(num_classes), (nn.Module,), factory, split_output=True, only=todo)


def collapse(model: nn.Module, name: str) -> nn.Module:
    """A plain copy of ``model`` holding only dataset ``name``'s branches.

    The result has the parameter count and FLOPs of the single-dataset
    network and computes exactly what ``model`` computes under
    ``route(model, name)``. The input model is not modified.
    """
    names, name = dataset_names(model), branch_name(model, name)
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
