"""Colours for point clouds: the datasets' official palettes and colour modes.

Palettes are ``(K, 3) uint8`` RGB arrays indexed by training id (0..K-1).

* SemanticKITTI's layout (SemanticKITTI, SemanticPOSS, ``kitti_format``): the
  label yaml's ``color_map`` is BGR keyed by raw id; the training palette
  takes, for train id ``i``, the colour of raw id ``learning_map_inv[i + 1]`` (so a prediction written back as raw ids has the
  colour the official tools give it).
* nuScenes-lidarseg: the devkit's ``get_colormap()`` (fine class name -> RGB).
  Each of the 16 challenge classes takes the colour of its *main* fine class
  (:data:`NUSCENES_MAIN_FINE_CLASS`, e.g. pedestrian -> adult, bus -> bendy
  bus); these are exactly the colours of the devkit's
  ``LidarsegClassMapper.get_coarse2color`` (a test checks it).

Colour modes (:func:`colorize`): ``label`` / ``pred`` (palette by class; ignore
dark grey), ``error`` (correct grey, wrong red, ignored dark), ``intensity``
and ``range`` (a small built-in colormap lookup; matplotlib is not needed).
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

IGNORE_INDEX = 255
MODES = ("label", "pred", "error", "intensity", "range")

# Error mode and ignore colours (RGB). Kept far from every palette colour's
# "red" so red pixels can be counted in a picture.
CORRECT_COLOR = (160, 160, 160)
WRONG_COLOR = (255, 0, 0)
IGNORED_COLOR = (60, 60, 60)
BACKGROUND_COLOR = (0, 0, 0)

# Anchors of two perceptual colormaps, interpolated linearly in between.
# viridis (intensity) and a turbo-like rainbow (range); 9 anchors each is
# visually indistinguishable from the full 256-entry tables at point size.
_VIRIDIS = np.array([
    (68, 1, 84), (71, 44, 122), (59, 81, 139), (44, 113, 142), (33, 144, 141),
    (39, 173, 129), (92, 200, 99), (170, 220, 50), (253, 231, 37)], dtype=np.float64)
_TURBO = np.array([
    (48, 18, 59), (67, 103, 226), (40, 170, 250), (25, 226, 187), (116, 254, 93),
    (201, 239, 52), (254, 185, 56), (232, 92, 20), (122, 4, 3)], dtype=np.float64)
COLORMAPS: Dict[str, np.ndarray] = {"viridis": _VIRIDIS, "turbo": _TURBO}

# nuScenes challenge class (1..16) -> the fine class whose devkit colour it takes.
NUSCENES_MAIN_FINE_CLASS: Dict[str, str] = {
    "barrier": "movable_object.barrier",
    "bicycle": "vehicle.bicycle",
    "bus": "vehicle.bus.bendy",
    "car": "vehicle.car",
    "construction_vehicle": "vehicle.construction",
    "motorcycle": "vehicle.motorcycle",
    "pedestrian": "human.pedestrian.adult",
    "traffic_cone": "movable_object.trafficcone",
    "trailer": "vehicle.trailer",
    "truck": "vehicle.truck",
    "driveable_surface": "flat.driveable_surface",
    "other_flat": "flat.other",
    "sidewalk": "flat.sidewalk",
    "terrain": "flat.terrain",
    "manmade": "static.manmade",
    "vegetation": "static.vegetation",
}


# -- colormaps -------------------------------------------------------------------

def apply_colormap(values: np.ndarray, name: str = "viridis", vmin: Optional[float] = None,
                   vmax: Optional[float] = None) -> np.ndarray:
    """Map scalars to ``(..., 3) uint8`` RGB through a built-in colormap.

    ``vmin``/``vmax`` default to the 1st / 99th percentile of the finite values
    (robust to a few very bright or far points). NaN maps to black.
    """
    if name not in COLORMAPS:
        raise ValueError(f"unknown colormap {name!r}; valid: {sorted(COLORMAPS)}")
    anchors = COLORMAPS[name]
    v = np.asarray(values, dtype=np.float64)
    finite = np.isfinite(v)
    if vmin is None or vmax is None:
        ref = v[finite]
        lo, hi = (np.percentile(ref, [1, 99]) if ref.size else (0.0, 1.0))
        vmin = float(lo) if vmin is None else vmin
        vmax = float(hi) if vmax is None else vmax
    span = max(float(vmax) - float(vmin), 1e-12)
    t = np.clip((np.where(finite, v, vmin) - vmin) / span, 0.0, 1.0) * (len(anchors) - 1)
    i0 = np.minimum(np.floor(t).astype(np.int64), len(anchors) - 2)
    frac = (t - i0)[..., None]
    rgb = anchors[i0] * (1.0 - frac) + anchors[i0 + 1] * frac
    rgb = np.rint(rgb).astype(np.uint8)
    rgb[~finite] = 0
    return rgb


# -- SemanticKITTI ---------------------------------------------------------------

def _kitti_map():
    from cdcl3d.datasets.labelmap import SemanticKittiLabelMap
    return SemanticKittiLabelMap()


def kitti_train_palette() -> np.ndarray:
    """``(19, 3) uint8`` RGB colour of each SemanticKITTI training class."""
    return _kitti_map().palette()


def kitti_class_names() -> List[str]:
    """The 19 SemanticKITTI training class names in train-id order."""
    return list(_kitti_map().class_names)


def kitti_raw_colors(raw: np.ndarray) -> np.ndarray:
    """Colour raw SemanticKITTI ``.label`` values (instance bits allowed) with the
    official BGR ``color_map`` keyed by raw id; returns ``(N, 3) uint8`` RGB.
    Raw ids absent from the colour map get :data:`IGNORED_COLOR`."""
    lm = _kitti_map()
    lut = np.tile(np.array(IGNORED_COLOR, dtype=np.uint8), (1 << 16, 1))
    for raw_id, (b, g, r) in lm.color_bgr.items():
        lut[raw_id] = (r, g, b)
    sem = np.asarray(raw).astype(np.uint32) & np.uint32(0xFFFF)
    return lut[sem]


# -- nuScenes --------------------------------------------------------------------

def _devkit_colormap() -> Dict[str, Tuple[int, int, int]]:
    try:
        from nuscenes.utils.color_map import get_colormap
    except ImportError as exc:  # the devkit is the 'nuscenes' extra
        raise ImportError("nuScenes colours need nuscenes-devkit (pip install 'cdcl[nuscenes]')") from exc
    return get_colormap()


def _challenge_mapper():
    # The mapper's static tables (names, indices, fine->coarse) never touch
    # the database, so it is built without one.
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper
    mapper = LidarsegClassMapper.__new__(LidarsegClassMapper)
    mapper.ignore_class = mapper.get_ignore_class()
    return mapper


def nuscenes_class_names() -> List[str]:
    """The 16 challenge class names in challenge order 1..16 (= train ids 0..15)."""
    mapper = _challenge_mapper()
    coarse = mapper.get_coarse2idx()
    ignore = mapper.ignore_class["index"]
    return [n for n, i in sorted(coarse.items(), key=lambda kv: kv[1]) if i != ignore]


def nuscenes_fine_names() -> List[str]:
    """The 32 fine lidarseg class names in index order.

    The devkit's colormap lists them in the order of the official
    ``category.json`` indices (0 noise ... 31 vehicle.ego)."""
    return list(_devkit_colormap().keys())


def nuscenes_fine_palette() -> np.ndarray:
    """``(32, 3) uint8`` RGB devkit colour of each fine class, by fine index."""
    return np.array(list(_devkit_colormap().values()), dtype=np.uint8)


def nuscenes_train_palette() -> np.ndarray:
    """``(16, 3) uint8`` RGB colour of each challenge class (train ids 0..15): the
    devkit colour of its main fine class (:data:`NUSCENES_MAIN_FINE_CLASS`)."""
    cmap = _devkit_colormap()
    return np.array([cmap[NUSCENES_MAIN_FINE_CLASS[n]] for n in nuscenes_class_names()], dtype=np.uint8)


def nuscenes_fine_to_train_lut() -> np.ndarray:
    """``(256,) int64`` fine id -> train id 0..15 (255 ignore, -1 unknown id),
    assuming the official fine index order (:func:`nuscenes_fine_names`)."""
    mapper = _challenge_mapper()
    fine2coarse = mapper.get_fine2coarse()
    coarse2idx = mapper.get_coarse2idx()
    ignore = mapper.ignore_class["index"]
    lut = np.full(256, -1, dtype=np.int64)
    for fine_idx, fine_name in enumerate(nuscenes_fine_names()):
        c = coarse2idx[fine2coarse[fine_name]]
        lut[fine_idx] = IGNORE_INDEX if c == ignore else c - 1
    return lut


# -- per-dataset access ----------------------------------------------------------

def _dataset_type(dataset: str):
    from cdcl3d.datasets.specs import DATASET_TYPES

    if dataset not in DATASET_TYPES:
        raise ValueError(f"unknown dataset {dataset!r}; valid: {list(DATASET_TYPES)}")
    return DATASET_TYPES[dataset]


def train_palette(dataset: str, cfg: Optional[Dict] = None) -> np.ndarray:
    """Training-id palette of the LiDAR dataset type ``dataset`` (its row in
    :mod:`cdcl3d.datasets.specs`; ``cfg``: ``data.<name>``, for a type whose
    labels the config names)."""
    return _dataset_type(dataset).palette(cfg)


def class_names(dataset: str, cfg: Optional[Dict] = None) -> List[str]:
    """Training class names of the LiDAR dataset type ``dataset`` in train-id order."""
    return _dataset_type(dataset).class_names(cfg or {})


# -- display ---------------------------------------------------------------------

#: lowest CIE L* (0 black .. 100 white) of a class colour drawn on the black background
DISPLAY_MIN_LIGHTNESS = 40.0


def lightness(rgb: np.ndarray) -> np.ndarray:
    """CIE L* (0..100) of ``(..., 3)`` sRGB uint8 colours."""
    c = np.asarray(rgb, dtype=np.float64) / 255.0
    lin = np.where(c <= 0.04045, c / 12.92, ((c + 0.055) / 1.055) ** 2.4)
    y = lin @ np.array([0.2126, 0.7152, 0.0722])
    return np.where(y > (6 / 29) ** 3, 116.0 * np.cbrt(y) - 16.0, y * (29 / 3) ** 3)


def display_palette(palette: np.ndarray, min_lightness: float = DISPLAY_MIN_LIGHTNESS) -> np.ndarray:
    """A copy of ``palette`` for drawing on a dark background: a colour darker
    than ``min_lightness`` (CIE L*) is lifted to it with its hue and
    saturation kept (HLS lightness raised), so SemanticKITTI's sidewalk
    (75, 0, 75) or nuScenes' pedestrian (0, 0, 230) stay visible on black.
    Only for pictures: the official palettes (:func:`train_palette`) are
    what files and the range-image pictures use."""
    import colorsys

    pal = np.array(palette, dtype=np.uint8, copy=True)
    for i, rgb in enumerate(pal):
        if lightness(rgb) >= min_lightness:
            continue
        h, l, s = colorsys.rgb_to_hls(*(rgb / 255.0))
        lo, hi = l, 1.0
        for _ in range(30):  # bisect the HLS lightness that reaches min_lightness
            mid = (lo + hi) / 2.0
            if lightness(np.rint(np.array(colorsys.hls_to_rgb(h, mid, s)) * 255.0)) < min_lightness:
                lo = mid
            else:
                hi = mid
        pal[i] = np.rint(np.array(colorsys.hls_to_rgb(h, hi, s)) * 255.0).astype(np.uint8)
    return pal


# -- colour modes ----------------------------------------------------------------

def label_colors(train_ids: np.ndarray, palette: np.ndarray,
                 ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """``(N, 3) uint8``: palette colour per train id; ignore and any id outside
    the palette get :data:`IGNORED_COLOR`."""
    t = np.asarray(train_ids).astype(np.int64)
    pal = np.asarray(palette, dtype=np.uint8)
    valid = (t >= 0) & (t < len(pal)) & (t != ignore_index)
    out = np.empty(t.shape + (3,), dtype=np.uint8)
    out[:] = IGNORED_COLOR
    out[valid] = pal[t[valid]]
    return out


def error_colors(labels: np.ndarray, preds: np.ndarray,
                 ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """``(N, 3) uint8``: correct grey, wrong red, ignored (label = ignore) dark."""
    lab = np.asarray(labels).astype(np.int64)
    pred = np.asarray(preds).astype(np.int64)
    if lab.shape != pred.shape:
        raise ValueError(f"labels {lab.shape} and predictions {pred.shape} differ in shape")
    out = np.empty(lab.shape + (3,), dtype=np.uint8)
    out[:] = CORRECT_COLOR
    out[lab != pred] = WRONG_COLOR
    out[lab == ignore_index] = IGNORED_COLOR
    return out


def point_ranges(points: np.ndarray) -> np.ndarray:
    """Euclidean distance of each point from the sensor origin."""
    return np.linalg.norm(np.asarray(points)[:, :3].astype(np.float64), axis=1)


def colorize(mode: str, points: np.ndarray, labels: Optional[np.ndarray] = None,
             preds: Optional[np.ndarray] = None, palette: Optional[np.ndarray] = None,
             ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """Per-point ``(N, 3) uint8`` colours for a colour mode.

    ``points`` is ``(N, 4+)`` (x, y, z, intensity, ...); ``labels``/``preds``
    are train ids. ``label``/``pred``/``error`` need the matching arrays (and a
    palette for the first two); a missing one raises ValueError.
    """
    points = np.asarray(points)
    n = len(points)

    def need(arr, what):
        if arr is None:
            raise ValueError(f"colour mode {mode!r} needs {what}")
        arr = np.asarray(arr)
        if arr.shape != (n,):
            raise ValueError(f"colour mode {mode!r}: {what} has shape {arr.shape}, expected ({n},)")
        return arr

    if mode in ("label", "pred"):
        ids = need(labels if mode == "label" else preds, "labels" if mode == "label" else "predictions")
        if palette is None:
            raise ValueError(f"colour mode {mode!r} needs a palette")
        return label_colors(ids, palette, ignore_index)
    if mode == "error":
        return error_colors(need(labels, "labels"), need(preds, "predictions"), ignore_index)
    if mode == "intensity":
        if points.ndim != 2 or points.shape[1] < 4:
            raise ValueError(f"colour mode 'intensity' needs (N, 4+) points, got {points.shape}")
        return apply_colormap(points[:, 3], "viridis")
    if mode == "range":
        return apply_colormap(point_ranges(points), "turbo", vmin=0.0)
    raise ValueError(f"unknown colour mode {mode!r}; valid: {list(MODES)}")


def available_modes(has_labels: bool, has_preds: bool, has_intensity: bool = True) -> List[str]:
    """The colour modes that the given data supports, in :data:`MODES` order."""
    ok = {"label": has_labels, "pred": has_preds, "error": has_labels and has_preds,
          "intensity": has_intensity, "range": True}
    return [m for m in MODES if ok[m]]


def present_classes(*id_arrays: Optional[Sequence[int]], num_classes: int,
                    ignore_index: int = IGNORE_INDEX) -> List[int]:
    """Sorted train ids (0..num_classes-1) present in any of the arrays."""
    seen = set()
    for arr in id_arrays:
        if arr is None:
            continue
        u = np.unique(np.asarray(arr).astype(np.int64))
        seen.update(int(x) for x in u if 0 <= x < num_classes and x != ignore_index)
    return sorted(seen)
