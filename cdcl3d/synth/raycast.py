"""Vectorised ray casting of a spinning LiDAR against analytic primitives (numba).

The world is a flat ground plane (z = 0) whose class is painted by axis-aligned
rectangles, plus a list of primitives, each one row of a float array:

    cx, cy, cz, hx, hy, hz, cos(yaw), sin(yaw), bound_radius

with a shape code: ``BOX`` (oriented box, half sizes hx, hy, hz), ``CYLINDER``
(vertical, radius hx, half height hz) or ``ELLIPSOID`` (semi-axes hx, hy, hz,
turned by yaw). A scan fires ``rows x cols`` rays from one origin; the nearest
hit wins, so objects occlude each other and the ground.

Culling: a primitive can only be hit by the columns whose azimuth falls inside
the angle its bounding circle subtends from the sensor, so primitives are first
binned into columns (compressed sparse rows) and each ray tests only its
column's candidates -- a few tests per ray instead of hundreds.

Column convention (the usual range-image one): column ``c`` looks at azimuth
``phi_c = pi - 2 pi (c + 0.5) / cols + phase`` in the sensor frame, i.e. column 0
looks backwards, the middle column forwards (+x), azimuth decreasing to the
right.
"""
from __future__ import annotations

import math
from typing import Tuple

import numba
import numpy as np

BOX = 0
CYLINDER = 1
ELLIPSOID = 2

_EPS = 1e-6


@numba.njit(cache=True)
def _hit_box(ox, oy, oz, dx, dy, dz, hx, hy, hz):
    """Slab test in the box frame; the entry distance or inf."""
    tmin = -1e30
    tmax = 1e30
    o = (ox, oy, oz)
    d = (dx, dy, dz)
    h = (hx, hy, hz)
    for k in range(3):
        if abs(d[k]) < 1e-12:
            if o[k] < -h[k] or o[k] > h[k]:
                return math.inf
        else:
            inv = 1.0 / d[k]
            t1 = (-h[k] - o[k]) * inv
            t2 = (h[k] - o[k]) * inv
            if t1 > t2:
                t1, t2 = t2, t1
            if t1 > tmin:
                tmin = t1
            if t2 < tmax:
                tmax = t2
            if tmin > tmax:
                return math.inf
    if tmin > _EPS:
        return tmin
    return math.inf  # origin inside or box behind: no visible surface


@numba.njit(cache=True)
def _hit_cylinder(ox, oy, oz, dx, dy, dz, r, hz):
    """Vertical finite cylinder (side and top cap) in its own frame."""
    best = math.inf
    a = dx * dx + dy * dy
    if a > 1e-12:
        b = ox * dx + oy * dy
        c = ox * ox + oy * oy - r * r
        disc = b * b - a * c
        if disc >= 0.0:
            t = (-b - math.sqrt(disc)) / a
            if t > _EPS:
                z = oz + t * dz
                if -hz <= z <= hz:
                    best = t
    if dz < -1e-12:  # top cap, seen from above
        t = (hz - oz) / dz
        if _EPS < t < best:
            x = ox + t * dx
            y = oy + t * dy
            if x * x + y * y <= r * r:
                best = t
    return best


@numba.njit(cache=True)
def _hit_ellipsoid(ox, oy, oz, dx, dy, dz, rx, ry, rz):
    """Ellipsoid with semi-axes rx, ry, rz: a unit sphere after scaling."""
    ox /= rx
    oy /= ry
    oz /= rz
    dx /= rx
    dy /= ry
    dz /= rz
    a = dx * dx + dy * dy + dz * dz
    b = ox * dx + oy * dy + oz * dz
    c = ox * ox + oy * oy + oz * oz - 1.0
    disc = b * b - a * c
    if disc < 0.0:
        return math.inf
    t = (-b - math.sqrt(disc)) / a
    if t > _EPS:
        return t
    return math.inf


@numba.njit(cache=True)
def _bin_primitives(ox, oy, yaw, phase, cols, prims, max_range):
    """Column -> candidate primitive lists (CSR: offsets, indices)."""
    n = prims.shape[0]
    lo = np.empty(n, np.int64)
    hi = np.empty(n, np.int64)
    counts = np.zeros(cols + 1, np.int64)
    two_pi = 2.0 * math.pi
    for i in range(n):
        ddx = prims[i, 0] - ox
        ddy = prims[i, 1] - oy
        dist = math.sqrt(ddx * ddx + ddy * ddy)
        rad = prims[i, 8]
        if dist - rad > max_range:
            lo[i] = 0
            hi[i] = -1
            continue
        if dist <= rad * 1.0001 + 0.05:
            lo[i] = 0
            hi[i] = cols - 1
        else:
            phi = math.atan2(ddy, ddx) - yaw - phase
            half = math.asin(min(1.0, rad / dist))
            # column coordinate of azimuth phi: (pi - phi) / 2pi * cols - 0.5
            c_a = (math.pi - (phi + half)) / two_pi * cols - 0.5
            c_b = (math.pi - (phi - half)) / two_pi * cols - 0.5
            a = int(math.floor(c_a))
            b = int(math.ceil(c_b))
            if b - a >= cols - 1:
                a = 0
                b = cols - 1
            lo[i] = a
            hi[i] = b
        for k in range(lo[i], hi[i] + 1):
            counts[(k % cols) + 1] += 1
    offsets = np.cumsum(counts)
    fill = offsets[:-1].copy()
    index = np.empty(offsets[-1], np.int64)
    for i in range(n):
        for k in range(lo[i], hi[i] + 1):
            c = k % cols
            index[fill[c]] = i
            fill[c] += 1
    return offsets, index


@numba.njit(cache=True)
def cast_scan(origin, yaw, phase, elevations, cols, prims, shapes,
              ground_rects, ground_kinds, ground_default, max_range):
    """Cast ``len(elevations) x cols`` rays from ``origin`` (world frame).

    Returns per ray (row-major, rows = beams in the given order):
    range (inf where nothing within ``max_range``), index of the primitive hit
    (-1 none, -2 ground) and, for ground hits, the ground kind.
    """
    rows = elevations.shape[0]
    ox, oy, oz = origin[0], origin[1], origin[2]
    offsets, index = _bin_primitives(ox, oy, yaw, phase, cols, prims, max_range)
    rng = np.full(rows * cols, np.inf)
    hit = np.full(rows * cols, -1, np.int64)
    gkind = np.full(rows * cols, -1, np.int64)
    n_rects = ground_rects.shape[0]
    for c in range(cols):
        phi = math.pi - 2.0 * math.pi * (c + 0.5) / cols + phase + yaw
        cphi = math.cos(phi)
        sphi = math.sin(phi)
        for r in range(rows):
            ce = math.cos(elevations[r])
            dx = ce * cphi
            dy = ce * sphi
            dz = math.sin(elevations[r])
            best = max_range
            besti = -1
            if dz < -1e-9:
                tg = -oz / dz
                if tg < best:
                    best = tg
                    besti = -2
            for j in range(offsets[c], offsets[c + 1]):
                p = index[j]
                # into the primitive's frame: translate, then rotate by -yaw
                tx = ox - prims[p, 0]
                ty = oy - prims[p, 1]
                tz = oz - prims[p, 2]
                cy_ = prims[p, 6]
                sy_ = prims[p, 7]
                lox = cy_ * tx + sy_ * ty
                loy = -sy_ * tx + cy_ * ty
                ldx = cy_ * dx + sy_ * dy
                ldy = -sy_ * dx + cy_ * dy
                s = shapes[p]
                if s == 0:
                    t = _hit_box(lox, loy, tz, ldx, ldy, dz, prims[p, 3], prims[p, 4], prims[p, 5])
                elif s == 1:
                    t = _hit_cylinder(lox, loy, tz, ldx, ldy, dz, prims[p, 3], prims[p, 5])
                else:
                    t = _hit_ellipsoid(lox, loy, tz, ldx, ldy, dz, prims[p, 3], prims[p, 4], prims[p, 5])
                if t < best:
                    best = t
                    besti = p
            k = r * cols + c
            if besti != -1:
                rng[k] = best
                hit[k] = besti
                if besti == -2:
                    gx = ox + best * dx
                    gy = oy + best * dy
                    g = ground_default
                    # later rectangles are painted over earlier ones
                    for q in range(n_rects - 1, -1, -1):
                        if (ground_rects[q, 0] <= gx <= ground_rects[q, 2]
                                and ground_rects[q, 1] <= gy <= ground_rects[q, 3]):
                            g = ground_kinds[q]
                            break
                    gkind[k] = g
    return rng, hit, gkind


def ray_directions(elevations: np.ndarray, cols: int, phase: float) -> np.ndarray:
    """Unit ray directions in the sensor frame, (rows * cols, 3), same order as
    :func:`cast_scan`."""
    c = np.arange(cols)
    phi = np.pi - 2.0 * np.pi * (c + 0.5) / cols + phase
    ce = np.cos(elevations)[:, None]
    d = np.empty((len(elevations), cols, 3))
    d[..., 0] = ce * np.cos(phi)[None, :]
    d[..., 1] = ce * np.sin(phi)[None, :]
    d[..., 2] = np.sin(elevations)[:, None]
    return d.reshape(-1, 3)


def cast(origin: np.ndarray, yaw: float, phase: float, elevations: np.ndarray, cols: int,
         prims: np.ndarray, shapes: np.ndarray, ground_rects: np.ndarray,
         ground_kinds: np.ndarray, ground_default: int,
         max_range: float) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Typed front door of :func:`cast_scan` (fixes dtypes so numba compiles once)."""
    return cast_scan(np.asarray(origin, np.float64), float(yaw), float(phase),
                     np.asarray(elevations, np.float64), int(cols),
                     np.ascontiguousarray(prims, np.float64).reshape(-1, 9),
                     np.ascontiguousarray(shapes, np.int64),
                     np.ascontiguousarray(ground_rects, np.float64).reshape(-1, 4),
                     np.ascontiguousarray(ground_kinds, np.int64),
                     int(ground_default), float(max_range))
