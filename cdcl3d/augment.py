"""Point-cloud augmentation for range-image training (applied before projection)."""
from __future__ import annotations

from typing import Optional, Tuple

import numpy as np


def augment_points(points: np.ndarray, rng: np.random.Generator, rotate: bool = True,
                   flip_x: bool = True, flip_y: bool = True,
                   scale: Optional[Tuple[float, float]] = (0.95, 1.05), jitter: float = 0.0,
                   dropout: float = 0.0) -> Tuple[np.ndarray, np.ndarray]:
    """Randomly transform a scan ``(N, C>=3)``; columns beyond x, y, z pass through.

    - ``rotate``: uniform rotation about z;
    - ``flip_x`` / ``flip_y``: negate x / y, each with probability 0.5;
    - ``scale``: one uniform factor in ``[lo, hi]`` for x, y, z (None: off);
    - ``jitter``: one global translation, normal with this std in metres per axis;
    - ``dropout``: each point dropped with this probability.

    Returns ``(points, keep_index)``: a new float32 array and the int64 indices
    of the kept input points, so that labels follow with ``labels[keep_index]``.
    """
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points must be (N, >=3), got {points.shape}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}")
    n = points.shape[0]
    if dropout > 0:
        keep_index = np.flatnonzero(rng.random(n) >= dropout)
    else:
        keep_index = np.arange(n)
    out = np.array(points[keep_index], dtype=np.float32, copy=True)

    # Compose one 3x3 linear map, then one matmul.
    m = np.eye(3)
    if rotate:
        a = rng.uniform(0.0, 2.0 * np.pi)
        c, s = np.cos(a), np.sin(a)
        m = np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]]) @ m
    if flip_x and rng.random() < 0.5:
        m = np.diag([-1.0, 1.0, 1.0]) @ m
    if flip_y and rng.random() < 0.5:
        m = np.diag([1.0, -1.0, 1.0]) @ m
    if scale is not None:
        m = rng.uniform(scale[0], scale[1]) * m
    xyz = out[:, :3].astype(np.float64) @ m.T
    if jitter > 0:
        xyz += rng.normal(0.0, jitter, size=3)
    out[:, :3] = xyz
    return out, keep_index
