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


# -- the onnxruntime engine ---------------------------------------------------------------

def _export(model, path, shape=(5, H, W)):
    torch.onnx.export(model.eval(), (torch.zeros((1,) + shape),), str(path), input_names=["input"],
                      output_names=["logits"], dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                      opset_version=17, dynamo=False)
    return str(path)


def test_onnxruntime_network_equals_torch_on_a_tiny_model(tmp_path):
    from common.onnx_engine import OnnxNetwork

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(5, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                          nn.Conv2d(8, K, 3, padding=1)).eval()
    net = OnnxNetwork(_export(model, tmp_path / "m.onnx"), (5, H, W), K)
    batch = _batch([_random_scan(7), _random_scan(8, 2000)])
    with torch.no_grad():
        assert torch.allclose(net(batch["inputs"]), model(batch["inputs"]), atol=1e-4)
    for tta in (None, _tta(build_views({"flip_x": True, "yaw": [90]}))):
        ref, got = _predict(model, batch, tta), _predict(net, batch, tta)
        for a, b in zip(ref[0] + ref[1], got[0] + got[1]):
            assert (a == b).float().mean() >= 0.999


def test_missing_or_mismatched_onnx_file_is_an_error_naming_it(tmp_path):
    from common.onnx_engine import OnnxFileError, OnnxNetwork

    missing = tmp_path / "nope.onnx"
    with pytest.raises(OnnxFileError, match=f"{missing}.*no such file"):
        OnnxNetwork(str(missing), (5, H, W), K)
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"not a model")
    with pytest.raises(OnnxFileError, match=f"{junk}.*cannot load"):
        OnnxNetwork(str(junk), (5, H, W), K)
    other_classes = _export(nn.Conv2d(5, K + 3, 1), tmp_path / "k7.onnx")
    with pytest.raises(OnnxFileError, match=f"{other_classes} gives {K + 3} classes.*has {K}"):
        OnnxNetwork(other_classes, (5, H, W), K)
    other_shape = _export(nn.Conv2d(5, K, 1), tmp_path / "wide.onnx", shape=(5, H, 2 * W))
    with pytest.raises(OnnxFileError, match=f"{other_shape} takes input \\(batch, 5, {H}, {2 * W}\\)"):
        OnnxNetwork(other_shape, (5, H, W), K)


@pytest.fixture(scope="module")
def trained_kitti(tmp_path_factory):
    """A tiny SalsaNext trained 1 iteration on generated SemanticKITTI scans (16 x 64)."""
    from common.config import build_config
    from common.trainer import train
    from cdcl3d.synth import generate_lidar

    root = tmp_path_factory.mktemp("synth")
    generate_lidar(str(root), seed=0, scans=6, points_scale=0.1)
    d = {"task": "3d", "model": {"name": "salsanext", "width": 0.125, "dropout": 0.0},
         "data": {"semantickitti": {"type": "semantickitti", "root": str(root / "semantickitti"),
                                    "batch_size": 1, "class_weights": "none", "augment": None,
                                    "sensor": {"height": 16, "width": 64, "fov_up": 3.0, "fov_down": -25.0}}},
         "strategy": {"name": "single"},
         "train": {"iterations": 1, "lr": 0.01, "progress": False, "checkpoint_every": 100, "log_every": 1,
                   "threads": 1},
         "eval": {"max_samples": 1}}
    work = tmp_path_factory.mktemp("run")
    train(build_config(d, source="test"), str(work))
    return str(work / "config.yaml"), str(work / "checkpoints" / "latest.pth"), work


def _predicted(folder):
    files = sorted(folder.glob("sequences/*/predictions/*.label"))
    assert files
    return np.concatenate([np.fromfile(f, dtype=np.uint32) for f in files])


def test_cdcl_predict_onnxruntime_engine_equals_torch(trained_kitti, tmp_path, capsys):
    from common.cli import main

    config, ckpt, work = trained_kitti
    common = [config, "--checkpoint", ckpt, "--dataset", "semantickitti", "--split", "test"]
    tta = "eval.options.tta={flip_x: true, yaw: [90]}"
    for extra in ([], [tta]):
        assert main(["predict", *common, "--out", str(tmp_path / "torch"), *extra]) == 0
        assert main(["predict", *common, "--out", str(tmp_path / "ort"), "--engine", "onnxruntime", *extra]) == 0
        a, b = _predicted(tmp_path / "torch"), _predicted(tmp_path / "ort")
        assert a.shape == b.shape and (a == b).mean() >= 0.999
    # a file from `cdcl export` runs as it is; a missing one is one line naming it, exit 2
    onnx = tmp_path / "k.onnx"
    assert main(["export", ckpt, "--dataset", "semantickitti", "--out", str(onnx)]) == 0
    assert main(["predict", *common, "--out", str(tmp_path / "file"), "--engine", "onnxruntime",
                 "--onnx", str(onnx)]) == 0
    assert (_predicted(tmp_path / "file") == _predicted(tmp_path / "torch")).mean() >= 0.999
    capsys.readouterr()
    assert main(["predict", *common, "--out", str(tmp_path / "x"), "--engine", "onnxruntime",
                 "--onnx", str(tmp_path / "missing.onnx")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "missing.onnx" in err[0] and "no such file" in err[0]


def test_cdcl_eval_states_the_tta_used(trained_kitti, tmp_path, capsys):
    import json

    from common.cli import main

    config, ckpt, work = trained_kitti
    for extra, said in (([], "off"), (["eval.options.tta={flip_y: true, yaw: [180]}"], "3 views (identity, flip_y, yaw 180)")):
        out = tmp_path / "val.json"
        capsys.readouterr()
        assert main(["eval", config, "--checkpoint", ckpt, "--out", str(out), *extra]) == 0
        assert json.loads(out.read_text())["semantickitti"]["tta"].startswith(said)
        assert f"tta: {said}" in capsys.readouterr().out
    assert main(["eval", config, "--checkpoint", ckpt, "eval.options.tta={flip: true}"]) == 2
    assert "eval.options.tta.flip" in capsys.readouterr().err
