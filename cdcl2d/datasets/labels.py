"""Label tables: Cityscapes ids -> train ids (as cityscapesscripts' labels.py
defines them), the 19 Cityscapes/BDD100K classes, and CamVid's 11 classes."""
from __future__ import annotations

from typing import Dict, List, NamedTuple, Tuple

import numpy as np

IGNORE_INDEX = 255
# Marks a raw id that the table does not know (distinct from ignore).
UNKNOWN = -1


class CityscapesLabel(NamedTuple):
    name: str
    id: int
    train_id: int
    color: Tuple[int, int, int]


# name, label id, train id (255 = ignored in evaluation), colour.
CITYSCAPES_LABELS: List[CityscapesLabel] = [
    CityscapesLabel("unlabeled", 0, 255, (0, 0, 0)),
    CityscapesLabel("ego vehicle", 1, 255, (0, 0, 0)),
    CityscapesLabel("rectification border", 2, 255, (0, 0, 0)),
    CityscapesLabel("out of roi", 3, 255, (0, 0, 0)),
    CityscapesLabel("static", 4, 255, (0, 0, 0)),
    CityscapesLabel("dynamic", 5, 255, (111, 74, 0)),
    CityscapesLabel("ground", 6, 255, (81, 0, 81)),
    CityscapesLabel("road", 7, 0, (128, 64, 128)),
    CityscapesLabel("sidewalk", 8, 1, (244, 35, 232)),
    CityscapesLabel("parking", 9, 255, (250, 170, 160)),
    CityscapesLabel("rail track", 10, 255, (230, 150, 140)),
    CityscapesLabel("building", 11, 2, (70, 70, 70)),
    CityscapesLabel("wall", 12, 3, (102, 102, 156)),
    CityscapesLabel("fence", 13, 4, (190, 153, 153)),
    CityscapesLabel("guard rail", 14, 255, (180, 165, 180)),
    CityscapesLabel("bridge", 15, 255, (150, 100, 100)),
    CityscapesLabel("tunnel", 16, 255, (150, 120, 90)),
    CityscapesLabel("pole", 17, 5, (153, 153, 153)),
    CityscapesLabel("polegroup", 18, 255, (153, 153, 153)),
    CityscapesLabel("traffic light", 19, 6, (250, 170, 30)),
    CityscapesLabel("traffic sign", 20, 7, (220, 220, 0)),
    CityscapesLabel("vegetation", 21, 8, (107, 142, 35)),
    CityscapesLabel("terrain", 22, 9, (152, 251, 152)),
    CityscapesLabel("sky", 23, 10, (70, 130, 180)),
    CityscapesLabel("person", 24, 11, (220, 20, 60)),
    CityscapesLabel("rider", 25, 12, (255, 0, 0)),
    CityscapesLabel("car", 26, 13, (0, 0, 142)),
    CityscapesLabel("truck", 27, 14, (0, 0, 70)),
    CityscapesLabel("bus", 28, 15, (0, 60, 100)),
    CityscapesLabel("caravan", 29, 255, (0, 0, 90)),
    CityscapesLabel("trailer", 30, 255, (0, 0, 110)),
    CityscapesLabel("train", 31, 16, (0, 80, 100)),
    CityscapesLabel("motorcycle", 32, 17, (0, 0, 230)),
    CityscapesLabel("bicycle", 33, 18, (119, 11, 32)),
    # "license plate" has id -1 in labels.py: it never appears in a labelIds PNG.
]

CITYSCAPES_CLASSES: List[str] = [l.name for l in sorted(
    (l for l in CITYSCAPES_LABELS if l.train_id != 255), key=lambda l: l.train_id)]
CITYSCAPES_PALETTE: List[Tuple[int, int, int]] = [l.color for l in sorted(
    (l for l in CITYSCAPES_LABELS if l.train_id != 255), key=lambda l: l.train_id)]
assert len(CITYSCAPES_CLASSES) == 19

# BDD100K semantic segmentation uses the same 19 classes as Cityscapes' train ids.
BDD100K_CLASSES: List[str] = list(CITYSCAPES_CLASSES)

# CamVid, 11-class SegNet version; id 11 ("void") is ignored.
CAMVID_CLASSES: List[str] = ["sky", "building", "pole", "road", "pavement", "tree",
                             "sign symbol", "fence", "car", "pedestrian", "bicyclist"]
CAMVID_PALETTE: List[Tuple[int, int, int]] = [
    (128, 128, 128), (128, 0, 0), (192, 192, 128), (128, 64, 128), (60, 40, 222), (128, 128, 0),
    (192, 128, 128), (64, 64, 128), (64, 0, 128), (64, 64, 0), (0, 128, 192)]
CAMVID_VOID = 11

# CamVid class -> Cityscapes train id, for the label-remapping baseline
# ("bicyclist" is the person on the bike, which Cityscapes calls rider).
CAMVID_TO_CITYSCAPES: Dict[str, str] = {
    "sky": "sky", "building": "building", "pole": "pole", "road": "road",
    "pavement": "sidewalk", "tree": "vegetation", "sign symbol": "traffic sign",
    "fence": "fence", "car": "car", "pedestrian": "person", "bicyclist": "rider"}


def cityscapes_id_to_train_lut() -> np.ndarray:
    """(256,) int64 table: label id -> train id; 255 for ignored ids,
    :data:`UNKNOWN` for ids that Cityscapes does not define."""
    lut = np.full(256, UNKNOWN, dtype=np.int64)
    for label in CITYSCAPES_LABELS:
        lut[label.id] = label.train_id
    return lut


def cityscapes_train_to_id_lut() -> np.ndarray:
    """(256,) uint8 table: train id -> label id (255 -> 0 "unlabeled"), for
    writing predictions that cityscapesscripts scores."""
    lut = np.zeros(256, dtype=np.uint8)
    for label in CITYSCAPES_LABELS:
        if label.train_id != 255:
            lut[label.train_id] = label.id
    return lut


def identity_lut(num_classes: int, void: Tuple[int, ...] = ()) -> np.ndarray:
    """(256,) table for datasets stored as train ids: 0..C-1 kept, 255 and the
    ``void`` values -> 255, anything else :data:`UNKNOWN`."""
    lut = np.full(256, UNKNOWN, dtype=np.int64)
    lut[:num_classes] = np.arange(num_classes)
    lut[IGNORE_INDEX] = IGNORE_INDEX
    for v in void:
        lut[v] = IGNORE_INDEX
    return lut


def camvid_to_cityscapes_map() -> List[int]:
    """CamVid train id -> Cityscapes train id (list of 11)."""
    return [CITYSCAPES_CLASSES.index(CAMVID_TO_CITYSCAPES[c]) for c in CAMVID_CLASSES]
