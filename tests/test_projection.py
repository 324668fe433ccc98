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


# -- points near the sensor (the ego vehicle) ------------------------------------------

def ego_scan(width=64, seed=4):
    """A nuScenes-like scan (x, y, z, intensity, ring) with train ids: 40 scene
    points 5-20 m away, each at a column centre, then a dense ego-vehicle
    cluster within 1 m of the sensor (|x|, |y| < 1, labelled 255 like the
    devkit's ``vehicle.ego``): three points on the pixel of every scene point,
    400 more anywhere. Returns ``(points, labels, scene_index, ego_index)``."""
    rng = np.random.default_rng(seed)
    cols = rng.choice(width, 40, replace=False)
    ring = rng.integers(0, 32, 40)
    az = -((cols + 0.5) / width * 2.0 - 1.0) * np.pi  # yaw = -az at the column centre
    r = rng.uniform(5.0, 20.0, 40)
    scene = np.stack([r * np.cos(az), r * np.sin(az), rng.uniform(-1.5, 1.0, 40),
                      rng.uniform(0, 255, 40), ring], 1)
    d = rng.uniform(0.3, 0.95, (40, 3))  # horizontal distance, inside the 1 m square
    on_pix = np.stack([d * np.cos(az)[:, None], d * np.sin(az)[:, None], -0.3 + 0 * d,
                       rng.uniform(0, 255, (40, 3)), np.repeat(ring[:, None], 3, 1)], 2).reshape(-1, 5)
    m = 400
    rest = np.stack([rng.uniform(-0.99, 0.99, m), rng.uniform(-0.99, 0.99, m), rng.uniform(-0.5, 0.0, m),
                     rng.uniform(0, 255, m), rng.integers(0, 32, m)], 1)
    pts = np.concatenate([scene, on_pix, rest]).astype(np.float32)
    labels = np.concatenate([rng.integers(0, 16, 40), np.full(len(pts) - 40, 255)])
    return pts, labels, np.arange(40), np.arange(40, len(pts))


def test_ego_cluster_no_longer_hides_the_scene():
    pts, labels, scene, ego = ego_scan()
    out = RangeProjection.from_sensor(NUSCENES_SENSOR, width=64).project(pts, labels)  # default: on
    row, col = out["proj_row"][scene], out["proj_col"][scene]
    np.testing.assert_array_equal(out["proj_idx"][row, col], scene)  # the scene is in the image
    np.testing.assert_array_equal(out["labels"][row, col], labels[scene])
    np.testing.assert_array_equal(out["proj_range"][row, col], out["range"][scene])
    assert not np.isin(out["proj_idx"], ego).any() and out["mask"].sum() == len(scene)
    assert (out["labels"][~out["mask"]] == 255).all() and (out["inputs"][:, ~out["mask"]] == 0).all()
    # option off: as before, the nearest point wins, so the cluster hides every scene point
    off = RangeProjection.from_sensor(NUSCENES_SENSOR, width=64, ego_radius=0.0).project(pts, labels)
    assert np.isin(off["proj_idx"][row, col], ego).all()
    key = off["proj_row"] * 64 + off["proj_col"]
    for pix in np.unique(key):
        members = np.flatnonzero(key == pix)
        assert off["proj_idx"].reshape(-1)[pix] == members[np.argmin(off["range"][members])]
    # every point keeps its pixel (the same as with the option off) and its range
    for k in ("proj_row", "proj_col", "range"):
        np.testing.assert_array_equal(out[k], off[k])
    assert out["proj_row"].shape == (len(pts),)
    # the plain per-point prediction and KNN give every point a label
    import torch

    from cdcl3d.knn import KNNPostProcess

    pred = np.where(out["mask"], out["labels"], 7)  # a "network" that knows the scene
    plain = RangeProjection.back_project(pred, out["proj_row"], out["proj_col"])
    assert plain.shape == (len(pts),)
    np.testing.assert_array_equal(plain[scene], labels[scene])
    t = {k: torch.from_numpy(out[k]) for k in ("proj_range", "range", "proj_row", "proj_col")}
    knn = KNNPostProcess(16, search=5, k=5, cutoff=1.0)(t["proj_range"], t["range"], torch.from_numpy(pred),
                                                         t["proj_col"], t["proj_row"])
    assert knn.shape == (len(pts),) and int(knn.min()) >= 0 and int(knn.max()) < 16
    alone = np.array([(np.abs(row - row[i]) <= 2) & (np.abs(col - col[i]) <= 2) for i in scene]).sum(1) == 1
    assert alone.sum() >= 10  # a scene point with no scene neighbour keeps its own label
    np.testing.assert_array_equal(knn.numpy()[scene[alone]], labels[scene[alone]])
    # an ego point on a scene pixel: its own pixel votes (distance 0), the
    # rest of the window is metres away; on an empty pixel it keeps the pixel's prediction
    np.testing.assert_array_equal(knn.numpy()[40:160], np.repeat(labels[scene], 3))
    empty = ~out["mask"][out["proj_row"], out["proj_col"]]
    assert empty.any() and (knn.numpy()[empty] == plain[empty]).all()


def test_ego_radius_follows_the_devkit_rule():
    """Kept out: |x| < r and |y| < r (nuscenes-devkit ``LidarPointCloud.remove_close``),
    whatever z; kept points are projected exactly as by the published formula."""
    from nuscenes.utils.data_classes import LidarPointCloud

    rng = np.random.default_rng(5)
    far = lidar_like(rng, 5000)
    near = np.stack([rng.uniform(-1.2, 1.2, 3000), rng.uniform(-1.2, 1.2, 3000),
                     rng.uniform(-2.0, 0.5, 3000), np.zeros(3000)], 1)
    edge = np.array([[1.0, 0.0, -0.3, 0], [-1.0, 0.5, -0.3, 0], [0.5, -1.0, 0.2, 0],
                     [0.999, -0.999, -0.3, 0], [0.0, 0.0, -0.5, 0], [0.2, 0.1, 3.0, 0]])
    pts = np.concatenate([far, near, edge]).astype(np.float32)
    pts[:, 3] = np.arange(len(pts))  # the devkit keeps columns: intensity = index
    pc = LidarPointCloud(pts.T.copy())
    pc.remove_close(1.0)
    kept = pc.points[3].astype(np.int64)
    assert 0 < len(kept) < len(pts)

    h, w = 32, 1024
    out = RangeProjection(h, w, 10.0, -30.0, ego_radius=1.0).project(pts)
    ref_row, ref_col, _, _ = reference_projection(pts, h, w, 10.0, -30.0)
    np.testing.assert_array_equal(out["proj_row"], ref_row)  # every point keeps its pixel
    np.testing.assert_array_equal(out["proj_col"], ref_col)
    _, _, ref_idx, _ = reference_projection(pts[kept], h, w, 10.0, -30.0)
    np.testing.assert_array_equal(out["proj_idx"], np.where(ref_idx >= 0, kept[ref_idx], -1))
    # an explicit mask overrides the radius (decided before augmentation)
    hide = np.zeros(len(pts), bool)
    hide[:100] = True
    out = RangeProjection(h, w, 10.0, -30.0, ego_radius=1.0).project(pts, exclude=hide)
    _, _, ref_idx, _ = reference_projection(pts[100:], h, w, 10.0, -30.0)
    np.testing.assert_array_equal(out["proj_idx"], np.where(ref_idx >= 0, ref_idx + 100, -1))
    with pytest.raises(ValueError, match="exclude"):
        RangeProjection(h, w, 10.0, -30.0).project(pts, exclude=hide[:5])
    with pytest.raises(ValueError, match="ego_radius"):
        RangeProjection(h, w, 10.0, -30.0, ego_radius=-1.0)
    assert KITTI_SENSOR["ego_radius"] == 0.0 and NUSCENES_SENSOR["ego_radius"] == 1.0
