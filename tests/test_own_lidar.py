"""A user's own LiDAR: a fourth dataset type added from this file alone (a
label yaml, a sensor preset and a table row registered at runtime, a
generated KITTI-layout folder relabelled into its own taxonomy) trains,
evaluates and predicts through the CLI; ``type: kitti_format`` does the same
from a config; a per-beam elevation table puts a point on the nearest beam;
SemanticPOSS is a row of the same table."""
import json

import numpy as np
import pytest
import yaml

from common.config import ConfigError, build_config

# the user's taxonomy: 5 classes on their own raw ids, from SemanticKITTI's 19
COARSE = {"vehicle": ("car", "bicycle", "motorcycle", "truck", "other-vehicle"),
          "human": ("person", "bicyclist", "motorcyclist"),
          "ground": ("road", "parking", "sidewalk", "other-ground", "terrain"),
          "structure": ("building", "fence", "pole", "traffic-sign"),
          "nature": ("vegetation", "trunk")}
RAW = {name: 10 * (i + 1) for i, name in enumerate(COARSE)}  # vehicle 10, human 20, ...
# 16 beams, denser near the horizon (an Ouster "gradient"-like table), degrees
ELEVATIONS = [3.0, 1.5, 0.5, 0.0, -0.5, -1.0, -1.5, -2.0, -3.0, -4.0, -5.5, -7.5, -10.0, -14.0, -19.0, -25.0]


def label_yaml(splits):
    names = {0: "unlabeled", **{raw: name for name, raw in RAW.items()}}
    return {"labels": names,
            "color_map": {0: [0, 0, 0], 10: [245, 150, 100], 20: [30, 30, 255], 30: [255, 0, 255],
                          40: [0, 200, 255], 50: [0, 175, 0]},
            "learning_map": {0: 0, **{raw: i + 1 for i, raw in enumerate(RAW.values())}},
            "split": splits}


@pytest.fixture(scope="module")
def own_root(tmp_path_factory):
    """Generated SemanticKITTI-layout scans relabelled into the 5-class taxonomy
    (instance bits kept), and the label yaml describing them."""
    from cdcl3d.datasets.labelmap import SemanticKittiLabelMap
    from cdcl3d.synth import generate_lidar

    base = tmp_path_factory.mktemp("own")
    generate_lidar(str(base), seed=3, scans=8, points_scale=0.15, datasets=("semantickitti",))
    root = base / "semantickitti"
    kitti = SemanticKittiLabelMap()
    lut = np.zeros(256, np.uint32)  # KITTI train id -> the user's raw id (255 ignore -> 0)
    for name, members in COARSE.items():
        for m in members:
            lut[kitti.class_names.index(m)] = RAW[name]
    labelled = []
    for f in sorted(root.glob("sequences/*/labels/*.label")):
        raw = np.fromfile(f, np.uint32)
        (lut[kitti.to_train(raw)] | (raw & np.uint32(0xFFFF0000))).astype(np.uint32).tofile(f)
        labelled.append(int(f.parent.parent.name))
    seqs = sorted(set(labelled))
    splits = {"train": [s for s in seqs if s != 8], "valid": [8], "test": [11]}
    path = base / "my-labels.yaml"
    path.write_text(yaml.safe_dump(label_yaml(splits)))
    return root, path


@pytest.fixture
def mylidar(own_root):
    """Type ``mylidar`` (its yaml, sensor preset ``gradient16``) in the tables
    for the duration of a test."""
    from cdcl3d.datasets.specs import DATASET_TYPES, kitti_format_type, register_dataset_type
    from cdcl3d.projection import KITTI_SENSOR
    from cdcl3d.sensors import SENSORS, register_sensor

    root, labels = own_root
    register_sensor("gradient16", dict(KITTI_SENSOR, height=16, width=128, elevations=ELEVATIONS,
                                       fov_up=None, fov_down=None))
    spec = register_dataset_type(kitti_format_type("mylidar", labels=str(labels), sensor="gradient16",
                                                   title="MyLidar"))
    yield spec, root
    DATASET_TYPES.pop("mylidar"), SENSORS.pop("gradient16")


def own_config(data, iterations=2):
    return {"task": "3d", "model": {"name": "salsanext", "width": 0.125, "dropout": 0.0},
            "data": data, "strategy": {"name": "single"},
            "train": {"iterations": iterations, "lr": 0.01, "progress": False, "checkpoint_every": 100,
                      "log_every": 1, "threads": 1},
            "eval": {"max_samples": 2, "options": {"knn": True}}}


def test_a_fourth_type_trains_evaluates_and_predicts_through_the_cli(mylidar, tmp_path):
    from common.cli import main
    from cdcl3d.datasets.semantickitti import read_labels, read_points

    spec, root = mylidar
    cfg = tmp_path / "mine.yaml"
    cfg.write_text(yaml.safe_dump(own_config({"mine": {"type": "mylidar", "root": str(root), "batch_size": 2}})))
    work = tmp_path / "run"
    assert main(["train", str(cfg), "--work-dir", str(work)]) == 0
    ckpt = str(work / "checkpoints" / "latest.pth")

    out = tmp_path / "eval.json"
    assert main(["eval", str(cfg), "--checkpoint", ckpt, "--out", str(out)]) == 0
    res = json.loads(out.read_text())["mine"]
    assert len(res["iou"]) == len(COARSE) and res["miou_mode"] == "all"
    assert set(res["variants"]) == {"points_knn", "points", "range_image"}

    png, rpng = tmp_path / "show.png", tmp_path / "range.png"
    assert main(["show", str(cfg), "--dataset", "mine", "--index", "0", "--checkpoint", ckpt, "--color", "pred",
                 "--png", str(png), "--range-png", str(rpng), "--backend", "numpy"]) == 0
    assert png.is_file() and rpng.is_file()

    pred = tmp_path / "pred"
    assert main(["predict", str(cfg), "--checkpoint", ckpt, "--dataset", "mine", "--split", "test",
                 "--out", str(pred)]) == 0
    files = sorted(pred.glob("sequences/11/predictions/*.label"))
    scans = sorted(root.glob("sequences/11/velodyne/*.bin"))
    assert files and [f.stem for f in files] == [s.stem for s in scans]
    for f, s in zip(files, scans):
        raw = read_labels(str(f), len(read_points(str(s))))
        assert set(np.unique(raw).tolist()) <= set(RAW.values())  # the user's raw ids


def test_kitti_format_type_from_a_config_alone(own_root, tmp_path):
    from common.build import build_dataset, get_task

    root, labels = own_root
    entry = {"type": "kitti_format", "root": str(root), "labels": str(labels), "batch_size": 1,
             "sensor": {"preset": "hdl64", "height": 16, "width": 64, "elevations": ELEVATIONS}}
    cfg = build_config(own_config({"mine": entry}), source="test")
    task = get_task(cfg)
    ds = build_dataset(cfg, "mine", "val", False, task)
    assert ds.class_names == list(COARSE) and task.num_classes("mine", entry) == 5
    item = ds[0]
    assert item["inputs"].shape == (5, 16, 64)
    assert set(item["points_labels"].unique().tolist()) <= set(range(5)) | {255}
    assert task.miou_mode("mine", entry) == "all"
    # no point shares in the yaml: class weights are counted
    assert task.class_frequencies("mine", entry, ds).shape == (5,)
    with pytest.raises(ConfigError, match="content"):
        build_config(own_config({"mine": dict(entry, class_weights="content")}), source="test")


@pytest.mark.parametrize("change,named", [
    (lambda d: d.pop("learning_map"), "learning_map"),
    (lambda d: d.pop("split"), "split"),
    (lambda d: d["learning_map"].update({20: 7}), "learning_map"),
    (lambda d: d["labels"].pop(30), "raw id 30"),
])
def test_a_bad_label_yaml_names_file_and_key(tmp_path, change, named):
    d = label_yaml({"train": [0], "valid": [8]})
    change(d)
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(d))
    entry = {"type": "kitti_format", "root": str(tmp_path), "labels": str(path), "sensor": "hdl64"}
    with pytest.raises(ConfigError, match="bad.yaml") as err:
        build_config(own_config({"mine": entry}), source="test")
    assert named in str(err.value)


def test_kitti_format_needs_labels_and_a_sensor(tmp_path):
    with pytest.raises(ConfigError, match="labels"):
        build_config(own_config({"mine": {"type": "kitti_format", "root": str(tmp_path), "sensor": "hdl64"}}),
                     source="test")
    path = tmp_path / "l.yaml"
    path.write_text(yaml.safe_dump(label_yaml({"train": [0]})))
    with pytest.raises(ConfigError, match="data.mine.sensor"):
        build_config(own_config({"mine": {"type": "kitti_format", "root": str(tmp_path), "labels": str(path)}}),
                     source="test")
    with pytest.raises(ConfigError, match="presets: hdl64"):
        build_config(own_config({"mine": {"type": "kitti_format", "root": str(tmp_path), "labels": str(path),
                                          "sensor": "hdl65"}}), source="test")


def test_elevation_table_puts_a_point_on_the_nearest_beam():
    from cdcl3d.projection import RangeProjection

    rng = np.random.default_rng(0)
    pitch = np.concatenate([rng.uniform(-30.0, 8.0, 4000), ELEVATIONS,
                            np.array(ELEVATIONS[:-1]) - 1e-4, [0.25 + 1e-4, -0.75 + 1e-4]])
    az = rng.uniform(-np.pi, np.pi, len(pitch))
    r = rng.uniform(2.0, 50.0, len(pitch))
    el = np.deg2rad(pitch)
    pts = np.stack([r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az), r * np.sin(el),
                    np.zeros_like(r)], 1).astype(np.float32)
    shuffled = list(rng.permutation(ELEVATIONS))  # any order: row 0 is the highest beam
    out = RangeProjection(16, 256, elevations=shuffled).project(pts)
    xyz = pts[:, :3].astype(np.float64)
    measured = np.degrees(np.arcsin(xyz[:, 2] / np.linalg.norm(xyz, axis=1)))
    expect = np.abs(measured[:, None] - np.array(ELEVATIONS)[None, :]).argmin(1)  # ELEVATIONS: top first
    np.testing.assert_array_equal(out["proj_row"], expect)
    with pytest.raises(ValueError, match="one distinct elevation"):
        RangeProjection(15, 256, elevations=ELEVATIONS)


def test_sensor_profiles_from_config_and_sensor_stats(mylidar, tmp_path, capsys):
    from common.cli import main
    from cdcl3d.projection import PANDORA_SENSOR, RangeProjection
    from cdcl3d.sensor_stats import measure
    from cdcl3d.sensors import resolve_sensor
    from cdcl3d.task import build_reader

    assert resolve_sensor("pandora", None) == PANDORA_SENSOR
    wide = resolve_sensor({"preset": "pandora", "width": 1800}, "hdl64")
    assert wide["height"] == 40 and len(wide["elevations"]) == 40 and wide["width"] == 1800
    assert resolve_sensor({"width": 128}, "gradient16")["elevations"] == ELEVATIONS
    linear = resolve_sensor({"fov_up": 2.0, "fov_down": -24.0}, "pandora")
    assert "elevations" not in linear and RangeProjection.from_sensor(linear).height == 40

    spec, root = mylidar
    cfg = tmp_path / "mine.yaml"
    data = {"type": "mylidar", "root": str(root), "sensor": {"width": 64}}
    cfg.write_text(yaml.safe_dump(own_config({"mine": data})))
    assert main(["sensor-stats", str(cfg), "--dataset", "mine", "--max-scans", "2"]) == 0
    block = yaml.safe_load(capsys.readouterr().out)["sensor"]
    means, stds, _ = measure(build_reader("mine", data, "train"),
                             RangeProjection.from_sensor(resolve_sensor({"width": 64}, "gradient16")), 2)
    assert block["width"] == 64
    np.testing.assert_allclose(block["means"], means, rtol=1e-3)
    np.testing.assert_allclose(block["stds"], stds, rtol=1e-3)
    assert stds[0] > 0 and 0.0 <= means[4] <= 1.0  # remission in [0, 1]


def test_semanticposs_is_a_row():
    from cdcl3d.datasets.specs import DATASET_TYPES

    spec = DATASET_TYPES["semanticposs"]
    lm = spec.label_map({})
    assert lm.class_names == ["person", "rider", "car", "trunk", "plants", "traffic-sign", "pole", "trashcan",
                              "building", "cone-stone", "fence", "bike", "ground"]
    assert lm.to_train(np.array([4, 5, 10, 11, 12, 22, 0, 1, 18, 20 | (7 << 16)], np.uint32)).tolist() == \
        [0, 0, 5, 5, 5, 12, 255, 255, 255, 255]
    assert lm.to_raw(np.array([0, 5, 12, 255])).tolist() == [4, 10, 22, 0]  # many-to-one: the first raw id
    assert lm.split("train") == ["00", "01", "03", "04", "05"] and lm.split("val") == ["02"]
    content = lm.content_by_train_id()
    assert abs(content.sum() - 1) < 1e-12 and content.argmax() == lm.class_names.index("plants")
    assert len({tuple(c) for c in spec.palette()}) == 13  # distinct colours
    assert spec.sensor == "pandora" and spec.miou_mode == "all" and spec.default_class_weights({}) == "content"
