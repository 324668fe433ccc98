"""Pictures of range images: range, intensity, labels / predictions, error.

Rows are stacked vertically, each stretched vertically by ``row_scale`` (by
default so that a band is about 1/8 as tall as it is wide: 64x2048 -> x4,
32x1024 -> x4) so that a 64-beam image stays legible. Empty pixels are black.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Tuple

import numpy as np

from .colors import IGNORE_INDEX, apply_colormap, error_colors, label_colors
from .legend import draw_caption

GAP = 3  # pixels of separator between bands
GAP_COLOR = (90, 90, 90)


def default_row_scale(height: int, width: int) -> int:
    """Vertical stretch making a band about ``width / 8`` pixels tall."""
    return max(1, int(round(width / (8.0 * height))))


def intensity_image(points: np.ndarray, proj_idx: np.ndarray) -> np.ndarray:
    """``(H, W)`` float32 intensity of each pixel's winning point (NaN where
    empty) from a projection's ``proj_idx`` (winning point index or -1)."""
    idx = np.asarray(proj_idx)
    out = np.full(idx.shape, np.nan, dtype=np.float32)
    valid = idx >= 0
    out[valid] = np.asarray(points)[idx[valid], 3]
    return out


def _check_image(name: str, arr: Optional[np.ndarray], shape: Tuple[int, int]) -> Optional[np.ndarray]:
    if arr is None:
        return None
    a = np.asarray(arr)
    if a.shape != shape:
        raise ValueError(f"{name} has shape {a.shape}, expected {shape} like proj_range")
    return a


def range_image_png(proj_range: np.ndarray, intensity: Optional[np.ndarray],
                    label_or_pred: Optional[np.ndarray], palette: Optional[np.ndarray],
                    path: Optional[str] = None, *, preds: Optional[np.ndarray] = None,
                    row_scale: Optional[int] = None, ignore_index: int = IGNORE_INDEX,
                    captions: bool = True) -> np.ndarray:
    """One colour picture of a range image; returns ``(H', W, 3) uint8``.

    ``proj_range`` ``(H, W)`` (negative or NaN where empty), ``intensity``
    ``(H, W)`` (NaN where empty) and ``label_or_pred`` ``(H, W)`` train ids
    (ignore/empty = ``ignore_index``) each give a band, top to bottom. With
    ``preds`` as well, ``label_or_pred`` is read as the labels and two more
    bands follow: the predictions and the error (correct grey, wrong red,
    ignored dark). Any of them may be None. Written as PNG when ``path`` is given.
    """
    rng = np.asarray(proj_range, dtype=np.float32)
    if rng.ndim != 2:
        raise ValueError(f"proj_range must be (H, W), got {rng.shape}")
    shape = rng.shape
    intensity = _check_image("intensity", intensity, shape)
    labels = _check_image("label_or_pred", label_or_pred, shape)
    preds = _check_image("preds", preds, shape)
    if (labels is not None or preds is not None) and palette is None:
        raise ValueError("a palette is needed to colour labels or predictions")
    empty = ~np.isfinite(rng) | (rng < 0)
    scale = default_row_scale(*shape) if row_scale is None else int(row_scale)
    if scale < 1:
        raise ValueError(f"row_scale must be >= 1, got {row_scale}")

    bands: List[Tuple[str, np.ndarray]] = []
    valid_r = rng[~empty]
    vmax = float(np.percentile(valid_r, 99)) if valid_r.size else 1.0
    band = apply_colormap(np.where(empty, np.nan, rng), "turbo", vmin=0.0, vmax=vmax)
    bands.append((f"range (0-{vmax:.0f} m)", band))
    if intensity is not None:
        inten = np.where(empty, np.nan, np.asarray(intensity, dtype=np.float64))
        bands.append(("intensity", apply_colormap(inten, "viridis")))
    if labels is not None:
        bands.append(("labels" if preds is not None else "labels / predictions",
                      label_colors(labels, palette, ignore_index)))
    if preds is not None:
        bands.append(("predictions", label_colors(preds, palette, ignore_index)))
        if labels is not None:
            bands.append(("error (red: wrong)", error_colors(labels, preds, ignore_index)))

    pieces = []
    for k, (name, img) in enumerate(bands):
        img = img.copy()
        img[empty] = 0
        img = np.repeat(img, scale, axis=0)
        if captions:
            img = draw_caption(img, name, font_size=12)
        if k:
            gap = np.empty((GAP, shape[1], 3), dtype=np.uint8)
            gap[:] = GAP_COLOR
            pieces.append(gap)
        pieces.append(img)
    out = np.concatenate(pieces, axis=0)
    if path is not None:
        from .render import save_png
        save_png(out, path)
    return out


def range_images_from_projection(points: np.ndarray, proj: Dict[str, np.ndarray],
                                 point_ids: Optional[np.ndarray] = None,
                                 ignore_index: int = IGNORE_INDEX) -> Dict[str, np.ndarray]:
    """The images :func:`range_image_png` takes, from a :class:`RangeProjection`
    result: ``proj_range``, ``intensity`` and, when per-point ids are given,
    ``ids`` ``(H, W)`` (each pixel takes its winning point's id)."""
    idx = np.asarray(proj["proj_idx"])
    out = {"proj_range": np.asarray(proj["proj_range"]), "intensity": intensity_image(points, idx)}
    if point_ids is not None:
        ids = np.full(idx.shape, ignore_index, dtype=np.int64)
        ids[idx >= 0] = np.asarray(point_ids).astype(np.int64)[idx[idx >= 0]]
        out["ids"] = ids
    return out
