"""Readers of SemanticKITTI's on-disk layout (SemanticKITTI, SemanticPOSS,
any ``kitti_format`` dataset with its label yaml).

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

import functools
import logging
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from common.errors import DataError

from . import base
from .base import ScanReader
from .labelmap import KittiFormatLabelMap, SemanticKittiLabelMap

logger = logging.getLogger(__name__)


#: read a SemanticKITTI ``.bin`` scan: ``(N, 4)`` float32 x, y, z, remission
read_points = functools.partial(base.read_points, columns=4)
#: read a ``.label`` file: ``(N,)`` uint32 raw ids (count checked)
read_labels = functools.partial(base.read_labels, dtype=np.uint32)


class KittiFormatReader(ScanReader):
    """Scans in SemanticKITTI's layout with training labels (0..K-1, ignore 255)
    through ``label_map`` (a :class:`~cdcl3d.datasets.labelmap.KittiFormatLabelMap`,
    whose ``split`` names the sequences of each split; ``sequences`` overrides it).

    Item: ``dict(points=(N, 4) float32, labels=(N,) int64 or None, dataset,
    id='08/000123', sequence, frame, path)``. The ``test`` split has no labels.
    """

    kind = "KITTI-format"

    def __init__(self, root: str, label_map: KittiFormatLabelMap, split: str = "train",
                 sequences: Optional[Sequence[str]] = None, on_bad_sample: str = "raise",
                 name: str = "kitti_format") -> None:
        super().__init__(root, name, on_bad_sample)
        self.kind = label_map.title or self.kind
        self.split = split
        self.label_map = label_map
        self.class_names: List[str] = list(label_map.class_names)
        self.num_classes = label_map.num_classes
        seqs = label_map.split(split) if sequences is None else [f"{int(s):02d}" for s in sequences]
        self.sequences = seqs
        self.has_labels = split != "test"

        seq_root = os.path.join(self.root, "sequences")
        for seq in seqs:
            seq_dir = os.path.join(seq_root, seq)
            velo_dir = os.path.join(seq_dir, "velodyne")
            if not os.path.isdir(velo_dir):
                raise FileNotFoundError(f"{self.kind} sequence folder not found: {velo_dir} "
                                        f"(split {split!r} needs sequences {', '.join(seqs)})")
            frames = sorted(f[:-4] for f in os.listdir(velo_dir) if f.endswith(".bin"))
            for frame in frames:
                self.samples.append({
                    "sequence": seq, "frame": frame,
                    "points": os.path.join(velo_dir, frame + ".bin"),
                    "labels": os.path.join(seq_dir, "labels", frame + ".label") if self.has_labels else None,
                })
        if not self.samples:
            folders = [os.path.join(seq_root, seq, "velodyne") for seq in seqs]
            others = f" nor in those of sequences {', '.join(seqs[1:])}" if len(seqs) > 1 else ""
            raise DataError(f"{self.kind} split {split!r} has no scans: no *.bin in {folders[0]}{others}")

    def sample_id(self, index: int) -> str:
        s = self.samples[index]
        return f"{s['sequence']}/{s['frame']}"

    def item_fields(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        return {"sequence": sample["sequence"], "frame": sample["frame"]}


class SemanticKITTI(KittiFormatReader):
    """SemanticKITTI (its official label yaml: 19 classes)."""

    def __init__(self, root: str, split: str = "train", sequences: Optional[Sequence[str]] = None,
                 on_bad_sample: str = "raise", name: str = "semantickitti") -> None:
        super().__init__(root, SemanticKittiLabelMap(), split, sequences, on_bad_sample, name)
