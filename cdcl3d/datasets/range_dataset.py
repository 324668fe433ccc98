"""Range images from any LiDAR reader."""
from __future__ import annotations

from typing import Any, Dict, List, Optional

import numpy as np
import torch

from ..augment import augment_points
from ..projection import RangeProjection


class RangeImageDataset(torch.utils.data.Dataset):
    """Wrap a reader whose items hold ``points`` and ``labels`` (or None).

    Item: ``inputs`` float (5, H, W), ``labels`` long (H, W), ``mask`` bool
    (H, W), ``proj_row``/``proj_col`` long (N,), ``range`` float (N,),
    ``proj_range`` float (H, W), ``points_labels`` long (N,) (all 255 for a
    split without labels), ``has_labels`` bool, ``id``, ``dataset``. N counts
    the points after augmentation (dropout may remove some). Without
    augmentation (evaluation) also ``points`` float32 (N, C), the scan as read,
    and ``proj_idx`` long (H, W), the point that won each pixel or -1: test-time
    augmentation (:mod:`cdcl3d.tta`) projects other views of the points and
    writes their averaged labels back into this image for KNN.

    ``augment``: keyword arguments of :func:`cdcl3d.augment.augment_points`
    (without ``rng``) or None. Its generator is seeded from numpy's global
    RNG, so the trainer's per-worker/per-sample seeding makes it reproducible.

    Points near the sensor (the projection's ``ego_radius``) stay out of the
    image but keep their per-point fields, so N is always the scan's point
    count (less augmentation dropout); with augmentation they are chosen on
    the scan as read, in the sensor frame, before it is rotated or moved.
    """

    representation = "range"  # its row in cdcl3d.representations

    def __init__(self, base: torch.utils.data.Dataset, projection: RangeProjection,
                 augment: Optional[Dict[str, Any]] = None) -> None:
        self.base = base
        self.projection = projection
        self.augment = dict(augment) if augment else None
        self.class_names: List[str] = list(base.class_names)
        self.ignore_index: int = int(base.ignore_index)
        self.num_classes: int = int(getattr(base, "num_classes", len(self.class_names)))
        self.name: str = getattr(base, "name", type(base).__name__.lower())

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, index: int) -> Dict[str, Any]:
        item = self.base[index]
        if "skipped" in item:  # a bad scan dropped from evaluation passes as it is
            return item
        points = item["points"]
        labels = item["labels"]
        has_labels = labels is not None
        exclude = None
        if self.augment is not None:
            if self.projection.ego_radius > 0:
                exclude = self.projection.near_sensor(points)
            rng = np.random.default_rng(np.random.randint(2 ** 31))
            points, keep = augment_points(points, rng, **self.augment)
            if has_labels:
                labels = labels[keep]
            if exclude is not None:
                exclude = exclude[keep]
        if not has_labels:
            labels = np.full(points.shape[0], self.ignore_index, dtype=np.int64)
        out = self.projection.project(points, labels, exclude=exclude)
        extra = {} if self.augment is not None else {
            "points": torch.from_numpy(np.ascontiguousarray(points, dtype=np.float32)),
            "proj_idx": torch.from_numpy(out["proj_idx"])}
        return {
            "inputs": torch.from_numpy(out["inputs"]),
            "labels": torch.from_numpy(out["labels"]),
            "mask": torch.from_numpy(out["mask"]),
            "proj_row": torch.from_numpy(out["proj_row"]),
            "proj_col": torch.from_numpy(out["proj_col"]),
            "range": torch.from_numpy(out["range"]),
            "proj_range": torch.from_numpy(out["proj_range"]),
            "points_labels": torch.from_numpy(np.ascontiguousarray(labels, dtype=np.int64)),
            "has_labels": has_labels,
            "id": item["id"],
            "dataset": item.get("dataset", self.name),
            **extra,
        }


_DENSE = ("inputs", "labels", "mask", "proj_range")
_PER_POINT = ("proj_row", "proj_col", "range", "points_labels")
_OPTIONAL = {"proj_idx": True, "points": False}  # evaluation items only: stacked (dense) or listed


def collate_range(items: List[Dict[str, Any]]) -> Dict[str, Any]:
    """Stack the dense fields ``(B, ...)``; per-point fields (different N per
    scan) stay lists of tensors; ``has_labels`` becomes a bool tensor (B,);
    ``id`` and ``dataset`` lists of strings."""
    if not items:
        raise ValueError("collate_range got an empty batch")
    batch: Dict[str, Any] = {k: torch.stack([it[k] for it in items]) for k in _DENSE}
    for k in _PER_POINT:
        batch[k] = [it[k] for it in items]
    for k, dense in _OPTIONAL.items():
        if all(k in it for it in items):
            batch[k] = torch.stack([it[k] for it in items]) if dense else [it[k] for it in items]
    batch["has_labels"] = torch.tensor([bool(it["has_labels"]) for it in items])
    batch["id"] = [it["id"] for it in items]
    batch["dataset"] = [it["dataset"] for it in items]
    return batch
