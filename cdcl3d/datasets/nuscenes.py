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

Bad samples: as in :mod:`cdcl3d.datasets.semantickitti`, a bad file (size,
label count, NaN/inf points, unknown fine ids, no lidarseg record) raises
:class:`~common.errors.DataError` naming it when it is read, and
``on_bad_sample='skip'`` acts as :class:`~cdcl3d.datasets.base.ScanReader`
says. A table the devkit cannot load (not JSON, not a list of records) and a
split without scans are ``DataError`` naming the file or the tables' folder.
"""
from __future__ import annotations

import functools
import glob
import json
import logging
import os
from typing import Any, Dict, List, Optional

import numpy as np

from common.errors import DataError

from . import base
from .base import ScanReader
from .labelmap import NuScenesLabelMap, nuscenes_challenge_classes

logger = logging.getLogger(__name__)


#: read a nuScenes ``.pcd.bin``: ``(N, 5)`` float32 x, y, z, intensity, ring
read_points = functools.partial(base.read_points, columns=5)
#: read a lidarseg ``.bin``: ``(N,)`` uint8 fine ids (count checked)
read_labels = functools.partial(base.read_labels, dtype=np.uint8)


def load_nuscenes(root: str, version: str) -> Any:
    """nuscenes-devkit's database of ``<root>/<version>/*.json``. Tables the
    devkit cannot load are a :class:`DataError` naming the file (the devkit's
    own errors, ``JSONDecodeError`` or ``TypeError: string indices must be
    integers``, name none)."""
    from nuscenes import NuScenes

    try:
        return NuScenes(version=version, dataroot=root, verbose=False)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, AssertionError) as exc:
        raise DataError(_table_problem(os.path.join(root, version), exc)) from exc


@functools.lru_cache(maxsize=4)
def cached_nuscenes(root: str, version: str) -> Any:
    """One devkit database per (root, version), shared by the splits; missing
    tables are a FileNotFoundError, tables it cannot load a DataError naming the file."""
    table_root = os.path.join(root, version)
    if not os.path.isdir(table_root):
        raise FileNotFoundError(f"nuScenes tables not found: {table_root} (expected <root>/{version}/*.json)")
    if not version.endswith("test") and not os.path.isfile(os.path.join(table_root, "lidarseg.json")):
        raise FileNotFoundError(f"nuScenes root {root} has no lidarseg annotations "
                                f"({os.path.join(table_root, 'lidarseg.json')} missing)")
    return load_nuscenes(root, version)


def _table_problem(table_root: str, exc: Exception) -> str:
    """Which table under ``table_root`` is malformed, found by reading each one."""
    for path in sorted(glob.glob(os.path.join(table_root, "*.json"))):
        try:
            with open(path, encoding="utf-8") as f:
                table = json.load(f)
        except ValueError as err:  # JSONDecodeError, UnicodeDecodeError
            return f"{path}: not valid JSON ({err})"
        if not isinstance(table, list):
            return f"{path}: a nuScenes table must be a list of records (JSON objects), got a {type(table).__name__}"
        for i, rec in enumerate(table):
            if not isinstance(rec, dict) or "token" not in rec:
                what = "has no 'token'" if isinstance(rec, dict) else f"is a {type(rec).__name__}"
                return (f"{path}: a nuScenes table must be a list of records (JSON objects with a "
                        f"'token'); record {i} {what}")
    return (f"nuscenes-devkit cannot load the tables in {table_root} "
            f"({type(exc).__name__}: {exc}); a record refers to a missing one or lacks a field")


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
    point_columns = 5
    label_dtype = np.uint8

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
            nusc = load_nuscenes(self.root, version)
        elif self.has_labels and not hasattr(nusc, "lidarseg"):
            raise FileNotFoundError(f"the given NuScenes ({nusc.dataroot}, {nusc.version}) has no "
                                    "lidarseg table (lidarseg.json missing)")
        self.nusc = nusc
        self.label_map: Optional[NuScenesLabelMap] = NuScenesLabelMap(nusc) if self.has_labels else None

        splits = create_splits_scenes()
        split_key = _split_name(version, split)
        if split_key not in splits:
            from common.config import ConfigError
            raise ConfigError(f"unknown nuScenes split {split!r} for {version}; valid: {', '.join(sorted(splits))}")
        wanted = set(splits[split_key])
        scene_tokens = {s["token"]: s["name"] for s in nusc.scene if s["name"] in wanted}

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
                if sd_token in label_files:
                    entry["labels"] = os.path.join(self.root, label_files[sd_token])
                else:  # found when read, like any bad file
                    entry["error"] = (f"{os.path.join(table_root, 'lidarseg.json')}: no lidarseg record for "
                                      f"LIDAR_TOP sample_data {sd_token} ({entry['points']})")
            self.samples.append(entry)
        if not self.samples:
            raise DataError(f"nuScenes split {split_key!r} has no scans: none of its {len(wanted)} scenes has a "
                            f"LIDAR_TOP keyframe in the tables of {table_root}")

    def sample_id(self, index: int) -> str:
        return self.samples[index]["token"]

    def __getstate__(self) -> Dict[str, Any]:
        # DataLoader workers need only the file lists; the devkit database is
        # large and not meant to be pickled.
        state = dict(self.__dict__)
        state["nusc"] = None
        return state

    def item_fields(self, sample: Dict[str, Any]) -> Dict[str, Any]:
        return {"token": sample["token"]}
