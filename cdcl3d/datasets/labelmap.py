"""Label taxonomies of the LiDAR datasets.

Any dataset in SemanticKITTI's layout (:class:`KittiFormatLabelMap`, from a
label yaml in the semantic-kitti-api schema; SemanticKITTI's and
SemanticPOSS's ship in ``cdcl3d/data``). SemanticKITTI: raw ``.label`` values are uint32, low 16 bits the semantic id,
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
    return package_label_yaml("semantic-kitti.yaml")


def package_label_yaml(name: str) -> Dict[str, Any]:
    """A label yaml shipped in ``cdcl3d/data`` (``semantic-kitti.yaml``, ``semantic-poss.yaml``)."""
    text = resources.files("cdcl3d").joinpath(f"data/{name}").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def load_label_yaml(path: str) -> Dict[str, Any]:
    """A user's label yaml (``data.<name>.labels``), checked by
    :class:`KittiFormatLabelMap`; a missing or unreadable file is a ConfigError."""
    from common.config import ConfigError

    try:
        with open(path, encoding="utf-8") as f:
            return yaml.safe_load(f)
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the label yaml ({exc.strerror})") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML ({exc})") from None


def _id_table(cfg: Dict[str, Any], key: str, source: str, value=int) -> Dict[int, Any]:
    from common.config import ConfigError

    table = cfg.get(key)
    if not isinstance(table, dict) or not table:
        raise ConfigError(f"{source}: '{key}' must be a mapping of raw label ids, got {table!r}")
    try:
        return {int(k): value(v) for k, v in table.items()}
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{source}: '{key}' holds a bad entry ({exc})") from None


class KittiFormatLabelMap:
    """Raw ids of a dataset in SemanticKITTI's layout <-> training ids 0..K-1
    (ignore 255), from a label yaml in the semantic-kitti-api schema:

    * ``labels``: raw id -> name; ``learning_map``: raw id -> 0..K (0 = ignore,
      class ``c`` is train id ``c - 1``); ``split``: ``train`` / ``valid``
      (or ``val``) / ``test`` -> sequence numbers;
    * optional ``learning_map_inv`` (class -> the raw id written back; default:
      the first raw id of the class, so a many-to-one class writes its first id),
      ``color_map`` (raw id -> BGR; default: distinct generated colours),
      ``content`` (raw id -> point share, the source of ``class_weights: content``).

    Class names are the ``labels`` of ``learning_map_inv``'s raw ids. A bad
    table is a :class:`~common.config.ConfigError` naming ``source`` and the key.
    """

    ignore_index = IGNORE_INDEX

    def __init__(self, config: Dict[str, Any], source: str = "label yaml", title: str = "") -> None:
        from common.config import ConfigError

        if not isinstance(config, dict):
            raise ConfigError(f"{source}: a label yaml must be a mapping, got {type(config).__name__}")
        self.config, self.source, self.title = config, source, title
        self.labels: Dict[int, str] = _id_table(config, "labels", source, str)
        self.learning_map: Dict[int, int] = _id_table(config, "learning_map", source)
        k = max(self.learning_map.values())
        if k < 1 or min(self.learning_map.values()) < 0:
            raise ConfigError(f"{source}: 'learning_map' must send raw ids to 0 (ignore) .. K, "
                              f"got values {sorted(set(self.learning_map.values()))}")
        missing = sorted(set(range(1, k + 1)) - set(self.learning_map.values()))
        if missing:
            raise ConfigError(f"{source}: 'learning_map' sends no raw id to class(es) {missing} of 1..{k}")
        self.num_classes = k
        if "learning_map_inv" in config:
            self.learning_map_inv: Dict[int, int] = _id_table(config, "learning_map_inv", source)
        else:
            self.learning_map_inv = {0: min((r for r, c in self.learning_map.items() if c == 0), default=0)}
            for raw in sorted(self.learning_map, reverse=True):
                if self.learning_map[raw] > 0:
                    self.learning_map_inv[self.learning_map[raw]] = raw
        for c in range(1, k + 1):
            raw = self.learning_map_inv.get(c)
            if raw is None or self.learning_map.get(raw) != c:
                raise ConfigError(f"{source}: 'learning_map_inv' must send class {c} to a raw id that "
                                  f"'learning_map' sends to {c}, got {raw!r}")
            if raw not in self.labels:
                raise ConfigError(f"{source}: 'labels' has no name for raw id {raw} (class {c})")
        self.class_names: List[str] = [self.labels[self.learning_map_inv[c]] for c in range(1, k + 1)]
        if "color_map" in config:
            self.color_bgr: Dict[int, Tuple[int, int, int]] = {
                raw: tuple(int(c) for c in bgr) for raw, bgr in _id_table(config, "color_map", source, list).items()}
        else:
            self.color_bgr = {self.learning_map_inv[c]: tuple(int(v) for v in _distinct_color(c - 1))[::-1]
                              for c in range(1, k + 1)}
        for c in range(1, k + 1):
            if len(self.color_bgr.get(self.learning_map_inv[c], ())) != 3:
                raise ConfigError(f"{source}: 'color_map' needs a [b, g, r] colour for raw id "
                                  f"{self.learning_map_inv[c]} (class {self.class_names[c - 1]})")
        self.content: Optional[Dict[int, float]] = (_id_table(config, "content", source, float)
                                                    if "content" in config else None)
        splits = config.get("split")
        if not isinstance(splits, dict) or "train" not in splits:
            raise ConfigError(f"{source}: 'split' must map train / valid / test to sequence numbers, got {splits!r}")

        # Lookup on the 16-bit semantic id; -1 marks ids absent from the map.
        lut = np.full(1 << 16, -1, dtype=np.int64)
        for raw, learn in self.learning_map.items():
            lut[raw] = IGNORE_INDEX if learn == 0 else learn - 1
        self._to_train_lut = lut
        self._to_raw_lut = np.array([self.learning_map_inv[c] for c in range(1, k + 1)], dtype=np.uint32)

    def to_train(self, raw: np.ndarray) -> np.ndarray:
        """Raw uint32 labels (instance bits allowed) -> int64 train ids (255 ignore).

        Raises ValueError naming the raw semantic ids the learning map lacks.
        """
        sem = np.asarray(raw).astype(np.uint32, copy=False) & np.uint32(0xFFFF)
        out = self._to_train_lut[sem]
        if out.size and out.min() < 0:
            bad = np.unique(sem[out < 0])
            raise ValueError(f"unknown {self.title + ' ' if self.title else ''}raw label id(s) "
                             f"{bad.tolist()[:10]} (not in the learning map of {self.source})")
        return out

    def to_raw(self, train_ids: np.ndarray) -> np.ndarray:
        """Train ids 0..K-1 -> raw uint32 ids through ``learning_map_inv``.

        Ignore (255) maps to ``learning_map_inv[0]`` ("unlabeled"); other
        out-of-range ids raise.
        """
        t = np.asarray(train_ids).astype(np.int64, copy=False)
        ignore = t == IGNORE_INDEX
        bad = ~ignore & ((t < 0) | (t >= self.num_classes))
        if bad.any():
            raise ValueError(f"train ids out of range 0..{self.num_classes - 1}: "
                             f"{np.unique(t[bad]).tolist()[:10]}")
        out = self._to_raw_lut[np.where(ignore, 0, t)]
        out[ignore] = self.learning_map_inv.get(0, 0)
        return out.astype(np.uint32)

    def palette(self) -> np.ndarray:
        """``(K, 3) uint8`` RGB per train id: the colour of its written-back raw id."""
        return np.array([self.color_bgr[self.learning_map_inv[c]][::-1] for c in range(1, self.num_classes + 1)],
                        dtype=np.uint8)

    def content_by_train_id(self) -> Optional[np.ndarray]:
        """Class frequencies (the yaml's ``content``) per train id, summing the raw
        ids that share a train class, dropping ignored ones, renormalised to 1;
        None when the yaml has no ``content``."""
        if self.content is None:
            return None
        freq = np.zeros(self.num_classes, dtype=np.float64)
        for raw, share in self.content.items():
            learn = self.learning_map.get(raw, 0)
            if learn > 0:
                freq[learn - 1] += share
        return freq / freq.sum()

    def split(self, name: str) -> List[str]:
        """Sequence ids ('00', ...) of split ``name`` (train / val / valid / test)."""
        from common.config import ConfigError

        splits = self.config["split"]
        key = _SPLIT_ALIASES.get(name)
        if key == "valid" and key not in splits and "val" in splits:
            key = "val"
        if key not in splits:
            valid = sorted({n for n in ("train", "val", "test") if _SPLIT_ALIASES[n] in splits or
                            (n == "val" and "val" in splits)})
            raise ConfigError(f"{self.source}: no split {name!r}; valid: {', '.join(valid)}")
        return [f"{int(s):02d}" for s in splits[key]]


def _distinct_color(i: int) -> Tuple[int, int, int]:
    """A readable RGB colour for class ``i``: golden-ratio hues, bright."""
    import colorsys

    r, g, b = colorsys.hsv_to_rgb((i * 0.618033988749895) % 1.0, 0.75, 0.95)
    return int(r * 255), int(g * 255), int(b * 255)


class SemanticKittiLabelMap(KittiFormatLabelMap):
    """SemanticKITTI's official yaml: raw ids <-> training ids 0..18 (ignore 255)."""

    def __init__(self, config: Optional[Dict[str, Any]] = None) -> None:
        super().__init__(config if config is not None else load_semantic_kitti_yaml(), "semantic-kitti.yaml",
                         "SemanticKITTI")


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


class NuScenesClasses:
    """The 16 challenge classes without a database: names, palette (the devkit's
    colours, :func:`cdcl3d.vis.colors.nuscenes_train_palette`), no point shares."""

    num_classes = 16

    def __init__(self) -> None:
        self.class_names = nuscenes_challenge_classes()

    @staticmethod
    def palette() -> np.ndarray:
        from ..vis.colors import nuscenes_train_palette
        return nuscenes_train_palette()

    @staticmethod
    def content_by_train_id() -> None:
        return None


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
