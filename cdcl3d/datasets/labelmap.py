"""Label taxonomies of the LiDAR datasets.

SemanticKITTI: raw ``.label`` values are uint32, low 16 bits the semantic id,
high 16 bits the instance id. The official ``learning_map`` (shipped as
package data, ``cdcl3d/data/semantic-kitti.yaml``) sends the semantic ids to
0..19 where 0 is "ignore"; training ids here are ``learning_map - 1`` (0..18)
with 0 -> 255.

nuScenes-lidarseg: per-point uint8 fine ids (32 classes, indices from the
``category`` table) are sent to the 16 challenge classes (1..16, 0 ignore) by
the devkit's ``LidarsegClassMapper``; training ids are ``challenge - 1``
(0..15) with 0 -> 255.
"""
from __future__ import annotations

from importlib import resources
from typing import Any, Dict, List, Optional, Tuple

import numpy as np
import yaml

IGNORE_INDEX = 255
_SPLIT_ALIASES = {"train": "train", "val": "valid", "valid": "valid", "test": "test"}


def load_semantic_kitti_yaml() -> Dict[str, Any]:
    """The official SemanticKITTI config (labels, colours, learning map, splits)."""
    text = resources.files("cdcl3d").joinpath("data/semantic-kitti.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


class SemanticKittiLabelMap:
    """Raw SemanticKITTI ids <-> training ids 0..18 (ignore 255)."""

    num_classes = 19
    ignore_index = IGNORE_INDEX

    def __init__(self, config: Optional[Dict[str, Any]] = None) -> None:
        cfg = config if config is not None else load_semantic_kitti_yaml()
        self.config = cfg
        self.labels: Dict[int, str] = {int(k): str(v) for k, v in cfg["labels"].items()}
        self.learning_map: Dict[int, int] = {int(k): int(v) for k, v in cfg["learning_map"].items()}
        self.learning_map_inv: Dict[int, int] = {int(k): int(v) for k, v in cfg["learning_map_inv"].items()}
        self.color_bgr: Dict[int, Tuple[int, int, int]] = {
            int(k): tuple(int(c) for c in v) for k, v in cfg["color_map"].items()}
        n_learn = max(self.learning_map.values())
        if n_learn != self.num_classes:
            raise ValueError(f"learning_map has {n_learn} classes, expected {self.num_classes}")
        self.class_names: List[str] = [self.labels[self.learning_map_inv[i]]
                                       for i in range(1, self.num_classes + 1)]

        # Lookup on the 16-bit semantic id; -1 marks ids absent from the map.
        lut = np.full(1 << 16, -1, dtype=np.int64)
        for raw, learn in self.learning_map.items():
            lut[raw] = IGNORE_INDEX if learn == 0 else learn - 1
        self._to_train_lut = lut
        inv = np.zeros(self.num_classes, dtype=np.uint32)
        for i in range(self.num_classes):
            inv[i] = self.learning_map_inv[i + 1]
        self._to_raw_lut = inv

    def to_train(self, raw: np.ndarray) -> np.ndarray:
        """Raw uint32 labels (instance bits allowed) -> int64 train ids (255 ignore).

        Raises ValueError naming the raw semantic ids the learning map lacks.
        """
        sem = np.asarray(raw).astype(np.uint32, copy=False) & np.uint32(0xFFFF)
        out = self._to_train_lut[sem]
        if out.size and out.min() < 0:
            bad = np.unique(sem[out < 0])
            raise ValueError(f"unknown SemanticKITTI raw label id(s) {bad.tolist()[:10]} "
                             "(not in the learning map)")
        return out

    def to_raw(self, train_ids: np.ndarray) -> np.ndarray:
        """Train ids 0..18 -> raw uint32 ids through ``learning_map_inv``.

        Ignore (255) maps to raw 0 ("unlabeled"); other out-of-range ids raise.
        """
        t = np.asarray(train_ids).astype(np.int64, copy=False)
        ignore = t == IGNORE_INDEX
        bad = ~ignore & ((t < 0) | (t >= self.num_classes))
        if bad.any():
            raise ValueError(f"train ids out of range 0..{self.num_classes - 1}: "
                             f"{np.unique(t[bad]).tolist()[:10]}")
        out = self._to_raw_lut[np.where(ignore, 0, t)]
        out[ignore] = self.learning_map_inv[0]
        return out.astype(np.uint32)

    def content_by_train_id(self) -> np.ndarray:
        """Class frequencies (the yaml's ``content``) per train id, summing the raw
        ids that share a train class, dropping ignored ones, renormalised to 1."""
        freq = np.zeros(self.num_classes, dtype=np.float64)
        for raw, share in self.config["content"].items():
            learn = self.learning_map.get(int(raw), 0)
            if learn > 0:
                freq[learn - 1] += float(share)
        return freq / freq.sum()

    def split(self, name: str) -> List[str]:
        """Sequence ids ('00', ...) of split ``name`` (train / val / valid / test)."""
        if name not in _SPLIT_ALIASES:
            raise ValueError(f"unknown SemanticKITTI split {name!r}; valid: train, val, test")
        return [f"{int(s):02d}" for s in self.config["split"][_SPLIT_ALIASES[name]]]


# -- nuScenes ------------------------------------------------------------------------

def _challenge_mapper_without_db():
    """A LidarsegClassMapper holding only its static tables (coarse names and
    indices); those methods never touch the NuScenes database."""
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper

    mapper = LidarsegClassMapper.__new__(LidarsegClassMapper)
    mapper.ignore_class = mapper.get_ignore_class()
    return mapper


def nuscenes_challenge_classes() -> List[str]:
    """The 16 nuScenes-lidarseg challenge class names, in challenge order 1..16
    (= train ids 0..15), read from the devkit's ``LidarsegClassMapper``."""
    mapper = _challenge_mapper_without_db()
    coarse = mapper.get_coarse2idx()
    ignore = mapper.ignore_class["index"]
    names = [name for name, idx in sorted(coarse.items(), key=lambda kv: kv[1]) if idx != ignore]
    if [coarse[n] for n in names] != list(range(1, len(names) + 1)):
        raise ValueError(f"unexpected nuScenes challenge indices from the devkit: {coarse}")
    return names


class NuScenesLabelMap:
    """nuScenes-lidarseg fine ids (uint8) -> train ids 0..15 (ignore 255), built
    from the devkit's ``LidarsegClassMapper`` on a loaded ``NuScenes`` (which
    holds the fine-class indices of its ``category`` table)."""

    num_classes = 16
    ignore_index = IGNORE_INDEX

    def __init__(self, nusc: Any) -> None:
        from nuscenes.eval.lidarseg.utils import LidarsegClassMapper

        if not hasattr(nusc, "lidarseg_name2idx_mapping"):
            raise ValueError(f"the NuScenes database at {getattr(nusc, 'dataroot', '?')} has no "
                             "lidarseg category indices (lidarseg.json missing?)")
        mapper = LidarsegClassMapper(nusc)
        self.class_names = nuscenes_challenge_classes()
        ignore = mapper.ignore_class["index"]
        lut = np.full(256, -1, dtype=np.int64)
        for fine, coarse in mapper.fine_idx_2_coarse_idx_mapping.items():
            lut[int(fine)] = IGNORE_INDEX if coarse == ignore else coarse - 1
        self._lut = lut
        self.fine_names: Dict[int, str] = dict(nusc.lidarseg_idx2name_mapping)

    @property
    def lut(self) -> np.ndarray:
        """(256,) int64 fine id -> train id, -1 for fine ids the database lacks."""
        return self._lut.copy()

    def to_train(self, fine: np.ndarray) -> np.ndarray:
        """uint8 fine ids -> int64 train ids; an unknown fine id raises ValueError."""
        f = np.asarray(fine)
        if f.size and (f.min() < 0 or f.max() > 255):
            raise ValueError(f"nuScenes fine label ids outside 0..255: {f.min()}..{f.max()}")
        out = self._lut[f.astype(np.int64, copy=False)]
        if out.size and out.min() < 0:
            raise ValueError(f"unknown nuScenes fine label id(s) {np.unique(f[out < 0]).tolist()[:10]}")
        return out

    __call__ = to_train

    @staticmethod
    def to_challenge(train_ids: np.ndarray) -> np.ndarray:
        """Train ids 0..15 -> challenge ids 1..16 (uint8; ignore -> 0), the
        values a lidarseg submission ``.bin`` holds."""
        t = np.asarray(train_ids).astype(np.int64, copy=False)
        ignore = t == IGNORE_INDEX
        if (~ignore & ((t < 0) | (t >= 16))).any():
            raise ValueError("train ids out of range 0..15")
        return np.where(ignore, 0, t + 1).astype(np.uint8)


def nuscenes_fine_to_train(nusc: Any) -> NuScenesLabelMap:
    """The fine -> train id map of a loaded ``NuScenes``: a callable
    ``f(fine uint8) -> int64 train ids`` (see :class:`NuScenesLabelMap`)."""
    return NuScenesLabelMap(nusc)
