"""The LiDAR task end to end on tiny generated data: train per strategy, eval,
predict in both submission formats (read back by the readers and scored by the
nuScenes devkit), ONNX export, the sparse network on the same core."""
import json
import os

import numpy as np
import pytest
import torch

from common.config import build_config
from common.trainer import train

@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    from cdcl3d.synth import generate_lidar

    root = tmp_path_factory.mktemp("synth")
    generate_lidar(str(root), seed=0, scans=12, points_scale=0.2)
    return root


def lidar_cfg(root, strategy="cdcl", mode="dat", iterations=2, model=None, voxel=False, single=None):
    sensor = {"height": 16, "width": 64}
    data = {
        "semantickitti": {"type": "semantickitti", "root": str(root / "semantickitti"), "batch_size": 2,
                          "class_weights": "computed", "sensor": dict(sensor, fov_up=3.0, fov_down=-25.0),
                          "augment": {"rotate": True, "flip_x": True, "scale": [0.95, 1.05]}},
        "nuscenes": {"type": "nuscenes", "root": str(root / "nuscenes"), "version": "v1.0-mini",
                     "batch_size": 2, "sensor": dict(sensor, height=32, use_ring=True)},
    }
    if voxel:
        for d in data.values():
            d.update(representation="voxel", voxel_size=0.5, batch_size=1)
            d.pop("sensor")
    if single:
        data = {single: data[single]}
    d = {"task": "3d", "model": model or {"name": "salsanext", "width": 0.125, "dropout": 0.0},
         "data": data, "strategy": {"name": strategy, "switch_at": 1},
         "train": {"iterations": iterations, "lr": 0.01, "mode": mode, "progress": False,
                   "checkpoint_every": 100, "log_every": 1, "threads": 1},
         "eval": {"max_samples": 2, "options": {"knn": not voxel}}}
    if strategy not in ("finetune", "two_stage"):
        d["strategy"].pop("switch_at")
    return build_config(d, source="test")


@pytest.mark.parametrize("strategy,mode", [("cdcl", "dat"), ("shared_bn", "dat"),
                                           ("conv_not_shared", "dat"), ("cdcl", "sequential"),
                                           ("finetune", "dat"), ("two_stage", "dat")])
def test_one_iteration_per_strategy(data_root, tmp_path, strategy, mode):
    res = train(lidar_cfg(data_root, strategy, mode), str(tmp_path / "run"))
    assert set(res) == {"semantickitti", "nuscenes"}
    for r in res.values():
        assert 0.0 <= r["miou"] <= 1.0 and set(r["variants"]) == {"points_knn", "points", "range_image"}
    rec = [json.loads(l) for l in open(tmp_path / "run/log.jsonl") if '"train"' in l]
    assert all(np.isfinite(v) for r in rec for k, v in r.items() if k.startswith("loss/"))


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    work = tmp_path_factory.mktemp("run")
    cfg = lidar_cfg(data_root, iterations=2)
    train(cfg, str(work))
    return cfg, str(work / "checkpoints" / "latest.pth"), work


def test_cli_eval_writes_json(trained, tmp_path):
    from common.cli import main

    cfg, ckpt, work = trained
    out = tmp_path / "eval.json"
    assert main(["eval", str(work / "config.yaml"), "--checkpoint", ckpt, "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert set(res) == {"semantickitti", "nuscenes"}
    assert len(res["semantickitti"]["iou"]) == 19 and len(res["nuscenes"]["iou"]) == 16
    assert res["nuscenes"]["miou_mode"] == "present" and res["semantickitti"]["miou_mode"] == "all"


def test_predict_semantickitti_test_split_in_official_layout(trained, data_root, tmp_path):
    from common.cli import main
    from cdcl3d.datasets.labelmap import SemanticKittiLabelMap
    from cdcl3d.datasets.semantickitti import read_labels, read_points

    cfg, ckpt, work = trained
    out = tmp_path / "kitti"
    assert main(["predict", str(work / "config.yaml"), "--checkpoint", ckpt, "--dataset", "semantickitti",
                 "--split", "test", "--out", str(out)]) == 0
    files = sorted((out / "sequences").glob("*/predictions/*.label"))
    scans = sorted((data_root / "semantickitti/sequences").glob("1[1-9]/velodyne/*.bin"))
    assert files and len(files) == len(scans)
    valid_raw = set(SemanticKittiLabelMap().config["learning_map_inv"].values())
    for f, s in zip(files, scans):
        assert f.parent.parent.name == s.parent.parent.name and f.stem == s.stem
        raw = read_labels(str(f), len(read_points(str(s))))
        assert raw.dtype == np.uint32 and set(np.unique(raw)) <= valid_raw


def test_predict_nuscenes_val_is_scored_by_the_devkit(trained, data_root, tmp_path):
    from nuscenes.eval.lidarseg.evaluate import LidarSegEval
    from nuscenes.eval.lidarseg.validate_submission import validate_submission

    from common.cli import main
    from cdcl3d.datasets.nuscenes import cached_nuscenes as _nusc_cache

    cfg, ckpt, work = trained
    out = tmp_path / "nusc"
    assert main(["predict", str(work / "config.yaml"), "--checkpoint", ckpt, "--dataset", "nuscenes",
                 "--split", "val", "--out", str(out)]) == 0
    bins = list((out / "lidarseg" / "mini_val").glob("*_lidarseg.bin"))
    assert bins and (out / "mini_val" / "submission.json").is_file()
    for b in bins:
        p = np.fromfile(b, dtype=np.uint8)
        assert p.min() >= 1 and p.max() <= 16
    nusc = _nusc_cache(str(data_root / "nuscenes"), "v1.0-mini")
    validate_submission(nusc, str(out), "mini_val", verbose=False)
    res = LidarSegEval(nusc, str(out), eval_set="mini_val", verbose=False).evaluate()
    assert 0.0 <= res["miou"] <= 1.0


def test_export_onnx_matches_pytorch(trained, tmp_path):
    from common.cli import main

    cfg, ckpt, work = trained
    out = tmp_path / "m.onnx"
    assert main(["export", ckpt, "--dataset", "nuscenes", "--out", str(out)]) == 0
    assert out.stat().st_size > 10_000
    from common.evaluation import load_model_for_eval
    from common.export import export_onnx

    model = load_model_for_eval(cfg, ckpt, torch.device("cpu"))
    report = export_onnx(cfg, model, "semantickitti", str(tmp_path / "k.onnx"))
    assert report["max_abs_diff_onnx_vs_torch"] < 1e-3
    assert report["max_abs_diff_collapsed_vs_routed"] < 1e-4


def test_sparse_network_trains_on_the_same_core(data_root, tmp_path):
    from common.config import load_config

    # the shipped config, pointed at the tiny data and shrunk for a test
    cfg = load_config(os.path.join(os.path.dirname(__file__), "..", "configs/3d/cdcl_sparse.yaml"), [
        f"data.semantickitti.root={data_root / 'semantickitti'}", f"data.nuscenes.root={data_root / 'nuscenes'}",
        "data.semantickitti.voxel_size=0.5", "data.nuscenes.voxel_size=0.5", "model.base_channels=8",
        "model.channels=[8, 16]", "train.iterations=2", "train.progress=false", "eval.max_samples=2"])
    res = train(cfg, str(tmp_path / "sparse"))
    assert set(res) == {"semantickitti", "nuscenes"}
    assert "points" in res["nuscenes"]["variants"]
    # eval and predict work for it unchanged
    from common.cli import main
    work = tmp_path / "sparse"
    ckpt = str(work / "checkpoints" / "latest.pth")
    assert main(["eval", str(work / "config.yaml"), "--checkpoint", ckpt, "--dataset", "nuscenes"]) == 0
    out = tmp_path / "pred"
    assert main(["predict", str(work / "config.yaml"), "--checkpoint", ckpt, "--dataset", "semantickitti",
                 "--split", "val", "--out", str(out)]) == 0
    files = list((out / "sequences" / "08" / "predictions").glob("*.label"))
    scans = list((data_root / "semantickitti/sequences/08/velodyne").glob("*.bin"))
    assert files and len(files) == len(scans)
    assert all(f.stat().st_size == s.stat().st_size // 4 for f, s in zip(sorted(files), sorted(scans)))


def test_show_from_config_and_index_with_prediction(trained, tmp_path):
    from PIL import Image

    from common.cli import main

    cfg, ckpt, work = trained
    png = tmp_path / "scan.png"
    assert main(["show", str(work / "config.yaml"), "--index", "0", "--dataset", "nuscenes",
                 "--checkpoint", ckpt, "--color", "error", "--png", str(png), "--backend", "numpy",
                 "--width", "200", "--height", "150"]) == 0
    img = np.asarray(Image.open(png))
    assert img.shape[0] >= 150 and img.shape[1] >= 200 and img.max() > 0
    assert main(["show", str(work / "config.yaml"), "--index", "999", "--png", str(png)]) == 2


def test_training_writes_tensorboard_images(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg, ckpt, work = trained
    acc = EventAccumulator(str(work / "tb"), size_guidance={"images": 0})
    acc.Reload()
    tags = acc.Tags()["images"]
    for name in ("semantickitti", "nuscenes"):
        assert any(t.startswith(f"val/{name}/range_image") for t in tags), tags
        assert any(t.startswith(f"val/{name}/scan") for t in tags), tags


def _kitti_tree(root, raw_label, n=500, seed=0):
    """One SemanticKITTI-layout scan (sequence 00) whose points all carry ``raw_label``."""
    rng = np.random.default_rng(seed)
    seq = root / "sequences" / "00"
    (seq / "velodyne").mkdir(parents=True)
    (seq / "labels").mkdir()
    ang = rng.uniform(-np.pi, np.pi, n)
    dist = rng.uniform(3, 30, n)
    pts = np.stack([dist * np.cos(ang), dist * np.sin(ang), rng.uniform(-1.5, 1, n),
                    rng.uniform(0, 1, n)], 1).astype(np.float32)
    pts.tofile(seq / "velodyne" / "000000.bin")
    np.full(n, raw_label, np.uint32).tofile(seq / "labels" / "000000.label")
    return str(root)


def test_label_remap_class_frequencies_are_counted_in_the_target_space(tmp_path, monkeypatch):
    from common.build import build_criteria, build_dataset, get_task

    monkeypatch.setenv("CDCL_CACHE", str(tmp_path / "cache"))
    seqs = {"train": [0], "val": [0]}
    sensor = {"height": 16, "width": 64}
    # source: every point is trunk (raw 71 -> train id 15), mapped onto target id 0
    cfg = build_config({
        "task": "3d", "model": {"name": "salsanext", "width": 0.125},
        "data": {"target": {"type": "semantickitti", "root": _kitti_tree(tmp_path / "t", 40),
                            "sequences": seqs, "sensor": sensor, "class_weights": "none"},
                 "source": {"type": "semantickitti", "root": _kitti_tree(tmp_path / "s", 71),
                            "sequences": seqs, "sensor": sensor, "class_weights": "computed"}},
        "strategy": {"name": "label_remap", "label_map": {"source": {15: 0}}},
    }, source="test")
    task = get_task(cfg)
    ds = build_dataset(cfg, "source", "train", True, task)
    freq = task.class_frequencies("source", cfg.data["source"].as_dict(), ds)
    assert freq.shape == (19,)
    assert freq[0] == pytest.approx(1.0) and freq[1:].sum() == 0
    build_criteria(cfg, {n: build_dataset(cfg, n, "train", True, task) for n in cfg.names}, task)
