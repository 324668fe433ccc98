"""nuScenes-lidarseg reader (through nuscenes-devkit).

Every keyframe sample of the split's scenes contributes its ``LIDAR_TOP``
sample_data: points from ``<root>/<sample_data.filename>`` (``.pcd.bin``,
float32 x, y, z, intensity, ring) and, for labelled versions, labels from the
``lidarseg`` table (``<root>/lidarseg/<version>/<token>_lidarseg.bin``, uint8
fine ids) mapped to the 16 challenge classes by the devkit's
``LidarsegClassMapper`` (challenge 0 -> 255, 1..16 -> train ids 0..15).

Splits come from ``nuscenes.utils.splits.create_splits_scenes()``; for
``v1.0-mini`` the names ``train``/``val`` mean ``mini_train``/``mini_val``.
``v1.0-test`` (split ``test``) has no labels.

Bad samples: as in :mod:`cdcl3d.datasets.semantickitti` -- with
``on_bad_sample='skip'`` size problems are dropped (and logged) at
construction, content problems are logged at load time and replaced by the
next good sample.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Dict, List, Optional

import numpy as np
import torch

from .base import ScanReader
from .labelmap import NuScenesLabelMap, nuscenes_challenge_classes

logger = logging.getLogger(__name__)

POINT_BYTES = 20  # 5 x float32


def read_points(path: str) -> np.ndarray:
    """Read a nuScenes ``.pcd.bin`` as ``(N, 5)`` float32 (x, y, z, intensity, ring)."""
    size = os.path.getsize(path)
    if size % POINT_BYTES != 0:
        raise ValueError(f"{path}: size {size} bytes is not a multiple of {POINT_BYTES} "
                         "(5 float32 per point)")
    points = np.fromfile(path, dtype=np.float32).reshape(-1, 5)
    if not np.isfinite(points).all():
        bad = int((~np.isfinite(points)).any(axis=1).sum())
        raise ValueError(f"{path}: {bad} point(s) with NaN or infinite values")
    return points


def read_labels(path: str, num_points: int) -> np.ndarray:
    """Read a lidarseg ``.bin`` as ``(N,)`` uint8 fine ids; checks the count."""
    labels = np.fromfile(path, dtype=np.uint8)
    if labels.shape[0] != num_points:
        raise ValueError(f"{path}: {labels.shape[0]} labels but the scan has {num_points} points")
    return labels


def _split_name(version: str, split: str) -> str:
    if version.endswith("mini") and split in ("train", "val"):
        return "mini_" + split
    return split


class NuScenesLidarSeg(ScanReader):
    """nuScenes LIDAR_TOP keyframes with challenge labels (0..15, ignore 255).

    Item: ``dict(points=(N, 5) float32, labels=(N,) int64 or None, dataset,
    id=<sample_data token>, token, path)``. Pass an already loaded ``nusc``
    to share one database between splits.
    """

    kind = "nuScenes"

    num_classes = 16

    def __init__(self, root: str, version: str = "v1.0-trainval", split: str = "train",
                 on_bad_sample: str = "raise", name: str = "nuscenes", nusc: Any = None) -> None:
        super().__init__(root, name, on_bad_sample)
        from nuscenes.utils.splits import create_splits_scenes

        self.version = version
        self.split = split
        self.class_names: List[str] = nuscenes_challenge_classes()
        self.has_labels = not version.endswith("test")

        table_root = os.path.join(self.root, version)
        if nusc is None:
            if not os.path.isdir(table_root):
                raise FileNotFoundError(f"nuScenes tables not found: {table_root} "
                                        f"(expected <root>/{version}/*.json)")
            if self.has_labels and not os.path.isfile(os.path.join(table_root, "lidarseg.json")):
                raise FileNotFoundError(
                    f"nuScenes root {self.root} has no lidarseg annotations for {version} "
                    f"({os.path.join(table_root, 'lidarseg.json')} missing); install nuScenes-lidarseg "
                    "into the dataroot")
            from nuscenes import NuScenes

            nusc = NuScenes(version=version, dataroot=self.root, verbose=False)
        elif self.has_labels and not hasattr(nusc, "lidarseg"):
            raise FileNotFoundError(f"the given NuScenes ({nusc.dataroot}, {nusc.version}) has no "
                                    "lidarseg table (lidarseg.json missing)")
        self.nusc = nusc
        self.label_map: Optional[NuScenesLabelMap] = NuScenesLabelMap(nusc) if self.has_labels else None

        splits = create_splits_scenes()
        split_key = _split_name(version, split)
        if split_key not in splits:
            raise ValueError(f"unknown nuScenes split {split!r}; valid: {', '.join(sorted(splits))}")
        wanted = set(splits[split_key])
        scene_tokens = {s["token"]: s["name"] for s in nusc.scene if s["name"] in wanted}
        if not scene_tokens:
            logger.warning("nuScenes %s: no scene of split %r in %s", version, split_key, table_root)

        label_files: Dict[str, str] = {}
        if self.has_labels:
            label_files = {rec["sample_data_token"]: rec["filename"] for rec in nusc.lidarseg}
        samples = sorted((s for s in nusc.sample if s["scene_token"] in scene_tokens),
                         key=lambda s: (scene_tokens[s["scene_token"]], s["timestamp"]))
        self.samples: List[Dict[str, Optional[str]]] = []
        for sample in samples:
            sd_token = sample["data"].get("LIDAR_TOP")
            if sd_token is None:
                continue
            sd = nusc.get("sample_data", sd_token)
            entry = {"token": sd_token, "points": os.path.join(self.root, sd["filename"]), "labels": None}
            if self.has_labels:
                if sd_token not in label_files:
                    msg = f"no lidarseg record for LIDAR_TOP sample_data {sd_token} ({entry['points']})"
                    if on_bad_sample == "raise":
                        raise ValueError(msg)
                    logger.warning("skipping: %s", msg)
                    continue
                entry["labels"] = os.path.join(self.root, label_files[sd_token])
            self.samples.append(entry)
        if on_bad_sample == "skip":
            self.samples = [s for s in self.samples if self._sizes_ok(s)]

    def _sizes_ok(self, s: Dict[str, Optional[str]]) -> bool:
        try:
            size = os.path.getsize(s["points"])
            lsize = os.path.getsize(s["labels"]) if s["labels"] else None
        except OSError as exc:
            logger.warning("skipping nuScenes sample %s: %s", s["token"], exc)
            return False
        if size == 0 or size % POINT_BYTES:
            logger.warning("skipping %s: size %d is not a positive multiple of %d bytes",
                           s["points"], size, POINT_BYTES)
            return False
        if lsize is not None and lsize != size // POINT_BYTES:
            logger.warning("skipping %s: %d labels for %d points", s["labels"], lsize, size // POINT_BYTES)
            return False
        return True

    def __getstate__(self) -> Dict[str, Any]:
        # DataLoader workers need only the file lists; the devkit database is
        # large and not meant to be pickled.
        state = dict(self.__dict__)
        state["nusc"] = None
        return state

    def load(self, index: int) -> Dict[str, Any]:
        """Read sample ``index`` (raises on bad data whatever ``on_bad_sample`` says)."""
        s = self.samples[index]
        points = read_points(s["points"])
        labels = None
        if s["labels"] is not None:
            fine = read_labels(s["labels"], points.shape[0])
            try:
                labels = self.label_map.to_train(fine)
            except ValueError as exc:
                raise ValueError(f"{s['labels']}: {exc}") from None
        return {"points": points, "labels": labels, "dataset": self.name,
                "id": s["token"], "token": s["token"], "path": s["points"]}

