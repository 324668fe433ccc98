"""Range projection against a numpy reimplementation of the published formula."""
from __future__ import annotations

import math

import numpy as np
import pytest

from cdcl3d import projection as P
from cdcl3d.augment import augment_points
from cdcl3d.projection import KITTI_SENSOR, NUSCENES_SENSOR, RangeProjection


def reference_projection(points, height, width, fov_up, fov_down):
    """SalsaNext/RangeNet++'s laserscan projection in numpy, with the angles in
    float64 and a stable sort (see cdcl3d.projection for why)."""
    fov_up = fov_up / 180.0 * np.pi
    fov_down = fov_down / 180.0 * np.pi
    fov = abs(fov_down) + abs(fov_up)
    depth = np.linalg.norm(points[:, :3], 2, axis=1)
    x, y, z = (points[:, i].astype(np.float64) for i in range(3))
    yaw = -np.arctan2(y, x)
    pitch = np.arcsin(z / depth.astype(np.float64))
    proj_x = 0.5 * (yaw / np.pi + 1.0) * width
    proj_y = (1.0 - (pitch + abs(fov_down)) / fov) * height
    proj_x = np.maximum(0, np.minimum(width - 1, np.floor(proj_x))).astype(np.int64)
    proj_y = np.maximum(0, np.minimum(height - 1, np.floor(proj_y))).astype(np.int64)
    order = np.argsort(depth, kind="stable")[::-1]  # far to near: the nearest is written last
    proj_idx = np.full((height, width), -1, dtype=np.int64)
    proj_idx[proj_y[order], proj_x[order]] = np.arange(points.shape[0])[order]
    return proj_y, proj_x, proj_idx, depth


def lidar_like(rng, n, fov_up=3.0, fov_down=-25.0, max_range=60.0):
    az = rng.uniform(-np.pi, np.pi, n)
    el = np.deg2rad(rng.uniform(fov_down - 2, fov_up + 2, n))
    r = rng.uniform(1.0, max_range, n)
    pts = np.stack([r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az), r * np.sin(el),
                    rng.uniform(0, 1, n)], axis=1)
    return pts.astype(np.float32)


@pytest.mark.parametrize("h,w,up,down", [(64, 2048, 3.0, -25.0), (32, 1024, 10.0, -30.0), (16, 64, 3.0, -25.0)])
def test_matches_reference(h, w, up, down):
    rng = np.random.default_rng(h + w)
    pts = lidar_like(rng, 20000, up, down)
    labels = rng.integers(0, 19, len(pts))
    labels[::7] = 255
    proj = RangeProjection(h, w, up, down)
    out = proj.project(pts, labels)
    ref_row, ref_col, ref_idx, ref_depth = reference_projection(pts, h, w, up, down)
    np.testing.assert_array_equal(out["proj_row"], ref_row)
    np.testing.assert_array_equal(out["proj_col"], ref_col)
    np.testing.assert_array_equal(out["proj_idx"], ref_idx)
    np.testing.assert_array_equal(out["range"], ref_depth)  # bit-exact float32 norm

    mask = ref_idx >= 0
    np.testing.assert_array_equal(out["mask"], mask)
    win = ref_idx[mask]
    np.testing.assert_array_equal(out["proj_range"][mask], ref_depth[win])
    assert (out["proj_range"][~mask] == -1).all()
    np.testing.assert_array_equal(out["labels"][mask], labels[win])
    assert (out["labels"][~mask] == 255).all()
    chans = np.concatenate([ref_depth[:, None], pts[:, :4]], axis=1)  # range, x, y, z, intensity
    means = np.asarray(KITTI_SENSOR["means"], np.float32)
    stds = np.asarray(KITTI_SENSOR["stds"], np.float32)
    np.testing.assert_allclose(out["inputs"][:, mask], ((chans[win] - means) / stds).T, rtol=1e-6, atol=1e-6)
    assert (out["inputs"][:, ~mask] == 0).all()
    assert out["inputs"].dtype == np.float32 and out["labels"].dtype == np.int64
    assert out["proj_row"].dtype == np.int64 and out["proj_idx"].dtype == np.int64


def test_ties_and_hidden_points():
    rng = np.random.default_rng(1)
    pts = lidar_like(rng, 500)
    # exact duplicates (equal depth): the lowest index wins, as with a stable sort
    dup = np.concatenate([pts, pts[::-1], pts[:50] * np.float32(1.5)])
    out = RangeProjection(16, 128, 3.0, -25.0).project(dup)
    ref_row, ref_col, ref_idx, depth = reference_projection(dup, 16, 128, 3.0, -25.0)
    np.testing.assert_array_equal(out["proj_idx"], ref_idx)
    assert out["proj_idx"].max() < len(pts)  # the copies and the farther points never win
    # every point, hidden ones included, maps back to a pixel no farther than itself
    back = RangeProjection.back_project(out["proj_range"], out["proj_row"], out["proj_col"])
    assert back.shape == (len(dup),)
    assert (back <= out["range"]).all() and (back > 0).all()
    winners = out["proj_idx"][out["mask"]]
    np.testing.assert_array_equal(back[winners], out["range"][winners])
    assert len(winners) < len(pts)  # some points are hidden
    # a dense prediction returns to all points
    pred = np.arange(16 * 128).reshape(16, 128)
    per_point = RangeProjection.back_project(pred, out["proj_row"], out["proj_col"])
    np.testing.assert_array_equal(per_point, ref_row * 128 + ref_col)


def test_pixel_borders_use_exact_path():
    """Points on (or as near as float32 gets to) column / row borders, where an
    approximate angle could flip the pixel, and signed zeros."""
    w, h = 2048, 64
    k = np.arange(0, w, 7)
    az = (2 * k / w - 1) * np.pi  # yaw = -az on a column border
    r = np.linspace(2, 50, len(k))
    rows = np.arange(h + 1)
    el = np.deg2rad(3.0) - rows / h * np.deg2rad(28.0)  # row borders
    xs = np.concatenate([r * np.cos(-az), 10 * np.cos(el)])
    ys = np.concatenate([r * np.sin(-az), np.zeros_like(el) + 1e-3])
    zs = np.concatenate([np.zeros_like(az) - 1.0, 10 * np.sin(el)])
    special = np.array([[1, 0, 0, 0], [1, -0.0, 0, 0], [-1, 0.0, 0, 0], [-1, -0.0, 0, 0],
                        [0, 1, 0, 0], [0, -1, 0, 0], [0, 0, 5, 0], [0, 0, -5, 0]], np.float32)
    pts = np.concatenate([np.stack([xs, ys, zs, np.ones_like(xs)], 1).astype(np.float32), special])
    ref_row, ref_col, ref_idx, _ = reference_projection(pts, h, w, 3.0, -25.0)
    # default guard band, then every point on the fast path (no guard), then
    # every point on the libm path (guard band covering the whole pixel)
    for eps in (None, 0.0, 0.5):
        proj = RangeProjection(h, w, 3.0, -25.0)
        if eps is not None:
            proj._eps_col = proj._eps_row = eps
        out = proj.project(pts)
        np.testing.assert_array_equal(out["proj_col"], ref_col)
        np.testing.assert_array_equal(out["proj_row"], ref_row)
        np.testing.assert_array_equal(out["proj_idx"], ref_idx)


def test_zero_range_point():
    pts = np.array([[0, 0, 0, 0.5], [1, 2, 0.1, 0.1]], np.float32)
    out = RangeProjection(8, 32, 3.0, -25.0).project(pts)
    assert out["range"][0] == 0 and 0 <= out["proj_row"][0] < 8  # pitch taken as 0, no NaN
    assert np.isfinite(out["inputs"]).all()


def test_fast_angles_accuracy():
    th = np.linspace(-np.pi, np.pi, 400001)[1:-1]
    r = np.exp(np.linspace(-3, 5, th.size))
    x, y = r * np.cos(th), r * np.sin(th)
    fast = np.array([P._atan2_fast.py_func(a, b) for a, b in zip(y[::97], x[::97])])
    assert np.abs(fast - np.arctan2(y[::97], x[::97])).max() < P._ANGLE_ERR / 10
    s = np.linspace(-P._ASIN_MAX, P._ASIN_MAX, 4001)
    fast = np.array([P._asin_fast.py_func(v) for v in s])
    assert np.abs(fast - np.arcsin(s)).max() < P._ANGLE_ERR / 10


def test_ring_mode():
    rng = np.random.default_rng(2)
    pts = np.concatenate([lidar_like(rng, 3000, 10.0, -30.0), rng.integers(0, 32, (3000, 1))], 1)
    pts = pts.astype(np.float32)
    ring = pts[:, 4].astype(np.int64)
    flat = RangeProjection(32, 256, 10.0, -30.0, use_ring=True, ring_flip=False).project(pts)
    np.testing.assert_array_equal(flat["proj_row"], ring)
    flip = RangeProjection.from_sensor(NUSCENES_SENSOR, width=256).project(pts)
    np.testing.assert_array_equal(flip["proj_row"], 31 - ring)
    _, ref_col, _, depth = reference_projection(pts, 32, 256, 10.0, -30.0)
    np.testing.assert_array_equal(flip["proj_col"], ref_col)
    # nearest point per (ring, column) wins
    key = (31 - ring) * 256 + ref_col
    for pix in np.unique(key)[:200]:
        members = np.flatnonzero(key == pix)
        best = members[np.argmin(depth[members])]
        assert flip["proj_idx"].reshape(-1)[pix] == best
    pts[7, 4] = 32
    with pytest.raises(ValueError, match="ring index 32.0 of point 7"):
        RangeProjection(32, 256, 10.0, -30.0, use_ring=True).project(pts)
    with pytest.raises(ValueError, match="ring"):
        RangeProjection(32, 256, 10.0, -30.0, use_ring=True).project(pts[:, :4])


def test_bad_arguments():
    with pytest.raises(ValueError, match="fov_up"):
        RangeProjection(64, 2048, -25.0, 3.0)
    proj = RangeProjection(8, 16, 3.0, -25.0)
    with pytest.raises(ValueError, match="labels shape"):
        proj.project(np.zeros((4, 4), np.float32) + 1, np.zeros(3))
    with pytest.raises(ValueError, match=r"\(N, >=4\)"):
        proj.project(np.zeros((4, 3), np.float32))


def test_augment_points():
    rng = np.random.default_rng(0)
    pts = lidar_like(rng, 1000)
    out, keep = augment_points(pts, np.random.default_rng(5), jitter=0.0, dropout=0.2)
    assert out.dtype == np.float32 and out.shape == (len(keep), 4)
    assert 600 < len(keep) < 950 and np.all(np.diff(keep) > 0)
    # rotation, flips and scale about the origin scale every range by one factor
    ratio = np.linalg.norm(out[:, :3], axis=1) / np.linalg.norm(pts[keep, :3], axis=1)
    assert np.allclose(ratio, ratio[0], rtol=1e-5) and 0.95 <= ratio[0] <= 1.05
    np.testing.assert_array_equal(out[:, 3], pts[keep, 3])
    again, keep2 = augment_points(pts, np.random.default_rng(5), jitter=0.0, dropout=0.2)
    np.testing.assert_array_equal(again, out)
    same, all_idx = augment_points(pts, rng, rotate=False, flip_x=False, flip_y=False, scale=None)
    np.testing.assert_array_equal(same, pts)
    assert np.array_equal(all_idx, np.arange(1000))
    moved, _ = augment_points(pts, rng, rotate=False, flip_x=False, flip_y=False, scale=None, jitter=1.0)
    shift = moved[:, :3] - pts[:, :3]
    assert np.allclose(shift, shift[0], atol=1e-4) and np.abs(shift[0]).max() > 0
    assert not math.isnan(float(moved.sum()))
