"""Generated LiDAR data (cdcl3d.synth): formats, determinism, devkit, statistics."""
from __future__ import annotations

import argparse
import filecmp
import importlib
import json
import os

import numpy as np
import pytest
import torch

from cdcl3d.synth import class_histogram, generate_lidar
from cdcl3d.synth.lidar import _kitti_yaml
from cdcl3d.synth.world import NUSCENES_FINE

TINY = dict(seed=3, scans=13, points_scale=0.05)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("synth") / "lidar")
    generate_lidar(out, **TINY)
    return out


def _all_files(root: str) -> list:
    found = []
    for d, _, files in os.walk(root):
        found += [os.path.relpath(os.path.join(d, f), root) for f in files]
    return sorted(found)


def test_same_seed_same_bytes(tmp_path):
    a, b, c = (str(tmp_path / n) for n in "abc")
    for out, seed in ((a, 1), (b, 1), (c, 2)):
        generate_lidar(out, seed=seed, scans=3, points_scale=0.03)
    files = _all_files(a)
    assert files == _all_files(b) and len(files) > 20
    match, mismatch, errors = filecmp.cmpfiles(a, b, files, shallow=False)
    assert not mismatch and not errors
    kitti = "semantickitti/sequences/08/velodyne/000000.bin"
    assert not filecmp.cmp(os.path.join(a, kitti), os.path.join(c, kitti), shallow=False)


def test_kitti_layout_and_dtypes(tiny):
    seqs = os.path.join(tiny, "semantickitti", "sequences")
    assert sorted(os.listdir(seqs)) == [f"{i:02d}" for i in range(22)]  # 13-21 empty, like the real test split
    labels_cfg = _kitti_yaml()["labels"]
    total = 0
    for seq in sorted(os.listdir(seqs)):
        d = os.path.join(seqs, seq)
        scans = sorted(os.listdir(os.path.join(d, "velodyne")))
        assert scans == [f"{i:06d}.bin" for i in range(len(scans))]
        total += len(scans)
        with open(os.path.join(d, "calib.txt")) as f:
            calib = dict(line.split(":", 1) for line in f.read().splitlines())
        assert set(calib) == {"P0", "P1", "P2", "P3", "Tr"}
        assert all(len(v.split()) == 12 for v in calib.values())
        for name in ("poses.txt", "times.txt"):
            with open(os.path.join(d, name)) as f:
                lines = f.read().splitlines()
            assert len(lines) == len(scans)
            if name == "poses.txt" and lines:
                pose = np.array(lines[0].split(), float).reshape(3, 4)
                np.testing.assert_allclose(pose, np.eye(4)[:3], atol=1e-9)  # first pose is the origin
        if int(seq) >= 11:
            assert not os.path.exists(os.path.join(d, "labels"))  # test split: velodyne only
            continue
        for scan in scans:
            pts = np.fromfile(os.path.join(d, "velodyne", scan), np.float32)
            assert pts.size > 0 and pts.size % 4 == 0
            pts = pts.reshape(-1, 4)
            assert np.isfinite(pts).all()
            assert pts[:, 3].min() >= 0.0 and pts[:, 3].max() <= 1.0
            r = np.linalg.norm(pts[:, :3], axis=1)
            assert r.max() <= 80.5
            lab = np.fromfile(os.path.join(d, "labels", scan[:-4] + ".label"), np.uint32)
            assert lab.shape[0] == pts.shape[0]
            assert set(np.unique(lab & 0xFFFF).tolist()) <= set(labels_cfg)
    assert total == TINY["scans"]
    assert os.listdir(os.path.join(seqs, "08", "velodyne"))  # validation is never empty


def test_full_size_scan_counts():
    """One scan of each sensor at full resolution has about the real point count."""
    from cdcl3d.synth.sensors import KITTI_SENSOR, NUSCENES_SENSOR, scan
    from cdcl3d.synth.world import KITTI_STYLE, NUSCENES_STYLE, build_street

    rng = np.random.default_rng(0)
    for style, sensor, lo, hi in ((KITTI_STYLE, KITTI_SENSOR, 90_000, 131_072),
                                  (NUSCENES_STYLE, NUSCENES_SENSOR, 22_000, 34_880)):
        w = build_street(style, rng, 20.0)
        s = scan(w, sensor, 5.0, w.sensor_path[0][1], 0.0, rng)
        assert lo < s["xyz"].shape[0] <= hi, (sensor.name, s["xyz"].shape)
        assert np.linalg.norm(s["xyz"], axis=1).max() <= sensor.max_range + 0.5


def test_nuscenes_tree_loads_in_devkit(tiny):
    nuscenes = importlib.import_module("nuscenes")
    from nuscenes.utils import splits
    from nuscenes.utils.color_map import get_colormap

    root = os.path.join(tiny, "nuscenes")
    tables = {f[:-5] for f in os.listdir(os.path.join(root, "v1.0-mini")) if f.endswith(".json")}
    assert tables == {"attribute", "calibrated_sensor", "category", "ego_pose", "instance", "log", "map",
                      "sample", "sample_annotation", "sample_data", "scene", "sensor", "visibility",
                      "lidarseg"}
    nusc = nuscenes.NuScenes(version="v1.0-mini", dataroot=root, verbose=False)
    assert sorted(s["name"] for s in nusc.scene) == sorted(splits.mini_train + splits.mini_val)
    from cdcl3d.synth.lidar import NUSCENES_MINI_TRAIN, NUSCENES_MINI_VAL

    assert list(NUSCENES_MINI_TRAIN) == splits.mini_train and list(NUSCENES_MINI_VAL) == splits.mini_val
    # the lidarseg classes in the devkit's (= the real category.json's) order
    assert [c["name"] for c in sorted(nusc.category, key=lambda c: c["index"])] == list(get_colormap())
    assert [c["index"] for c in nusc.category] == list(range(32))
    assert len(nusc.sample) == TINY["scans"]
    for sample in nusc.sample:
        sd_token = sample["data"]["LIDAR_TOP"]
        path = nusc.get_sample_data_path(sd_token)
        assert os.path.isfile(path) and path.startswith(root)
        pts = np.fromfile(path, np.float32).reshape(-1, 5)
        seg = nusc.get("lidarseg", sd_token)
        lab = np.fromfile(os.path.join(root, seg["filename"]), np.uint8)
        assert seg["filename"] == f"lidarseg/v1.0-mini/{sd_token}_lidarseg.bin"
        assert lab.shape[0] == pts.shape[0] and lab.max() < 32
        assert pts[:, 3].min() >= 0 and pts[:, 3].max() <= 255
        assert np.all(pts[:, 3] == np.round(pts[:, 3]))
        assert set(np.unique(pts[:, 4]).tolist()) <= set(range(32))
    for ann in nusc.sample_annotation[:20]:
        assert nusc.get_box(ann["token"]).wlh.shape == (3,)


def test_lidarseg_eval_perfect_predictions(tiny, tmp_path):
    nuscenes = importlib.import_module("nuscenes")
    from nuscenes.eval.lidarseg.evaluate import LidarSegEval
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper, get_samples_in_eval_set

    root = os.path.join(tiny, "nuscenes")
    nusc = nuscenes.NuScenes(version="v1.0-mini", dataroot=root, verbose=False)
    mapper = LidarsegClassMapper(nusc)
    lut = np.array([mapper.fine_idx_2_coarse_idx_mapping[i] for i in range(32)], np.uint8)
    results = tmp_path / "results"
    bins = results / "lidarseg" / "mini_val"
    bins.mkdir(parents=True)
    (results / "mini_val").mkdir()
    meta = {"meta": {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False,
                     "use_external": False}}
    (results / "mini_val" / "submission.json").write_text(json.dumps(meta))
    present = set()
    for sample_token in get_samples_in_eval_set(nusc, "mini_val"):
        sd = nusc.get("sample", sample_token)["data"]["LIDAR_TOP"]
        gt = lut[np.fromfile(os.path.join(root, nusc.get("lidarseg", sd)["filename"]), np.uint8)]
        present |= set(np.unique(gt).tolist()) - {0}
        pred = np.where(gt == 0, 1, gt).astype(np.uint8)  # ignored points: any valid id
        pred.tofile(str(bins / f"{sd}_lidarseg.bin"))
    res = LidarSegEval(nusc, str(results), eval_set="mini_val", verbose=False).evaluate()
    assert len(present) >= 5
    assert res["miou"] == pytest.approx(1.0)


def test_class_histogram_close_to_real(tmp_path):
    out = str(tmp_path / "hist")
    generate_lidar(out, seed=0, scans=40, points_scale=0.1, datasets=("semantickitti",))
    h = class_histogram(out)
    assert "nuscenes" not in h
    k = h["semantickitti"]
    assert len(k["names"]) == 19 and k["real"].sum() == pytest.approx(1.0)
    missing = [n for n, c in zip(k["names"], k["counts"]) if c == 0]
    assert not missing, f"classes without points: {missing}"
    assert k["tvd"] <= 0.25, k["tvd"]


def test_cli_stats(tiny, capsys):
    from cdcl3d.synth import cli

    parser = argparse.ArgumentParser()
    cli.add_arguments(parser)
    assert parser.parse_args([]).out == "data/synth/lidar"
    args = parser.parse_args(["--out", tiny, "--scans", "0", "--stats"])
    assert cli.run(args) == 0
    text = capsys.readouterr().out
    assert "total variation distance" in text and "vehicle.car" in text
    assert cli.points_to_scale(0.5) == 0.5 and cli.points_to_scale(60_000) == pytest.approx(0.5)
    with pytest.raises(ValueError):
        generate_lidar(tiny, datasets=("kitti360",))


def test_round_trip_semantickitti_reader(tiny):
    from cdcl3d.datasets.semantickitti import SemanticKITTI

    root = os.path.join(tiny, "semantickitti")
    cfg = _kitti_yaml()
    lut = np.full(1 << 16, 255, np.int64)
    for raw, cls in cfg["learning_map"].items():
        lut[raw] = cls - 1 if cls > 0 else 255
    for split in ("train", "valid", "test"):
        # the official split lists: test sequences 13-21 exist, empty
        ds = SemanticKITTI(root, split=split)
        assert len(ds) > 0
        item = ds[0]
        pts = np.fromfile(item["path"], np.float32).reshape(-1, 4)
        np.testing.assert_array_equal(np.asarray(item["points"]), pts)
        if split == "test":
            assert item["labels"] is None
            continue
        raw = np.fromfile(item["path"].replace("velodyne", "labels")[:-4] + ".label", np.uint32)
        np.testing.assert_array_equal(np.asarray(item["labels"]), lut[raw & 0xFFFF])


def test_round_trip_nuscenes_reader(tiny):
    from cdcl3d.datasets.nuscenes import NuScenesLidarSeg

    root = os.path.join(tiny, "nuscenes")
    train = NuScenesLidarSeg(root, version="v1.0-mini", split="train")
    val = NuScenesLidarSeg(root, version="v1.0-mini", split="val", nusc=train.nusc)
    assert len(train) + len(val) == TINY["scans"] and len(val) >= 2
    item = val[0]
    pts = np.fromfile(item["path"], np.float32).reshape(-1, 5)
    np.testing.assert_array_equal(np.asarray(item["points"]), pts)
    labels = np.asarray(item["labels"])
    assert labels.shape == (pts.shape[0],)
    assert set(np.unique(labels).tolist()) <= set(range(16)) | {255}
    assert NUSCENES_FINE[17] == "vehicle.car"


def test_generated_nuscenes_scans_have_an_ego_cluster_kept_out_of_the_range_image(tiny):
    """Like real LIDAR_TOP scans, generated ones hold returns off the ego car's
    roof: within 1 m of the sensor, fine class ``vehicle.ego`` (ignored once
    mapped). The nuScenes dataset built from a config keeps them out of the
    range image by default, and still predicts every point."""
    from cdcl3d.knn import KNNPostProcess
    from cdcl3d.task import LidarTask

    cfg = {"type": "nuscenes", "root": os.path.join(tiny, "nuscenes"), "version": "v1.0-mini",
           "sensor": {"width": 64}}
    ds = LidarTask().build_dataset("nuscenes", cfg, "val", train=False)
    assert ds.projection.ego_radius == 1.0
    reader = ds.base
    for i in range(len(reader)):
        item, raw = ds[i], reader[i]
        n = raw["points"].shape[0]
        fine = np.fromfile(reader.samples[i]["labels"], np.uint8)
        ego = fine == NUSCENES_FINE.index("vehicle.ego")
        assert 0.05 < ego.mean() < 0.4
        xy = np.abs(raw["points"][ego, :2])
        assert (xy < 1.0).all()
        assert (raw["labels"][ego] == 255).all()  # the devkit's mapper ignores them
        # none of them holds a pixel; every point keeps its pixel and is predicted
        img = item["proj_range"][item["mask"]]
        assert not torch.isin(item["range"][torch.from_numpy(ego)], img).any()
        assert item["proj_row"].shape == (n,) and item["points_labels"].shape == (n,)
        assert torch.equal(item["points_labels"], torch.from_numpy(raw["labels"]))
        pred = torch.where(item["mask"], item["labels"] % 16, 0)
        knn = KNNPostProcess(16)(item["proj_range"], item["range"], pred, item["proj_col"], item["proj_row"])
        assert knn.shape == (n,) and pred[item["proj_row"], item["proj_col"]].shape == (n,)
