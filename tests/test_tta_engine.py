"""LiDAR test-time augmentation and the onnxruntime engine of ``cdcl predict``:
tiny seeded scans, tiny models."""
import math

import numpy as np
import pytest
import torch
from torch import nn

from cdcl3d.datasets.range_dataset import RangeImageDataset, collate_range
from cdcl3d.knn import KNNPostProcess
from cdcl3d.projection import KITTI_SENSOR, RangeProjection
from cdcl3d.representations import REPRESENTATIONS
from cdcl3d.tta import TTA, View, build_views, check_tta, describe

H, W, K = 16, 64, 4
SENSOR = dict(KITTI_SENSOR, height=H, width=W)


class _Reader(torch.utils.data.Dataset):
    """Items as a reader gives them: ``points`` (N, 4) and ``labels``."""

    class_names = [f"c{i}" for i in range(K)]
    ignore_index = 255

    def __init__(self, scans):
        self.scans = scans

    def __len__(self):
        return len(self.scans)

    def __getitem__(self, i):
        return {"points": self.scans[i], "labels": None, "id": f"{i:06d}"}


def _random_scan(seed, n=3000):
    """Points on a noisy cylinder around the sensor, several per pixel."""
    rng = np.random.default_rng(seed)
    a = rng.uniform(-math.pi, math.pi, n)
    r = rng.uniform(4.0, 30.0, n)
    z = rng.uniform(-2.5, 0.5, n)
    return np.stack([r * np.cos(a), r * np.sin(a), z, rng.uniform(0, 1, n)], 1).astype(np.float32)


def _pixel_centre_scan(seed, n=500):
    """One point at the centre of each of ``n`` distinct pixels: a flip about x
    or y and a yaw of a multiple of 90 deg map pixel centres to pixel centres,
    so every point wins its pixel in every view."""
    rng = np.random.default_rng(seed)
    flat = rng.choice(H * W, n, replace=False)
    row, col = flat // W, flat % W
    fov_up, fov_down = math.radians(SENSOR["fov_up"]), math.radians(SENSOR["fov_down"])
    pitch = fov_down + (1.0 - (row + 0.5) / H) * (fov_up - fov_down)
    yaw = ((col + 0.5) / W * 2.0 - 1.0) * math.pi  # col = 0.5 (yaw / pi + 1) W
    azimuth = -yaw
    d = rng.uniform(5.0, 40.0, n)
    pts = np.stack([d * np.cos(pitch) * np.cos(azimuth), d * np.cos(pitch) * np.sin(azimuth),
                    d * np.sin(pitch), rng.uniform(0, 1, n)], 1)
    return pts.astype(np.float32)


def _batch(scans):
    ds = RangeImageDataset(_Reader(scans), RangeProjection.from_sensor(SENSOR))
    batch = collate_range([ds[i] for i in range(len(ds))])
    batch["representation"] = "range"
    return batch


def _tta(views):
    return TTA(views, REPRESENTATIONS["range"].rebuild({}, SENSOR))


def _predict(model, batch, tta, knn=True):
    knn_module = KNNPostProcess(K) if knn else None
    with torch.no_grad():
        return REPRESENTATIONS["range"].predict(model, batch, knn_module, tta)


def test_views_from_the_option():
    assert describe(build_views(None)) == "off" and build_views({}) == [View()]
    views = build_views({"flip_x": True, "flip_y": True, "yaw": [90, 0, 360, -90]})
    assert [str(v) for v in views] == ["identity", "flip_x", "flip_y", "flip_x+flip_y", "yaw 90", "yaw -90"]
    pts = _random_scan(0, 10)
    np.testing.assert_allclose(View(flip_x=True).apply(pts)[:, 0], -pts[:, 0])
    np.testing.assert_allclose(View(yaw=90).apply(pts)[:, :2], np.stack([-pts[:, 1], pts[:, 0]], 1), atol=1e-5)
    from common.config import ConfigError
    with pytest.raises(ConfigError, match="eval.options.tta.flip"):
        check_tta({"flip": True})
    with pytest.raises(ConfigError, match="eval.options.tta.yaw"):
        check_tta({"yaw": 90})


def test_tta_with_one_identity_view_equals_no_tta_exactly():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(5, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, K, 3, padding=1)).eval()
    batch = _batch([_random_scan(1), _random_scan(2, 2000)])
    plain, knn, image = _predict(model, batch, None)
    plain_t, knn_t, image_t = _predict(model, batch, _tta([View()]))
    for a, b in zip(plain + knn, plain_t + knn_t):
        assert torch.equal(a, b)
    assert torch.equal(image, image_t)


def _flip_invariant_model():
    """A per-pixel classifier of range, z and intensity only (zero weights on
    the x and y channels): the same scores for a point in every flipped or
    rotated view."""
    torch.manual_seed(0)
    model = nn.Conv2d(5, K, 1)
    with torch.no_grad():
        model.weight[:, 1:3] = 0.0
    return model.eval()


def test_flip_tta_on_a_flip_equivariant_model_returns_the_same_labels():
    model = _flip_invariant_model()
    batch = _batch([_pixel_centre_scan(3), _pixel_centre_scan(4)])
    plain, knn, _ = _predict(model, batch, None)
    views = build_views({"flip_x": True, "flip_y": True, "yaw": [90, 180]})
    assert len(views) == 6
    plain_t, knn_t, _ = _predict(model, batch, _tta(views))
    for a, b in zip(plain + knn, plain_t + knn_t):
        assert torch.equal(a, b)
    # the other views are other pictures (only the model makes them agree)
    flipped = REPRESENTATIONS["range"].rebuild({}, SENSOR)(batch["points"], View(flip_y=True))
    assert not torch.equal(flipped["inputs"], batch["inputs"])


def test_tta_on_voxels_averages_every_point():
    """The voxel row: views re-voxelised, one label per point; one view = no TTA."""

    class PerPoint(nn.Module):  # a stand-in for the sparse network: per-point scores from voxel feats
        def forward(self, batch):
            feats = batch["voxel_feats"][batch["point2voxel"]]  # (N, C)
            return torch.stack([feats[:, 2], -feats[:, 2], feats[:, 3], feats[:, 0] * 0], 1)

    rep = REPRESENTATIONS["voxel"]
    collate = rep.collate({"voxel_size": 0.5}, SENSOR)
    scans = [_random_scan(5, 500), _random_scan(6, 300)]
    batch = collate([{"points": s, "labels": None, "id": str(i)} for i, s in enumerate(scans)])
    plain, _, _ = rep.predict(PerPoint(), batch, None)
    one, _, _ = rep.predict(PerPoint(), batch, TTA([View()], rep.rebuild({"voxel_size": 0.5}, SENSOR)))
    many, _, _ = rep.predict(PerPoint(), batch, TTA(build_views({"flip_x": True, "yaw": [90]}),
                                                    rep.rebuild({"voxel_size": 0.5}, SENSOR)))
    assert all(torch.equal(a, b) for a, b in zip(plain, one))
    assert [len(p) for p in many] == [500, 300]
