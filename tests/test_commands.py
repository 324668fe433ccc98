"""The command line as a user meets it: help text and examples, --version,
``cdcl show`` on an image config and on a scan, ``cdcl export``'s report,
the generated nuScenes test split through ``cdcl predict`` and the devkit's
``validate_submission``, override typos. Tiny generated data throughout."""
from __future__ import annotations

import argparse
import json
import os
import warnings

import numpy as np
import pytest
import torch
import yaml
from PIL import Image

from common.cli import build_parser, main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# -- help, examples, --version --------------------------------------------------------

def _walk(parser: argparse.ArgumentParser, name: str = "cdcl"):
    yield name, parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub_name, sub in action.choices.items():
                yield from _walk(sub, f"{name} {sub_name}")


def test_every_option_has_help_and_every_command_ends_with_an_example():
    seen = []
    for name, parser in _walk(build_parser()):
        seen.append(name)
        for action in parser._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            what = "/".join(action.option_strings) or action.dest
            assert action.help and action.help != argparse.SUPPRESS, f"{name}: {what} has no help text"
        lines = [line.strip() for line in (parser.epilog or "").splitlines()]
        assert any(line.startswith("cdcl ") for line in lines), f"{name}: no example in its help"
        # the example is the last thing --help prints, kept as written
        assert parser.format_help().rstrip().splitlines()[-1].strip() == lines[-1], name
    for expected in ("cdcl train", "cdcl eval", "cdcl predict", "cdcl export", "cdcl show",
                     "cdcl synth lidar", "cdcl synth images", "cdcl precise-bn", "cdcl demo", "cdcl info"):
        assert expected in seen


def test_version(capsys):
    from importlib.metadata import version

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out.strip() == f"cdcl {version('cdcl')}"


# -- override typos ----------------------------------------------------------------------

def test_override_typos_name_the_dataset_or_key(capsys):
    from common.config import ConfigError, load_config

    cfg3d = os.path.join(REPO, "configs", "3d", "synth_cdcl.yaml")
    with pytest.raises(ConfigError, match=r"unknown dataset 'semantickiti'; the config declares "
                                          r"semantickitti, nuscenes"):
        load_config(cfg3d, ["data.semantickiti.root=/data/kitti"])
    with pytest.raises(ConfigError, match=r"synth_cdcl\.yaml: unknown key 'model\.widht'; valid keys: width"):
        load_config(cfg3d, ["model.widht=0.5"])
    cfg2d = os.path.join(REPO, "configs", "2d", "synth_cdcl.yaml")
    with pytest.raises(ConfigError, match=r"unknown key 'model\.widht'; valid keys: backbone"):
        load_config(cfg2d, ["model.widht=0.5"])
    # a dataset added on the command line (with its type) is still possible
    cfg = load_config(cfg3d, ["data.kitti2.type=semantickitti", "data.kitti2.root=/x", "data.kitti2.branch=semantickitti"])
    assert "kitti2" in cfg.data
    assert main(["info", cfg3d, "--no-data", "data.semantickiti.root=/x"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown dataset 'semantickiti'" in err


# -- cdcl show on an image config -------------------------------------------------------------

@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """Generated Cityscapes images, a config file and a 1-iteration checkpoint."""
    from cdcl2d.synth import write_dataset
    from common.config import load_config
    from common.trainer import train

    root = tmp_path_factory.mktemp("images")
    write_dataset("cityscapes", str(root), num_train=2, num_val=2, seed=1, size=(64, 32))
    config = root / "city.yaml"
    config.write_text(yaml.safe_dump({
        "task": "2d",
        "model": {"name": "pspnet", "output_stride": 16, "channels": 16, "aux_channels": 8},
        "data": {"cityscapes": {"type": "cityscapes", "root": str(root / "cityscapes"), "batch_size": 2,
                                "crop": [32, 32], "num_workers": 0}},
        "strategy": {"name": "single"},
        "train": {"iterations": 1, "progress": False, "tb_images": False, "log_every": 1},
        "eval": {"batch_size": 1, "max_samples": 1}}))
    work = root / "run"
    train(load_config(str(config)), str(work))
    return str(config), str(work / "checkpoints" / "latest.pth")


def test_show_image_config_draws_image_ground_truth_and_prediction(image_run, tmp_path, capsys):
    from cdcl2d.visualize import WRONG_COLOR, palette

    config, ckpt = image_run
    out = {mode: tmp_path / f"{mode}.png" for mode in ("label", "pred", "error")}
    assert main(["show", config, "--dataset", "cityscapes", "--index", "1", "--png", str(out["label"])]) == 0
    for mode in ("pred", "error"):
        assert main(["show", config, "--index", "1", "--checkpoint", ckpt, "--color", mode,
                     "--png", str(out[mode])]) == 0
    assert f"wrote {out['error']}" in capsys.readouterr().out
    pics = {mode: np.asarray(Image.open(p).convert("RGB")) for mode, p in out.items()}
    # image | ground truth, then a third panel: one panel wider
    assert pics["pred"].shape[1] == pics["error"].shape[1] > 1.4 * pics["label"].shape[1]
    # the ground truth in the official colours (road is in every generated scene)
    road = palette("cityscapes")[0]
    assert (pics["label"] == road).all(axis=2).sum() > 1000
    # the error panel: red where the (untrained) prediction is wrong, only there
    red = (pics["error"] == np.array(WRONG_COLOR, np.uint8)).all(axis=2)
    third = pics["error"].shape[1] * 2 // 3
    assert red[:, third:].sum() > 1000 and red[:, :third // 2].sum() == 0


def test_show_image_config_refuses_what_does_not_apply(image_run, tmp_path, capsys):
    config, ckpt = image_run
    png = str(tmp_path / "x.png")
    cases = [(["--color", "intensity"], "an image has the colour modes label, pred, error"),
             (["--color", "error"], "needs a prediction: pass --checkpoint"),
             (["--range-png", str(tmp_path / "r.png")], "--range-png is for LiDAR scans"),
             (["--index", "7"], "--index 7 outside 0..1")]
    for extra, message in cases:
        assert main(["show", config, "--png", png] + extra) == 2
        err = capsys.readouterr().err
        assert message in err and "Traceback" not in err, (extra, err)
    assert not os.path.exists(png)


def test_show_dispatches_to_the_task(capsys):
    """A task without pictures says so (Task.show), the CLI does not guess by type."""
    assert main(["show", os.path.join(REPO, "configs", "toy", "cdcl_toy.yaml")]) == 2
    assert "the 'toy' task draws no pictures" in capsys.readouterr().err


# -- LiDAR renders ------------------------------------------------------------------------------

def test_scan_render_fits_every_point_with_title_scale_bar_arrow_and_full_legend(tmp_path):
    from cdcl3d.vis import colors as C
    from cdcl3d.vis.cli import PICTURE_PAD, show_scan
    from cdcl3d.vis.render import fit_camera, project_points_to_image

    rng = np.random.default_rng(0)
    names = C.class_names("semantickitti")
    sidewalk, road = names.index("sidewalk"), names.index("road")
    # a street 60 m long plus one far return 95 m away: the old fixed 100 m view lost it
    pts = np.concatenate([rng.uniform([-30, -8, -1.7, 0], [30, 8, -1.5, 1], (3000, 4)),
                          [[95.0, 40.0, 0.0, 0.5]]]).astype(np.float32)
    labels = np.where(np.abs(pts[:, 1]) > 5, sidewalk, road).astype(np.int64)
    w, h = 640, 480
    for camera in ("bev", "chase"):
        cam = fit_camera(camera, pts, w, h, forward="x", pad=PICTURE_PAD)
        u, v, vis = project_points_to_image(pts, cam, w, h)
        top, right, bottom, left = PICTURE_PAD
        assert vis.all(), camera
        assert u.min() >= left - 1 and u.max() <= w - right + 1, camera
        assert v.min() >= top - 1 and v.max() <= h - bottom + 1, camera
    img = show_scan(pts, labels, dataset="semantickitti", mode="label", width=w, height=h, backend="numpy",
                    title="semantickitti 08/000042", png=str(tmp_path / "k.png"))
    shown = C.display_palette(C.train_palette("semantickitti"))
    scene, legend = img[:, :w], img[:, w:]
    # sidewalk (75, 0, 75) is lifted for the black background; files keep the official colour
    assert tuple(C.train_palette("semantickitti")[sidewalk]) == (75, 0, 75)
    assert C.lightness(shown[sidewalk]) >= 39.5 and tuple(shown[sidewalk]) != (75, 0, 75)
    assert (scene == shown[sidewalk]).all(axis=2).sum() > 500
    # title above, scale bar and forward arrow below, in the strips kept free of points
    assert (scene[:PICTURE_PAD[0]] > 200).all(axis=2).sum() > 100  # caption text
    bottom = scene[h - PICTURE_PAD[2]:]
    assert (bottom == 235).all(axis=2).sum() > 100  # the scale bar and its label
    assert (bottom == np.array((255, 230, 0), np.uint8)).all(axis=2).sum() > 50  # the arrow
    # the legend: every class, a full-colour swatch for the present ones, a dim one for the rest
    for i, rgb in enumerate(shown):
        full = (legend == rgb).all(axis=2).sum()
        assert (full >= 100) == (i in (road, sidewalk)), names[i]
        if i not in (road, sidewalk):
            assert (legend == rgb // 3).all(axis=2).sum() >= 100, names[i]


def test_nice_scale_bar_lengths():
    from cdcl3d.vis.legend import nice_length

    assert [nice_length(v) for v in (0.9, 1.6, 4.0, 13.0, 30.0, 80.0)] == [1, 2, 5, 10, 20, 100]


# -- the nuScenes test split, predict, export -------------------------------------------------------

@pytest.fixture(scope="module")
def nuscenes_run(tmp_path_factory):
    """``cdcl synth lidar --only nuscenes`` (mini + the 150-scene test version)
    and a 1-iteration SalsaNext checkpoint trained on the mini split."""
    from common.config import build_config
    from common.trainer import train

    root = tmp_path_factory.mktemp("lidar")
    assert main(["synth", "lidar", "--out", str(root), "--scans", "10", "--points", "0.1",
                 "--only", "nuscenes"]) == 0
    cfg = {"task": "3d", "model": {"name": "salsanext", "width": 0.125, "dropout": 0.0},
           "data": {"nuscenes": {"type": "nuscenes", "root": str(root / "nuscenes"), "version": "v1.0-mini",
                                 "batch_size": 2, "num_workers": 0,
                                 "sensor": {"height": 32, "width": 64, "use_ring": True}}},
           "strategy": {"name": "single"},
           "train": {"iterations": 1, "progress": False, "log_every": 1, "threads": 1},
           "eval": {"max_samples": 1}}
    config = root / "nusc.yaml"
    config.write_text(yaml.safe_dump(cfg))
    train(build_config(cfg, source=str(config)), str(root / "run"))
    return root, str(config), str(root / "run" / "checkpoints" / "latest.pth")


def test_generated_nuscenes_test_version_is_the_devkit_test_split(nuscenes_run, capsys):
    from nuscenes import NuScenes
    from nuscenes.utils import splits

    from cdcl3d.synth.lidar import NUSCENES_TEST

    root = nuscenes_run[0] / "nuscenes"
    assert list(NUSCENES_TEST) == splits.test
    nusc = NuScenes(version="v1.0-test", dataroot=str(root), verbose=False)
    assert sorted(s["name"] for s in nusc.scene) == sorted(splits.test)
    assert len(nusc.sample) == 150 and not nusc.instance and not nusc.sample_annotation and not nusc.lidarseg
    assert os.listdir(root / "lidarseg" / "v1.0-test") == []
    for sample in nusc.sample[:5]:
        assert os.path.isfile(nusc.get_sample_data_path(sample["data"]["LIDAR_TOP"]))
    # the mini version is untouched by it
    mini = NuScenes(version="v1.0-mini", dataroot=str(root), verbose=False)
    assert len(mini.scene) == 10 and len(mini.lidarseg) == len(mini.sample) == 10


def test_predict_on_generated_test_split_passes_validate_submission(nuscenes_run, tmp_path, capsys):
    from nuscenes import NuScenes
    from nuscenes.eval.lidarseg.validate_submission import validate_submission

    root, config, ckpt = nuscenes_run
    out = tmp_path / "submission_nusc"
    # the README's command, on the generated data
    assert main(["predict", config, "--checkpoint", ckpt, "--dataset", "nuscenes", "--split", "test",
                 "--out", str(out), "data.nuscenes.version=v1.0-test"]) == 0
    assert "(150 files)" in capsys.readouterr().out
    nusc = NuScenes(version="v1.0-test", dataroot=str(root / "nuscenes"), verbose=False)
    validate_submission(nusc, str(out), "test")  # raises on anything wrong
    assert json.loads((out / "test" / "submission.json").read_text())["meta"]["use_lidar"] is True


def test_predict_on_a_split_without_scenes_is_an_error(nuscenes_run, tmp_path, capsys):
    root, config, ckpt = nuscenes_run
    for split, version in (("val", "v1.0-test"), ("test", "v1.0-mini")):
        assert main(["predict", config, "--checkpoint", ckpt, "--dataset", "nuscenes", "--split", split,
                     "--out", str(tmp_path / split), f"data.nuscenes.version={version}"]) == 2
        err = capsys.readouterr().err
        assert "has no scans" in err and version in err and "Traceback" not in err, err


def test_export_has_a_dynamic_batch_and_says_why_nothing_folds(nuscenes_run, tmp_path, capsys):
    import onnxruntime as ort

    _, _, ckpt = nuscenes_run
    out = tmp_path / "nuscenes.onnx"
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["export", ckpt, "--dataset", "nuscenes", "--out", str(out)]) == 0
    assert not [w for w in caught if issubclass(w.category, torch.jit.TracerWarning)]
    captured = capsys.readouterr()
    assert "TracerWarning" not in captured.err
    report = json.loads(captured.out)
    assert "folded_batchnorms" not in report
    assert report["batchnorm_folding"].startswith("nothing folded: no BatchNorm follows a convolution directly")
    assert "in SalsaNext every BatchNorm follows a LeakyReLU" in report["batchnorm_folding"]
    assert report["input_shape"][0] == "batch" and report["onnx_batch_sizes_checked"] == [1, 2]
    assert report["max_abs_diff_onnx_vs_torch"] < 1e-3
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape[0] == "batch"
    for batch in (1, 2):
        x = np.random.default_rng(batch).standard_normal((batch, 5, 32, 64)).astype(np.float32)
        assert sess.run(None, {"input": x})[0].shape == (batch, 16, 32, 64)
