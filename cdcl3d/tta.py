"""Test-time augmentation for LiDAR: several views of a scan, averaged per point.

``eval.options.tta`` (or ``data.<name>.eval.tta``)::

    tta:
      flip_x: true        # a view with x negated (a mirror about the y-z plane)
      flip_y: true        # a view with y negated (a mirror about the x-z plane)
      yaw: [90, 180, 270] # views rotated about z by these angles, degrees

The views are the scan as read (always first), each flip alone, both flips
together (when both are on), then each yaw rotation (unflipped): the example
gives 1 + 3 + 3 = 7 views. ``tta: null`` (the default), ``false`` or ``{}``
is off (one view, the scan as read). The flips follow
:func:`cdcl3d.augment.augment_points` (``flip_x`` negates x).

Every view is projected again (range image) or voxelised again (voxels) from
the transformed points, run through the network, turned into per-class
probabilities (softmax) and read back onto every point through that point's
pixel or voxel in *that* view; the probabilities of all views are averaged
per point. The points' labels are the argmax of the average. KNN
post-processing then votes with the averaged labels: each pixel of the scan's
own range image holds the averaged label of the point that won it (the
nearest), so KNN sees the same picture it sees without TTA, with better
labels. Only points matter, so views need not be pixel-aligned.

A single view is not softmaxed (its scores are the logits: same argmax), so
``tta`` with one view gives exactly the labels of no TTA.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

#: ``eval.options.tta`` keys and their types (checked with the config)
TTA_KEYS: Dict[str, Any] = {"flip_x": bool, "flip_y": bool, "yaw": List[float]}


@dataclass(frozen=True)
class View:
    """One view: x and/or y negated, then rotated by ``yaw`` degrees about z."""

    flip_x: bool = False
    flip_y: bool = False
    yaw: float = 0.0

    @property
    def identity(self) -> bool:
        return not self.flip_x and not self.flip_y and self.yaw % 360.0 == 0.0

    def __str__(self) -> str:
        parts = [p for p, on in (("flip_x", self.flip_x), ("flip_y", self.flip_y)) if on]
        if self.yaw % 360.0:
            parts.append(f"yaw {self.yaw:g}")
        return "+".join(parts) or "identity"

    def matrix(self) -> np.ndarray:
        """The 3x3 map of x, y, z (float64)."""
        m = np.diag([-1.0 if self.flip_x else 1.0, -1.0 if self.flip_y else 1.0, 1.0])
        a = math.radians(self.yaw)
        c, s = math.cos(a), math.sin(a)
        return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ m

    def apply(self, points: np.ndarray) -> np.ndarray:
        """``points (N, C>=3)`` in this view: a new float32 array; columns beyond
        x, y, z (intensity, ring) pass through."""
        out = np.array(points, dtype=np.float32, copy=True)
        if not self.identity:
            out[:, :3] = out[:, :3].astype(np.float64) @ self.matrix().T
        return out


def check_tta(value: Any, where: str = "eval.options.tta", source: str = "") -> None:
    """Raise :class:`common.config.ConfigError` naming the key for a bad ``tta``."""
    from common.config import ConfigError, check_options

    if value is None or value is False:
        return
    check_options(value, TTA_KEYS, where, source)
    for a in value.get("yaw") or []:
        if not math.isfinite(float(a)):
            raise ConfigError(f"{source + ': ' if source else ''}'{where}.yaw' holds {a!r}; angles are "
                              "finite numbers of degrees")


def build_views(value: Any) -> List[View]:
    """The views of a ``tta`` option (see the module docstring); the first is
    always the scan as read."""
    if not value:
        return [View()]
    views = [View()]
    fx, fy = bool(value.get("flip_x")), bool(value.get("flip_y"))
    if fx:
        views.append(View(flip_x=True))
    if fy:
        views.append(View(flip_y=True))
    if fx and fy:
        views.append(View(flip_x=True, flip_y=True))
    for a in value.get("yaw") or []:
        v = View(yaw=float(a))
        if v not in views and not v.identity:
            views.append(v)
    return views


def describe(views: Sequence[View]) -> str:
    """One line for tables and results: ``off`` or ``4 views (identity, flip_x, ...)``."""
    if len(views) <= 1:
        return "off"
    return f"{len(views)} views ({', '.join(str(v) for v in views)}), probabilities averaged per point"


#: ``rebuild(points, view) -> batch``: the scans of a batch (original points,
#: one (N, C) tensor each) seen in ``view``, projected or voxelised as the
#: dataset does it (a representation's ``rebuild``)
Rebuild = Callable[[List[torch.Tensor], View], Dict[str, Any]]

#: ``scores(model, batch, probs) -> (per-scan (K, N) scores, dense (B, K, H, W) logits or None)``:
#: the class scores of every point, probabilities (softmax) where ``probs``, else logits
Scores = Callable[[Any, Dict[str, Any], bool], Tuple[List[torch.Tensor], Optional[torch.Tensor]]]


@dataclass
class TTA:
    """What a representation's ``predict`` needs for TTA: the views and how to
    re-make a batch in each of them."""

    views: List[View]
    rebuild: Rebuild

    def __len__(self) -> int:
        return len(self.views)


def averaged_scores(model, batch: Dict[str, Any], tta: TTA, scores: Scores
                    ) -> Tuple[List[torch.Tensor], Optional[torch.Tensor]]:
    """Per-scan ``(K, N)`` class scores averaged over ``tta``'s views
    (probabilities; a single view: its logits), and the dense logits of the
    batch as given (the first view) or None.

    The first view is the batch itself (it was projected as read); every
    other view is rebuilt from ``batch["points"]``."""
    many = len(tta.views) > 1
    total, dense = scores(model, batch, many)
    if not many:
        return total, dense
    total = [t.float().clone() for t in total]
    for view in tta.views[1:]:
        view_batch = batch if view.identity else tta.rebuild(batch["points"], view)
        for acc, p in zip(total, scores(model, view_batch, True)[0]):
            acc.add_(p)
    return [t.div_(len(tta.views)) for t in total], dense


__all__ = ["TTA", "TTA_KEYS", "View", "averaged_scores", "build_views", "check_tta", "describe"]
