"""TensorBoard pictures of LiDAR predictions during training.

Both helpers take numpy arrays or torch tensors and never raise on a
rendering problem: a failed render is logged as a warning and skipped, so a
machine without a graphics driver still trains.
"""
from __future__ import annotations

import logging
from typing import Any, Optional, Sequence

import numpy as np

from .colors import IGNORE_INDEX, label_colors
from .range_image import range_image_png

logger = logging.getLogger(__name__)


def _np(x: Any) -> Optional[np.ndarray]:
    if x is None:
        return None
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def add_range_images(writer: Any, tag: str, step: int, proj_range: Any, intensity: Any,
                     labels: Any, preds: Any, palette: np.ndarray, max_images: int = 3,
                     ignore_index: int = IGNORE_INDEX) -> int:
    """Log range-image pictures (range, intensity, labels, predictions, error)
    for up to ``max_images`` items of a batch.

    ``proj_range``/``intensity``/``labels``/``preds``: ``(B, H, W)`` (or one
    ``(H, W)``); ``preds`` may also be logits ``(B, K, H, W)`` (argmax taken).
    Any of ``intensity``/``labels``/``preds`` may be None. Images are logged
    as ``{tag}/{i}``; returns how many were written.
    """
    rng = _np(proj_range)
    inten, lab, prd = _np(intensity), _np(labels), _np(preds)
    if prd is not None and prd.ndim == rng.ndim + 1 and rng.ndim in (2, 3):
        prd = prd.argmax(axis=-3)  # logits -> class ids
    if rng.ndim == 2:
        rng, inten, lab, prd = (None if a is None else a[None] for a in (rng, inten, lab, prd))
    written = 0
    for i in range(min(int(max_images), rng.shape[0])):
        try:
            first, second = (lab, prd) if lab is not None else (prd, None)
            img = range_image_png(rng[i], None if inten is None else inten[i],
                                  None if first is None else first[i], palette,
                                  preds=None if second is None else second[i],
                                  ignore_index=ignore_index)
            writer.add_image(f"{tag}/{i}", img, int(step), dataformats="HWC")
            written += 1
        except Exception as exc:  # a picture must never stop training
            logger.warning("skipping range image %s/%d at step %d: %s", tag, i, step, exc)
    return written


def add_scan_render(writer: Any, tag: str, step: int, points: Any, labels: Any, preds: Any,
                    palette: np.ndarray, class_names: Optional[Sequence[str]] = None,
                    width: int = 640, height: int = 480, camera: str = "bev", point_size: float = 2.0,
                    backend: str = "subprocess", ignore_index: int = IGNORE_INDEX) -> bool:
    """Log a bird's-eye render of one scan: ground truth beside prediction (or
    whichever of the two is given), with a legend when ``class_names`` is given.

    Open3D renders in a child process; if it fails (no driver, timeout) a
    warning is logged and nothing is written. Returns whether an image was logged.
    """
    try:
        from .render import render_any, render_gt_vs_pred

        pts, lab, prd = _np(points), _np(labels), _np(preds)
        if lab is not None and prd is not None:
            names = list(class_names) if class_names is not None else [str(i) for i in range(len(palette))]
            img = render_gt_vs_pred(pts, lab, prd, palette, names, None, width, height, camera,
                                    point_size, backend=backend, ignore_index=ignore_index)
        else:
            ids = lab if lab is not None else prd
            if ids is None:
                raise ValueError("add_scan_render needs labels or predictions")
            img = render_any(pts, label_colors(ids, palette, ignore_index), backend=backend,
                             width=width, height=height, camera=camera, point_size=point_size)
        writer.add_image(tag, img, int(step), dataformats="HWC")
        return True
    except Exception as exc:  # a picture must never stop training
        logger.warning("skipping scan render %s at step %d: %s", tag, step, exc)
        return False
