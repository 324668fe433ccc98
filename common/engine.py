"""Dataset alternation training: one optimisation step over several datasets.

``train_step`` is the research, so it reads top to bottom. Three modes:

* ``dat`` (the paper's dataset alternation training): for each dataset, a
  forward pass routed to it and its weighted loss; the losses are summed; one
  backward pass; one optimizer step.
* ``fused``: one forward pass over the concatenated batches, each
  dataset-aware BatchNorm branch normalising only its own chunk, each head
  seeing only its own rows. Same losses and gradients as ``dat`` (up to float
  rounding), fewer kernel launches. Needs equal input shapes. On a CPU
  (:data:`PER_DATASET_FORWARD_DEVICES`) it runs ``dat``'s per-dataset forwards,
  which are faster there and compute the same.
* ``sequential`` (the paper's "without DAT" ablation): forward, backward and
  optimizer step after each dataset in turn.

The fused mode's helpers live here too: :func:`fuse_batches`, and
:func:`select_output` / :func:`map_logits` for outputs whose per-dataset heads
return ``{dataset: logits_chunk}``.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, ContextManager, Dict, Mapping, Optional

import torch
from torch import nn

from .dataset_specific import route
from .dist import is_distributed

Batch = Dict[str, Any]
Criterion = Callable[[Any, Batch], torch.Tensor]


class NonFiniteLossError(FloatingPointError):
    """A loss was NaN or inf; the step was not applied."""

    def __init__(self, step: Optional[int], dataset: str, value: float, elsewhere: bool = False) -> None:
        # elsewhere: this rank's loss was finite, another DDP rank's was not
        value = math.nan if elsewhere else value
        what = "on another process" if elsewhere else str(value)
        super().__init__(f"non-finite loss {what} at step {step} on dataset {dataset!r}; "
                         "the weights were not updated (set train.on_nonfinite=skip to skip such steps)")
        self.step, self.dataset, self.value = step, dataset, value


def default_forward(model: nn.Module, batch: Batch):
    return model(batch["inputs"])


#: Device types on which ``train.mode=fused`` runs the per-dataset forwards of
#: ``dat`` rather than one forward over the concatenated batch. Both compute the
#: same losses, gradients and running statistics (every BatchNorm branch sees
#: exactly its dataset's rows either way); what differs is speed. One forward
#: saves kernel launches, which an accelerator counts and a CPU hardly does; on
#: a CPU the concatenated batch instead doubles every layer's working set, and
#: once that outgrows the cache the convolutions run slower per image
#: (benchmarks/bench_core.py, 2 cores, 2 x 4 images of 3x128x128: one forward
#: 0.8x as fast as ``dat``; a 32-channel 3x3 convolution's forward + backward
#: at batch 8 costs 1.3x two at batch 4 there, 1.0x at 64x64).
PER_DATASET_FORWARD_DEVICES = frozenset({"cpu"})


def batch_size(batch: Batch) -> int:
    return int(batch["inputs"].shape[0])


def check_fusable(batches: Mapping[str, Batch]) -> None:
    """Raise unless every dataset's inputs have the same trailing shape (what
    ``train.mode=fused`` needs, checked on every device alike)."""
    shapes = {n: tuple(b["inputs"].shape[1:]) for n, b in batches.items()}
    if len(set(shapes.values())) > 1:
        raise ValueError(f"train.mode=fused needs the same input shape for every dataset, got {shapes}; "
                         "use train.mode=dat")


def fuses_forward(batches: Mapping[str, Batch], one_forward: Optional[bool] = None) -> bool:
    """Whether a ``fused`` step over ``batches`` runs one forward over their
    concatenation: ``one_forward`` when given, else unless the inputs are on a
    device of :data:`PER_DATASET_FORWARD_DEVICES`."""
    if one_forward is not None:
        return one_forward
    return next(iter(batches.values()))["inputs"].device.type not in PER_DATASET_FORWARD_DEVICES


def fuse_batches(batches: Mapping[str, Batch]) -> Batch:
    """Concatenate the batches of several datasets along dim 0.

    Tensors are concatenated where every batch has them with the same trailing
    shape; lists are joined; a string every batch holds alike (what the batch
    is, e.g. its representation) stays; anything else is dropped from the
    fused batch (criteria still receive each dataset's own batch).
    """
    first = next(iter(batches.values()))
    fused: Batch = {}
    for key in first:
        values = [b.get(key) for b in batches.values()]
        if all(isinstance(v, torch.Tensor) for v in values):
            if len({tuple(v.shape[1:]) for v in values}) == 1:
                fused[key] = torch.cat(values, 0)
            elif key == "inputs":
                check_fusable(batches)
        elif all(isinstance(v, list) for v in values):
            fused[key] = [x for v in values for x in v]
        elif isinstance(values[0], str) and all(v == values[0] for v in values):
            fused[key] = values[0]
    return fused


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


def _backward(loss: torch.Tensor, optimizer: torch.optim.Optimizer, model: nn.Module,
              scaler: Optional[Any], clip_grad: Optional[float]) -> None:
    if scaler is not None:
        scaler.scale(loss).backward()
        if clip_grad:
            scaler.unscale_(optimizer)
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        scaler.step(optimizer)
        scaler.update()
    else:
        loss.backward()
        if clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad)
        optimizer.step()


def _all_finite(losses: Dict[str, float], device: torch.device, step: Optional[int],
                on_nonfinite: str) -> bool:
    """True when every loss is finite on every process; else NaN marks each
    dataset whose loss was not (anywhere) and the step is skipped (False) or
    :class:`NonFiniteLossError` is raised, by every process alike.

    Under DDP one rank skipping its backward would leave the others waiting in
    the gradient all-reduce, so the ranks agree first: one MAX all-reduce of a
    0/1 flag per dataset. A single process pays nothing for it.
    """
    bad = [n for n, v in losses.items() if not math.isfinite(v)]
    if is_distributed():  # every rank holds the same datasets in the same order
        flags = torch.tensor([float(n in bad) for n in losses], device=device)
        torch.distributed.all_reduce(flags, op=torch.distributed.ReduceOp.MAX)
        bad = [n for n, flag in zip(losses, flags.tolist()) if flag]
    if not bad:
        return True
    if on_nonfinite != "skip":
        name = bad[0]
        raise NonFiniteLossError(step, name, losses[name], elsewhere=math.isfinite(losses[name]))
    for n in bad:
        losses[n] = math.nan  # marks the datasets that made the step be skipped
    return False


class _NormState:
    """The running statistics of every norm layer, kept so that a skipped
    step can put them back: a non-finite batch's forward pass has already
    folded NaN into them, and every later step would be NaN too. A few KB
    per network, copied only under ``on_nonfinite="skip"``."""

    def __init__(self, model: nn.Module) -> None:
        self.buffers = [b for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)
                        for b in m.buffers(recurse=False)]
        self.saved = [b.detach().clone() for b in self.buffers]

    @torch.no_grad()
    def restore(self) -> None:
        for b, s in zip(self.buffers, self.saved):
            b.copy_(s)


def train_step(
    model: nn.Module,
    batches: Mapping[str, Batch],
    criteria: Mapping[str, Criterion],
    optimizer: torch.optim.Optimizer,
    mode: str = "dat",
    weights: Optional[Mapping[str, float]] = None,
    forward: Callable[[nn.Module, Batch], Any] = default_forward,
    autocast: Callable[[], ContextManager] = contextlib.nullcontext,
    scaler: Optional[Any] = None,
    clip_grad: Optional[float] = None,
    on_nonfinite: str = "stop",
    step: Optional[int] = None,
    one_forward: Optional[bool] = None,
) -> Dict[str, float]:
    """One training iteration over ``batches`` (``{dataset: batch}``, on device).

    Returns each dataset's (unweighted) loss as a float; NaN marks a dataset
    whose non-finite loss made the step be skipped (``on_nonfinite="skip"``).
    With ``on_nonfinite="stop"`` a NaN/inf loss raises
    :class:`NonFiniteLossError` before any weight changes. Under DDP a
    non-finite loss on any rank skips (or stops) the step on every rank.
    ``one_forward`` (``fused`` only) forces or forbids the one concatenated
    forward; by default it is used unless the device is a CPU
    (:func:`fuses_forward`).
    """
    weights = weights or {}
    distributed = is_distributed()
    model.train()
    losses: Dict[str, float] = {}
    if mode == "fused" and not fuses_forward(batches, one_forward):
        check_fusable(batches)  # a config that runs here runs on every device
        mode = "dat"  # the same losses and gradients, faster on this device

    keep = on_nonfinite == "skip" and mode != "sequential"
    norms = _NormState(model) if keep else None
    if mode == "dat":
        optimizer.zero_grad(set_to_none=True)
        total = 0.0
        for name, batch in batches.items():
            with route(model, name), autocast():
                loss = criteria[name](forward(model, batch), batch)
            losses[name] = float(loss.detach())  # the step's one host sync per dataset
            if not (math.isfinite(losses[name]) or distributed):
                break  # alone, no need to run the other forwards; under DDP every rank runs them all
            total = total + weights.get(name, 1.0) * loss
        if not _all_finite(losses, loss.device, step, on_nonfinite):
            norms.restore()
            return losses
        _backward(total, optimizer, model, scaler, clip_grad)

    elif mode == "fused":
        optimizer.zero_grad(set_to_none=True)
        sizes = {name: batch_size(b) for name, b in batches.items()}
        fused = fuse_batches(batches)
        with route(model, sizes), autocast():
            out = forward(model, fused)
            total = 0.0
            for name, batch in batches.items():
                loss = criteria[name](select_output(out, name, sizes), batch)
                losses[name] = float(loss.detach())
                if not (math.isfinite(losses[name]) or distributed):
                    break
                total = total + weights.get(name, 1.0) * loss
        if not _all_finite(losses, loss.device, step, on_nonfinite):
            norms.restore()
            return losses
        _backward(total, optimizer, model, scaler, clip_grad)

    elif mode == "sequential":
        for name, batch in batches.items():
            optimizer.zero_grad(set_to_none=True)
            norms = _NormState(model) if on_nonfinite == "skip" else None
            with route(model, name), autocast():
                loss = criteria[name](forward(model, batch), batch)
            this = {name: float(loss.detach())}
            finite = _all_finite(this, loss.device, step, on_nonfinite)  # NaN-marks a skipped one
            losses.update(this)
            if finite:
                _backward(weights.get(name, 1.0) * loss, optimizer, model, scaler, clip_grad)
            else:
                norms.restore()

    else:
        raise ValueError(f"mode must be 'dat', 'fused' or 'sequential', not {mode!r}")
    return losses
