"""Corrupted copies of a SemanticKITTI validation split (after SemanticKITTI-C).

``corrupt_semantickitti(src, out, corruption, severity, seed)`` reads the
validation sequence (08) of a SemanticKITTI tree (the generated one, or any
in that layout) and writes ``out`` in the same layout: sequence 08 with the
corrupted scans (``velodyne/*.bin``, ``labels/*.label``, its ``calib.txt``,
``poses.txt`` and ``times.txt``), every other sequence of ``src`` present but
empty, so the official split lists resolve and every reader and evaluator
takes it (its ``valid`` split is the corrupted one; an unseen dataset adapts on
it with ``train_split: valid``, the usual test-time adaptation setting).

Labels follow the points: a dropped point drops its label; a point that is no
longer a surface return (a fog or crosstalk return, an added snow flake)
gets label 0 (``unlabeled``, ignored by the evaluation). Corruptions, by
severity 1..5 (the rows of :data:`SEVERITY`):

* ``fog``: each point survives with probability ``exp(-2 alpha r)`` (two-way
  attenuation over range ``r``); a share of the lost ones comes back as a
  scattered return at a short range along its ray, weak, label 0;
* ``snow``: flakes (new points, label 0) at random directions within the
  sensor's field of view and short ranges, and a jitter of every point;
* ``beam-drop``: whole beams (rows: points binned by elevation onto the
  sensor's beams) are dropped;
* ``crosstalk``: a share of the points moves to a random range along its
  own ray (label 0);
* ``motion-blur``: every point moves by a Gaussian jitter whose sigma grows
  linearly with azimuth from the start of the sweep, as ego motion during a
  sweep smears it.

Each scan's random draws depend on ``(seed, corruption, sequence, index)``,
not on the severity, and severities only move thresholds: a higher severity
corrupts a superset (more dropped, more added, larger jitter), and a run is
a pure function of its inputs (same bytes for the same seed). Numpy,
vectorised per scan.
"""
from __future__ import annotations

import glob
import os
import shutil
from typing import Dict, Tuple

import numpy as np

from common.errors import OptionError

from .sensors import KITTI_SENSOR

CORRUPTIONS = ("fog", "snow", "beam-drop", "crosstalk", "motion-blur")
VALID_SEQUENCE = "08"

#: per corruption, the parameter at severities 1..5
SEVERITY: Dict[str, Tuple[float, ...]] = {
    "fog": (0.005, 0.01, 0.02, 0.03, 0.05),          # alpha (1/m): survive exp(-2 alpha r)
    "snow": (0.01, 0.02, 0.04, 0.06, 0.10),          # flakes per point; jitter sigma = flakes (m)
    "beam-drop": (0.1, 0.25, 0.4, 0.55, 0.7),        # share of the beams dropped
    "crosstalk": (0.006, 0.012, 0.02, 0.03, 0.05),   # share of the points moved
    "motion-blur": (0.04, 0.08, 0.12, 0.16, 0.20),   # jitter sigma (m) at the end of the sweep
}
FOG_SCATTER = 0.5           # share of the lost points that come back as scatter
NEAR = (KITTI_SENSOR.min_range, 12.0)  # range of scatter and flakes (m)


def _ranges(xyz: np.ndarray) -> np.ndarray:
    return np.maximum(np.linalg.norm(xyz, axis=1), 1e-6)


def corrupt_scan(points: np.ndarray, labels: np.ndarray, corruption: str, severity: int,
                 rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Corrupt one scan: ``points`` (N, 4) float32 x, y, z, remission and raw
    ``labels`` (N,) uint32; returns both, corrupted (label 0 for points that
    are no longer returns of a labelled surface)."""
    if corruption not in SEVERITY:
        raise OptionError(f"unknown corruption {corruption!r}; choose from {list(CORRUPTIONS)}")
    if not 1 <= int(severity) <= 5:
        raise OptionError(f"severity must be 1..5, got {severity}")
    p = SEVERITY[corruption][int(severity) - 1]
    pts, lab = points.astype(np.float32, copy=True), labels.astype(np.uint32, copy=True)
    n = len(pts)
    r = _ranges(pts[:, :3])
    if corruption == "fog":
        u, back, near = rng.random(n), rng.random(n), rng.uniform(*NEAR, n)
        lost = u >= np.exp(-2.0 * p * r)
        scatter = lost & (back < FOG_SCATTER) & (near < r)
        pts[scatter, :3] *= (near[scatter] / r[scatter])[:, None]
        pts[scatter, 3] *= 0.1
        lab[scatter] = 0
        keep = ~lost | scatter
        return pts[keep], lab[keep]
    if corruption == "snow":
        most = int(round(SEVERITY["snow"][-1] * n))
        az = rng.uniform(-np.pi, np.pi, most)
        el = np.deg2rad(rng.uniform(KITTI_SENSOR.elevations_deg.min(), KITTI_SENSOR.elevations_deg.max(), most))
        rr = rng.uniform(*NEAR, most)
        noise = rng.normal(0.0, 1.0, (n, 3)).astype(np.float32)
        k = int(round(p * n))
        flakes = np.stack([rr * np.cos(el) * np.cos(az), rr * np.cos(el) * np.sin(az), rr * np.sin(el),
                           rng.uniform(0.0, 0.05, most)], axis=1)[:k].astype(np.float32)
        pts[:, :3] += p * noise
        return np.concatenate([pts, flakes]), np.concatenate([lab, np.zeros(k, np.uint32)])
    if corruption == "beam-drop":
        beams = np.deg2rad(KITTI_SENSOR.elevations_deg)
        el = np.arcsin(np.clip(pts[:, 2] / r, -1.0, 1.0))
        beam = np.abs(el[:, None] - beams[None, :]).argmin(1)
        order = rng.permutation(len(beams))  # beams in the order they go
        dropped = order[:int(round(p * len(beams)))]
        keep = ~np.isin(beam, dropped)
        return pts[keep], lab[keep]
    if corruption == "crosstalk":
        u, rr = rng.random(n), rng.uniform(KITTI_SENSOR.min_range, KITTI_SENSOR.max_range, n)
        moved = u < p
        pts[moved, :3] *= (rr[moved] / r[moved])[:, None]
        lab[moved] = 0
        return pts, lab
    # motion-blur: the sweep starts behind the sensor (azimuth -pi) and turns once
    t = (np.arctan2(pts[:, 1], pts[:, 0]) + np.pi) / (2 * np.pi)  # (N,) in [0, 1]
    pts[:, :3] += (p * t)[:, None].astype(np.float32) * rng.normal(0.0, 1.0, (n, 3)).astype(np.float32)
    return pts, lab


def corrupt_semantickitti(src: str, out: str, corruption: str, severity: int, seed: int = 0) -> Dict[str, object]:
    """Write ``src``'s validation sequence, corrupted, as a SemanticKITTI tree
    at ``out`` (the folder that gets ``sequences/``); returns its path and
    scan count."""
    if corruption not in SEVERITY:
        raise OptionError(f"unknown corruption {corruption!r}; choose from {list(CORRUPTIONS)}")
    if not 1 <= int(severity) <= 5:
        raise OptionError(f"--severity must be 1..5, got {severity}")
    seq_src = os.path.join(src, "sequences", VALID_SEQUENCE)
    scans = sorted(glob.glob(os.path.join(seq_src, "velodyne", "*.bin")))
    if not scans:
        raise OptionError(f"{seq_src}/velodyne holds no scans: generate SemanticKITTI first "
                          "(cdcl synth lidar --only semantickitti)")
    if os.path.abspath(src) == os.path.abspath(out):
        raise OptionError(f"the corrupted copy must go elsewhere than its source {src}")
    kind = CORRUPTIONS.index(corruption)
    for seq_dir in sorted(glob.glob(os.path.join(src, "sequences", "*"))):
        seq = os.path.basename(seq_dir)
        dst = os.path.join(out, "sequences", seq)
        os.makedirs(os.path.join(dst, "velodyne"), exist_ok=True)
        if os.path.isdir(os.path.join(seq_dir, "labels")):
            os.makedirs(os.path.join(dst, "labels"), exist_ok=True)
        for meta in ("calib.txt", "poses.txt", "times.txt"):
            if not os.path.exists(os.path.join(seq_dir, meta)):
                continue
            if seq == VALID_SEQUENCE or meta == "calib.txt":
                shutil.copyfile(os.path.join(seq_dir, meta), os.path.join(dst, meta))
            else:  # an empty sequence: no scans, so no poses or times
                open(os.path.join(dst, meta), "w").close()
    dst = os.path.join(out, "sequences", VALID_SEQUENCE)
    for path in scans:
        stem = os.path.splitext(os.path.basename(path))[0]
        pts = np.fromfile(path, np.float32).reshape(-1, 4)
        label_path = os.path.join(seq_src, "labels", stem + ".label")
        has_labels = os.path.exists(label_path)
        lab = np.fromfile(label_path, np.uint32) if has_labels else np.zeros(len(pts), np.uint32)
        if len(lab) != len(pts):
            raise OptionError(f"{label_path}: {len(lab)} labels for {len(pts)} points")
        rng = np.random.default_rng([seed, kind, int(VALID_SEQUENCE), int(stem)])
        pts, lab = corrupt_scan(pts, lab, corruption, severity, rng)
        pts.astype(np.float32).tofile(os.path.join(dst, "velodyne", stem + ".bin"))
        if has_labels:
            lab.astype(np.uint32).tofile(os.path.join(dst, "labels", stem + ".label"))
    return {"root": out, "scans": len(scans), "corruption": corruption, "severity": int(severity)}
