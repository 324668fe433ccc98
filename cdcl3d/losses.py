"""LiDAR segmentation losses: weighted cross-entropy + Lovász-softmax.

SalsaNext trains with cross-entropy weighted by inverse class frequency plus
the Lovász-softmax surrogate of the Jaccard loss (Berman et al. 2018). The
frequencies are counted once per training split and cached as JSON.
"""
from __future__ import annotations

import json
import os
from typing import Any, Callable, Dict, Iterable, Optional, Sequence, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from common.utils import atomic_write_bytes


def _flatten_probs(probs: torch.Tensor, labels: torch.Tensor):
    """(B, K, H, W) + (B, H, W) or (P, K) + (P,) -> (P, K), (P,)."""
    if probs.dim() == 4:
        if labels.shape != (probs.shape[0],) + tuple(probs.shape[2:]):
            raise ValueError(f"lovasz_softmax: labels {tuple(labels.shape)} do not match "
                             f"probabilities {tuple(probs.shape)}")
        k = probs.shape[1]
        return probs.permute(0, 2, 3, 1).reshape(-1, k), labels.reshape(-1)
    if probs.dim() == 2:
        if labels.shape != probs.shape[:1]:
            raise ValueError(f"lovasz_softmax: labels {tuple(labels.shape)} do not match "
                             f"probabilities {tuple(probs.shape)}")
        return probs, labels
    raise ValueError(f"lovasz_softmax: probabilities must be (B, K, H, W) or (P, K), "
                     f"got {tuple(probs.shape)}")


def lovasz_softmax(probs: torch.Tensor, labels: torch.Tensor, ignore_index: int = 255,
                   classes: Union[str, Sequence[int]] = "present") -> torch.Tensor:
    """Lovász-softmax loss over all pixels/points of the batch.

    ``probs``: class probabilities ``(B, K, H, W)`` or ``(P, K)`` (softmax
    already applied); ``labels``: ``(B, H, W)`` or ``(P,)`` ints in
    ``0..K-1`` or ``ignore_index``. ``classes``: ``"present"`` averages over
    the classes present in the labels, ``"all"`` over all K classes, or a list
    of class ids. All classes are handled at once: one sort of the ``(P, K)``
    error matrix along P, no Python loop over classes or pixels.
    """
    probs, labels = _flatten_probs(probs, labels)
    # Cumulative sums over ~10^5 pixels need float32 even under AMP.
    probs = probs.float()
    valid = labels != ignore_index
    probs, labels = probs[valid], labels[valid]
    k = probs.shape[1]
    if probs.shape[0] == 0:
        return probs.sum() * 0.0  # keeps the graph; nothing to learn from
    if labels.min() < 0 or labels.max() >= k:
        raise ValueError(f"lovasz_softmax: labels must lie in 0..{k - 1} or be {ignore_index}, "
                         f"got values in [{int(labels.min())}, {int(labels.max())}]")

    fg = F.one_hot(labels, k).to(probs.dtype)                 # (P, K)
    errors = (fg - probs).abs()                               # (P, K)
    errors_sorted, perm = torch.sort(errors, dim=0, descending=True)
    fg_sorted = torch.gather(fg, 0, perm)                     # (P, K)

    # Gradient of the Lovász extension of the Jaccard loss at the sorted
    # errors: the increments of 1 - IoU as pixels are added in sorted order.
    gts = fg_sorted.sum(0, keepdim=True)                      # (1, K)
    intersection = gts - fg_sorted.cumsum(0)
    union = gts + (1.0 - fg_sorted).cumsum(0)
    jaccard = 1.0 - intersection / union                      # union >= 1 everywhere
    grad = torch.cat((jaccard[:1], jaccard[1:] - jaccard[:-1]), dim=0)
    per_class = (errors_sorted * grad).sum(0)                 # (K,)

    if isinstance(classes, str):
        if classes == "present":
            mask = gts[0] > 0
        elif classes == "all":
            mask = torch.ones(k, dtype=torch.bool, device=probs.device)
        else:
            raise ValueError(f"lovasz_softmax: classes must be 'present', 'all' or a list, "
                             f"got {classes!r}")
        return per_class[mask].mean()  # P > 0, so at least one class is present
    idx = torch.as_tensor(list(classes), dtype=torch.long, device=probs.device)
    if idx.numel() == 0:
        return probs.sum() * 0.0
    return per_class[idx].mean()


def class_weights_from_frequencies(freq: np.ndarray, eps: float = 0.001,
                                   ignore_zero_freq: bool = True) -> torch.Tensor:
    """Inverse-frequency class weights ``1 / (f + eps)`` (SalsaNext's weighting).

    ``freq`` holds one frequency (or raw count) per class; it is normalised to
    sum to 1 first. With ``ignore_zero_freq`` classes with ``f == 0`` (never
    seen in training) weigh 0 instead of ``1 / eps``.
    """
    f = np.asarray(freq, dtype=np.float64)
    if f.ndim != 1 or f.size == 0:
        raise ValueError(f"class_weights_from_frequencies: expected a 1-d array of per-class "
                         f"frequencies, got shape {f.shape}")
    if not np.all(np.isfinite(f)) or np.any(f < 0):
        raise ValueError(f"class_weights_from_frequencies: frequencies must be finite and "
                         f">= 0, got {f.tolist()}")
    total = f.sum()
    if total > 0:
        f = f / total
    w = 1.0 / (f + eps)
    if ignore_zero_freq:
        w[f == 0] = 0.0
    return torch.as_tensor(w, dtype=torch.float32)


class LidarSegLoss(nn.Module):
    """Weighted cross-entropy + ``lovasz_weight`` * Lovász-softmax.

    ``forward(logits (B, K, H, W), labels (B, H, W)) -> scalar``. The
    cross-entropy is ``F.cross_entropy(logits, labels, weight, ignore_index)``
    (weighted mean); a batch with no labelled pixel, or only zero-weight
    classes, gives 0 instead of NaN.
    """

    def __init__(self, class_weights: Optional[torch.Tensor] = None, ignore_index: int = 255,
                 lovasz_weight: float = 1.0) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.lovasz_weight = float(lovasz_weight)
        if class_weights is not None:
            class_weights = torch.as_tensor(class_weights, dtype=torch.float32)
            if class_weights.dim() != 1:
                raise ValueError(f"LidarSegLoss: class_weights must be 1-d, "
                                 f"got shape {tuple(class_weights.shape)}")
        # A buffer follows the module across .to(device) and into state_dict.
        self.register_buffer("class_weights", class_weights)

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        # Whatever the autocast dtype, the loss is computed in float32: its
        # sums run over ~10^5 pixels (a fp16 count overflows at 65,504 and the
        # CE term would silently become 0; bf16 keeps 8 bits of a count).
        logits = logits.float()
        w = self.class_weights
        if w is not None and w.numel() != logits.shape[1]:
            raise ValueError(f"LidarSegLoss: {w.numel()} class weights for "
                             f"{logits.shape[1]} classes")
        with torch.autocast(logits.device.type, enabled=False):
            # Weighted mean as F.cross_entropy computes it, with the denominator
            # clamped so that an all-ignored batch gives 0, not NaN (and no
            # host sync is needed to test for that case).
            per_pixel = F.cross_entropy(logits, labels, weight=w, ignore_index=self.ignore_index,
                                        reduction="none")
            valid = labels != self.ignore_index
            if w is not None:
                safe = torch.where(valid, labels, torch.zeros_like(labels))
                denom = (w[safe] * valid).sum()
            else:
                denom = valid.sum().float()
            ce = per_pixel.sum() / denom.clamp_min(torch.finfo(torch.float32).tiny)
            if self.lovasz_weight == 0:
                return ce
            probs = F.softmax(logits, dim=1)
            return ce + self.lovasz_weight * lovasz_softmax(probs, labels, self.ignore_index)


def compute_label_frequencies(label_arrays: Iterable[np.ndarray], num_classes: int,
                              ignore_index: int = 255) -> np.ndarray:
    """Fraction of labelled points of each class over all ``label_arrays``
    (train ids ``0..num_classes-1``; ``ignore_index`` is skipped). Sums to 1,
    or is all zero when nothing is labelled."""
    counts = np.zeros(num_classes, dtype=np.int64)
    for i, labels in enumerate(label_arrays):
        lab = np.asarray(labels).reshape(-1)
        lab = lab[lab != ignore_index]
        if lab.size == 0:
            continue
        if lab.min() < 0 or lab.max() >= num_classes:
            raise ValueError(f"compute_label_frequencies: label array #{i} holds values in "
                             f"[{int(lab.min())}, {int(lab.max())}], expected 0..{num_classes - 1} "
                             f"or {ignore_index}")
        counts += np.bincount(lab.astype(np.int64), minlength=num_classes)
    total = counts.sum()
    return counts / total if total > 0 else counts.astype(np.float64)


def cached_frequencies(cache_path: str, compute_fn: Callable[[], np.ndarray],
                       meta: Optional[Dict[str, Any]] = None) -> np.ndarray:
    """Class frequencies read from the JSON file ``cache_path``, or computed
    by ``compute_fn()`` and written there (atomically) when the file is
    missing. ``meta`` (e.g. ``{"dataset": ..., "split": ..., "num_classes":
    ...}``) is stored beside the numbers; a cache whose ``meta`` differs is
    recomputed, so a changed split is never served stale counts."""
    if meta is not None:
        meta = json.loads(json.dumps(meta))  # compare in JSON form (tuples become lists)
    if os.path.exists(cache_path):
        try:
            with open(cache_path, "r", encoding="utf-8") as f:
                data = json.load(f)
            freq = np.asarray(data["frequencies"], dtype=np.float64)
        except (ValueError, KeyError, TypeError) as exc:
            raise ValueError(f"{cache_path}: not a valid class-frequency cache ({exc}); "
                             f"delete it to recount") from exc
        if freq.ndim != 1:
            raise ValueError(f"{cache_path}: 'frequencies' must be a flat list of numbers")
        if meta is None or data.get("meta") == meta:
            return freq
    freq = np.asarray(compute_fn(), dtype=np.float64)
    parent = os.path.dirname(os.path.abspath(cache_path))
    os.makedirs(parent, exist_ok=True)
    payload = {"frequencies": freq.tolist(), "meta": meta}
    atomic_write_bytes(cache_path, json.dumps(payload, indent=1).encode("utf-8"))
    return freq


__all__ = ["lovasz_softmax", "class_weights_from_frequencies", "LidarSegLoss",
           "compute_label_frequencies", "cached_frequencies"]
