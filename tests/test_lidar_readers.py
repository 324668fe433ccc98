"""SemanticKITTI and nuScenes-lidarseg readers on tiny trees written here."""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
import yaml

from cdcl3d.datasets import (NuScenesLabelMap, NuScenesLidarSeg, RangeImageDataset, SemanticKITTI,
                             SemanticKittiLabelMap, collate_range, nuscenes_challenge_classes,
                             nuscenes_fine_to_train)
from cdcl3d.datasets import nuscenes as nus_io
from cdcl3d.datasets import semantickitti as kitti_io
from cdcl3d.projection import KITTI_SENSOR, NUSCENES_SENSOR, RangeProjection
from common.errors import DataError

REF_YAML = os.path.join(os.path.dirname(__file__), "..", "cdcl3d", "data", "semantic-kitti.yaml")


# -- SemanticKITTI -------------------------------------------------------------------

def _kitti_cfg():
    with open(REF_YAML, encoding="utf-8") as f:
        return yaml.safe_load(f)


def _random_scan(rng, n):
    pts = rng.normal(0, 10, size=(n, 4)).astype(np.float32)
    pts[:, 3] = rng.uniform(0, 1, n)
    return pts


def _write_kitti(root, seqs=("00", "08", "11"), frames=2, n=300, seed=0):
    """Tree with ``frames`` scans per sequence; labels except for test sequences.
    Returns {(seq, frame): (points, raw_labels or None)}."""
    rng = np.random.default_rng(seed)
    raw_ids = np.array(sorted(int(k) for k in _kitti_cfg()["learning_map"]), dtype=np.uint32)
    written = {}
    for seq in seqs:
        velo = os.path.join(root, "sequences", seq, "velodyne")
        os.makedirs(velo, exist_ok=True)
        labelled = int(seq) <= 10
        if labelled:
            os.makedirs(os.path.join(root, "sequences", seq, "labels"), exist_ok=True)
        for k in range(frames):
            frame = f"{k:06d}"
            pts = _random_scan(rng, n + k)
            pts.tofile(os.path.join(velo, frame + ".bin"))
            raw = None
            if labelled:
                sem = rng.choice(raw_ids, size=n + k)
                inst = rng.integers(0, 50, size=n + k).astype(np.uint32)
                raw = (inst << np.uint32(16)) | sem
                raw.tofile(os.path.join(root, "sequences", seq, "labels", frame + ".label"))
            written[(seq, frame)] = (pts, raw)
    return written


def _expected_train_ids(raw):
    lm = {int(k): int(v) for k, v in _kitti_cfg()["learning_map"].items()}
    out = []
    for r in raw & 0xFFFF:
        v = lm[int(r)]
        out.append(255 if v == 0 else v - 1)
    return np.array(out, dtype=np.int64)


def test_kitti_label_map_tables():
    lm = SemanticKittiLabelMap()
    assert len(lm.class_names) == 19
    assert lm.class_names[0] == "car" and lm.class_names[-1] == "traffic-sign"
    assert lm.split("train") == ["00", "01", "02", "03", "04", "05", "06", "07", "09", "10"]
    assert lm.split("val") == ["08"]
    assert lm.split("test") == [f"{i:02d}" for i in range(11, 22)]
    content = lm.content_by_train_id()
    assert content.shape == (19,) and abs(content.sum() - 1) < 1e-12 and (content > 0).all()
    # moving classes fold into their static class; instance bits are ignored
    raw = np.array([252, 254, 258, 10 | (3 << 16), 40 | (65535 << 16), 60, 0, 1, 52, 99], np.uint32)
    assert lm.to_train(raw).tolist() == [0, 5, 3, 0, 8, 8, 255, 255, 255, 255]
    assert lm.to_train(raw).dtype == np.int64
    assert lm.to_raw(np.arange(19)).tolist() == [10, 11, 15, 18, 20, 30, 31, 32, 40, 44, 48, 49,
                                                   50, 51, 70, 71, 72, 80, 81]
    assert lm.to_raw(np.array([255])).tolist() == [0]
    assert lm.to_raw(np.arange(19)).dtype == np.uint32
    assert lm.color_bgr[10] == (245, 150, 100)
    with pytest.raises(ValueError, match="5"):
        lm.to_train(np.array([10, 5], np.uint32))


def test_kitti_round_trip(tmp_path):
    written = _write_kitti(str(tmp_path))
    ds = SemanticKITTI(str(tmp_path), split="train", sequences=["00"])
    assert len(ds) == 2 and ds.num_classes == 19 and ds.ignore_index == 255
    assert ds.class_names == SemanticKittiLabelMap().class_names
    for i in range(len(ds)):
        item = ds[i]
        pts, raw = written[(item["sequence"], item["frame"])]
        assert item["id"] == f"00/{i:06d}" and item["dataset"] == "semantickitti"
        assert item["points"].dtype == np.float32 and item["points"].shape == pts.shape
        np.testing.assert_array_equal(item["points"], pts)
        assert item["labels"].dtype == np.int64
        np.testing.assert_array_equal(item["labels"], _expected_train_ids(raw))
        assert set(np.unique(item["labels"])) <= set(range(19)) | {255}
    val = SemanticKITTI(str(tmp_path), split="val", name="kitti")
    assert [it["id"] for it in val] == ["08/000000", "08/000001"]
    assert val[0]["dataset"] == "kitti"


def test_kitti_test_split_has_no_labels(tmp_path):
    _write_kitti(str(tmp_path))
    ds = SemanticKITTI(str(tmp_path), split="test", sequences=["11"])
    assert len(ds) == 2
    item = ds[1]
    assert item["labels"] is None and item["points"].shape == (301, 4)


def test_kitti_missing_sequence(tmp_path):
    _write_kitti(str(tmp_path), seqs=("00",))
    with pytest.raises(FileNotFoundError, match=os.path.join("sequences", "08")):
        SemanticKITTI(str(tmp_path), split="val")


def test_kitti_bad_inputs(tmp_path):
    root = str(tmp_path)
    _write_kitti(root, seqs=("00",), frames=4)
    velo = os.path.join(root, "sequences", "00", "velodyne")
    labels = os.path.join(root, "sequences", "00", "labels")
    # 0: size not a multiple of 16
    with open(os.path.join(velo, "000000.bin"), "ab") as f:
        f.write(b"\0" * 6)
    # 1: label count mismatch
    np.zeros(7, np.uint32).tofile(os.path.join(labels, "000001.label"))
    # 2: NaN coordinates
    pts = np.fromfile(os.path.join(velo, "000002.bin"), np.float32).reshape(-1, 4)
    pts[5, 1] = np.nan
    pts.tofile(os.path.join(velo, "000002.bin"))
    # 3: unknown raw id 5 (with instance bits)
    lab = np.fromfile(os.path.join(labels, "000003.label"), np.uint32)
    lab[3] = (2 << 16) | 5
    lab.tofile(os.path.join(labels, "000003.label"))

    with pytest.raises(ValueError, match=r"000000\.bin.*multiple of 16"):
        kitti_io.read_points(os.path.join(velo, "000000.bin"))
    with pytest.raises(ValueError, match=r"000001\.label: 7 labels but the scan has 301 points"):
        kitti_io.read_labels(os.path.join(labels, "000001.label"), 301)
    with pytest.raises(ValueError, match=r"000002\.bin.*NaN"):
        kitti_io.read_points(os.path.join(velo, "000002.bin"))

    ds = SemanticKITTI(root, split="train", sequences=["00"])
    assert len(ds) == 4
    for i, pattern in enumerate([r"000000\.bin.*multiple", r"000001\.label.*7 labels",
                                 r"000002\.bin.*NaN", r"000003\.label.*unknown.*\[5\]"]):
        with pytest.raises(ValueError, match=pattern):
            ds[i]


def test_kitti_skip_bad_samples(tmp_path, caplog):
    root = str(tmp_path)
    _write_kitti(root, seqs=("00",), frames=4)
    velo = os.path.join(root, "sequences", "00", "velodyne")
    with open(os.path.join(velo, "000000.bin"), "ab") as f:
        f.write(b"\0" * 6)  # a size that is not a multiple of 16
    pts = np.fromfile(os.path.join(velo, "000002.bin"), np.float32).reshape(-1, 4)
    pts[0, 0] = np.inf
    pts.tofile(os.path.join(velo, "000002.bin"))
    with caplog.at_level(logging.WARNING):
        ds = SemanticKITTI(root, split="train", sequences=["00"], on_bad_sample="skip")
        assert len(ds) == 4  # every scan stays listed; a bad one is found when read
        ids = [ds[i]["id"] for i in range(len(ds))]  # training: replaced by the next readable one
    assert ids == ["00/000001", "00/000001", "00/000003", "00/000003"]
    assert "000000.bin" in caplog.text and "000002.bin" in caplog.text


# -- nuScenes ------------------------------------------------------------------------

def _fine_names():
    from nuscenes.utils.color_map import get_colormap

    return list(get_colormap())  # devkit order = the lidarseg category indices


def write_nuscenes(root, version="v1.0-mini", scenes=(("scene-0061", 2), ("scene-0103", 1)),
                   lidarseg=True, n=250, seed=0):
    """The 13 devkit tables (+ lidarseg.json), a map PNG, LIDAR_TOP keyframes,
    one sweep and one camera record per sample. Returns {sd_token: (points, fine)}."""
    from PIL import Image

    rng = np.random.default_rng(seed)
    tables = {name: [] for name in ["attribute", "calibrated_sensor", "category", "ego_pose",
                                    "instance", "log", "map", "sample", "sample_annotation",
                                    "sample_data", "scene", "sensor", "visibility"]}
    for i, name in enumerate(_fine_names()):
        tables["category"].append({"token": f"cat{i:02d}", "name": name, "description": "", "index": i})
    tables["sensor"] = [{"token": "sensor-lidar", "channel": "LIDAR_TOP", "modality": "lidar"},
                        {"token": "sensor-cam", "channel": "CAM_FRONT", "modality": "camera"}]
    tables["calibrated_sensor"] = [
        {"token": "cs-lidar", "sensor_token": "sensor-lidar", "translation": [0.9, 0.0, 1.84],
         "rotation": [0.707, 0.0, 0.0, -0.707], "camera_intrinsic": []},
        {"token": "cs-cam", "sensor_token": "sensor-cam", "translation": [1.7, 0.0, 1.5],
         "rotation": [0.5, -0.5, 0.5, -0.5], "camera_intrinsic": [[1266, 0, 816], [0, 1266, 491], [0, 0, 1]]}]
    tables["log"] = [{"token": "log0", "logfile": "n015-2018-07-24-11-22-45+0800", "vehicle": "n015",
                      "date_captured": "2018-07-24", "location": "singapore-onenorth"}]
    os.makedirs(os.path.join(root, "maps"), exist_ok=True)
    Image.fromarray(np.zeros((8, 8), np.uint8)).save(os.path.join(root, "maps", "map0.png"))
    tables["map"] = [{"token": "map0", "log_tokens": ["log0"], "category": "semantic_prior",
                      "filename": "maps/map0.png"}]
    for d in ("samples/LIDAR_TOP", "sweeps/LIDAR_TOP", "samples/CAM_FRONT", f"lidarseg/{version}", version):
        os.makedirs(os.path.join(root, d), exist_ok=True)

    written = {}
    lidarseg_recs = []
    t = 1532402927000000
    for s_idx, (scene_name, n_samples) in enumerate(scenes):
        scene_token = f"scene{s_idx}"
        sample_tokens = [f"s{s_idx}_{k}" for k in range(n_samples)]
        tables["scene"].append({"token": scene_token, "log_token": "log0", "nbr_samples": n_samples,
                                "first_sample_token": sample_tokens[0],
                                "last_sample_token": sample_tokens[-1], "name": scene_name,
                                "description": ""})
        for k, st in enumerate(sample_tokens):
            t += 500000
            tables["sample"].append({"token": st, "timestamp": t, "scene_token": scene_token,
                                     "prev": sample_tokens[k - 1] if k else "",
                                     "next": sample_tokens[k + 1] if k + 1 < n_samples else ""})
            for kind in ("lidar", "sweep", "cam"):
                sd = f"sd_{kind}_{st}"
                tables["ego_pose"].append({"token": sd, "timestamp": t, "rotation": [1, 0, 0, 0],
                                           "translation": [400.0 + k, 1100.0, 0.0]})
                if kind == "cam":
                    fn = f"samples/CAM_FRONT/{sd}.jpg"
                else:
                    folder = "samples" if kind == "lidar" else "sweeps"
                    fn = f"{folder}/LIDAR_TOP/{sd}.pcd.bin"
                    npts = n + 10 * k + s_idx
                    pts = rng.normal(0, 8, size=(npts, 5)).astype(np.float32)
                    pts[:, 3] = rng.integers(0, 256, npts)
                    pts[:, 4] = rng.integers(0, 32, npts)
                    pts.tofile(os.path.join(root, fn))
                    if kind == "lidar":
                        fine = rng.integers(0, 32, npts).astype(np.uint8)
                        lfn = f"lidarseg/{version}/{sd}_lidarseg.bin"
                        fine.tofile(os.path.join(root, lfn))
                        lidarseg_recs.append({"token": sd, "sample_data_token": sd, "filename": lfn})
                        written[sd] = (pts, fine)
                tables["sample_data"].append({
                    "token": sd, "sample_token": st, "ego_pose_token": sd,
                    "calibrated_sensor_token": "cs-cam" if kind == "cam" else "cs-lidar",
                    "timestamp": t + (25000 if kind == "sweep" else 0),
                    "fileformat": "jpg" if kind == "cam" else "pcd", "is_key_frame": kind != "sweep",
                    "height": 900 if kind == "cam" else 0, "width": 1600 if kind == "cam" else 0,
                    "filename": fn, "prev": "", "next": ""})
    for name, records in tables.items():
        with open(os.path.join(root, version, name + ".json"), "w") as f:
            json.dump(records, f)
    if lidarseg:
        with open(os.path.join(root, version, "lidarseg.json"), "w") as f:
            json.dump(lidarseg_recs, f)
    return written


# fine name -> train id, by hand from the challenge definition (independent of the devkit mapper)
_HAND_FINE_TO_TRAIN = {"noise": 255, "vehicle.car": 3, "human.pedestrian.adult": 6,
                       "human.pedestrian.child": 6, "human.pedestrian.stroller": 255,
                       "vehicle.bus.bendy": 2, "vehicle.bus.rigid": 2, "movable_object.barrier": 0,
                       "flat.driveable_surface": 10, "static.manmade": 14, "static.vegetation": 15,
                       "vehicle.ego": 255, "animal": 255, "vehicle.truck": 9}


def test_nuscenes_challenge_classes():
    names = nuscenes_challenge_classes()
    assert len(names) == 16 and names[0] == "barrier" and names[-1] == "vegetation"
    assert names[10] == "driveable_surface"


def test_nuscenes_round_trip(tmp_path):
    root = str(tmp_path)
    written = write_nuscenes(root)
    train = NuScenesLidarSeg(root, version="v1.0-mini", split="train")
    assert len(train) == 2  # keyframe LIDAR_TOP only: no sweep, no camera
    assert train.num_classes == 16 and train.ignore_index == 255 and len(train.class_names) == 16
    val = NuScenesLidarSeg(root, version="v1.0-mini", split="val", nusc=train.nusc, name="nus")
    assert len(val) == 1 and val[0]["id"] == "sd_lidar_s1_0" and val[0]["dataset"] == "nus"
    fine_names = _fine_names()
    for ds in (train, val):
        for item in ds:
            pts, fine = written[item["id"]]
            assert item["token"] == item["id"]
            assert item["points"].shape == pts.shape and item["points"].dtype == np.float32
            np.testing.assert_array_equal(item["points"], pts)
            assert item["labels"].dtype == np.int64 and item["labels"].shape == (pts.shape[0],)
            for f, got in zip(fine, item["labels"]):
                name = fine_names[f]
                if name in _HAND_FINE_TO_TRAIN:
                    assert got == _HAND_FINE_TO_TRAIN[name], name
            assert set(np.unique(item["labels"])) <= set(range(16)) | {255}
    assert [it["id"] for it in train] == ["sd_lidar_s0_0", "sd_lidar_s0_1"]
    fine_to_train = nuscenes_fine_to_train(train.nusc)
    fine = np.array([fine_names.index(n) for n in _HAND_FINE_TO_TRAIN], np.uint8)
    assert fine_to_train(fine).tolist() == list(_HAND_FINE_TO_TRAIN.values())
    assert NuScenesLabelMap.to_challenge(np.array([0, 15, 255])).tolist() == [1, 16, 0]
    with pytest.raises(ValueError, match="32"):
        fine_to_train(np.array([3, 32], np.uint8))


def test_nuscenes_test_version_without_labels(tmp_path):
    from nuscenes.utils.splits import test as test_scenes

    root = str(tmp_path)
    write_nuscenes(root, version="v1.0-test", scenes=((test_scenes[0], 2),), lidarseg=False)
    ds = NuScenesLidarSeg(root, version="v1.0-test", split="test")
    assert len(ds) == 2
    assert ds[0]["labels"] is None and ds[0]["points"].shape[1] == 5


def test_nuscenes_without_lidarseg(tmp_path):
    root = str(tmp_path)
    write_nuscenes(root, lidarseg=False)
    with pytest.raises(FileNotFoundError, match="lidarseg"):
        NuScenesLidarSeg(root, version="v1.0-mini", split="train")


def test_nuscenes_bad_files(tmp_path, caplog):
    root = str(tmp_path)
    written = write_nuscenes(root)
    tok_bad_labels, tok_nan = "sd_lidar_s0_0", "sd_lidar_s0_1"
    np.zeros(3, np.uint8).tofile(os.path.join(root, f"lidarseg/v1.0-mini/{tok_bad_labels}_lidarseg.bin"))
    pts = written[tok_nan][0].copy()
    pts[1, 2] = np.nan
    pts.tofile(os.path.join(root, f"samples/LIDAR_TOP/{tok_nan}.pcd.bin"))
    with pytest.raises(ValueError, match=r"_lidarseg\.bin: 3 labels but the scan has 250 points"):
        nus_io.read_labels(os.path.join(root, f"lidarseg/v1.0-mini/{tok_bad_labels}_lidarseg.bin"), 250)
    bad = os.path.join(root, "odd.pcd.bin")
    np.zeros(7, np.float32).tofile(bad)
    with pytest.raises(ValueError, match=r"odd\.pcd\.bin.*multiple of 20"):
        nus_io.read_points(bad)

    ds = NuScenesLidarSeg(root, version="v1.0-mini", split="train")
    with pytest.raises(ValueError, match="3 labels"):
        ds[0]
    with pytest.raises(ValueError, match="NaN"):
        ds[1]
    with caplog.at_level(logging.WARNING):
        skip = NuScenesLidarSeg(root, version="v1.0-mini", split="train", on_bad_sample="skip",
                                nusc=ds.nusc)
        assert len(skip) == 2  # both stay listed; each is found bad when read
        with pytest.raises(DataError, match="no readable sample.*all 2 are bad"):
            skip[0]
    assert tok_bad_labels in caplog.text and "NaN" in caplog.text


# -- range-image wrapper --------------------------------------------------------------

def test_range_dataset_and_collate(tmp_path):
    _write_kitti(str(tmp_path), seqs=("00", "11"))
    proj = RangeProjection(16, 64, 3.0, -25.0)
    base = SemanticKITTI(str(tmp_path), split="train", sequences=["00"])
    ds = RangeImageDataset(base, proj, augment=dict(jitter=0.1, dropout=0.1))
    assert ds.class_names == base.class_names and ds.num_classes == 19 and ds.ignore_index == 255
    np.random.seed(3)
    a = ds[1]
    np.random.seed(3)
    b = ds[1]
    for k in ("inputs", "labels", "points_labels", "proj_row"):
        assert torch.equal(a[k], b[k])
    assert a["inputs"].shape == (5, 16, 64) and a["inputs"].dtype == torch.float32
    assert a["labels"].dtype == torch.long and a["mask"].dtype == torch.bool
    n = a["proj_row"].shape[0]
    assert n < 301 and a["points_labels"].shape == (n,) and a["range"].shape == (n,)
    assert a["has_labels"] and a["id"] == "00/000001" and a["dataset"] == "semantickitti"
    # the dense label of each visible pixel is the label of its winning point
    won = a["labels"][a["proj_row"], a["proj_col"]]
    same = a["proj_range"][a["proj_row"], a["proj_col"]] == a["range"]
    assert torch.equal(won[same], a["points_labels"][same])

    test = RangeImageDataset(SemanticKITTI(str(tmp_path), split="test", sequences=["11"]), proj)
    t = test[0]
    assert not t["has_labels"] and (t["points_labels"] == 255).all() and (t["labels"] == 255).all()
    batch = collate_range([a, t])
    assert batch["inputs"].shape == (2, 5, 16, 64) and batch["labels"].shape == (2, 16, 64)
    assert batch["mask"].shape == (2, 16, 64) and batch["proj_range"].shape == (2, 16, 64)
    assert isinstance(batch["proj_row"], list) and len(batch["proj_row"]) == 2
    assert batch["has_labels"].tolist() == [True, False]
    assert batch["id"] == ["00/000001", "11/000000"]


def test_range_dataset_nuscenes_ring(tmp_path):
    root = str(tmp_path)
    write_nuscenes(root)
    base = NuScenesLidarSeg(root, version="v1.0-mini", split="val")
    ds = RangeImageDataset(base, RangeProjection.from_sensor(NUSCENES_SENSOR, width=128))
    item = ds[0]
    assert item["inputs"].shape == (5, 32, 128) and ds.num_classes == 16
    ring = base[0]["points"][:, 4].astype(np.int64)
    assert np.array_equal(item["proj_row"].numpy(), 31 - ring)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, collate_fn=collate_range)
    assert next(iter(loader))["inputs"].shape == (1, 5, 32, 128)
    assert KITTI_SENSOR["height"] == 64


def test_nuscenes_default_keeps_points_near_the_sensor_out(tmp_path):
    """Through the config path: nuScenes projects with ``ego_radius`` 1.0 unless
    ``data.<name>.sensor`` says otherwise; SemanticKITTI leaves it off."""
    from cdcl3d.task import LidarTask

    nroot, kroot = str(tmp_path / "nu"), str(tmp_path / "kitti")
    written = write_nuscenes(nroot)
    _write_kitti(kroot, seqs=("00",))
    task = LidarTask()
    nu_cfg = {"type": "nuscenes", "root": nroot, "version": "v1.0-mini", "sensor": {"width": 128}}
    nu = task.build_dataset("nuscenes", nu_cfg, "val", train=False)
    assert nu.projection.ego_radius == 1.0
    kitti_cfg = {"type": "semantickitti", "root": kroot, "sequences": {"train": ["00"]}}
    assert task.build_dataset("semantickitti", kitti_cfg, "train", train=False).projection.ego_radius == 0.0
    off_cfg = dict(nu_cfg, sensor={"width": 128, "ego_radius": 0.0})
    off = task.build_dataset("nuscenes", off_cfg, "val", train=False)
    assert off.projection.ego_radius == 0.0
    item, item_off = nu[0], off[0]
    pts, fine = written[item["id"]]
    near = (np.abs(pts[:, 0]) < 1) & (np.abs(pts[:, 1]) < 1)
    assert near.any()
    # every point still has its pixel and label; only the image changes
    for k in ("proj_row", "proj_col", "range", "points_labels"):
        assert torch.equal(item[k], item_off[k]) and item[k].shape == (len(pts),)
    near_range = item["range"][torch.from_numpy(near)]
    assert torch.isin(near_range, item_off["proj_range"][item_off["mask"]]).any()  # off: they win pixels
    assert not torch.isin(near_range, item["proj_range"][item["mask"]]).any()


class _Scans(torch.utils.data.Dataset):
    class_names = nuscenes_challenge_classes()
    ignore_index = 255
    name = "scans"

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_range_dataset_decides_near_points_before_augmentation():
    """Rotation and jitter move points in and out of the 1 m square; the points
    kept out of the image are those near the sensor in the scan as read."""
    rng = np.random.default_rng(0)
    m = 200
    az = rng.uniform(-np.pi, np.pi, m)
    r = rng.uniform(5.0, 20.0, m)
    scene = np.stack([r * np.cos(az), r * np.sin(az), rng.uniform(-1.5, 1, m), np.zeros(m),
                      rng.integers(0, 32, m)], 1)
    corner = np.array([[0.95, 0.95, -0.3, 0, 3], [-0.95, 0.97, -0.3, 0, 5],   # in the square
                       [1.05, 0.2, -0.3, 0, 7], [0.0, 1.3, -0.3, 0, 9]])      # outside, near
    pts = np.concatenate([scene, corner]).astype(np.float32)
    labels = np.concatenate([rng.integers(0, 16, m), [255, 255, 3, 4]])
    proj = RangeProjection.from_sensor(NUSCENES_SENSOR, width=128)
    ds = RangeImageDataset(_Scans([{"points": pts, "labels": labels, "id": "a"}]), proj,
                           augment=dict(rotate=True, flip_x=True, jitter=0.3, scale=(0.95, 1.05)))
    for seed in range(20):
        np.random.seed(seed)
        item = ds[0]
        assert item["proj_row"].shape == (len(pts),)
        img = item["proj_range"][item["mask"]]
        assert not torch.isin(item["range"][-4:-2], img).any()  # in the square as read: never
        assert torch.isin(item["range"][-2:], img).all()  # outside it (nearer than the scene): always
