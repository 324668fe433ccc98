"""Bad data through the commands (issue 12), on tiny generated trees.

A bad file is one line (exit 2, the file named, no traceback). With
``on_bad_sample: skip`` evaluation drops a bad sample and lists it (every good
sample counted once), ``predict`` still writes a file for every scan the
benchmark expects (an empty scan gets an empty file, an unreadable one is an
error), and an empty split is an error naming its folder in every command.
"""
from __future__ import annotations

import json
import os
import shutil
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from common.cli import main
from common.config import build_config
from common.errors import DataError
from common.trainer import train

SENSOR = {"height": 16, "width": 64}


# -- fixtures ----------------------------------------------------------------------

def _lidar_config(root, voxel=False):
    data = {
        "semantickitti": {"type": "semantickitti", "root": str(root / "semantickitti"), "batch_size": 2,
                          "class_weights": "none", "sensor": dict(SENSOR, fov_up=3.0, fov_down=-25.0)},
        "nuscenes": {"type": "nuscenes", "root": str(root / "nuscenes"), "version": "v1.0-mini",
                     "batch_size": 2, "class_weights": "none", "sensor": dict(SENSOR, height=32, use_ring=True)},
    }
    model = {"name": "salsanext", "width": 0.125, "dropout": 0.0}
    strategy = "cdcl"
    if voxel:
        data = {"semantickitti": dict(data["semantickitti"], representation="voxel", voxel_size=0.5)}
        data["semantickitti"].pop("sensor")
        model = {"name": "sparse_unet", "base_channels": 8, "channels": [8, 16]}
        strategy = "single"
    return build_config({
        "task": "3d", "model": model, "data": data, "strategy": {"name": strategy},
        "train": {"iterations": 1, "lr": 0.01, "progress": False, "checkpoint_every": 100, "log_every": 1,
                  "threads": 1, "tb_images": False},
        "eval": {"batch_size": 1, "options": {"knn": not voxel}}}, source="test")


@pytest.fixture(scope="module")
def lidar(tmp_path_factory):
    """Generated SemanticKITTI + nuScenes trees and a range model trained one step on them.

    The SemanticKITTI val split (08) gets four distinct scans: the two
    generated ones and copies of 00/000000 and 01/000000 as 08/000002 and
    08/000003; its test split (11, 12) has two.
    """
    from cdcl3d.synth import generate_lidar

    base = tmp_path_factory.mktemp("lidar")
    data = base / "data"
    generate_lidar(str(data), seed=0, scans=14, points_scale=0.2)
    seqs = data / "semantickitti" / "sequences"
    for k, seq in enumerate(("00", "01")):
        shutil.copy(seqs / seq / "velodyne/000000.bin", seqs / "08/velodyne" / f"00000{k + 2}.bin")
        shutil.copy(seqs / seq / "labels/000000.label", seqs / "08/labels" / f"00000{k + 2}.label")
    work = base / "range"
    train(_lidar_config(data), str(work))
    return SimpleNamespace(data=data, work=work, ckpt=str(work / "checkpoints" / "latest.pth"))


@pytest.fixture(scope="module")
def voxel(lidar, tmp_path_factory):
    """The sparse voxel network trained one step on the same SemanticKITTI tree."""
    pytest.importorskip("spconv")
    work = tmp_path_factory.mktemp("voxel") / "run"
    train(_lidar_config(lidar.data, voxel=True), str(work))
    return SimpleNamespace(data=lidar.data, work=work, ckpt=str(work / "checkpoints" / "latest.pth"))


def _copy(src, dst):
    shutil.copytree(src, dst)
    return dst


def _config(run, path, **changes):
    """``run``'s resolved config with dotted ``changes`` (``data__semantickitti__root``) written to ``path``."""
    with open(run.work / "config.yaml", encoding="utf-8") as f:
        d = yaml.safe_load(f)
    for key, value in changes.items():
        *parents, last = key.split("__")
        node = d
        for p in parents:
            node = node[p]
        node[last] = value
    with open(path, "w", encoding="utf-8") as f:
        yaml.safe_dump(d, f)
    return str(path)


def _run(capsys, *argv):
    rc = main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def _assert_one_line(rc, out, err, command, *names):
    assert rc == 2, err
    assert "Traceback" not in out + err
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"cdcl {command}: error: "), err
    for n in names:
        assert n in line, line


# -- readers: one line naming the file -----------------------------------------------

def _kitti_files(root, frame="000001"):
    seq = root / "sequences" / "08"
    return seq / "velodyne" / f"{frame}.bin", seq / "labels" / f"{frame}.label"


def _nuscenes_files(root):
    """The points and label files of the first nuScenes val sample."""
    from cdcl3d.datasets.nuscenes import NuScenesLidarSeg

    s = NuScenesLidarSeg(str(root), version="v1.0-mini", split="val").samples[0]
    return s["points"], s["labels"]


def _corrupt_points(path, how, cols):
    if how == "bin_size":
        with open(path, "ab") as f:
            f.write(b"\0" * 6)
        return
    pts = np.fromfile(path, np.float32).reshape(-1, cols)
    pts[3, 1] = np.nan if how == "nan" else np.inf
    pts.tofile(path)


KITTI_CASES = {
    "bin_size": ("000001.bin", "not a multiple of 16"),
    "label_count": ("000001.label", "7 labels"),
    "unknown_id": ("000001.label", "unknown SemanticKITTI raw label id(s) [5]"),
    "nan": ("000001.bin", "NaN or infinite"),
    "inf": ("000001.bin", "NaN or infinite"),
}


@pytest.mark.parametrize("case", sorted(KITTI_CASES))
def test_semantickitti_bad_file_is_one_line_naming_it(lidar, tmp_path, capsys, case):
    root = _copy(lidar.data / "semantickitti", tmp_path / "semantickitti")
    points, labels = _kitti_files(root)
    if case == "label_count":
        np.zeros(7, np.uint32).tofile(labels)
    elif case == "unknown_id":
        lab = np.fromfile(labels, np.uint32)
        lab[3] = (2 << 16) | 5
        lab.tofile(labels)
    else:
        _corrupt_points(points, case, 4)
    cfg = _config(lidar, tmp_path / "c.yaml", data__semantickitti__root=str(root))
    rc, out, err = _run(capsys, "eval", cfg, "--checkpoint", lidar.ckpt, "--dataset", "semantickitti")
    name, problem = KITTI_CASES[case]
    _assert_one_line(rc, out, err, "eval", os.path.join("08", "labels" if name.endswith("label") else "velodyne",
                                                        name), problem)


@pytest.mark.parametrize("command", ["eval", "train"])
def test_bad_file_read_in_a_loader_worker_is_one_line(lidar, tmp_path, capsys, command):
    root = _copy(lidar.data / "semantickitti", tmp_path / "semantickitti")
    seqs = ["08"] if command == "eval" else ["00", "01", "02", "03", "04", "05", "06", "07", "09", "10"]
    for scan in (p for s in seqs for p in (root / "sequences" / s / "velodyne").glob("*.bin")):
        _corrupt_points(scan, "nan", 4)  # whichever scan the first batch reads
    cfg = _config(lidar, tmp_path / "c.yaml", data__semantickitti__root=str(root),
                  data__semantickitti__num_workers=1, eval__num_workers=1)
    argv = (["eval", cfg, "--checkpoint", lidar.ckpt, "--dataset", "semantickitti"] if command == "eval" else
            ["train", cfg, "--work-dir", tmp_path / "run"])
    rc, out, err = _run(capsys, *argv)
    _assert_one_line(rc, out, err, command, os.path.join("velodyne", "000000.bin"), "NaN or infinite")


NUSCENES_CASES = {
    "bin_size": (".pcd.bin", "not a multiple of 20"),
    "label_count": ("_lidarseg.bin", "3 labels"),
    "unknown_id": ("_lidarseg.bin", "unknown nuScenes fine label id(s) [250]"),
    "nan": (".pcd.bin", "NaN or infinite"),
}


@pytest.mark.parametrize("case", sorted(NUSCENES_CASES))
def test_nuscenes_bad_file_is_one_line_naming_it(lidar, tmp_path, capsys, case):
    root = _copy(lidar.data / "nuscenes", tmp_path / "nuscenes")
    points, labels = _nuscenes_files(root)
    if case == "label_count":
        np.zeros(3, np.uint8).tofile(labels)
    elif case == "unknown_id":
        lab = np.fromfile(labels, np.uint8)
        lab[2] = 250
        lab.tofile(labels)
    else:
        _corrupt_points(points, case, 5)
    cfg = _config(lidar, tmp_path / "c.yaml", data__nuscenes__root=str(root))
    rc, out, err = _run(capsys, "eval", cfg, "--checkpoint", lidar.ckpt, "--dataset", "nuscenes")
    suffix, problem = NUSCENES_CASES[case]
    bad = points if suffix == ".pcd.bin" else labels
    _assert_one_line(rc, out, err, "eval", os.path.basename(bad), problem)


@pytest.mark.parametrize("table,text,problem", [
    ("sample_data.json", '[{"token": "a", ', "not valid JSON"),
    ("scene.json", '{"token": "a"}', "a list of records"),
    ("sample.json", '["a", "b"]', "a list of records"),
])
def test_nuscenes_bad_table_is_one_line_naming_it(lidar, tmp_path, capsys, table, text, problem):
    root = _copy(lidar.data / "nuscenes", tmp_path / "nuscenes")
    (root / "v1.0-mini" / table).write_text(text, encoding="utf-8")
    cfg = _config(lidar, tmp_path / "c.yaml", data__nuscenes__root=str(root))
    rc, out, err = _run(capsys, "eval", cfg, "--checkpoint", lidar.ckpt, "--dataset", "nuscenes")
    _assert_one_line(rc, out, err, "eval", os.path.join("v1.0-mini", table), problem)


# -- skip mode: dropped from evaluation and listed ----------------------------------

def _eval_json(capsys, tmp_path, run, cfg, dataset, tag):
    out = tmp_path / f"{tag}.json"
    rc, stdout, err = _run(capsys, "eval", cfg, "--checkpoint", run.ckpt, "--dataset", dataset, "--out", out)
    assert rc == 0, err
    return json.loads(out.read_text())[dataset], stdout


def _assert_same_scores(a, b):
    assert set(a["variants"]) == set(b["variants"])
    for v in a["variants"]:
        sa, sb = a["variants"][v], b["variants"][v]
        assert sa["miou"] == pytest.approx(sb["miou"]) and sa["acc"] == pytest.approx(sb["acc"])
        assert sa["iou"] == pytest.approx(sb["iou"], nan_ok=True)


@pytest.mark.parametrize("representation", ["range", "voxel"])
def test_skip_drops_bad_scans_from_eval_and_lists_them(lidar, request, tmp_path, capsys, representation):
    run = lidar if representation == "range" else request.getfixturevalue("voxel")
    bad = _copy(lidar.data / "semantickitti", tmp_path / "bad")
    _corrupt_points(_kitti_files(bad, "000001")[0], "nan", 4)  # seen when read
    _corrupt_points(_kitti_files(bad, "000003")[0], "bin_size", 4)  # seen from its size
    ref = _copy(lidar.data / "semantickitti", tmp_path / "ref")
    for frame in ("000001", "000003"):
        for f in _kitti_files(ref, frame):
            os.remove(f)
    got, stdout = _eval_json(capsys, tmp_path, run, _config(
        run, tmp_path / "skip.yaml", data__semantickitti__root=str(bad),
        data__semantickitti__on_bad_sample="skip"), "semantickitti", "skip")
    want, _ = _eval_json(capsys, tmp_path, run, _config(
        run, tmp_path / "ref.yaml", data__semantickitti__root=str(ref)), "semantickitti", "ref")
    assert got["skipped"] == ["08/000001", "08/000003"] and want["skipped"] == []
    assert got["samples"] == 2 and want["samples"] == 2
    assert "skipped 2" in stdout and "08/000001" in stdout and "08/000003" in stdout
    _assert_same_scores(got, want)  # each good scan counted once


def test_skip_with_every_scan_bad_is_an_error(lidar, tmp_path, capsys):
    bad = _copy(lidar.data / "semantickitti", tmp_path / "bad")
    for frame in ("000000", "000001", "000002", "000003"):
        _corrupt_points(_kitti_files(bad, frame)[0], "nan", 4)
    cfg = _config(lidar, tmp_path / "c.yaml", data__semantickitti__root=str(bad),
                  data__semantickitti__on_bad_sample="skip")
    rc, out, err = _run(capsys, "eval", cfg, "--checkpoint", lidar.ckpt, "--dataset", "semantickitti")
    _assert_one_line(rc, out, err, "eval", "semantickitti", "all 4 skipped")


def test_training_skip_replaces_a_bad_scan_by_the_next(lidar, tmp_path):
    from cdcl3d.datasets import SemanticKITTI

    bad = _copy(lidar.data / "semantickitti", tmp_path / "bad")
    _corrupt_points(_kitti_files(bad, "000001")[0], "nan", 4)
    _corrupt_points(_kitti_files(bad, "000003")[0], "bin_size", 4)
    ds = SemanticKITTI(str(bad), split="val", on_bad_sample="skip")
    assert len(ds) == 4  # a training epoch keeps its length: the loader never stalls
    assert [ds[i]["id"] for i in range(4)] == ["08/000000", "08/000002", "08/000002", "08/000000"]
    with pytest.raises(DataError, match=r"08/velodyne/000001\.bin.*NaN"):
        SemanticKITTI(str(bad), split="val")[1]


# -- predict: a file for every scan the benchmark expects ---------------------------

def _test_scans(root):
    return sorted(p.relative_to(root / "sequences") for p in (root / "sequences").glob("1[1-9]/velodyne/*.bin"))


@pytest.mark.parametrize("representation", ["range", "voxel"])
def test_predict_writes_an_empty_file_for_an_empty_scan(lidar, request, tmp_path, capsys, representation):
    run = lidar if representation == "range" else request.getfixturevalue("voxel")
    root = _copy(lidar.data / "semantickitti", tmp_path / "data")
    scans = _test_scans(root)
    assert len(scans) == 2
    open(root / "sequences" / scans[0], "wb").close()  # a scan without points
    cfg = _config(run, tmp_path / "c.yaml", data__semantickitti__root=str(root),
                  data__semantickitti__on_bad_sample="skip")
    out = tmp_path / "pred"
    rc, stdout, err = _run(capsys, "predict", cfg, "--checkpoint", run.ckpt, "--dataset", "semantickitti",
                           "--split", "test", "--out", out)
    assert rc == 0, err
    files = sorted(p.relative_to(out / "sequences") for p in (out / "sequences").glob("*/predictions/*.label"))
    assert [(f.parts[0], f.stem) for f in files] == [(s.parts[0], s.stem) for s in scans]
    assert (out / "sequences" / files[0]).stat().st_size == 0
    assert (out / "sequences" / files[1]).stat().st_size == (root / "sequences" / scans[1]).stat().st_size // 4


def test_predict_nuscenes_writes_an_empty_file_for_an_empty_scan(lidar, tmp_path, capsys):
    from cdcl3d.datasets.nuscenes import NuScenesLidarSeg

    root = _copy(lidar.data / "nuscenes", tmp_path / "nuscenes")
    val = NuScenesLidarSeg(str(root), version="v1.0-mini", split="val")
    open(val.samples[0]["points"], "wb").close()  # a scan without points, and its labels
    open(val.samples[0]["labels"], "wb").close()
    cfg = _config(lidar, tmp_path / "c.yaml", data__nuscenes__root=str(root), data__nuscenes__on_bad_sample="skip")
    out = tmp_path / "pred"
    rc, stdout, err = _run(capsys, "predict", cfg, "--checkpoint", lidar.ckpt, "--dataset", "nuscenes",
                           "--split", "val", "--out", out)
    assert rc == 0, err
    files = {p.name: p.stat().st_size for p in (out / "lidarseg" / "mini_val").glob("*_lidarseg.bin")}
    assert sorted(files) == sorted(f"{s['token']}_lidarseg.bin" for s in val.samples)
    assert files[f"{val.samples[0]['token']}_lidarseg.bin"] == 0
    assert all(files[f"{s['token']}_lidarseg.bin"] == os.path.getsize(s["points"]) // 20 for s in val.samples)


@pytest.mark.parametrize("how", ["nan", "bin_size"])
def test_predict_in_skip_mode_refuses_an_unreadable_scan(lidar, tmp_path, capsys, how):
    root = _copy(lidar.data / "semantickitti", tmp_path / "data")
    scan = root / "sequences" / _test_scans(root)[1]
    _corrupt_points(scan, how, 4)
    cfg = _config(lidar, tmp_path / "c.yaml", data__semantickitti__root=str(root),
                  data__semantickitti__on_bad_sample="skip")
    rc, out, err = _run(capsys, "predict", cfg, "--checkpoint", lidar.ckpt, "--dataset", "semantickitti",
                        "--split", "test", "--out", tmp_path / "pred")
    _assert_one_line(rc, out, err, "predict", os.path.join(scan.parent.name, scan.name))


# -- an empty split: an error naming the folder, in every command ---------------------

def _empty_sequences(root, seqs):
    for s in seqs:
        for f in (root / "sequences" / s / "velodyne").glob("*.bin"):
            f.unlink()


@pytest.mark.parametrize("command", ["train", "eval", "predict", "precise-bn", "show"])
def test_empty_lidar_split_is_an_error_naming_the_folder(lidar, tmp_path, capsys, command):
    root = _copy(lidar.data / "semantickitti", tmp_path / "data")
    if command in ("train", "precise-bn"):  # the train split: 00-07, 09, 10
        _empty_sequences(root, [f"{s:02d}" for s in (0, 1, 2, 3, 4, 5, 6, 7, 9, 10)])
        folder = os.path.join("sequences", "00", "velodyne")
    else:
        _empty_sequences(root, ["08"])
        folder = os.path.join("sequences", "08", "velodyne")
    cfg = _config(lidar, tmp_path / "c.yaml", data__semantickitti__root=str(root))
    argv = {
        "train": ["train", cfg, "--work-dir", tmp_path / "run"],
        "eval": ["eval", cfg, "--checkpoint", lidar.ckpt, "--dataset", "semantickitti"],
        "predict": ["predict", cfg, "--checkpoint", lidar.ckpt, "--dataset", "semantickitti",
                    "--split", "val", "--out", tmp_path / "pred"],
        "precise-bn": ["precise-bn", cfg, "--checkpoint", lidar.ckpt, "--dataset", "semantickitti",
                       "--out", tmp_path / "new.pth"],
        "show": ["show", cfg, "--dataset", "semantickitti", "--png", tmp_path / "s.png", "--backend", "numpy"],
    }[command]
    rc, out, err = _run(capsys, *argv)
    _assert_one_line(rc, out, err, command, folder, "no scans")


def test_empty_nuscenes_split_is_an_error_naming_the_tables(lidar, tmp_path):
    from cdcl3d.datasets.nuscenes import NuScenesLidarSeg

    root = _copy(lidar.data / "nuscenes", tmp_path / "nuscenes")
    val = NuScenesLidarSeg(str(lidar.data / "nuscenes"), version="v1.0-mini", split="val")
    val_scenes = {val.nusc.get("sample", val.nusc.get("sample_data", s["token"])["sample_token"])["scene_token"]
                  for s in val.samples}
    samples = json.loads((root / "v1.0-mini" / "sample.json").read_text())
    for s in samples:  # the val scenes lose their samples
        if s["scene_token"] in val_scenes:
            s["scene_token"] = "elsewhere"
    (root / "v1.0-mini" / "sample.json").write_text(json.dumps(samples))
    with pytest.raises(DataError, match=r"'mini_val' has no scans.*v1\.0-mini"):
        NuScenesLidarSeg(str(root), version="v1.0-mini", split="val")


# -- the image task ---------------------------------------------------------------

@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """A generated CamVid tree (2 train, 4 val images of 64x32) and a PSPNet trained one step on it."""
    from cdcl2d.synth import write_dataset

    base = tmp_path_factory.mktemp("images")
    write_dataset("camvid", str(base / "data"), num_train=2, num_val=4, seed=0, size=(64, 32))
    cfg = build_config({
        "task": "2d", "model": {"name": "pspnet", "output_stride": 16, "channels": 16, "aux_channels": 8},
        "data": {"camvid": {"type": "camvid", "root": str(base / "data" / "camvid"), "batch_size": 2,
                            "crop": [24, 24]}},
        "strategy": {"name": "single"},
        "train": {"iterations": 1, "progress": False, "tb_images": False, "log_every": 1, "threads": 1},
        "eval": {"batch_size": 1}}, source="test")
    work = base / "run"
    train(cfg, str(work))
    return SimpleNamespace(data=base / "data" / "camvid", work=work, ckpt=str(work / "checkpoints" / "latest.pth"))


def _val_files(root):
    images = sorted((root / "val").glob("*.png"))
    return images, [root / "valannot" / p.name for p in images]


def _corrupt_image(images, annots, i, how):
    from PIL import Image

    if how == "mask_size":
        Image.fromarray(np.zeros((31, 64), np.uint8)).save(annots[i])
        return annots[i], "does not match"
    images[i].write_bytes(b"\x89PNG\r\n\x1a\n not really a png")
    return images[i], "cannot read image"


@pytest.mark.parametrize("how", ["mask_size", "unreadable"])
def test_bad_image_is_one_line_naming_it(images, tmp_path, capsys, how):
    root = _copy(images.data, tmp_path / "camvid")
    path, problem = _corrupt_image(*_val_files(root), 1, how)
    cfg = _config(images, tmp_path / "c.yaml", data__camvid__root=str(root))
    rc, out, err = _run(capsys, "eval", cfg, "--checkpoint", images.ckpt)
    _assert_one_line(rc, out, err, "eval", str(path), problem)


def test_image_skip_drops_bad_images_from_eval_and_lists_them(images, tmp_path, capsys):
    bad = _copy(images.data, tmp_path / "bad")
    imgs, annots = _val_files(bad)
    _corrupt_image(imgs, annots, 1, "mask_size")
    _corrupt_image(imgs, annots, 3, "unreadable")
    ref = _copy(images.data, tmp_path / "ref")
    rimgs, rannots = _val_files(ref)
    for i in (1, 3):
        os.remove(rimgs[i])
        os.remove(rannots[i])
    got, stdout = _eval_json(capsys, tmp_path, images, _config(
        images, tmp_path / "skip.yaml", data__camvid__root=str(bad), data__camvid__on_bad_sample="skip"),
        "camvid", "skip")
    want, _ = _eval_json(capsys, tmp_path, images, _config(images, tmp_path / "ref.yaml", data__camvid__root=str(ref)),
                         "camvid", "ref")
    assert got["skipped"] == [imgs[1].stem, imgs[3].stem] and want["skipped"] == []
    assert got["samples"] == 2 and want["samples"] == 2
    assert "skipped 2" in stdout and imgs[1].stem in stdout
    _assert_same_scores(got, want)


def test_image_reader_skip_replaces_in_training(images, tmp_path):
    from cdcl2d.datasets import CamVid

    bad = _copy(images.data, tmp_path / "bad")
    imgs, annots = _val_files(bad)
    _corrupt_image(imgs, annots, 1, "unreadable")
    ds = CamVid(str(bad), "val", on_bad_sample="skip")
    assert [ds[i]["id"] for i in range(4)] == [imgs[0].stem, imgs[2].stem, imgs[2].stem, imgs[3].stem]
    with pytest.raises(DataError, match="cannot read image"):
        CamVid(str(bad), "val")[1]


def test_image_predict_in_skip_mode_refuses_an_unreadable_image(images, tmp_path, capsys):
    root = _copy(images.data, tmp_path / "camvid")
    path, _ = _corrupt_image(*_val_files(root), 2, "unreadable")
    cfg = _config(images, tmp_path / "c.yaml", data__camvid__root=str(root), data__camvid__on_bad_sample="skip")
    rc, out, err = _run(capsys, "predict", cfg, "--checkpoint", images.ckpt, "--dataset", "camvid",
                        "--split", "val", "--out", tmp_path / "pred")
    _assert_one_line(rc, out, err, "predict", str(path))


@pytest.mark.parametrize("command", ["train", "eval", "predict", "precise-bn"])
def test_empty_image_split_is_an_error_naming_the_folder(images, tmp_path, capsys, command):
    root = _copy(images.data, tmp_path / "camvid")
    split = "train" if command in ("train", "precise-bn") else "val"
    for f in (root / split).glob("*.png"):
        f.unlink()
    cfg = _config(images, tmp_path / "c.yaml", data__camvid__root=str(root))
    argv = {
        "train": ["train", cfg, "--work-dir", tmp_path / "run"],
        "eval": ["eval", cfg, "--checkpoint", images.ckpt],
        "predict": ["predict", cfg, "--checkpoint", images.ckpt, "--dataset", "camvid", "--split", "val",
                    "--out", tmp_path / "pred"],
        "precise-bn": ["precise-bn", cfg, "--checkpoint", images.ckpt, "--dataset", "camvid",
                       "--out", tmp_path / "new.pth"],
    }[command]
    rc, out, err = _run(capsys, *argv)
    _assert_one_line(rc, out, err, command, str(root / split), "no images")
