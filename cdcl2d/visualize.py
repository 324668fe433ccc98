"""Colour label maps with each dataset's palette."""
from __future__ import annotations

import numpy as np

from .datasets.labels import CAMVID_PALETTE, CITYSCAPES_PALETTE


def palette(kind: str) -> np.ndarray:
    """(256, 3) uint8 colour table for train ids of dataset type ``kind``
    (Cityscapes colours for the 19-class sets, SegNet colours for CamVid);
    ignore (255) is black."""
    colours = CAMVID_PALETTE if kind == "camvid" else CITYSCAPES_PALETTE
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:len(colours)] = np.asarray(colours, dtype=np.uint8)
    return table


def colorize(labels: np.ndarray, kind: str) -> np.ndarray:
    """(H, W) train ids -> (H, W, 3) uint8 colours."""
    return palette(kind)[np.asarray(labels).astype(np.int64) & 255]
