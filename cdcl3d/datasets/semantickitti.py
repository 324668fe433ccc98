"""SemanticKITTI reader.

Layout: ``<root>/sequences/NN/velodyne/NNNNNN.bin`` (float32 x, y, z,
remission) and ``<root>/sequences/NN/labels/NNNNNN.label`` (uint32, low 16 bits
semantic id, high 16 bits instance id). The test sequences (11-21) have no
labels.

Bad samples: a bad file (size not a multiple of 16 bytes, label count !=
point count, missing label file, NaN/inf coordinates, unknown raw ids) raises
:class:`~common.errors.DataError` naming the file when it is read; with
``on_bad_sample='skip'`` it is skipped as :class:`~cdcl3d.datasets.base.ScanReader`
says (replaced in training, dropped and listed in evaluation). A split
without any scan is a ``DataError`` naming its folder.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np
import torch

from common.errors import DataError

from .base import ScanReader
from .labelmap import SemanticKittiLabelMap

logger = logging.getLogger(__name__)

POINT_BYTES = 16  # 4 x float32
LABEL_BYTES = 4  # uint32


def _check_finite(points: np.ndarray, path: str) -> None:
    if not np.isfinite(points).all():
        bad = int((~np.isfinite(points)).any(axis=1).sum())
        raise DataError(f"{path}: {bad} point(s) with NaN or infinite values")


def read_points(path: str) -> np.ndarray:
    """Read a SemanticKITTI ``.bin`` scan as a ``(N, 4)`` float32 array."""
    size = os.path.getsize(path)  # FileNotFoundError names the path
    if size % POINT_BYTES != 0:
        raise DataError(f"{path}: size {size} bytes is not a multiple of {POINT_BYTES} "
                        "(4 float32 per point)")
    points = np.fromfile(path, dtype=np.float32).reshape(-1, 4)
    _check_finite(points, path)
    return points


def read_labels(path: str, num_points: int) -> np.ndarray:
    """Read a ``.label`` file as ``(N,)`` uint32 raw ids; checks the count."""
    size = os.path.getsize(path)
    if size % LABEL_BYTES != 0:
        raise DataError(f"{path}: size {size} bytes is not a multiple of {LABEL_BYTES} (uint32)")
    labels = np.fromfile(path, dtype=np.uint32)
    if labels.shape[0] != num_points:
        raise DataError(f"{path}: {labels.shape[0]} labels but the scan has {num_points} points")
    return labels


class SemanticKITTI(ScanReader):
    """SemanticKITTI scans with training labels (0..18, ignore 255).

    Item: ``dict(points=(N, 4) float32, labels=(N,) int64 or None, dataset,
    id='08/000123', sequence, frame, path)``.
    """

    kind = "SemanticKITTI"

    num_classes = 19

    def __init__(self, root: str, split: str = "train", sequences: Optional[Sequence[str]] = None,
                 on_bad_sample: str = "raise", name: str = "semantickitti") -> None:
        super().__init__(root, name, on_bad_sample)
        self.split = split
        self.label_map = SemanticKittiLabelMap()
        self.class_names: List[str] = list(self.label_map.class_names)
        seqs = self.label_map.split(split) if sequences is None else [f"{int(s):02d}" for s in sequences]
        self.sequences = seqs
        self.has_labels = split != "test"

        seq_root = os.path.join(self.root, "sequences")
        self.samples: List[Dict[str, str]] = []
        for seq in seqs:
            seq_dir = os.path.join(seq_root, seq)
            velo_dir = os.path.join(seq_dir, "velodyne")
            if not os.path.isdir(velo_dir):
                raise FileNotFoundError(f"SemanticKITTI sequence folder not found: {velo_dir} "
                                        f"(split {split!r} needs sequences {', '.join(seqs)})")
            frames = sorted(f[:-4] for f in os.listdir(velo_dir) if f.endswith(".bin"))
            for frame in frames:
                self.samples.append({
                    "sequence": seq, "frame": frame,
                    "points": os.path.join(velo_dir, frame + ".bin"),
                    "labels": os.path.join(seq_dir, "labels", frame + ".label"),
                })
        if not self.samples:
            folders = [os.path.join(seq_root, seq, "velodyne") for seq in seqs]
            others = f" nor in those of sequences {', '.join(seqs[1:])}" if len(seqs) > 1 else ""
            raise DataError(f"SemanticKITTI split {split!r} has no scans: no *.bin in {folders[0]}{others}")

    def sample_id(self, index: int) -> str:
        s = self.samples[index]
        return f"{s['sequence']}/{s['frame']}"

    def load(self, index: int) -> Dict[str, Any]:
        """Read scan ``index`` (raises on bad data whatever ``on_bad_sample`` says)."""
        s = self.samples[index]
        points = read_points(s["points"])
        labels = None
        if self.has_labels:
            if not os.path.isfile(s["labels"]):
                raise DataError(f"{s['labels']}: label file missing (scan {s['points']})")
            raw = read_labels(s["labels"], points.shape[0])
            try:
                labels = self.label_map.to_train(raw)
            except ValueError as exc:
                raise DataError(f"{s['labels']}: {exc}") from None
        return {"points": points, "labels": labels, "dataset": self.name,
                "id": f"{s['sequence']}/{s['frame']}", "sequence": s["sequence"],
                "frame": s["frame"], "path": s["points"]}

