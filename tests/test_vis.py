"""Tests of cdcl3d.vis: palettes, renders, range-image pictures, legend, cdcl show.

Everything that touches Open3D rendering runs in a child process
(``render_scans_subprocess``); the module fixture renders all Open3D pictures
of these tests in one child to pay Open3D's start-up once.
"""
from __future__ import annotations

import argparse
import os

import numpy as np
import pytest
from PIL import Image

from cdcl3d.vis import colors as C
from cdcl3d.vis import render as R
from cdcl3d.vis.cli import add_arguments, run, show_scan
from cdcl3d.vis.legend import add_legend, legend_entries
from cdcl3d.vis.range_image import range_image_png
from cdcl3d.vis.viewer import ViewerState, key_help

W, H = 800, 600  # BEV: 100 m across, 8 px per metre
KITTI_ROAD_RAW, KITTI_CAR_RAW, KITTI_SIDEWALK_RAW = 40, 10, 48


def _kitti_ids():
    lm = C._kitti_map()
    to_train = lambda raw: int(lm.to_train(np.array([raw], dtype=np.uint32))[0])  # noqa: E731
    return to_train(KITTI_ROAD_RAW), to_train(KITTI_CAR_RAW), to_train(KITTI_SIDEWALK_RAW)


def make_scene():
    """A flat road grid (1 m pitch, 8 px apart in the BEV) around the origin
    and a car box on it, offset by 0.25 m so no two points share a pixel."""
    road_id, car_id, _ = _kitti_ids()
    g = np.arange(-20.0, 20.0 + 1e-6, 1.0)
    xx, yy = np.meshgrid(g, g)
    road = np.stack([xx.ravel(), yy.ravel(), np.full(xx.size, -1.7), np.full(xx.size, 0.2)], 1)
    bx, by = np.meshgrid(np.arange(10.25, 14.0, 0.5), np.arange(3.25, 5.0, 0.5))
    car = np.stack([bx.ravel(), by.ravel(), np.zeros(bx.size), np.full(bx.size, 0.8)], 1)
    points = np.concatenate([road, car]).astype(np.float32)
    labels = np.concatenate([np.full(len(road), road_id), np.full(len(car), car_id)]).astype(np.int64)
    return points, labels, len(road)


def make_preds(labels, n_road, seed=0):
    """Wrong (sidewalk) on a seeded 10% of the road points, ignore on a few."""
    _, _, sidewalk_id = _kitti_ids()
    rng = np.random.default_rng(seed)
    preds = labels.copy()
    wrong = np.zeros(len(labels), dtype=bool)
    wrong[rng.choice(n_road, n_road // 10, replace=False)] = True
    preds[wrong] = sidewalk_id
    return preds, wrong


@pytest.fixture(scope="module")
def renders():
    points, labels, n_road = make_scene()
    preds, wrong = make_preds(labels, n_road)
    labels_ign = labels.copy()
    labels_ign[:5] = C.IGNORE_INDEX  # a few ignored points: dark, neither red nor grey
    pal = C.kitti_train_palette()
    rng = np.random.default_rng(1)
    cloud = rng.uniform([-30, -25, -2], [40, 25, 4], (400, 3)).astype(np.float32)
    cloud_col = rng.integers(40, 255, (400, 3)).astype(np.uint8)
    jobs = [
        dict(points=points, colors=C.colorize("label", points, labels, preds, pal), width=W, height=H,
             camera="bev", point_size=2.0),
        dict(points=points, colors=C.colorize("error", points, labels_ign, preds), width=W, height=H,
             camera="bev", point_size=2.0),
        dict(points=cloud, colors=cloud_col, width=W, height=H, camera="chase", point_size=2.0),
        dict(points=cloud, colors=cloud_col, width=W, height=H, camera="bev", point_size=3.0),
    ]
    images = R.render_scans_subprocess(jobs)
    return dict(points=points, labels=labels, labels_ign=labels_ign, preds=preds, wrong=wrong,
                palette=pal, images=images, jobs=jobs, n_road=n_road)


# -- palettes ----------------------------------------------------------------------

def test_kitti_palette_from_yaml_bgr():
    pal = C.kitti_train_palette()
    assert pal.shape == (19, 3) and pal.dtype == np.uint8
    road_id, car_id, _ = _kitti_ids()
    assert tuple(pal[car_id]) == (100, 150, 245)  # yaml color_map[10] = BGR [245, 150, 100]
    assert tuple(pal[road_id]) == (255, 0, 255)  # yaml color_map[40] = [255, 0, 255]
    raw = np.array([10, 40, 10 | (7 << 16), 0], dtype=np.uint32)
    assert C.kitti_raw_colors(raw).tolist() == [[100, 150, 245], [255, 0, 255], [100, 150, 245], [0, 0, 0]]


def test_nuscenes_palette_matches_devkit():
    names = C.nuscenes_class_names()
    pal = C.nuscenes_train_palette()
    assert len(names) == 16 and pal.shape == (16, 3)
    coarse = C._challenge_mapper().get_coarse2color()  # the devkit's own challenge colours
    for name, rgb in zip(names, pal):
        assert tuple(int(c) for c in rgb) == tuple(coarse[name]), name
    lut = C.nuscenes_fine_to_train_lut()
    fine = C.nuscenes_fine_names()
    assert lut[fine.index("vehicle.car")] == names.index("car")
    assert lut[fine.index("noise")] == C.IGNORE_INDEX and lut[40] == -1


def test_colormap_and_modes():
    rgb = C.apply_colormap(np.array([0.0, 1.0, np.nan]), "viridis", vmin=0, vmax=1)
    assert rgb[0].tolist() == [68, 1, 84] and rgb[1].tolist() == [253, 231, 37] and rgb[2].tolist() == [0, 0, 0]
    pts = np.zeros((3, 4), np.float32)
    err = C.colorize("error", pts, np.array([1, 2, 255]), np.array([1, 3, 3]))
    assert [tuple(c) for c in err] == [C.CORRECT_COLOR, C.WRONG_COLOR, C.IGNORED_COLOR]
    with pytest.raises(ValueError, match="needs predictions"):
        C.colorize("pred", pts, np.zeros(3), None, np.zeros((4, 3), np.uint8))
    with pytest.raises(ValueError, match="unknown colour mode"):
        C.colorize("bogus", pts)


# -- Open3D renders (in a child process) ---------------------------------------------

def test_bev_render_size_and_road_region(renders):
    img = renders["images"][0]
    assert img.shape == (H, W, 3) and img.dtype == np.uint8
    fg = img.sum(axis=2) > 0
    assert fg.sum() > 1000  # not blank
    pal, road_id, car_id = renders["palette"], *_kitti_ids()[:2]
    is_road = (img == pal[road_id]).all(axis=2)
    is_car = (img == pal[car_id]).all(axis=2)
    # Road (x, y in [-20, 20] m) fills the centre +-160 px, nothing beyond it.
    rows, cols = np.nonzero(is_road)
    assert abs(rows.mean() - H / 2) < 4 and abs(cols.mean() - W / 2) < 4
    assert cols.min() >= W / 2 - 162 and cols.max() <= W / 2 + 162
    assert is_road.sum() == 4 * renders["n_road"]  # a 2x2 square each, none hidden
    # The car (x 10..14, +y left -> up in the picture) lies right of and above the sensor.
    rows, cols = np.nonzero(is_car)
    assert 400 + 8 * 10 <= cols.min() and cols.max() <= 400 + 8 * 14
    assert 300 - 8 * 5 <= rows.min() and rows.max() <= 300 - 8 * 3


def test_every_point_lands_where_projected(renders):
    for job, img in zip(renders["jobs"], renders["images"]):
        u, v, vis = R.project_points_to_image(job["points"], job["camera"], job["width"], job["height"])
        got = img[v[vis].astype(int), u[vis].astype(int)]
        match = (got == job["colors"][vis]).all(axis=1).mean()
        assert match > 0.97, (job["camera"], match)  # the rest: occluded by nearer points
    for img in renders["images"][:2]:  # the test scene has no overlapping points
        u, v, vis = R.project_points_to_image(renders["points"], "bev", W, H)
        assert vis.all() and (img[v.astype(int), u.astype(int)].sum(axis=1) > 0).all()


def test_open3d_matches_numpy_splatter(renders):
    for job, img in zip(renders["jobs"], renders["images"]):
        ref = R.splat_scan(job["points"], job["colors"], job["width"], job["height"], job["camera"],
                           job["point_size"])
        assert (ref == img).all(axis=2).mean() > 0.998


def test_error_mode_red_pixels(renders):
    img = renders["images"][1]
    red = (img == np.array(C.WRONG_COLOR, np.uint8)).all(axis=2)
    wrong = renders["wrong"] & (renders["labels_ign"] != C.IGNORE_INDEX)
    u, v, vis = R.project_points_to_image(renders["points"], "bev", W, H)
    distinct = len({(int(a), int(b)) for a, b in zip(u[wrong & vis], v[wrong & vis])})
    assert distinct == wrong.sum()
    # point size 2: each wrong point is a 2x2 square, none overlapping.
    assert abs(red.sum() / 4 - distinct) <= max(2, 0.02 * distinct)
    grey = (img == np.array(C.CORRECT_COLOR, np.uint8)).all(axis=2).sum()
    assert grey > red.sum()
    assert (img == np.array(C.IGNORED_COLOR, np.uint8)).all(axis=2).sum() > 0


def test_render_crash_becomes_runtime_error(tmp_path, monkeypatch):
    fake = tmp_path / "python_that_aborts"
    fake.write_text("#!/bin/sh\necho 'Filament: no Vulkan device' >&2\nkill -ABRT $$\n")
    fake.chmod(0o755)
    monkeypatch.setattr(R.sys, "executable", str(fake))
    with pytest.raises(RuntimeError, match="(?s)killed by signal 6.*no Vulkan device"):
        R.render_scan_subprocess(np.zeros((3, 3), np.float32), np.zeros((3, 3), np.uint8), 64, 48)


# -- range images, legend -------------------------------------------------------------

def test_range_image_png_shape(tmp_path):
    rng = np.random.default_rng(0)
    h, w = 64, 2048
    proj_range = rng.uniform(1, 50, (h, w)).astype(np.float32)
    proj_range[:5] = -1  # empty rows
    inten = rng.uniform(0, 1, (h, w)).astype(np.float32)
    labels = rng.integers(0, 19, (h, w))
    preds = labels.copy()
    preds[:, :100] = (preds[:, :100] + 1) % 19
    pal = C.kitti_train_palette()
    path = tmp_path / "r.png"
    img = range_image_png(proj_range, inten, labels, pal, str(path), preds=preds)
    assert img.shape == (5 * 4 * h + 4 * 3, w, 3)  # 5 bands x4 tall, 3-px gaps
    assert np.asarray(Image.open(path)).shape == img.shape
    err = img[4 * (4 * h + 3):]
    red = (err == np.array(C.WRONG_COLOR, np.uint8)).all(axis=2)
    assert red[:, :100].mean() > 0.8 and not red[:, 200:].any()
    assert (img[20:4 * 5, 500:] == 0).all()  # empty rows are black
    one = range_image_png(proj_range, inten, labels, pal, captions=False)
    assert one.shape == (3 * 4 * h + 2 * 3, w, 3)
    with pytest.raises(ValueError, match="expected"):
        range_image_png(proj_range, inten[:10], labels, pal)


def test_legend_and_gt_vs_pred(tmp_path):
    pal = C.kitti_train_palette()
    names = C.kitti_class_names()
    base = np.zeros((200, 300, 3), np.uint8)
    out = add_legend(base, legend_entries([0, 8], names, pal), title="classes")
    assert out.shape[0] == 200 and out.shape[1] > 300
    panel = out[:, 300:]
    for i in (0, 8):
        assert (panel == pal[i]).all(axis=2).sum() >= 100  # a 14x14 swatch (inside the outline)

    points, labels, n_road = make_scene()
    preds, _ = make_preds(labels, n_road)
    path = tmp_path / "gt_pred.png"
    img = R.render_gt_vs_pred(points, labels, preds, pal, names, str(path), 320, 240, backend="numpy")
    assert img.shape[0] == 240 and img.shape[1] > 2 * 320 and path.exists()
    legend = img[:, 2 * 320 + 4:]
    for i in np.unique(np.concatenate([labels, preds])):
        assert (legend == pal[i]).all(axis=2).sum() >= 100, names[i]


# -- viewer logic ----------------------------------------------------------------------

def test_viewer_state_keys():
    st = ViewerState(num_scans=3, mode="label", modes=["label", "pred", "error", "intensity", "range"])
    assert [st.cycle_mode() for _ in range(5)] == ["pred", "error", "intensity", "range", "label"]
    assert st.prev() == 0 and st.next() == 1 and st.next() == 2 and st.next() == 2
    st.set_modes(["intensity", "range"])
    assert st.mode == "intensity"
    text = key_help()
    for key in "CNPQ":
        assert f"  {key}  " in text


# -- cdcl show ----------------------------------------------------------------------------

def _args(*argv):
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(list(argv))


def _write_kitti(root, points, labels_train):
    lm = C._kitti_map()
    os.makedirs(root / "velodyne")
    os.makedirs(root / "labels")
    points.astype(np.float32).tofile(root / "velodyne" / "000000.bin")
    lm.to_raw(labels_train).tofile(root / "labels" / "000000.label")
    return str(root / "velodyne" / "000000.bin")


def test_cdcl_show_kitti_png_subprocess(tmp_path, monkeypatch):
    monkeypatch.delenv("DISPLAY", raising=False)
    monkeypatch.delenv("WAYLAND_DISPLAY", raising=False)
    points, labels, n_road = make_scene()
    preds, wrong = make_preds(labels, n_road)
    scan = _write_kitti(tmp_path / "seq", points, labels)
    pred_path = tmp_path / "pred.label"
    C._kitti_map().to_raw(preds).tofile(pred_path)
    out, rpng = tmp_path / "show.png", tmp_path / "range.png"
    # No --labels: found in ../labels; no display: renders to PNG.
    rc = run(_args(scan, "--pred", str(pred_path), "--color", "error", "--png", str(out),
                   "--range-png", str(rpng)))
    assert rc == 0
    img = np.asarray(Image.open(out))
    assert img.shape[0] == H and img.shape[1] > W  # legend on the right
    red = (img[:, :W] == np.array(C.WRONG_COLOR, np.uint8)).all(axis=2).sum()
    assert abs(red / 4 - wrong.sum()) <= max(2, 0.02 * wrong.sum())
    assert (img[:, W:] == np.array(C.WRONG_COLOR, np.uint8)).all(axis=2).sum() >= 100  # legend swatch
    assert np.asarray(Image.open(rpng)).shape[1] == 2048


def test_cdcl_show_bad_input(tmp_path, capsys):
    rc = run(_args(str(tmp_path / "nope" / "000000.bin"), "--png", str(tmp_path / "x.png")))
    assert rc == 2 and "000000.bin" in capsys.readouterr().err
    points, labels, _ = make_scene()
    scan = _write_kitti(tmp_path / "seq", points, labels)
    short = tmp_path / "short.label"
    np.zeros(10, np.uint32).tofile(short)
    rc = run(_args(scan, "--labels", str(short), "--png", str(tmp_path / "x.png"), "--backend", "numpy"))
    err = capsys.readouterr().err
    assert rc == 2 and "short.label" in err and "10 labels but the scan has" in err
    bad = tmp_path / "bad.bin"
    bad.write_bytes(b"\0" * 10)
    rc = run(_args(str(bad), "--png", str(tmp_path / "x.png")))
    assert rc == 2 and "not a multiple of 16" in capsys.readouterr().err
    rc = run(_args(scan, "--color", "error", "--labels", str(tmp_path / "seq/labels/000000.label"),
                   "--png", str(tmp_path / "x.png"), "--backend", "numpy"))
    assert rc == 2 and "needs data this scan lacks" in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_cdcl_show_nuscenes(tmp_path, monkeypatch, capsys):
    monkeypatch.delenv("DISPLAY", raising=False)
    rng = np.random.default_rng(0)
    n = 2000
    pts = np.concatenate([rng.uniform(-30, 30, (n, 2)), rng.uniform(-2, 1, (n, 1)),
                          rng.uniform(0, 255, (n, 1)), rng.integers(0, 32, (n, 1))], 1).astype(np.float32)
    scan = tmp_path / "n015-LIDAR_TOP__1.pcd.bin"
    pts.tofile(scan)
    fine = C.nuscenes_fine_names()
    fine_ids = rng.choice([fine.index("flat.driveable_surface"), fine.index("vehicle.car")], n).astype(np.uint8)
    fine_ids.tofile(tmp_path / "tok_lidarseg.bin")
    names = C.nuscenes_class_names()
    challenge = (C.nuscenes_fine_to_train_lut()[fine_ids] + 1).astype(np.uint8)
    challenge.tofile(tmp_path / "pred.bin")
    out = tmp_path / "n.png"
    rc = run(_args(str(scan), "--labels", str(tmp_path / "tok_lidarseg.bin"), "--pred", str(tmp_path / "pred.bin"),
                   "--color", "label", "--png", str(out), "--backend", "numpy", "--range-png",
                   str(tmp_path / "nr.png")))
    assert rc == 0, capsys.readouterr().err
    img = np.asarray(Image.open(out))
    pal = C.nuscenes_train_palette()
    for name in ("driveable_surface", "car"):
        assert (img == pal[names.index(name)]).all(axis=2).sum() > 200, name
    # A fine-id file passed as a prediction is refused with a hint.
    fine_ids[0] = 30
    fine_ids.tofile(tmp_path / "fine_as_pred.bin")
    rc = run(_args(str(scan), "--pred", str(tmp_path / "fine_as_pred.bin"), "--png", str(out)))
    assert rc == 2 and "challenge ids 0..16" in capsys.readouterr().err


def test_show_scan_in_memory():
    points, labels, _ = make_scene()
    img = show_scan(points, labels, dataset="semantickitti", mode="range", width=200, height=150,
                    backend="numpy")
    assert img.shape[0] == 150 and img.shape[1] > 200


# -- TensorBoard -------------------------------------------------------------------------

class _Writer:
    def __init__(self):
        self.images = []

    def add_image(self, tag, img, step, dataformats="CHW"):
        self.images.append((tag, np.asarray(img).shape, step, dataformats))


def test_tensorboard_helpers(monkeypatch, caplog):
    import torch

    from cdcl3d.vis import tensorboard as tb

    pal = C.kitti_train_palette()
    b, h, w = 4, 8, 64
    rng = torch.rand(b, h, w) * 40
    logits = torch.randn(b, 19, h, w)
    labels = torch.randint(0, 19, (b, h, w))
    wr = _Writer()
    assert tb.add_range_images(wr, "val/range", 7, rng, rng / 40, labels, logits, pal, max_images=3) == 3
    assert wr.images[0] == ("val/range/0", (5 * 8 * 1 + 4 * 3, w, 3), 7, "HWC")

    points, lab, n_road = make_scene()
    preds, _ = make_preds(lab, n_road)
    assert tb.add_scan_render(wr, "val/scan", 7, torch.from_numpy(points), lab, preds, pal,
                              C.kitti_class_names(), 160, 120, backend="numpy")

    def boom(*a, **k):
        raise RuntimeError("Open3D offscreen rendering failed")
    monkeypatch.setattr(R, "render_gt_vs_pred", boom)
    with caplog.at_level("WARNING"):
        assert not tb.add_scan_render(wr, "val/scan", 8, points, lab, preds, pal)
    assert "skipping scan render" in caplog.text
    assert len(wr.images) == 4


def test_cdcl_show_scan_file_of_any_type(tmp_path, monkeypatch, capsys):
    """A scan file is read through its dataset type's row: SemanticPOSS raw
    ids (raw 9 = plants) by ``--dataset semanticposs``; an ending no type
    reads and an unknown type are one line each."""
    from cdcl3d.datasets.specs import DATASET_TYPES

    monkeypatch.delenv("DISPLAY", raising=False)
    rng = np.random.default_rng(0)
    n = 3000
    ang = rng.uniform(-np.pi, np.pi, n)
    pts = np.stack([20 * np.cos(ang), 20 * np.sin(ang), rng.uniform(-2, 1, n), rng.uniform(0, 50, n)],
                   1).astype(np.float32)
    (tmp_path / "02/velodyne").mkdir(parents=True)
    (tmp_path / "02/labels").mkdir()
    scan = tmp_path / "02/velodyne/000000.bin"
    pts.tofile(scan)
    np.full(n, 9, np.uint32).tofile(tmp_path / "02/labels/000000.label")
    out = tmp_path / "poss.png"
    rc = run(_args(str(scan), "--dataset", "semanticposs", "--png", str(out), "--backend", "numpy"))
    assert rc == 0, capsys.readouterr().err
    spec = DATASET_TYPES["semanticposs"]
    plants = spec.class_names({}).index("plants")
    assert (np.asarray(Image.open(out))[..., :3] == C.display_palette(spec.palette())[plants]).all(axis=2).sum() > 50
    rc = run(_args(str(tmp_path / "scan.xyz"), "--png", str(out)))
    assert rc == 2 and "not a scan file" in capsys.readouterr().err
    rc = run(_args(str(scan), "--dataset", "velodyne", "--png", str(out)))
    assert rc == 2 and "dataset type" in capsys.readouterr().err
