"""The three simulated scanners and one scan of a world.

``KITTI_SENSOR`` imitates the Velodyne HDL-64E of KITTI (64 beams, +3 to -25
degrees in two blocks of different spacing, ~2048 azimuth steps, 1.73 m,
remission in [0, 1] with two decimals); ``NUSCENES_SENSOR`` the HDL-32E of
nuScenes (32 beams evenly from -30 to +10 degrees, ~1090 azimuth steps, 1.84 m
on the roof, intensity 0..255, a ring index per point where ring 0 is the
lowest beam); ``POSS_SENSOR`` the Hesai Pandora of SemanticPOSS (a Pandar40:
40 beams from +7 to -16 degrees, 1/3 degree apart near the horizon and 1 degree
apart above +2 and below -6, 1800 azimuth steps, 2.0 m, intensity 0..255 with
a mean near 14).

The nuScenes sensor also sees the car it is mounted on (``ego_roof``): its
lower beams hit the roof within a metre of the sensor, as in real LIDAR_TOP
scans, where such points (lidarseg ``vehicle.ego``, ignored by the challenge)
are about a fifth of a scan (here, a flat rectangle, somewhat more: ~29% at
full resolution). The roof occludes the ground behind it; its returns have
the kind ``ego``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

import numpy as np

from .raycast import cast
from .world import K, REMISSION_OF_KIND, SPREAD_OF_KIND, World


@dataclass(frozen=True)
class Sensor:
    name: str
    elevations_deg: np.ndarray  # per beam, row 0 = highest beam
    cols: int
    height: float
    max_range: float
    min_range: float
    range_noise: float
    dropout: float              # base probability that a return is lost
    outliers: float             # share of spurious returns
    # the roof of the ego car: (half length, half width, depth below the
    # sensor) in m, centred under it; None: the sensor sees no car
    ego_roof: Optional[Tuple[float, float, float]] = None

    def elevations(self) -> np.ndarray:
        return np.deg2rad(self.elevations_deg)


KITTI_SENSOR = Sensor(
    name="kitti",
    elevations_deg=np.concatenate([np.linspace(3.0, -8.33, 32), np.linspace(-8.83, -24.9, 32)]),
    cols=2048,
    height=1.73,
    max_range=80.0,
    min_range=2.5,
    range_noise=0.02,
    dropout=0.04,
    outliers=0.0008,
)

NUSCENES_SENSOR = Sensor(
    name="nuscenes",
    elevations_deg=np.linspace(10.0, -30.0, 32),
    cols=1090,
    height=1.84,
    max_range=70.0,
    min_range=1.0,
    range_noise=0.03,
    dropout=0.01,
    outliers=0.001,
    ego_roof=(0.85, 0.65, 0.28),  # a Renault Zoe's roof (1.56 m) under the sensor (1.84 m)
)

# Hesai Pandar40 (inside SemanticPOSS's Pandora), top to bottom: +7..+2 deg in
# 1 deg steps, 1/3 deg steps down to -5.67, then 1 deg steps from -6 to -16
PANDAR40_ELEVATIONS_DEG = np.concatenate([np.arange(7.0, 1.5, -1.0), 2.0 - np.arange(1, 24) / 3.0,
                                          np.arange(-6.0, -16.5, -1.0)])

POSS_SENSOR = Sensor(
    name="semanticposs",
    elevations_deg=PANDAR40_ELEVATIONS_DEG,
    cols=1800,           # 40 x 1800 = 72,000 returns at most, as in SemanticPOSS
    height=2.0,          # on a roof rack: higher than KITTI's 1.73 m and nuScenes' 1.84 m
    max_range=100.0,
    min_range=1.0,
    range_noise=0.02,
    dropout=0.02,
    outliers=0.001,
)


def scan(world: World, sensor: Sensor, x: float, y: float, yaw: float, rng: np.random.Generator,
         points_scale: float = 1.0) -> Dict[str, np.ndarray]:
    """Ray-cast one revolution from (x, y, sensor.height) heading ``yaw``.

    Returns, for the kept returns, ``xyz`` (N, 3) float32 in the sensor frame
    (x forward, y left, z up), ``remission`` (N,) in [0, 1], ``kind`` (N,)
    world kinds, ``instance`` (N,) thing ids (0 for stuff) and ``beam`` (N,)
    row index (0 = highest beam). Returns off the ego roof (``sensor.ego_roof``)
    have the kind ``ego``.
    """
    cols = max(8, int(round(sensor.cols * points_scale)))
    elev = sensor.elevations()
    # real scanners do not start each revolution at the same azimuth
    phase = float(rng.uniform(0, 2 * math.pi / cols))
    prims, shapes, kinds, inst, rects, rect_kinds = world.arrays()
    rng_t, hit, gkind = cast((x, y, sensor.height), yaw, phase, elev, cols, prims, shapes,
                             rects, rect_kinds, world.ground_default, sensor.max_range)
    n_rays = rng_t.shape[0]
    beam = np.repeat(np.arange(len(elev)), cols)
    ego = np.zeros(n_rays, dtype=bool)
    if sensor.ego_roof is not None:
        # the roof plane: nearer than anything in the world, so it wins where hit
        half_l, half_w, depth = sensor.ego_roof
        down = np.maximum(-np.sin(elev), 1e-9)[beam]
        c = np.tile(np.arange(cols), len(elev))
        phi = math.pi - 2.0 * math.pi * (c + 0.5) / cols + phase
        t_roof = depth / down
        horiz = t_roof * np.cos(elev)[beam]
        ego = (elev[beam] < 0) & (np.abs(horiz * np.cos(phi)) < half_l) & (np.abs(horiz * np.sin(phi)) < half_w)
        rng_t = np.where(ego, t_roof, rng_t)
    keep = np.isfinite(rng_t) & ((rng_t >= sensor.min_range) | ego)
    # dropouts: a base rate, more at long range (weak returns)
    frac = np.where(keep, rng_t / sensor.max_range, 0.0)
    p_drop = sensor.dropout + 0.25 * frac ** 3
    keep &= rng.random(n_rays) >= p_drop

    kind = np.where(hit >= 0, kinds[np.maximum(hit, 0)], gkind)
    kind = np.where(ego, K["ego"], kind)
    instance = np.where((hit >= 0) & ~ego, inst[np.maximum(hit, 0)], 0)
    t = rng_t + rng.normal(0.0, sensor.range_noise, n_rays)
    # spurious returns: a random range along the ray, labelled as outliers
    outl = keep & ~ego & (rng.random(n_rays) < sensor.outliers)
    far = np.where(keep, rng_t, sensor.min_range)
    t = np.where(outl, sensor.min_range + rng.random(n_rays) * (far - sensor.min_range), t)
    kind = np.where(outl, K["outlier"], kind)
    instance = np.where(outl, 0, instance)

    idx = np.flatnonzero(keep)
    c = idx % cols
    phi = math.pi - 2.0 * math.pi * (c + 0.5) / cols + phase
    e = elev[beam[idx]]
    tt = t[idx]
    xyz = np.empty((idx.size, 3), np.float32)
    xyz[:, 0] = tt * np.cos(e) * np.cos(phi)
    xyz[:, 1] = tt * np.cos(e) * np.sin(phi)
    xyz[:, 2] = tt * np.sin(e)
    k = kind[idx]
    ins = instance[idx]
    # reflectivity: per kind, per object (paint), per point; weaker far away
    obj_offset = np.sin(ins * 12.9898 + 78.233) * 0.08 * (ins > 0)
    rem = REMISSION_OF_KIND[k] + obj_offset + SPREAD_OF_KIND[k] * rng.normal(0.0, 1.0, idx.size)
    rem *= 1.0 - 0.3 * (tt / sensor.max_range)
    rem = np.clip(rem, 0.0, 1.0)
    return {"xyz": xyz, "remission": rem, "kind": k.astype(np.int64),
            "instance": ins.astype(np.int64), "beam": beam[idx].astype(np.int64)}
