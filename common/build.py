"""Config → objects, in one place: datasets, the model under a strategy, criteria.

Strategies (``strategy.name``) are rows of :data:`STRATEGIES`, all trained by
the same loop; the trainer, the config checks and evaluation read the row,
never the name:

=================== ========================================================
``single``          one dataset, plain network (its own BN and head)
``cdcl``            shared convs, dataset-specific BN and heads (the paper)
``shared_bn``       joint training, one BN for all, dataset-specific heads
``conv_not_shared`` every conv and BN dataset-specific (ablation)
``finetune``        train on A for ``switch_at`` iterations, then on B with
                    B's own head (shared BN)
``two_stage``       the paper's Table 6 domain-adaptation baseline: A, then
                    B with B's own BN (a copy of A's at the switch) and head
``label_remap``     B's labels mapped into A's label space
                    (``strategy.label_map``), one network, one head
=================== ========================================================

A switching strategy (``finetune``, ``two_stage``) trains only A before
``strategy.switch_at`` and only B from then on; :func:`begin_stage` makes
B's dataset-specific branches (its head apart) copies of A's at the switch
and, with ``strategy.freeze_conv``, stops every update of the shared
parameters after it.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Dict, List, Optional, Tuple, Type

import torch
from torch import nn

from .config import Config, ConfigError
from .data import RemapLabels, build_label_lut
from .dataset_specific import (BATCHNORM_TYPES, CONV_TYPES, convert_dataset_specific, convert_heads,
                               dataset_specific_modules, set_aliases)
from .registry import TASKS
from .task import Task


def _check_switch(cfg: Config) -> None:
    """``strategy.switch_at`` of a switching strategy: set, and B gets steps."""
    src, name, k, n = cfg.source, cfg.strategy.name, cfg.strategy.switch_at, cfg.train.iterations
    if not k:
        raise ConfigError(f"{src}: strategy {name!r} needs 'strategy.switch_at' (iterations on the first dataset)")
    if n is not None and k >= n:  # train.epochs: the length is known only once the data is read
        raise ConfigError(f"{src}: 'strategy.switch_at' ({k}) must be below 'train.iterations' ({n}): "
                          f"strategy {name!r} trains {cfg.names[1]} from step switch_at on")


def _check_label_map(cfg: Config) -> None:
    """B (the second trained dataset) needs a table into A's ids; an unseen
    dataset may have one (without one its labels must already be A's)."""
    src, (a, b) = cfg.source, cfg.names
    for name, table in cfg.strategy.label_map.items():
        if name not in cfg.data or name == a:
            others = [n for n in cfg.data if n != a]
            raise ConfigError(f"{src}: 'strategy.label_map.{name}' names no dataset to map into {a}'s ids; "
                              f"datasets: {others}")
        if not isinstance(table, dict) or not all(
                isinstance(k, int) and isinstance(v, int) and not isinstance(k, bool) and not isinstance(v, bool)
                for k, v in table.items()):
            raise ConfigError(f"{src}: 'strategy.label_map.{name}' must map ids of {name} to ids of {a} "
                              f"(integers), got {table!r}")
    if b not in cfg.strategy.label_map:
        raise ConfigError(f"{src}: strategy {cfg.strategy.name!r} needs 'strategy.label_map.{b}' "
                          f"(ids of {b} → ids of {a})")


@dataclasses.dataclass(frozen=True)
class Strategy:
    """How a strategy shares the network and the data: one row of :data:`STRATEGIES`."""

    #: layer types made dataset-specific (the classifier heads apart)
    specific: Tuple[Type[nn.Module], ...] = BATCHNORM_TYPES
    #: a head per dataset; False: one head, every dataset in the first one's classes
    heads: bool = True
    #: datasets after the first are mapped into the first one's ids (``strategy.label_map``)
    remap_labels: bool = False
    #: the first dataset trains until ``strategy.switch_at``, then only the second
    #: (:func:`begin_stage`; ``strategy.freeze_conv`` applies)
    switch: bool = False
    #: DDP: parameters may get no gradient in a step (a head whose dataset sits out)
    find_unused: bool = False
    #: the number of trained datasets it needs (None: any)
    datasets: Optional[int] = None
    #: further checks of the config (raise ConfigError naming the key)
    check: Optional[Callable[[Config], None]] = None


STRATEGIES: Dict[str, Strategy] = {
    "single": Strategy(datasets=1),
    "cdcl": Strategy(),
    "shared_bn": Strategy(specific=()),
    "conv_not_shared": Strategy(specific=BATCHNORM_TYPES + CONV_TYPES),
    "finetune": Strategy(specific=(), switch=True, find_unused=True, datasets=2),
    "two_stage": Strategy(switch=True, find_unused=True, datasets=2),
    "label_remap": Strategy(specific=(), heads=False, remap_labels=True, datasets=2, check=_check_label_map),
}


def strategy_of(cfg: Config) -> Strategy:
    try:
        return STRATEGIES[cfg.strategy.name]
    except KeyError:
        raise ConfigError(f"{cfg.source}: 'strategy.name' is {cfg.strategy.name!r}; "
                          f"valid: {', '.join(STRATEGIES)}") from None


def check_strategy(cfg: Config) -> None:
    """The strategy's rules for the config: a known name, the number of trained
    datasets, its own keys (called by :func:`common.config.validate`)."""
    s = strategy_of(cfg)
    if s.datasets is not None and len(cfg.names) != s.datasets:
        raise ConfigError(f"{cfg.source}: strategy {cfg.strategy.name!r} needs exactly {s.datasets} trained "
                          f"dataset(s) under 'data', got {cfg.names}")
    if s.switch:
        _check_switch(cfg)
    elif cfg.strategy.freeze_conv:
        switching = [n for n, row in STRATEGIES.items() if row.switch]
        raise ConfigError(f"{cfg.source}: 'strategy.freeze_conv' freezes the shared layers after the switch of "
                          f"{' or '.join(switching)}; strategy {cfg.strategy.name!r} has no switch")
    if s.check is not None:
        s.check(cfg)


def get_task(cfg: Config) -> Task:
    try:
        return TASKS.get(cfg.task)
    except KeyError as exc:
        raise ConfigError(f"{cfg.source}: 'task': {exc.args[0]}") from None


def build_dataset(cfg: Config, name: str, split: str, train: bool, task: Optional[Task] = None):
    """Dataset ``name`` for ``split``; label-remapped where the strategy says so."""
    task = task or get_task(cfg)
    ds = task.build_dataset(name, cfg.data[name].as_dict(), split, train)
    first = cfg.names[0]
    if strategy_of(cfg).remap_labels and name != first:
        target = task.build_dataset(first, cfg.data[first].as_dict(), cfg.data[first].val_split, False)
        if name not in cfg.strategy.label_map:
            # an unseen dataset without a table: its labels must already be A's, unless
            # data.<name>.label_map_from reads the model in its own classes (common.adapt)
            if name in cfg.names or (num_classes_of(ds) != num_classes_of(target)
                                     and not cfg.data[name].label_map_from):
                raise ConfigError(f"{cfg.source}: strategy {cfg.strategy.name!r} needs "
                                  f"'strategy.label_map.{name}' (ids of {name} → ids of {first})")
            return ds
        lut = build_label_lut(cfg.strategy.label_map[name], ds.ignore_index)
        ds = RemapLabels(ds, lut, target.class_names)
    return ds


def num_classes_of(ds) -> int:
    return int(getattr(ds, "num_classes", None) or len(ds.class_names))


def build_model(cfg: Config, num_classes: Dict[str, int], task: Optional[Task] = None) -> nn.Module:
    """The network for ``cfg`` with the strategy's dataset-specific layers; an
    unseen dataset (``data.<name>.branch``) routes to its trained one's branch."""
    task = task or get_task(cfg)
    names, s = cfg.names, strategy_of(cfg)
    model = task.build_model(dict(cfg.model), num_classes[names[0]], None)
    heads = list(getattr(model, "heads", []))
    if s.specific:  # spconv layers are not nn.Conv*: extend the row when a sparse model wants them
        convert_dataset_specific(model, names, s.specific, only=[
            p for p, m in model.named_modules() if p and isinstance(m, s.specific) and p not in heads])
    if s.heads:
        convert_heads(model, {n: num_classes[n] for n in names}, heads)
    set_aliases(model, {n: d.branch for n, d in cfg.data.items() if d.branch is not None})
    return model


def build_criteria(cfg: Config, datasets: Dict[str, Any], task: Optional[Task] = None) -> Dict[str, Callable]:
    task = task or get_task(cfg)
    return {n: task.build_criterion(n, cfg.data[n].as_dict(), datasets[n], dict(cfg.model))
            for n in cfg.names}


def active_datasets(cfg: Config, step: int) -> List[str]:
    """Datasets that train at ``step`` (a switching strategy trains A, then B)."""
    if strategy_of(cfg).switch:
        return [cfg.names[0]] if step < int(cfg.strategy.switch_at) else [cfg.names[1]]
    return cfg.names


@torch.no_grad()
def begin_stage(model: nn.Module, cfg: Config, step: int) -> None:
    """Put ``model`` into the stage of ``step`` under a switching strategy (a
    no-op before ``strategy.switch_at`` and for the others); the trainer calls
    it at an attempt's first step and at the switch.

    At ``switch_at`` exactly, B's branch of every dataset-specific layer but
    the heads becomes a copy of A's trained one (statistics and affine: B's
    new BN starts from A's; B's own head stays as built). Nothing routes to B
    before the switch, so its branches hold their initial values until then,
    and a resume after the switch finds the copy in the checkpoint. From the
    switch on, ``strategy.freeze_conv`` turns ``requires_grad`` off for every
    parameter outside the dataset-specific layers: such a parameter gets no
    gradient, and SGD skips parameters without one, weight decay and momentum
    included (DDP leaves the gradients of unused parameters as they are)."""
    k = cfg.strategy.switch_at
    if not strategy_of(cfg).switch or step < k:
        return
    a, b = cfg.names
    specific = set()
    for _, m in dataset_specific_modules(model):
        specific.update(id(p) for p in m.parameters())
        if step == k and not m.split_output:  # split_output: a classifier head
            m.branches[b].load_state_dict(m.branches[a].state_dict())
    if cfg.strategy.freeze_conv:
        for p in model.parameters():
            if id(p) not in specific:
                p.requires_grad_(False)


def parameter_groups(model: nn.Module, weight_decay: float) -> List[Dict[str, Any]]:
    """No weight decay on norm parameters and biases (common practice)."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim <= 1 else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay},
            {"params": no_decay, "weight_decay": 0.0}]


def poly_lambda(iterations: int, power: float, warmup_iters: int, warmup_ratio: float) -> Callable[[int], float]:
    def f(step: int) -> float:
        poly = (1.0 - min(step, iterations) / float(iterations)) ** power
        if warmup_iters and step < warmup_iters:
            alpha = step / float(warmup_iters)
            return poly * (warmup_ratio + (1.0 - warmup_ratio) * alpha)
        return poly
    return f


def build_optimizer(cfg: Config, model: nn.Module):
    t = cfg.train
    opt = torch.optim.SGD(parameter_groups(model, t.weight_decay), lr=t.lr, momentum=t.momentum,
                          nesterov=t.nesterov)
    sched = torch.optim.lr_scheduler.LambdaLR(
        opt, poly_lambda(t.iterations, t.poly_power, t.warmup_iters, t.warmup_ratio))
    return opt, sched
