"""Writers for the two on-disk formats: SemanticKITTI sequences (also
SemanticPOSS's layout) and a nuScenes tree.

SemanticKITTI (``<out>/sequences/NN/``): ``velodyne/NNNNNN.bin`` float32
(x, y, z, remission), ``labels/NNNNNN.label`` uint32 (instance << 16 | raw
semantic id), ``calib.txt`` (P0..P3, Tr), ``poses.txt`` (3x4 camera poses
relative to the first frame, row-major) and ``times.txt`` (seconds).

nuScenes (``<out>/``): the 13 tables of ``v1.0-mini`` plus ``lidarseg.json``,
``samples/LIDAR_TOP/*.pcd.bin`` (float32 x, y, z, intensity, ring),
``lidarseg/v1.0-mini/<token>_lidarseg.bin`` (uint8 fine index per point) and
one map PNG under ``maps/``; ``v1.0-test`` beside it has the same tables with
empty ``instance``, ``sample_annotation`` and ``lidarseg`` (as released: the
devkit loads the categories' ``index`` and ``validate_submission`` counts the
points of the scans) and an empty ``lidarseg/v1.0-test/``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
from typing import Dict, List, Sequence

import numpy as np

from .world import KINDS, NUSCENES_FINE

# Velodyne -> rectified camera 0 in KITTI's convention (camera: x right,
# y down, z forward; velodyne: x forward, y left, z up), idealised.
KITTI_TR = np.array([[0.0, -1.0, 0.0, 0.0],
                     [0.0, 0.0, -1.0, -0.08],
                     [1.0, 0.0, 0.0, -0.27],
                     [0.0, 0.0, 0.0, 1.0]])
_KITTI_P = {  # projection matrices of the four cameras (fx, cx, cy, baseline term)
    "P0": [718.856, 0.0, 607.1928, 0.0, 0.0, 718.856, 185.2157, 0.0, 0.0, 0.0, 1.0, 0.0],
    "P1": [718.856, 0.0, 607.1928, -386.1448, 0.0, 718.856, 185.2157, 0.0, 0.0, 0.0, 1.0, 0.0],
    "P2": [718.856, 0.0, 607.1928, 45.38225, 0.0, 718.856, 185.2157, -0.1130887, 0.0, 0.0, 1.0, 0.003779761],
    "P3": [718.856, 0.0, 607.1928, -337.2877, 0.0, 718.856, 185.2157, 2.369057, 0.0, 0.0, 1.0, 0.004915215],
}


def yaw_matrix(x: float, y: float, z: float, yaw: float) -> np.ndarray:
    """4x4 pose: rotation about z by ``yaw``, then translation."""
    c, s = math.cos(yaw), math.sin(yaw)
    return np.array([[c, -s, 0, x], [s, c, 0, y], [0, 0, 1, z], [0, 0, 0, 1.0]])


def _fmt(values: Sequence[float]) -> str:
    return " ".join(f"{v:.12e}" for v in values)


def write_kitti_scan(seq_dir: str, index: int, xyz: np.ndarray, intensity: np.ndarray,
                     labels: np.ndarray = None) -> None:
    """One ``velodyne/NNNNNN.bin`` (and ``labels/NNNNNN.label`` when given);
    ``intensity`` on the dataset's own scale, as it is written."""
    pts = np.empty((xyz.shape[0], 4), np.float32)
    pts[:, :3] = xyz
    pts[:, 3] = intensity
    os.makedirs(os.path.join(seq_dir, "velodyne"), exist_ok=True)
    pts.tofile(os.path.join(seq_dir, "velodyne", f"{index:06d}.bin"))
    if labels is not None:
        os.makedirs(os.path.join(seq_dir, "labels"), exist_ok=True)
        labels.astype(np.uint32).tofile(os.path.join(seq_dir, "labels", f"{index:06d}.label"))


def write_kitti_sequence_meta(seq_dir: str, velo_poses: List[np.ndarray], times: List[float]) -> None:
    """``calib.txt``, ``poses.txt`` (camera 0 poses relative to the first
    frame: Tr · inv(V0) · Vi · inv(Tr)) and ``times.txt``."""
    os.makedirs(seq_dir, exist_ok=True)
    with open(os.path.join(seq_dir, "calib.txt"), "w", encoding="utf-8") as f:
        for name, vals in _KITTI_P.items():
            f.write(f"{name}: {_fmt(vals)}\n")
        f.write(f"Tr: {_fmt(KITTI_TR[:3].reshape(-1))}\n")
    inv_tr = np.linalg.inv(KITTI_TR)
    inv_v0 = np.linalg.inv(velo_poses[0]) if velo_poses else np.eye(4)
    with open(os.path.join(seq_dir, "poses.txt"), "w", encoding="utf-8") as f:
        for v in velo_poses:
            cam = KITTI_TR @ inv_v0 @ v @ inv_tr
            f.write(_fmt(cam[:3].reshape(-1)) + "\n")
    with open(os.path.join(seq_dir, "times.txt"), "w", encoding="utf-8") as f:
        for t in times:
            f.write(f"{t:.6e}\n")


# -- nuScenes -----------------------------------------------------------------
def token(seed: int, *parts: object) -> str:
    """A deterministic 32-hex token."""
    return hashlib.md5(":".join(str(p) for p in (seed,) + parts).encode()).hexdigest()


def quaternion_yaw(yaw: float) -> List[float]:
    """[w, x, y, z] of a rotation about z."""
    return [math.cos(yaw / 2), 0.0, 0.0, math.sin(yaw / 2)]


_CATEGORY_DESCRIPTIONS = {
    "noise": "Any lidar return that does not correspond to a physical object.",
    "vehicle.ego": "The vehicle on which the sensors are mounted.",
}

ATTRIBUTES = [
    ("vehicle.moving", "Vehicle is moving."),
    ("vehicle.stopped", "Vehicle, with a driver/rider in/on it, is currently stationary."),
    ("vehicle.parked", "Vehicle is stationary (usually for longer duration) with no immediate intent to move."),
    ("cycle.with_rider", "There is a rider on the bicycle or motorcycle."),
    ("cycle.without_rider", "There is NO rider on the bicycle or motorcycle."),
    ("pedestrian.sitting_lying_down", "The human is sitting or lying down."),
    ("pedestrian.standing", "The human is standing."),
    ("pedestrian.moving", "The human is moving."),
]

VISIBILITY = [
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
]


def attribute_of_kind(kind: int) -> str:
    """The nuScenes attribute name of a thing kind ('' where none applies)."""
    name = KINDS[kind].name
    fine = NUSCENES_FINE[KINDS[kind].nuscenes]
    if name.endswith("cyclist"):
        return "cycle.with_rider"
    if name in ("bicycle", "motorcycle"):
        return "cycle.without_rider"
    if fine.startswith("vehicle."):
        return "vehicle.moving" if name.startswith("moving-") else "vehicle.parked"
    if fine.startswith("human."):
        return "pedestrian.moving" if name.startswith("moving-") else "pedestrian.standing"
    return ""


def write_tables(table_root: str, tables: Dict[str, list]) -> None:
    """One ``<name>.json`` per table."""
    os.makedirs(table_root, exist_ok=True)
    for name, records in tables.items():
        with open(os.path.join(table_root, f"{name}.json"), "w", encoding="utf-8") as f:
            json.dump(records, f, indent=0)


def category_table(seed: int) -> List[dict]:
    """The 32 lidarseg categories with their ``index`` in the official order."""
    return [{"token": token(seed, "category", name), "name": name,
             "description": _CATEGORY_DESCRIPTIONS.get(name, f"Generated {name}."), "index": i}
            for i, name in enumerate(NUSCENES_FINE)]


def write_map_png(path: str, size: int = 256) -> None:
    """A small semantic-prior mask: a driveable cross in the middle."""
    from PIL import Image

    img = np.zeros((size, size), np.uint8)
    q = size // 2
    img[q - 8:q + 8, :] = 255
    img[:, q - 8:q + 8] = 255
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(img).save(path)
