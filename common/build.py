"""Config → objects, in one place: datasets, the model under a strategy, criteria.

Strategies (``strategy.name``), all trained by the same loop:

=================  =========================================================
``single``         one dataset, plain network (its own BN and head)
``cdcl``           shared convs, dataset-specific BN and heads (the paper)
``shared_bn``      joint training, one BN for all, dataset-specific heads
``conv_not_shared`` every conv and BN dataset-specific (ablation)
``finetune``       train on A for ``switch_at`` iterations, then on B with
                   B's own head (shared BN)
``label_remap``    B's labels mapped into A's label space
                   (``strategy.label_map``), one network, one head
=================  =========================================================
"""
from __future__ import annotations

from typing import Any, Callable, Dict, List, Optional

import torch
from torch import nn

from .config import Config, ConfigError
from .data import RemapLabels, build_label_lut
from .dataset_specific import (BATCHNORM_TYPES, CONV_TYPES, convert_dataset_specific,
                               convert_heads)
from .registry import TASKS
from .task import Task


def get_task(cfg: Config) -> Task:
    try:
        return TASKS.get(cfg.task)
    except KeyError as exc:
        raise ConfigError(f"{cfg.source}: 'task': {exc.args[0]}") from None


def build_dataset(cfg: Config, name: str, split: str, train: bool, task: Optional[Task] = None):
    """Dataset ``name`` for ``split``; label-remapped for the label_remap strategy."""
    task = task or get_task(cfg)
    ds = task.build_dataset(name, cfg.data[name].as_dict(), split, train)
    first = cfg.names[0]
    if cfg.strategy.name == "label_remap" and name != first:
        target = task.build_dataset(first, cfg.data[first].as_dict(), cfg.data[first].val_split, False)
        if name not in cfg.strategy.label_map:
            # an unseen dataset without a table: its labels must already be A's
            if name in cfg.names or num_classes_of(ds) != num_classes_of(target):
                raise ConfigError(f"{cfg.source}: strategy label_remap needs 'strategy.label_map.{name}' "
                                  f"(ids of {name} → ids of {first})")
            return ds
        lut = build_label_lut(cfg.strategy.label_map[name], ds.ignore_index)
        ds = RemapLabels(ds, lut, target.class_names)
    return ds


def num_classes_of(ds) -> int:
    return int(getattr(ds, "num_classes", None) or len(ds.class_names))


def build_model(cfg: Config, num_classes: Dict[str, int], task: Optional[Task] = None) -> nn.Module:
    """The network for ``cfg`` with the strategy's dataset-specific layers."""
    task = task or get_task(cfg)
    names = cfg.names
    strategy = cfg.strategy.name
    first = names[0]
    model = task.build_model(dict(cfg.model), num_classes[first], None)
    heads = list(getattr(model, "heads", []))
    # label_remap: one plain network and one head, every dataset in A's label space
    if strategy in ("single", "cdcl", "conv_not_shared"):
        convert_dataset_specific(model, names, BATCHNORM_TYPES)
        if strategy == "conv_not_shared":
            head_set = set(heads)
            convs = [p for p, m in model.named_modules() if isinstance(m, CONV_TYPES) and p not in head_set]
            # spconv layers are not nn.Conv*: extend here when a sparse model wants it
            convert_dataset_specific(model, names, CONV_TYPES, only=convs)
        convert_heads(model, {n: num_classes[n] for n in names}, heads)
    elif strategy in ("shared_bn", "finetune"):
        convert_heads(model, {n: num_classes[n] for n in names}, heads)
    elif strategy != "label_remap":
        raise ConfigError(f"{cfg.source}: unknown strategy {strategy!r}")
    return model


def build_criteria(cfg: Config, datasets: Dict[str, Any], task: Optional[Task] = None) -> Dict[str, Callable]:
    task = task or get_task(cfg)
    return {n: task.build_criterion(n, cfg.data[n].as_dict(), datasets[n], dict(cfg.model))
            for n in cfg.names}


def active_datasets(cfg: Config, step: int) -> List[str]:
    """Datasets that train at ``step`` (finetune switches from A to B)."""
    if cfg.strategy.name == "finetune":
        return [cfg.names[0]] if step < int(cfg.strategy.switch_at) else [cfg.names[1]]
    return cfg.names


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
