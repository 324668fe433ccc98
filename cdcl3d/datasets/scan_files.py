"""One scan's files read by themselves (points, labels, predictions), for
``cdcl show SCAN``: each dataset type's row holds one of these readers.

``read(spec, scan, labels, pred)`` returns ``(points, labels, preds)`` with
train ids (255 ignore) or None; bad files raise :class:`DataError` naming
them. ``suffix`` is the scan files' ending (the longest matching one picks
the type of a file given without ``--dataset``).
"""
from __future__ import annotations

import os
from typing import Any, Optional, Tuple

import numpy as np

from common.errors import DataError

from .labelmap import IGNORE_INDEX

Files = Tuple[np.ndarray, Optional[np.ndarray], Optional[np.ndarray]]


class KittiLayoutFiles:
    """``<seq>/velodyne/NNNNNN.bin`` with raw-id ``.label`` files (labels in
    ``<seq>/labels/`` by default; a prediction file or a folder of them)."""

    suffix = ".bin"

    @staticmethod
    def default_labels(scan: str) -> Optional[str]:
        stem = os.path.splitext(os.path.basename(scan))[0]
        cand = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(scan))), "labels", stem + ".label")
        return cand if os.path.isfile(cand) else None

    def read(self, spec: Any, scan: str, labels: Optional[str] = None, pred: Optional[str] = None) -> Files:
        from .semantickitti import read_labels, read_points

        points = read_points(scan)
        label_map = spec.label_map({})

        def train_ids(path: str) -> np.ndarray:
            try:
                return label_map.to_train(read_labels(path, len(points)))
            except DataError:
                raise
            except ValueError as exc:
                raise DataError(f"{path}: {exc}") from None

        labels = labels or self.default_labels(scan)
        if pred and os.path.isdir(pred):
            pred = os.path.join(pred, os.path.splitext(os.path.basename(scan))[0] + ".label")
        return (points, train_ids(labels) if labels else None, train_ids(pred) if pred else None)


class NuScenesFiles:
    """``LIDAR_TOP`` ``.pcd.bin`` scans; labels are lidarseg ``_lidarseg.bin``
    (uint8 fine ids), predictions submission ``.bin`` (challenge ids 1..16)."""

    suffix = ".pcd.bin"

    def read(self, spec: Any, scan: str, labels: Optional[str] = None, pred: Optional[str] = None) -> Files:
        from ..vis.colors import nuscenes_fine_to_train_lut
        from .nuscenes import read_labels, read_points

        points = read_points(scan)
        lab = prd = None
        if labels:
            fine = read_labels(labels, len(points))
            lab = nuscenes_fine_to_train_lut()[fine]
            if lab.size and lab.min() < 0:
                bad = np.unique(fine[lab < 0]).tolist()[:10]
                raise DataError(f"{labels}: unknown nuScenes fine label id(s) {bad} (valid 0..31)")
        if pred:
            ids = read_labels(pred, len(points)).astype(np.int64)
            if ids.size and ids.max() > 16:
                raise DataError(f"{pred}: prediction ids up to {int(ids.max())}, but a nuScenes prediction "
                                "holds challenge ids 0..16 (is this a fine-id label file? pass it as --labels)")
            prd = np.where(ids == 0, IGNORE_INDEX, ids - 1)
        return points, lab, prd


KITTI_LAYOUT_FILES = KittiLayoutFiles()
NUSCENES_FILES = NuScenesFiles()
