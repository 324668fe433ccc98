"""Spherical range projection of LiDAR scans (numba).

The formula is the one published with RangeNet++/SalsaNext::

    depth = ||(x, y, z)||                       # float32, ((x*x + y*y) + z*z)
    yaw   = -atan2(y, x)
    pitch = asin(z / depth)
    col   = floor(0.5 * (yaw / pi + 1) * W)                          clipped to [0, W-1]
    row   = floor((1 - (pitch - fov_down) / (fov_up - fov_down)) * H) clipped to [0, H-1]

(the published code writes ``fov = |fov_down| + |fov_up|`` and
``pitch + |fov_down|``: the same numbers whenever fov_down <= 0 <= fov_up),
so row 0 is the top beam (``fov_up``) and column 0 is the rear (azimuth
+-180 deg), the front (+x) in the middle. The angles are computed in float64
from the float32 coordinates: float32 transcendental functions differ by an
ulp between math libraries (numpy's SIMD kernels vs libm), which moves points
near a pixel border. A zero-range point gets pitch 0.

Winner of a pixel: the nearest point. The reference sorts points by
decreasing depth and writes them in that order, so the nearest is written
last; with a *stable* sort, points at exactly equal depth are written in
decreasing index order, i.e. the lowest index wins. That is what this kernel
does (one pass, strict ``<``). The published code uses numpy's default
(unstable) argsort, whose tie order is unspecified.

The kernel evaluates the angles with branch-free polynomials and redoes
with libm every point whose pixel the approximation could get wrong, so the
pixels equal the formula's exactly (tested against a numpy implementation).

Elevation-table mode (``elevations``: one elevation per beam, degrees, any
order): for sensors whose beams are not evenly spaced (Hesai Pandora /
Pandar40: 1 deg steps at the edges, 1/3 deg near the horizon; Ouster
"gradient" beam spacing) the row is the beam whose elevation is nearest to
the point's pitch ``asin(z / depth)`` (found by a binary search in the sorted
table; a pitch exactly half-way goes to the upper beam), row 0 the highest
beam; the height is the number of beams. The column is the formula's.

Ring mode (``use_ring=True``): the row is the ring index of column 4,
rounded (or
``height - 1 - ring`` with ``ring_flip=True``); the column still comes from
the azimuth. nuScenes assumption (documented, not verifiable here): ring 0 is
the *lowest* beam (-30.67 deg), as in the Velodyne ROS driver, hence
``NUSCENES_SENSOR`` sets ``ring_flip=True`` so that row 0 is the top beam as
in elevation mode.

Points near the sensor (``ego_radius``, metres; 0 = off): real nuScenes
LIDAR_TOP scans hold thousands of points on the ego vehicle itself, all
within a metre of the sensor (the lidarseg class ``vehicle.ego``, ignored by
the challenge). Being the nearest, they would win their pixels and hide the
scene behind them. With ``ego_radius = r > 0`` a point with ``|x| < r`` and
``|y| < r`` (sensor frame, any z: the rule of nuscenes-devkit's
``LidarPointCloud.remove_close``) takes part in no pixel's contest; it still
gets its (row, col) and range, so it is still predicted (from its pixel, or
by KNN). Kept points are projected exactly as without the option.
``NUSCENES_SENSOR`` sets 1.0 (the devkit's default radius),
``KITTI_SENSOR`` 0.

Input channels: range, x, y, z, intensity, each ``(v - mean) / std``; empty
pixels are 0 *after* normalisation (as in SalsaNext, which multiplies the
normalised image by the mask).
"""
from __future__ import annotations

import ctypes
import math
import sys
from typing import Any, Dict, Optional, Sequence

import numpy as np
from numba import njit

IGNORE_INDEX = 255

#: Profile fields beyond :class:`RangeProjection`'s: ``intensity_scale`` (what
#: intensity is divided by to lie in 0..1; the voxel features use it) and
#: ``mount_height`` (metres above the ground; None where not published).
PROFILE_ONLY = ("intensity_scale", "mount_height")

#: SemanticKITTI HDL-64E, SalsaNext's published sensor statistics.
KITTI_SENSOR: Dict[str, Any] = dict(
    height=64, width=2048, fov_up=3.0, fov_down=-25.0, use_ring=False, ring_flip=False,
    ego_radius=0.0,
    means=(12.12, 10.88, 0.23, -1.04, 0.21),
    stds=(12.32, 11.47, 6.91, 0.86, 0.16),
    intensity_scale=1.0, mount_height=1.73,
)

#: nuScenes HDL-32E (LIDAR_TOP frame: x right, y forward, z up; intensity 0..255).
#: The statistics are rough estimates for a 32-beam sensor on a car roof
#: (points are mostly near; ground about 1.8 m below the sensor; most
#: intensities small), not measured on the full dataset.
NUSCENES_SENSOR: Dict[str, Any] = dict(
    height=32, width=1024, fov_up=10.0, fov_down=-30.0, use_ring=True, ring_flip=True,
    ego_radius=1.0,  # the ego vehicle stays out of the image (see the module docstring)
    means=(10.0, 0.0, 0.0, -1.0, 18.0),
    stds=(11.0, 10.0, 10.0, 1.6, 22.0),
    intensity_scale=255.0, mount_height=1.84,
)

#: Hesai Pandora's 40 beam elevations (its Pandar40), degrees, top to bottom:
#: +7..+2 in 1 deg steps, 1/3 deg steps down to -6, then 1 deg steps to -16.
PANDORA_ELEVATIONS = tuple([7.0 - i for i in range(6)] + [2.0 - i / 3.0 for i in range(1, 24)]
                           + [-6.0 - i for i in range(11)])

#: SemanticPOSS's Hesai Pandora: 40 non-uniform beams (+7 to -16 deg), 40 x 1800
#: images, the per-channel statistics published for them; intensity 0..255.
PANDORA_SENSOR: Dict[str, Any] = dict(
    height=40, width=1800, elevations=PANDORA_ELEVATIONS, use_ring=False, ring_flip=False,
    ego_radius=0.0,
    means=(22.27, 0.51, 1.57, -0.64, 13.88),
    stds=(17.74, 17.42, 22.22, 1.64, 14.09),
    intensity_scale=255.0, mount_height=None,
)


# Fast path for the angles. atan2/asin from libm cost ~25 ns each and dominate
# the projection; branch-free odd polynomials (least-squares fits, max error
# ~6e-15 rad, checked in the tests) are about twice as fast. The result must
# still be the *exact* pixel of the reference formula, so a point whose
# approximate fractional pixel lies within ``eps`` of a pixel border (chance
# ~1e-9) is recomputed with libm. ``_ANGLE_ERR`` bounds the approximation
# error with a wide margin.
_ANGLE_ERR = 1e-13
# atan(u) = u * P(u^2) on |u| <= tan(pi/8)
_ATAN_C = (0.9999999999997701, -0.33333333325143627, 0.19999999145863845, -0.14285673690651024,
           0.1111006130646797, -0.09074836780750674, 0.07541456123108913, -0.058006081242823755,
           0.02965140856490749)
# asin(s) = s * Q(s^2) on |s| <= 0.5 (|pitch| <= 30 deg); steeper points use libm
_ASIN_MAX = 0.5
_ASIN_C = (0.9999999999997954, 0.16666666672348798, 0.07499999537181719, 0.04464302880444759,
           0.030378486732290308, 0.022413182012437763, 0.01705835947480919, 0.0152102033794915,
           0.008812984841930467, 0.011394144139481258, 0.011331688149563496, 0.00796978462108977)


@njit(inline="always")
def _atan2_fast(y, x):
    """atan2(y, x) for non-zero finite x, y (abs error < _ANGLE_ERR), without
    data-dependent branches (random quadrants would mispredict)."""
    ax = abs(x)
    ay = abs(y)
    swap = np.float64(ay > ax)
    mn = min(ax, ay)
    mx = max(ax, ay)
    # t = mn / mx in [0, 1]; atan(t) = pi/4 + atan((t - 1) / (t + 1)) brings t
    # into [-tan(pi/8), tan(pi/8)]; both cases as one division
    big = np.float64(mn > 0.41421356237309503 * mx)
    u = (mn - big * mx) / (mx + big * mn)
    u2 = u * u
    c = _ATAN_C
    p = c[8]
    p = p * u2 + c[7]
    p = p * u2 + c[6]
    p = p * u2 + c[5]
    p = p * u2 + c[4]
    p = p * u2 + c[3]
    p = p * u2 + c[2]
    p = p * u2 + c[1]
    p = p * u2 + c[0]
    a = p * u + big * 0.7853981633974483
    a = a + swap * (1.5707963267948966 - 2.0 * a)  # octant: pi/2 - a
    a = a + np.float64(x < 0.0) * (3.141592653589793 - 2.0 * a)  # left half: pi - a
    return math.copysign(a, y)


@njit(inline="always")
def _asin_fast(s):
    """asin(s) for |s| <= _ASIN_MAX (abs error < _ANGLE_ERR)."""
    s2 = s * s
    c = _ASIN_C
    p = c[11]
    p = p * s2 + c[10]
    p = p * s2 + c[9]
    p = p * s2 + c[8]
    p = p * s2 + c[7]
    p = p * s2 + c[6]
    p = p * s2 + c[5]
    p = p * s2 + c[4]
    p = p * s2 + c[3]
    p = p * s2 + c[2]
    p = p * s2 + c[1]
    p = p * s2 + c[0]
    return p * s


@njit(cache=True, nogil=True)
def _exact_col(xd, yd, width):
    """The reference column formula with libm (slow path)."""
    uc = 0.5 * (-math.atan2(yd, xd) / math.pi + 1.0) * width
    return min(max(math.floor(uc), 0), width - 1)


@njit(cache=True, nogil=True)
def _pitch(z, r):
    """asin(z / r) with libm, float64; 0 at zero range."""
    sn = np.float64(z) / np.float64(r) if r > 0 else 0.0
    return math.asin(min(1.0, max(-1.0, sn)))


@njit(cache=True, nogil=True)
def _exact_row(z, r, height, fov_up, fov_down):
    """The reference row formula with libm (slow path); pitch 0 at zero range."""
    pitch = _pitch(z, r)
    vr = (1.0 - (pitch - fov_down) / (fov_up - fov_down)) * height
    return min(max(math.floor(vr), 0), height - 1)


# error_model="numpy": no ZeroDivisionError checks, so that LLVM vectorises
# the arithmetic loops (a zero range gives inf/nan there, flagged and redone).
@njit(cache=True, nogil=True, error_model="numpy")
def _project_kernel(points, labels, has_labels, height, width, fov_up, fov_down,
                    use_ring, ring_flip, means, stds, eps_col, eps_row, ego_radius, exclude, elevations):
    n = points.shape[0]
    fov = fov_up - fov_down
    proj_row = np.empty(n, dtype=np.int64)
    proj_col = np.empty(n, dtype=np.int64)
    rng = np.empty(n, dtype=np.float32)
    proj_idx = np.full((height, width), -1, dtype=np.int64)
    # Contiguous copies of the coordinates: strided loads would become slow
    # gathers in the vectorised loops below.
    xs = np.empty(n, dtype=np.float32)
    ys = np.empty(n, dtype=np.float32)
    zs = np.empty(n, dtype=np.float32)
    redo = np.empty(n, dtype=np.bool_)  # near a pixel border or outside the fast path
    for i in range(n):
        x = points[i, 0]
        y = points[i, 1]
        z = points[i, 2]
        xs[i] = x
        ys[i] = y
        zs[i] = z
        # float32 arithmetic in this order matches np.linalg.norm bit for bit
        rng[i] = np.float32(math.sqrt(np.float32(np.float32(x * x + y * y) + z * z)))

    # column: floor(0.5 * (yaw / pi + 1) * W), yaw = -atan2(y, x); zeros
    # (signed, +-pi) go to libm. The fast path multiplies by precomputed
    # factors (off by an ulp or two from the formula's divisions: covered by
    # the guard band).
    half_w = 0.5 * width
    col_scale = width / (2.0 * math.pi)
    row_scale = height / fov
    row_offset = height + fov_down * row_scale
    for i in range(n):
        xd = np.float64(xs[i])
        yd = np.float64(ys[i])
        uc = half_w - _atan2_fast(yd, xd) * col_scale  # = 0.5 * (yaw / pi + 1) * W
        fc = np.floor(uc)
        dc = uc - fc
        redo[i] = (xd == 0.0) | (yd == 0.0) | (dc < eps_col) | (dc > 1.0 - eps_col)
        proj_col[i] = np.int32(min(max(fc, 0.0), width - 1.0))

    bad_ring = -1
    if use_ring:
        for i in range(n):
            row = int(math.floor(points[i, 4] + 0.5))
            if row < 0 or row >= height:
                bad_ring = i
                row = 0
            proj_row[i] = (height - 1 - row) if ring_flip else row
        for i in range(n):
            if redo[i]:
                proj_col[i] = _exact_col(np.float64(xs[i]), np.float64(ys[i]), width)
    elif elevations.shape[0] > 0:
        # row: the beam of the nearest elevation (``elevations`` ascending, radians)
        top = elevations.shape[0] - 1
        for i in range(n):
            pitch = _pitch(zs[i], rng[i])
            j = np.searchsorted(elevations, pitch)
            if j == 0:
                k = 0
            elif j > top:
                k = top
            elif elevations[j] - pitch <= pitch - elevations[j - 1]:
                k = j
            else:
                k = j - 1
            proj_row[i] = top - k  # row 0: the highest beam
            if redo[i]:
                proj_col[i] = _exact_col(np.float64(xs[i]), np.float64(ys[i]), width)
    else:
        # row: floor((1 - (pitch - fov_down) / fov) * H), pitch = asin(z / r)
        for i in range(n):
            sn = np.float64(zs[i]) / np.float64(rng[i])
            vr = row_offset - _asin_fast(sn) * row_scale  # = (1 - (pitch - fov_down) / fov) * H
            fr = np.floor(vr)
            dr = vr - fr
            redo[i] = redo[i] | (dr < eps_row) | (dr > 1.0 - eps_row) | ~(abs(sn) <= _ASIN_MAX)
            proj_row[i] = np.int32(min(max(fr, 0.0), height - 1.0))
        for i in range(n):
            if redo[i]:
                proj_col[i] = _exact_col(np.float64(xs[i]), np.float64(ys[i]), width)
                proj_row[i] = _exact_row(zs[i], rng[i], height, fov_up, fov_down)

    # Points kept out of the image (the given mask, else the ego square) never
    # compete for a pixel; their (row, col) and range stay.
    hide = exclude
    if hide.shape[0] != n and ego_radius > 0.0:
        hide = np.empty(n, dtype=np.bool_)
        r_ego = np.float32(ego_radius)
        for i in range(n):
            hide[i] = (abs(xs[i]) < r_ego) & (abs(ys[i]) < r_ego)

    # A separate pass: the data-dependent branch of the winner test would
    # otherwise serialise the long-latency arithmetic of successive points.
    if hide.shape[0] == n:
        for i in range(n):
            if hide[i]:
                continue
            row = proj_row[i]
            col = proj_col[i]
            j = proj_idx[row, col]
            if j < 0 or rng[i] < rng[j]:
                proj_idx[row, col] = i
    else:
        for i in range(n):
            row = proj_row[i]
            col = proj_col[i]
            j = proj_idx[row, col]
            if j < 0 or rng[i] < rng[j]:
                proj_idx[row, col] = i

    inputs = np.empty((5, height, width), dtype=np.float32)
    proj_range = np.empty((height, width), dtype=np.float32)
    mask = np.empty((height, width), dtype=np.bool_)
    label_img = np.empty((height, width), dtype=np.int64)
    if n == 0:
        inputs[:] = 0.0
        proj_range[:] = -1.0
        mask[:] = False
        label_img[:] = IGNORE_INDEX
    else:
        # Every pixel is written, without branches (occupancy is irregular, a
        # branch would mispredict); an empty pixel reads point 0 and discards it.
        for v in range(height):
            for u in range(width):
                j = proj_idx[v, u]
                ok = j >= 0
                k = j if ok else 0
                mask[v, u] = ok
                rk = rng[k]
                proj_range[v, u] = rk if ok else np.float32(-1.0)
                val = (rk - means[0]) / stds[0]
                inputs[0, v, u] = val if ok else np.float32(0.0)
                for c in range(4):
                    val = (points[k, c] - means[c + 1]) / stds[c + 1]
                    inputs[c + 1, v, u] = val if ok else np.float32(0.0)
                if has_labels:
                    label_img[v, u] = labels[k] if ok else IGNORE_INDEX
                else:
                    label_img[v, u] = IGNORE_INDEX
    return inputs, mask, label_img, proj_row, proj_col, proj_idx, rng, proj_range, bad_ring


class RangeProjection:
    """Project a scan ``(N, C>=4)`` (x, y, z, intensity[, ring]) to a range image.

    ``project`` returns a dict of numpy arrays:
    ``inputs`` (5, H, W) float32 normalised range, x, y, z, intensity (0 where
    empty); ``mask`` (H, W) bool; ``labels`` (H, W) int64 (255 where empty or
    ignored); ``proj_row``/``proj_col`` (N,) int64 pixel of every point, hidden
    ones included; ``proj_idx`` (H, W) int64 winning point or -1; ``range``
    (N,) float32; ``proj_range`` (H, W) float32 raw range, -1 where empty.

    ``ego_radius`` (metres, 0 = off): points with ``|x| < r`` and ``|y| < r``
    stay out of the image (no pixel, mask, label or input of theirs) but keep
    ``proj_row``/``proj_col``/``range`` like every other point; see the
    module docstring.
    """

    def __init__(self, height: int, width: int, fov_up: Optional[float] = None,
                 fov_down: Optional[float] = None, use_ring: bool = False,
                 means: Sequence[float] = KITTI_SENSOR["means"],
                 stds: Sequence[float] = KITTI_SENSOR["stds"],
                 ring_flip: bool = False, ego_radius: float = 0.0,
                 elevations: Optional[Sequence[float]] = None) -> None:
        if height <= 0 or width <= 0:
            raise ValueError(f"range image size must be positive, got {height}x{width}")
        if elevations is not None and use_ring:
            raise ValueError("elevations and use_ring each choose the row: give one of them")
        if elevations is not None:
            table = np.sort(np.asarray(elevations, dtype=np.float64).reshape(-1))
            if len(table) != height or len(np.unique(table)) != len(table) or not np.isfinite(table).all():
                raise ValueError(f"elevations must hold one distinct elevation (degrees) per beam, "
                                 f"{height} for height {height}; got {len(table)}")
            fov_up, fov_down = float(table[-1]), float(table[0])
        elif not use_ring and (fov_up is None or fov_down is None):
            raise ValueError("a linear field of view needs fov_up and fov_down (degrees); "
                             "give elevations or use_ring instead")
        elif not use_ring and fov_up <= fov_down:
            raise ValueError(f"fov_up ({fov_up}) must be above fov_down ({fov_down})")
        if len(means) != 5 or len(stds) != 5:
            raise ValueError("means and stds need 5 values (range, x, y, z, intensity)")
        if min(stds) <= 0:
            raise ValueError(f"stds must be positive, got {tuple(stds)}")
        if not ego_radius >= 0:
            raise ValueError(f"ego_radius must be >= 0 metres (0 = off), got {ego_radius}")
        self.height = int(height)
        self.width = int(width)
        self.fov_up = float(fov_up) if fov_up is not None else 0.0
        self.fov_down = float(fov_down) if fov_down is not None else 0.0
        # ascending radians for the kernel's search; empty: the linear field of view
        self.elevations = (None if elevations is None else tuple(float(e) for e in elevations))
        self._elev_rad = (np.empty(0) if elevations is None else np.deg2rad(table))
        self.use_ring = bool(use_ring)
        self.ring_flip = bool(ring_flip)
        self.ego_radius = float(ego_radius)
        self.means = np.asarray(means, dtype=np.float32)
        self.stds = np.asarray(stds, dtype=np.float32)
        # Pixel-unit guard bands of the fast angle path: the approximation
        # error scaled to pixels, plus float64 rounding of the pixel value.
        fov = (self.fov_up - self.fov_down) / 180.0 * math.pi if not use_ring and elevations is None else 1.0
        self._eps_col = 16 * _ANGLE_ERR * self.width / (2 * math.pi) + 1e-12 * self.width
        self._eps_row = 16 * _ANGLE_ERR * self.height / fov + 1e-12 * self.height

    @classmethod
    def from_sensor(cls, sensor: Dict[str, Any], **overrides: Any) -> "RangeProjection":
        """Build from a sensor profile (``KITTI_SENSOR``, ``NUSCENES_SENSOR``,
        ``PANDORA_SENSOR``, :func:`cdcl3d.sensors.resolve_sensor`) with overrides;
        the profile-only fields (:data:`PROFILE_ONLY`) are not the projection's."""
        return cls(**{k: v for k, v in {**sensor, **overrides}.items() if k not in PROFILE_ONLY})

    def __repr__(self) -> str:
        rows = (f"elevations={len(self.elevations)} beams" if self.elevations is not None else
                f"fov_up={self.fov_up}, fov_down={self.fov_down}")
        return (f"RangeProjection({self.height}x{self.width}, {rows}, use_ring={self.use_ring}, "
                f"ring_flip={self.ring_flip}, ego_radius={self.ego_radius})")

    def near_sensor(self, points: np.ndarray) -> np.ndarray:
        """``(N,)`` bool: the points that ``ego_radius`` keeps out of the image
        (all False when it is 0)."""
        r = np.float32(self.ego_radius)
        xy = np.asarray(points)[:, :2].astype(np.float32, copy=False)
        return (np.abs(xy[:, 0]) < r) & (np.abs(xy[:, 1]) < r)

    def project(self, points: np.ndarray, labels: Optional[np.ndarray] = None,
                exclude: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
        """Project ``points`` (N, C) and optional per-point train ids (N,).

        ``exclude``: optional (N,) bool, the points to keep out of the image,
        instead of the ``ego_radius`` test on these coordinates (e.g. decided
        on a scan before augmentation moved it)."""
        points = np.ascontiguousarray(points, dtype=np.float32)
        need = 5 if self.use_ring else 4
        if points.ndim != 2 or points.shape[1] < need:
            raise ValueError(f"points must be (N, >={need}) (x, y, z, intensity"
                             f"{', ring' if self.use_ring else ''}), got {points.shape}")
        if labels is None:
            lab = np.empty(0, dtype=np.int64)
        else:
            lab = np.ascontiguousarray(labels, dtype=np.int64)
            if lab.shape != (points.shape[0],):
                raise ValueError(f"labels shape {lab.shape} does not match {points.shape[0]} points")
        if exclude is None:
            out_mask = np.empty(0, dtype=np.bool_)
        else:
            out_mask = np.ascontiguousarray(exclude, dtype=np.bool_)
            if out_mask.shape != (points.shape[0],):
                raise ValueError(f"exclude shape {out_mask.shape} does not match {points.shape[0]} points")
        fov_up = self.fov_up / 180.0 * math.pi
        fov_down = self.fov_down / 180.0 * math.pi
        (inputs, mask, label_img, proj_row, proj_col, proj_idx, rng, proj_range,
         bad_ring) = _project_kernel(points, lab, labels is not None, self.height, self.width,
                                     fov_up, fov_down, self.use_ring, self.ring_flip,
                                     self.means, self.stds, self._eps_col, self._eps_row,
                                     self.ego_radius, out_mask, self._elev_rad)
        if bad_ring >= 0:
            raise ValueError(f"ring index {points[bad_ring, 4]} of point {bad_ring} is outside "
                             f"0..{self.height - 1} (range image height {self.height})")
        return {"inputs": inputs, "mask": mask, "labels": label_img, "proj_row": proj_row,
                "proj_col": proj_col, "proj_idx": proj_idx, "range": rng, "proj_range": proj_range}

    @staticmethod
    def back_project(image: Any, proj_row: Any, proj_col: Any) -> Any:
        """Per-point values of a dense ``(..., H, W)`` image (numpy or torch), for
        every point including the hidden ones: ``image[..., proj_row, proj_col]``."""
        return image[..., proj_row, proj_col]


def reduce_page_faults(top_pad_mb: int = 64) -> bool:
    """Opt-in, process-wide: ask glibc to keep ``top_pad_mb`` of freed heap
    instead of returning it to the OS after every scan.

    Each projection allocates ~8 MB of fresh output buffers (KITTI); when
    glibc trims the heap after they are freed, the next scan page-faults all
    of it in again, which on some VMs costs more than the projection itself
    (measured here: 8.3 ms -> 3.4 ms per KITTI scan). Call it once per
    process, e.g. in a DataLoader ``worker_init_fn``. Returns False where it
    does not apply (not glibc).
    """
    if not sys.platform.startswith("linux"):
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
        m_top_pad = -2
        return bool(libc.mallopt(m_top_pad, int(top_pad_mb) << 20))
    except (OSError, AttributeError):
        return False

