"""Precise BatchNorm: recompute one branch's running statistics on a loader.

Used for zero-shot transfer to an unseen dataset (the paper's KITTI table):
run the chosen dataset branch over the new data in train mode with momentum
``None`` (a cumulative average), weights frozen. The commands that do it
(``cdcl adapt``, and ``cdcl precise-bn``, its alias) live in
:mod:`common.adapt`.
"""
from __future__ import annotations

import contextlib
import logging
from typing import Any, Callable, Dict, Hashable, Iterable, Iterator, List, Optional

import torch
from torch import nn

from .dataset_specific import route

logger = logging.getLogger(__name__)


@torch.no_grad()
def update_bn_stats(model: nn.Module, loader: Iterable, forward: Callable[[nn.Module, Any], Any],
                    num_batches: int = 200, branch: Optional[str] = None,
                    device: Optional[torch.device] = None) -> int:
    """Recompute BN running mean/var of ``branch`` (or a plain model) over
    ``num_batches`` batches. Returns the number of batches used."""
    from .utils import to_device

    bns = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    saved = [(m.momentum, m.training) for m in bns]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # cumulative moving average: every batch weighs the same
    model.eval()
    for m in bns:
        m.train()
    used = 0
    ctx = route(model, branch) if branch else contextlib.nullcontext()
    try:
        with ctx:
            for batch in (loader if num_batches > 0 else ()):
                forward(model, to_device(batch, device) if device is not None else batch)
                used += 1
                if used >= num_batches:  # before the loader reads a batch that is not used
                    break
    finally:
        for m, (mom, tr) in zip(bns, saved):
            m.momentum = mom
            m.train(tr)
    model.eval()
    return used


def _unbatched(item: Any) -> Any:
    return item


def equal_size_batches(dataset, batch_size: int, collate_fn: Optional[Callable] = None,
                       shuffle: bool = False, generator: Optional[torch.Generator] = None) -> Iterator[Any]:
    """Batches of ``dataset`` whose items all have one input shape.

    Collating images of different sizes pads them, and padding would enter
    the recomputed statistics; so each item goes to the pending batch of its
    ``inputs`` shape (items without an ``inputs`` tensor share one), which is
    collated once it holds ``batch_size`` items. With one shape (range images,
    resized images) these are exactly the batches of ``DataLoader(dataset,
    batch_size, shuffle, generator=generator)``, its last partial batch
    included. With several, partial leftovers come last and a leftover of one
    item is skipped: train-mode BatchNorm cannot take statistics from one
    image's global pooling bin (one value per channel).
    """
    from torch.utils.data import DataLoader
    from torch.utils.data.dataloader import default_collate

    collate_fn = collate_fn or default_collate
    items = DataLoader(dataset, batch_size=None, shuffle=shuffle, generator=generator, collate_fn=_unbatched)
    pending: Dict[Hashable, List[Any]] = {}
    shapes = set()
    for item in items:
        inputs = item.get("inputs") if isinstance(item, dict) else None
        key = tuple(inputs.shape) if isinstance(inputs, torch.Tensor) else None
        shapes.add(key)
        bucket = pending.setdefault(key, [])
        bucket.append(item)
        if len(bucket) == batch_size:
            yield collate_fn(pending.pop(key))
    for key, bucket in pending.items():
        if len(bucket) == 1 and len(shapes) > 1 and batch_size > 1:
            logger.info("precise BN: skipping a lone item of input shape %s (no other item of its size left)",
                        key)
            continue
        yield collate_fn(bucket)
