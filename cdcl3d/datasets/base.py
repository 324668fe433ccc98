"""What the LiDAR readers share: reading a scan and its labels with the
checks that name a bad file, and the ``on_bad_sample`` policy."""
from __future__ import annotations

import logging
import os
from typing import Any, Dict

import numpy as np
import torch

from common.data import BadSamplePolicy, check_on_bad_sample
from common.errors import DataError

from .labelmap import IGNORE_INDEX

logger = logging.getLogger(__name__)


def read_points(path: str, columns: int) -> np.ndarray:
    """A scan of float32 records, ``(N, columns)``; a size that is not a
    multiple of the record or NaN/inf values are a :class:`DataError`."""
    size = os.path.getsize(path)  # FileNotFoundError names the path
    record = 4 * columns
    if size % record != 0:
        raise DataError(f"{path}: size {size} bytes is not a multiple of {record} "
                        f"({columns} float32 per point)")
    points = np.fromfile(path, dtype=np.float32).reshape(-1, columns)
    if not np.isfinite(points).all():
        bad = int((~np.isfinite(points)).any(axis=1).sum())
        raise DataError(f"{path}: {bad} point(s) with NaN or infinite values")
    return points


def read_labels(path: str, num_points: int, dtype: Any = np.uint32) -> np.ndarray:
    """One label of ``dtype`` per point, ``(N,)``; a size that is not a multiple
    of ``dtype`` or a count other than ``num_points`` is a :class:`DataError`."""
    dtype = np.dtype(dtype)
    size = os.path.getsize(path)
    if size % dtype.itemsize != 0:
        raise DataError(f"{path}: size {size} bytes is not a multiple of {dtype.itemsize} ({dtype.name})")
    labels = np.fromfile(path, dtype=dtype)
    if labels.shape[0] != num_points:
        raise DataError(f"{path}: {labels.shape[0]} labels but the scan has {num_points} points")
    return labels


class ScanReader(BadSamplePolicy, torch.utils.data.Dataset):
    """Subclasses call ``super().__init__(root, name, on_bad_sample)``, set
    ``label_map`` (with ``to_train``), ``point_columns`` and ``label_dtype``,
    fill ``samples`` with dicts holding ``points`` (path), ``labels`` (path, or
    None for a split without labels), optionally ``error`` (a problem found
    while listing, raised when the sample is read) and the fields the item
    carries (:meth:`item_fields`), and implement ``sample_id(index)``; an
    empty split raises :class:`DataError` naming its folder. :meth:`load`
    raises :class:`DataError` (or ``OSError``) naming the file on bad data
    (size, NaN/inf, label count, a missing label file, unknown raw ids).

    Every scan of the split stays listed; a bad one is found when it is read.
    With ``on_bad_sample='skip'`` (:class:`common.data.BadSamplePolicy`) it
    is logged and, in training, replaced by the next readable scan (an empty
    scan counts as bad there), so an epoch keeps its length and training never
    stalls; in evaluation it is dropped and listed; ``cdcl predict`` always
    raises, since a submission needs a file for every scan (an empty scan is
    read and gets an empty file).
    """

    kind = "LiDAR"
    ignore_index = IGNORE_INDEX
    point_columns = 4
    label_dtype: Any = np.uint32
    label_map: Any = None

    def __init__(self, root: str, name: str, on_bad_sample: str = "raise") -> None:
        self.root = os.fspath(root)
        self.name = name
        self.on_bad_sample = check_on_bad_sample(on_bad_sample)
        self.samples: list = []

    def __len__(self) -> int:
        return len(self.samples)

    def item_fields(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        """What an item carries beside points, labels, dataset, id and path."""
        return {}

    def load(self, index: int) -> Dict[str, Any]:
        """Read sample ``index`` (raises on bad data whatever ``on_bad_sample`` says)."""
        s = self.samples[index]
        if s.get("error"):
            raise DataError(s["error"])
        points = read_points(s["points"], self.point_columns)
        labels = None
        if s["labels"] is not None:
            if not os.path.isfile(s["labels"]):
                raise DataError(f"{s['labels']}: label file missing (scan {s['points']})")
            raw = read_labels(s["labels"], points.shape[0], self.label_dtype)
            try:
                labels = self.label_map.to_train(raw)
            except ValueError as exc:
                raise DataError(f"{s['labels']}: {exc}") from None
        return {"points": points, "labels": labels, "dataset": self.name, "id": self.sample_id(index),
                "path": s["points"], **self.item_fields(s)}

    def __getitem__(self, index: int) -> Dict[str, Any]:
        return self.read_sample(index, self._load_for_policy)

    def _load_for_policy(self, index: int) -> Dict[str, Any]:
        item = self.load(index)
        if self.bad_action == "replace" and len(item["points"]) == 0:
            raise DataError(f"{item['path']}: no points")  # nothing to train on
        return item
