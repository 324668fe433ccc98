"""Shared machinery of the image segmentation readers.

A reader lists ``(image_path, label_path_or_None, sample_id)`` triples; this
base class loads them, maps raw label values to train ids through a 256-entry
table (unknown values are an error naming the file), applies the transform
and returns ``{"inputs", "labels", "id", "dataset"}``.

Bad data (an unreadable image or mask, a mask of another size than its
image, an unknown label value) is a :class:`~common.errors.DataError` naming
the file, found when the sample is read; with ``on_bad_sample='skip'`` the
sample is skipped as :class:`common.data.BadSamplePolicy` says (replaced by
the next readable one in training, dropped and listed in evaluation). A
split without images is a ``DataError`` naming the image folder.
"""
from __future__ import annotations

import os
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
from PIL import Image

from common.data import BadSamplePolicy, check_on_bad_sample
from common.errors import DataError

from ..transforms import Normalize
from .labels import IGNORE_INDEX, UNKNOWN

Sample = Tuple[str, Optional[str], str]
Transform = Callable[[np.ndarray, Optional[np.ndarray]], Tuple[np.ndarray, Optional[np.ndarray]]]


def load_image(path: str) -> np.ndarray:
    """RGB image as (H, W, 3) uint8; FileNotFoundError/ValueError name the file."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"image file not found: {path}")
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"), dtype=np.uint8).copy()
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: cannot read image ({exc})") from exc


def load_mask(path: str) -> np.ndarray:
    """Single-channel label PNG as (H, W) uint8."""
    if not os.path.isfile(path):
        raise FileNotFoundError(f"label file not found: {path}")
    try:
        with Image.open(path) as img:
            if img.mode not in ("L", "P", "I", "I;16", "1"):
                raise DataError(f"{path}: label image must be single-channel (mode L or P), "
                                f"got mode {img.mode}")
            mask = np.asarray(img)
    except OSError as exc:
        raise DataError(f"{path}: cannot read label image ({exc})") from exc
    if mask.ndim != 2:
        raise DataError(f"{path}: label image must be 2-D, got shape {mask.shape}")
    if mask.max(initial=0) > 255 or mask.min(initial=0) < 0:
        raise DataError(f"{path}: label values must lie in 0..255, got {mask.min()}..{mask.max()}")
    return mask.astype(np.uint8)


class SegmentationDataset(BadSamplePolicy, torch.utils.data.Dataset):
    """Base reader. Subclasses set ``class_names``, ``lut`` and fill
    ``self.samples`` in ``__init__`` (via :meth:`_list_samples`, which sets
    ``self.image_dir``, the folder an empty split is reported by)."""

    class_names: List[str] = []
    ignore_index: int = IGNORE_INDEX
    name: str = "base"

    def __init__(self, root: str, split: str, transform: Optional[Transform] = None,
                 dataset_name: Optional[str] = None, on_bad_sample: str = "raise") -> None:
        self.on_bad_sample = check_on_bad_sample(on_bad_sample)
        if not os.path.isdir(root):
            raise FileNotFoundError(f"{type(self).__name__}: dataset root {root!r} is not a directory")
        self.root = root
        self.split = split
        self.transform = transform
        self.normalize = Normalize()
        self.dataset_name = dataset_name or self.name
        self.lut = self.label_table()
        self.image_dir = root
        self.samples: List[Sample] = self._list_samples()
        if not self.samples:
            raise DataError(f"{type(self).__name__}: no images for split {split!r} in {self.image_dir}")

    # -- to override ------------------------------------------------------------
    def _list_samples(self) -> List[Sample]:
        raise NotImplementedError

    def label_table(self) -> np.ndarray:
        """(256,) int64: raw label value -> train id / 255 / UNKNOWN."""
        raise NotImplementedError

    # -- common -----------------------------------------------------------------
    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def has_labels(self) -> bool:
        return all(s[1] is not None for s in self.samples)

    def __len__(self) -> int:
        return len(self.samples)

    def encode_labels(self, raw: np.ndarray, path: str = "<array>") -> np.ndarray:
        """Raw label values -> train ids (int64); unknown values raise DataError."""
        out = self.lut[raw]
        if (out == UNKNOWN).any():
            bad = sorted(int(v) for v in np.unique(raw[out == UNKNOWN]))
            raise DataError(f"{path}: unknown label id(s) {bad[:10]} for {type(self).__name__}")
        return out

    def load(self, index: int) -> Tuple[np.ndarray, Optional[np.ndarray]]:
        """Image (H, W, 3) uint8 and train-id labels (H, W) int64 (or None)."""
        image_path, label_path, _ = self.samples[index]
        image = load_image(image_path)
        if label_path is None:
            return image, None
        raw = load_mask(label_path)
        if raw.shape != image.shape[:2]:
            raise DataError(f"{label_path}: label size {raw.shape[1]}x{raw.shape[0]} does not match "
                            f"image {image_path} size {image.shape[1]}x{image.shape[0]}")
        return image, self.encode_labels(raw, label_path)

    def sample_id(self, index: int) -> str:
        return self.samples[index][2]

    def __getitem__(self, index: int) -> Dict[str, object]:
        return self.read_sample(index, self._item)

    def _item(self, index: int) -> Dict[str, object]:
        image, labels = self.load(index)
        size = image.shape[:2]
        if self.transform is not None:
            image, labels = self.transform(image, labels)
        item: Dict[str, object] = {
            "inputs": torch.from_numpy(np.ascontiguousarray(self.normalize(image))),  # (3, H, W)
            "id": self.samples[index][2],
            "dataset": self.dataset_name,
            "orig_size": tuple(int(s) for s in size),
        }
        if labels is not None:
            item["labels"] = torch.from_numpy(np.ascontiguousarray(labels)).long()  # (H, W)
        return item


def sorted_files(directory: str, suffix: str) -> List[str]:
    """Files under ``directory`` (recursive) ending in ``suffix``, sorted."""
    found = []
    for dirpath, _, names in os.walk(directory):
        found.extend(os.path.join(dirpath, n) for n in names if n.endswith(suffix))
    return sorted(found)


def require_dir(path: str, what: str, hint: Sequence[str] = ()) -> str:
    if not os.path.isdir(path):
        extra = f" (expected layout: {'; '.join(hint)})" if hint else ""
        raise FileNotFoundError(f"{what} directory not found: {path}{extra}")
    return path
