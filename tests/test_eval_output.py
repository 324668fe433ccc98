"""What evaluation shows and writes: one headline table per dataset with its
mIoU definition (the other variants on -v), the confusion matrix per dataset
(.npy, in the JSON, PNG) with an IoU chart for `eval --out` and at the end of
training, and the nuScenes devkit's own score from `predict --split val`."""
import json

import numpy as np
import pytest
import torch

from common.config import build_config
from common.metrics import ConfusionMatrix
from common.trainer import train

DATASETS = ("semantickitti", "nuscenes")


@pytest.fixture(scope="module")
def lidar(tmp_path_factory):
    """Generated LiDAR data and a SalsaNext trained one step on both datasets;
    evaluation scores every validation scan (no eval.max_samples)."""
    from cdcl3d.synth import generate_lidar

    root = tmp_path_factory.mktemp("synth")
    generate_lidar(str(root), seed=0, scans=8, points_scale=0.2)
    sensor = {"height": 16, "width": 64}
    cfg = build_config({
        "task": "3d", "model": {"name": "salsanext", "width": 0.125, "dropout": 0.0},
        "data": {"semantickitti": {"type": "semantickitti", "root": str(root / "semantickitti"),
                                   "batch_size": 1, "sensor": dict(sensor, fov_up=3.0, fov_down=-25.0)},
                 "nuscenes": {"type": "nuscenes", "root": str(root / "nuscenes"), "version": "v1.0-mini",
                              "batch_size": 1, "sensor": dict(sensor, height=32, use_ring=True)}},
        "strategy": {"name": "cdcl"},
        "train": {"iterations": 1, "lr": 0.01, "progress": False, "checkpoint_every": 100, "log_every": 1,
                  "threads": 1, "tb_images": False},
        "eval": {"options": {"knn": True}}}, source="test")
    work = tmp_path_factory.mktemp("run")
    train(cfg, str(work))
    return {"cfg": cfg, "work": work, "config": str(work / "config.yaml"),
            "ckpt": str(work / "checkpoints" / "latest.pth")}


def _eval(capsys, lidar, *extra):
    from common.cli import main

    capsys.readouterr()
    assert main(["eval", lidar["config"], "--checkpoint", lidar["ckpt"], *extra]) == 0
    return capsys.readouterr().out


def _headers(out):
    """The per-class tables' header lines: ``[dataset] variant: definition``."""
    return [line for line in out.splitlines() if line.startswith("[")]


def _is_png(path):
    import matplotlib.image

    with open(path, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n", path
    img = matplotlib.image.imread(path)
    assert img.ndim == 3 and img.shape[0] > 100 and img.shape[1] > 100, img.shape
    return img


# -- tables ----------------------------------------------------------------------

def test_eval_prints_one_headline_table_per_dataset_with_its_miou_definition(lidar, capsys):
    out = _eval(capsys, lidar)
    assert _headers(out) == [
        "[semantickitti] points_knn: mIoU over all 19 classes, absent classes count 0 "
        "(SemanticKITTI semantic-kitti-api)",
        "[nuscenes] points_knn: mIoU over the classes present in ground truth or prediction "
        "(nuScenes LidarSegEval)"]
    summary = [line.split()[:2] for line in out.splitlines() if line.split()[:1] in (["semantickitti"],
                                                                                     ["nuscenes"])]
    assert summary == [["semantickitti", "points_knn"], ["nuscenes", "points_knn"]]
    assert "range_image" in out and "-v" in out  # the summary says what else there is and where


def test_eval_verbose_shows_every_variant(lidar, capsys):
    out = _eval(capsys, lidar, "-v")
    variants = [h.split(":")[0] for h in _headers(out)]
    assert variants == [f"[{d}] {v}" for d in DATASETS for v in ("points_knn", "points", "range_image")]
    summary = [line.split()[:2] for line in out.splitlines() if line.split()[:1] in (["semantickitti"],
                                                                                     ["nuscenes"])]
    assert len(summary) == 6


def test_absent_class_says_how_it_counts_in_the_mean():
    cm = ConfusionMatrix(3, class_names=["road", "car", "bike"])
    cm.update(torch.tensor([0, 1, 1]), torch.tensor([0, 1, 0]))  # bike: in neither
    rows = {line.split()[0]: line for line in cm.table("[d] v", "all").splitlines()}
    assert rows["bike"].split()[1:] == ["0.00", "(absent:", "counts", "0)"]
    assert cm.miou("all") == pytest.approx((0.5 + 0.5 + 0.0) / 3)
    rows = {line.split()[0]: line for line in cm.table("[d] v", "present").splitlines()}
    assert rows["bike"].split()[1:] == ["n/a", "(absent:", "not", "counted)"]
    assert cm.miou("present") == pytest.approx(0.5)
    assert "2 of 3 classes" in cm.table("[d] v", "all", classes=[0, 1])


# -- confusion matrices and figures ---------------------------------------------------

def _labelled_points(lidar, name):
    """Labelled points (label != ignore) over the validation scans, from the reader."""
    from common.build import build_dataset, get_task

    cfg = lidar["cfg"]
    ds = build_dataset(cfg, name, cfg.data[name].val_split, False, get_task(cfg))
    reader = getattr(ds, "base", ds)
    return sum(int((np.asarray(reader[i]["labels"]) != 255).sum()) for i in range(len(reader)))


def test_eval_out_writes_confusion_npy_and_pngs_beside_the_json(lidar, capsys, tmp_path):
    out = tmp_path / "res" / "results.json"
    _eval(capsys, lidar, "--out", str(out))
    res = json.loads(out.read_text())
    for name in DATASETS:
        r = res[name]
        mat = np.load(tmp_path / "res" / f"results_{name}_confusion.npy")
        assert mat.dtype == np.int64 and mat.shape == (len(r["iou"]),) * 2
        assert (mat == np.asarray(r["confusion"])).all()
        assert int(mat.sum()) == _labelled_points(lidar, name)
        assert r["class_names"] == list(r["iou"]) and r["miou_definition"].startswith("mIoU over")
        # the matrix scores what the JSON says: IoU of the headline from it
        tp = np.diag(mat).astype(float)
        union = mat.sum(0) + mat.sum(1) - tp
        iou = [r["iou"][c] for c in r["class_names"]]
        assert np.allclose([v if v is not None else np.nan for v in iou],
                           np.where(union > 0, tp / np.maximum(union, 1), np.nan), equal_nan=True)
        for kind in ("confusion", "iou"):
            _is_png(tmp_path / "res" / f"results_{name}_{kind}.png")


def test_training_writes_confusion_and_charts_at_the_end_and_keeps_them_out_of_the_log(lidar):
    work = lidar["work"]
    res = json.loads((work / "results.json").read_text())
    for name in DATASETS:
        mat = np.load(work / f"results_{name}_confusion.npy")
        assert (mat == np.asarray(res[name]["confusion"])).all()
        _is_png(work / f"results_{name}_confusion.png")
        _is_png(work / f"results_{name}_iou.png")
    for line in open(work / "log.jsonl", encoding="utf-8"):
        assert "confusion" not in line and len(line) < 4000


def test_toy_training_writes_them_too(tmp_path):
    from common.evaluation import results_json

    cfg = build_config({"task": "toy", "model": {"name": "toynet", "width": 8},
                        "data": {"a": {"type": "toy", "batch_size": 2, "size": 4, "height": 16, "width": 16}},
                        "strategy": {"name": "cdcl"},
                        "train": {"iterations": 1, "progress": False, "eval_every": 0}}, source="toy")
    res = train(cfg, str(tmp_path / "run"))
    assert res == results_json(res) and json.dumps(res)  # JSON-ready, no console tables
    mat = np.load(tmp_path / "run" / "results_a_confusion.npy")
    assert int(mat.sum()) == 2 * 15 * 16  # 2 val images 16x16, the top row ignored
    _is_png(tmp_path / "run" / "results_a_iou.png")


# -- nuScenes predict --split val: the devkit's own score ----------------------------

def test_predict_nuscenes_val_prints_the_devkit_miou_equal_to_cdcls_own(lidar, capsys, tmp_path):
    from nuscenes.eval.lidarseg.evaluate import LidarSegEval

    from common.cli import main
    from cdcl3d.datasets.nuscenes import cached_nuscenes as _nusc_cache

    capsys.readouterr()
    pred = tmp_path / "nusc"
    assert main(["predict", lidar["config"], "--checkpoint", lidar["ckpt"], "--dataset", "nuscenes",
                 "--split", "val", "--out", str(pred)]) == 0
    printed = capsys.readouterr().out
    assert "nuScenes devkit LidarSegEval on mini_val" in printed
    cfg = lidar["cfg"]
    nusc = _nusc_cache(cfg.data["nuscenes"].root, "v1.0-mini")
    devkit = LidarSegEval(nusc, str(pred), eval_set="mini_val", verbose=False).evaluate()
    mline = [line for line in printed.splitlines() if line.startswith("mIoU ")]
    assert mline and float(mline[0].split()[1]) == pytest.approx(100 * devkit["miou"], abs=0.006)
    # cdcl's own points mIoU (KNN, as predict writes) of the same scans and model
    out = tmp_path / "eval.json"
    _eval(capsys, lidar, "--dataset", "nuscenes", "--split", "val", "--out", str(out))
    ours = json.loads(out.read_text())["nuscenes"]
    assert ours["variant"] == "points_knn"
    assert ours["miou"] == pytest.approx(devkit["miou"], abs=1e-6)  # the devkit divides in float32
    for name, v in ours["iou"].items():
        theirs = devkit["iou_per_class"][name]
        assert (v is None and np.isnan(theirs)) or v == pytest.approx(theirs, abs=1e-6), name



def test_predict_nuscenes_val_the_devkit_cannot_score_warns_and_keeps_the_predictions(lidar, capsys, tmp_path,
                                                                                      caplog):
    """The devkit asserts on an empty label file (a scan without points): the
    predictions are written all the same and a warning says why no score."""
    import shutil

    from common.cli import main
    from cdcl3d.datasets.nuscenes import NuScenesLidarSeg

    root = tmp_path / "nuscenes"
    shutil.copytree(lidar["cfg"].data["nuscenes"].root, root)
    val = NuScenesLidarSeg(str(root), version="v1.0-mini", split="val")
    open(val.samples[0]["points"], "wb").close()
    open(val.samples[0]["labels"], "wb").close()
    capsys.readouterr()
    pred = tmp_path / "nusc"
    assert main(["predict", lidar["config"], "--checkpoint", lidar["ckpt"], "--dataset", "nuscenes",
                 "--split", "val", "--out", str(pred), f"data.nuscenes.root={root}"]) == 0
    assert "LidarSegEval on" not in capsys.readouterr().out
    assert "did not score" in caplog.text and "is empty" in caplog.text
    assert len(list((pred / "lidarseg" / "mini_val").glob("*_lidarseg.bin"))) == len(val.samples)
