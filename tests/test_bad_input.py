"""Bad input through the ``cdcl`` command (issue 12, "one clear line instead of
a traceback"): every case exits 2 with one ``cdcl <cmd>: error: ...`` line that
names the file or key, prints no traceback, and leaves what an earlier run
wrote (work dir, results file) byte for byte as it was.

Tiny data: the core's toy task (in memory) and a few generated SemanticKITTI
scans; one toy training shared by the module.
"""
import hashlib
import os
import sys
import time

import numpy as np
import pytest
import yaml

from common.cli import main

TOY = {
    "task": "toy",
    "model": {"name": "toynet", "width": 4},
    "data": {"a": {"type": "toy", "batch_size": 2, "size": 4, "height": 8, "width": 8},
             "b": {"type": "toy", "batch_size": 2, "size": 4, "height": 8, "width": 8, "style": 1.0,
                   "num_classes": 3},
             "c": {"type": "toy", "size": 2, "height": 8, "width": 8, "style": 2.0, "num_classes": 3,
                   "branch": "b"}},
    "strategy": {"name": "cdcl"},
    "train": {"iterations": 1, "lr": 0.05, "checkpoint_every": 1, "log_every": 1, "progress": False,
              "threads": 1, "tb_images": False},
}


def _merge(base, over):
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(base[k], v) if isinstance(v, dict) and isinstance(base.get(k), dict) else v
    return out


def write_config(path, d):
    path.write_text(yaml.safe_dump(d, sort_keys=False))
    return str(path)


def snapshot(*paths):
    """{file: sha1} of every file under ``paths`` (files or folders)."""
    out = {}
    for p in map(str, paths):
        files = [p] if os.path.isfile(p) else [os.path.join(r, f) for r, _, fs in os.walk(p) for f in fs]
        for f in files:
            with open(f, "rb") as fh:
                out[f] = hashlib.sha1(fh.read()).hexdigest()
    return out


def run_bad(capsys, args, *named):
    """``cdcl ARGS`` must fail as bad input: exit 2, one error line naming ``named``."""
    rc = main([str(a) for a in args])
    cap = capsys.readouterr()
    text = cap.out + cap.err
    assert "Traceback" not in text, text
    assert rc == 2, text
    errors = [line for line in cap.err.splitlines() if line.startswith(f"cdcl {args[0]}: error: ")]
    assert len(errors) == 1, cap.err
    for name in named:
        assert str(name) in errors[0], (name, errors[0])
    return errors[0]


@pytest.fixture(scope="module")
def toy(tmp_path_factory):
    """A finished toy run (a, b trained; c unseen through b) and checkpoints of
    other configs: other datasets, another class count, another width."""
    root = tmp_path_factory.mktemp("toy")
    runs = {}
    others = {
        "main": TOY,
        "datasets": dict(TOY, data={"a": TOY["data"]["a"], "d": TOY["data"]["b"]}),  # a and d
        "classes": _merge(TOY, {"data": {"b": {"num_classes": 4}}}),
        "width": _merge(TOY, {"model": {"width": 8}}),
    }
    for name, d in others.items():
        cfg = write_config(root / f"{name}.yaml", d)
        work = root / name
        assert main(["train", cfg, "--work-dir", str(work)]) == 0
        runs[name] = (cfg, str(work / "checkpoints" / "latest.pth"))
    cfg, ckpt = runs["main"]
    results = root / "results.json"
    assert main(["eval", cfg, "--checkpoint", ckpt, "--out", str(results)]) == 0
    return {"root": root, "cfg": cfg, "ckpt": ckpt, "work": root / "main", "results": results, "runs": runs}


@pytest.fixture(scope="module")
def kitti(tmp_path_factory):
    from cdcl3d.synth import generate_lidar

    root = tmp_path_factory.mktemp("lidar")
    generate_lidar(str(root), seed=0, scans=2, points_scale=0.05, datasets=("semantickitti",))
    return root / "semantickitti"


def lidar_dict(root="/nonexistent/semantickitti", **over):
    d = {"task": "3d", "model": {"name": "salsanext", "width": 0.125, "dropout": 0.0},
         "data": {"semantickitti": {"type": "semantickitti", "root": str(root), "batch_size": 1,
                                    "sensor": {"height": 8, "width": 32},
                                    "augment": {"rotate": True, "scale": [0.95, 1.05]}}},
         "strategy": {"name": "single"},
         "train": {"iterations": 1, "progress": False, "threads": 1},
         "eval": {"max_samples": 1, "options": {"knn": False}}}
    return _merge(d, over)


# -- configs ----------------------------------------------------------------------

LIDAR_CONFIG_CASES = [  # (id, changes to the LiDAR config, what the message names)
    ("sensor-key", {"data": {"semantickitti": {"sensor": {"widht": 64}}}}, "data.semantickitti.sensor.widht"),
    ("augment-key", {"data": {"semantickitti": {"augment": {"rotat": True}}}},
     "data.semantickitti.augment.rotat"),
    ("eval-option-key", {"eval": {"options": {"knnn": 3}}}, "eval.options.knnn"),
    ("dataset-eval-key", {"data": {"semantickitti": {"eval": {"knnn": 3}}}}, "data.semantickitti.eval.knnn"),
    ("sensor-type", {"data": {"semantickitti": {"sensor": {"width": "abc"}}}},
     "data.semantickitti.sensor.width"),
    ("augment-type", {"data": {"semantickitti": {"augment": {"scale": "big"}}}},
     "data.semantickitti.augment.scale"),
    ("eval-option-type", {"eval": {"options": {"knn_k": "five"}}}, "eval.options.knn_k"),
    ("model-type", {"model": {"width": "abc"}}, "model.width"),
    ("model-key", {"model": {"widht": 0.5}}, "model.widht"),
    ("class-weights", {"data": {"semantickitti": {"class_weights": "contnet"}}},
     "data.semantickitti.class_weights"),
    ("fused-sparse", {"model": {"name": "sparse_unet", "base_channels": 8, "channels": [8, 16], "width": None,
                                "dropout": None},
                      "train": {"mode": "fused"},
                      "data": {"semantickitti": {"representation": "voxel"}}}, "train.mode"),
]


@pytest.mark.parametrize("over,named", [c[1:] for c in LIDAR_CONFIG_CASES],
                         ids=[c[0] for c in LIDAR_CONFIG_CASES])
def test_lidar_config_mistakes(tmp_path, capsys, toy, over, named):
    d = lidar_dict(**over)
    d["model"] = {k: v for k, v in d["model"].items() if v is not None}
    cfg = write_config(tmp_path / "lidar.yaml", d)
    before = snapshot(toy["work"])
    run_bad(capsys, ["train", cfg, "--work-dir", toy["work"]], named, "lidar.yaml")
    assert snapshot(toy["work"]) == before


TOY_CONFIG_CASES = [  # (id, overrides, what the message names)
    ("checkpoint_every=0", ["train.checkpoint_every=0"], "train.checkpoint_every"),
    ("log_every=0", ["train.log_every=0"], "train.log_every"),
    ("negative-batch", ["data.a.batch_size=-2"], "data.a.batch_size"),
    ("negative-workers", ["data.b.num_workers=-1"], "data.b.num_workers"),
    ("negative-eval-workers", ["eval.num_workers=-1"], "eval.num_workers"),
    ("negative-lr", ["train.lr=-0.1"], "train.lr"),
    ("nan-lr", ["train.lr=.nan"], "train.lr"),
    ("max_samples=-1", ["eval.max_samples=-1"], "eval.max_samples"),
    ("momentum", ["train.momentum=1.5"], "train.momentum"),
    ("model-type", ["model.width=abc"], "model.width"),
    ("data-key", ["data.a.sizee=3"], "data.a.sizee"),
    ("label_map-b-missing", ["strategy.name=label_remap"], "strategy.label_map.b"),
]


@pytest.mark.parametrize("overrides,named", [c[1:] for c in TOY_CONFIG_CASES],
                         ids=[c[0] for c in TOY_CONFIG_CASES])
def test_config_mistakes(capsys, toy, overrides, named):
    before = snapshot(toy["work"])
    run_bad(capsys, ["train", toy["cfg"], "--work-dir", toy["work"], *overrides], named, "main.yaml")
    assert snapshot(toy["work"]) == before


IMAGE_CONFIG_CASES = [  # image-task mistakes are ConfigErrors too, found when the config loads
    ("unknown-key", {"data": {"cs": {"cropp": 64}}}, "data.cs.cropp"),
    ("type", {"data": {"cs": {"type": "mapillary"}}}, "data.cs.type"),
    ("crop-type", {"data": {"cs": {"crop": "big"}}}, "data.cs.crop"),
    ("crop-size", {"data": {"cs": {"crop": [0, 64]}}}, "data.cs.crop"),
    ("scale", {"data": {"cs": {"scale": [2.0, 0.5]}}}, "data.cs.scale"),
    ("num_classes", {"data": {"cs": {"num_classes": 7}}}, "data.cs.num_classes"),
    ("eval-option-key", {"eval": {"options": {"mdoe": "slide"}}}, "eval.options.mdoe"),
    ("eval-option-value", {"data": {"cs": {"eval": {"mode": "sliding"}}}}, "data.cs.eval"),
    ("model-name", {"model": {"name": "deeplab"}}, "model.name"),
    ("model-key", {"model": {"chanels": 16}}, "model.chanels"),
    ("aux_weight", {"model": {"aux_weight": "heavy"}}, "model.aux_weight"),
]


@pytest.mark.parametrize("over,named", [c[1:] for c in IMAGE_CONFIG_CASES],
                         ids=[c[0] for c in IMAGE_CONFIG_CASES])
def test_image_config_mistakes(tmp_path, capsys, over, named):
    d = _merge({"task": "2d", "model": {"name": "pspnet", "channels": 16, "aux_channels": 8},
                "data": {"cs": {"type": "cityscapes", "root": "/nonexistent/cityscapes", "crop": [64, 64]}},
                "strategy": {"name": "single"}, "train": {"iterations": 1, "progress": False}}, over)
    cfg = write_config(tmp_path / "image.yaml", d)
    run_bad(capsys, ["train", cfg, "--work-dir", tmp_path / "w"], named, "image.yaml")
    assert not (tmp_path / "w").exists()


def test_max_samples_negative_is_refused_by_eval_and_results_survive(capsys, toy):
    before = snapshot(toy["results"])
    run_bad(capsys, ["eval", toy["cfg"], "--checkpoint", toy["ckpt"], "--out", toy["results"],
                     "eval.max_samples=-1"], "eval.max_samples")
    assert snapshot(toy["results"]) == before


@pytest.mark.parametrize("text,named", [
    ("_base_: 123\n", "_base_"),
    ("_base_: [base.yaml, [x]]\n", "_base_"),
    ("task: toy\nmodel: [1, 2\n", "not valid YAML"),
    ("- just\n- a list\n", "top level must be a mapping"),
    ("x: " + "[" * 100 + "]" * 100 + "\n", "nested too deeply"),
    ("x: " + "[" * 600 + "]" * 600 + "\n", "nested too deeply"),
], ids=["base-int", "base-list-of-list", "broken-yaml", "list", "deep", "deeper-than-the-parser"])
def test_malformed_config_files(tmp_path, capsys, text, named):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    run_bad(capsys, ["train", path, "--work-dir", tmp_path / "w"], named, "bad.yaml")
    assert not (tmp_path / "w").exists()


def test_binary_file_as_config(tmp_path, capsys, toy):
    path = tmp_path / "model.yaml"
    path.write_bytes(open(toy["ckpt"], "rb").read()[:4096])  # a checkpoint given as the config
    run_bad(capsys, ["train", path, "--work-dir", tmp_path / "w"], "model.yaml")
    path.write_bytes(bytes(range(256)) * 4)
    run_bad(capsys, ["info", path], "model.yaml")
    assert not (tmp_path / "w").exists()


def test_alias_bomb_is_refused_quickly(tmp_path, capsys, toy):
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    text = yaml.safe_dump(dict(TOY, eval={"options": {}}), sort_keys=False).replace(
        "options: {}", "options: {bomb: *a8}")
    path = tmp_path / "bomb.yaml"
    path.write_text("\n".join(lines) + "\n" + text.replace("task: toy", "task: toy", 1))
    start = time.time()
    run_bad(capsys, ["train", path, "--work-dir", tmp_path / "w"], "bomb.yaml", "alias")
    assert time.time() - start < 10
    assert not (tmp_path / "w").exists()


def test_lr_in_exponent_notation_is_a_float(tmp_path):
    from common.config import load_config

    d = dict(TOY, train=dict(TOY["train"], lr="LR"))
    path = tmp_path / "lr.yaml"
    path.write_text(yaml.safe_dump(d, sort_keys=False).replace("LR", "1e-3"))
    assert load_config(str(path)).train.lr == 0.001
    cfg = load_config(str(path), ["train.lr=5E-4", "train.weight_decay=1e-5"])
    assert cfg.train.lr == 5e-4 and cfg.train.weight_decay == 1e-5


def test_label_map_ignores_unseen_datasets(tmp_path, capsys):
    """label_remap with two trained datasets and an unseen one: valid (the
    unseen one does not count as a third), and its label table is optional."""
    d = _merge(TOY, {"strategy": {"name": "label_remap", "label_map": {"b": {0: 1, 1: 2, 2: 3}}}})
    cfg = write_config(tmp_path / "remap.yaml", d)
    assert main(["info", cfg]) == 0
    capsys.readouterr()
    d["strategy"]["label_map"]["a"] = {0: 0}
    run_bad(capsys, ["info", write_config(tmp_path / "remap.yaml", d)], "strategy.label_map.a")


# -- checkpoints ---------------------------------------------------------------------

@pytest.mark.parametrize("other,named", [
    ("datasets", ("datasets", "'d'", "'b'")),
    ("classes", ("head sizes", "b: 4 classes in the checkpoint, 3 in the config")),
    ("width", ("model.width: 8 in the checkpoint, 4 in the config", "shape")),
])
@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_checkpoint_of_another_config(tmp_path, capsys, toy, other, named, command):
    ckpt = toy["runs"][other][1]
    out = toy["results"] if command == "eval" else tmp_path / ("p" if command == "predict" else "m.onnx")
    args = {"eval": ["eval", toy["cfg"], "--checkpoint", ckpt, "--out", out],
            "predict": ["predict", toy["cfg"], "--checkpoint", ckpt, "--dataset", "a", "--split", "val",
                        "--out", out],
            "export": ["export", ckpt, "--config", toy["cfg"], "--dataset", "a", "--out", out]}[command]
    before = snapshot(toy["results"])
    run_bad(capsys, args, ckpt, *named)
    assert snapshot(toy["results"]) == before
    assert command == "eval" or not os.path.exists(out) or not os.listdir(out)


def test_show_with_a_checkpoint_of_another_config(tmp_path, capsys, toy, kitti):
    cfg = write_config(tmp_path / "kitti.yaml", lidar_dict(kitti))
    run_bad(capsys, ["show", cfg, "--index", "0", "--checkpoint", toy["ckpt"], "--backend", "numpy",
                     "--png", tmp_path / "x.png"], toy["ckpt"], "semantickitti", "datasets")
    assert not (tmp_path / "x.png").exists()


class Payload:
    """Not plain data: torch.load(weights_only=True) refuses it."""


def test_unreadable_checkpoints(tmp_path, capsys, toy):
    import torch

    evil = tmp_path / "evil.pth"
    torch.save({"model": {}, "x": Payload()}, str(evil))
    line = run_bad(capsys, ["eval", toy["cfg"], "--checkpoint", evil], evil)
    assert "weights_only" not in line and "trust" not in line
    truncated = tmp_path / "truncated.pth"
    truncated.write_bytes(open(toy["ckpt"], "rb").read()[:1000])
    run_bad(capsys, ["eval", toy["cfg"], "--checkpoint", truncated], truncated, "truncated")
    run_bad(capsys, ["export", tmp_path, "--dataset", "a", "--out", tmp_path / "m.onnx"], tmp_path, "folder")


# -- paths ----------------------------------------------------------------------------

def _no_work(*args, **kwargs):
    raise AssertionError("the model was loaded before --out was checked")


@pytest.mark.parametrize("command", ["eval", "predict", "export"])
def test_unwritable_out_is_refused_before_any_work(tmp_path, capsys, monkeypatch, toy, command):
    import common.evaluation

    monkeypatch.setattr(common.evaluation, "load_model_for_eval", _no_work)
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    bad = {"eval": blocker / "eval.json", "predict": blocker, "export": tmp_path}[command]
    args = {"eval": ["eval", toy["cfg"], "--checkpoint", toy["ckpt"], "--out", bad],
            "predict": ["predict", toy["cfg"], "--checkpoint", toy["ckpt"], "--dataset", "a", "--split", "val",
                        "--out", bad],
            "export": ["export", toy["ckpt"], "--dataset", "a", "--out", bad]}[command]
    run_bad(capsys, args, "--out", bad)
    assert blocker.read_text() == "keep me"


def test_eval_out_that_is_a_folder_is_left_alone(tmp_path, capsys, toy):
    folder = tmp_path / "results"
    folder.mkdir()
    (folder / "old.json").write_text("{}")
    run_bad(capsys, ["eval", toy["cfg"], "--checkpoint", toy["ckpt"], "--out", folder], folder, "folder")
    assert os.listdir(folder) == ["old.json"]


# -- datasets by name -------------------------------------------------------------------

def test_unknown_dataset_names(tmp_path, capsys, toy):
    run_bad(capsys, ["eval", toy["cfg"], "--checkpoint", toy["ckpt"], "--dataset", "zz"], "zz")
    run_bad(capsys, ["predict", toy["cfg"], "--checkpoint", toy["ckpt"], "--dataset", "zz",
                     "--out", tmp_path / "p"], "zz")
    run_bad(capsys, ["export", toy["ckpt"], "--dataset", "zz", "--out", tmp_path / "m.onnx"], "zz")
    assert not (tmp_path / "p").exists() and not (tmp_path / "m.onnx").exists()


def test_precise_bn_names_its_mistakes_before_any_work(tmp_path, capsys, monkeypatch, toy):
    import common.evaluation

    monkeypatch.setattr(common.evaluation, "load_model_for_eval", _no_work)
    base = ["precise-bn", toy["cfg"], "--checkpoint", toy["ckpt"], "--out", tmp_path / "pbn.pth"]
    run_bad(capsys, base + ["--dataset", "zz"], "--dataset", "zz")
    run_bad(capsys, base + ["--dataset", "c", "--branch", "zz"], "--branch", "zz")
    blocker = tmp_path / "a_file"
    blocker.write_text("keep me")
    run_bad(capsys, ["precise-bn", toy["cfg"], "--checkpoint", toy["ckpt"], "--dataset", "c",
                     "--out", blocker / "pbn.pth"], "--out")
    assert blocker.read_text() == "keep me" and not (tmp_path / "pbn.pth").exists()


def test_export_of_a_checkpoint_without_config(tmp_path, capsys, toy):
    import torch

    state = torch.load(toy["ckpt"], weights_only=True)
    del state["config"]
    bare = tmp_path / "bare.pth"
    torch.save(state, str(bare))
    run_bad(capsys, ["export", bare, "--dataset", "a", "--out", tmp_path / "m.onnx"], bare, "--config")


def test_demo_of_an_unknown_task(capsys):
    run_bad(capsys, ["demo", "--task", "4d"], "4d", "3d")


def test_demo_with_no_jobs_fails_before_generating_data(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    run_bad(capsys, ["demo", "--jobs", "0", "--out", tmp_path / "out"], "--jobs", "0")
    assert not (tmp_path / "data").exists() and not (tmp_path / "out").exists()


def test_info_of_the_sparse_network_is_one_line(capsys):
    import os
    cfg = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs/3d/cdcl_sparse.yaml")
    run_bad(capsys, ["info", cfg, "--no-data"], "sparse voxel network has no dense input")


@pytest.mark.parametrize("argv,named", [
    (["synth", "lidar", "--scans", "-1"], "--scans"),
    (["synth", "images", "--datasets", "bogus"], "bogus"),
])
def test_synth_options_out_of_range(capsys, tmp_path, argv, named):
    run_bad(capsys, argv + ["--out", str(tmp_path / "out")], named)
    assert not (tmp_path / "out").exists()


def test_bugs_keep_their_traceback_and_v_shows_every_one(monkeypatch, capsys, toy):
    """Only what the user can fix is one line: an internal KeyError stays an
    exception (a traceback), and ``-v`` re-raises the user errors too."""
    import common.evaluation
    from common.config import ConfigError

    def bug(*args, **kwargs):
        raise KeyError("inputs")

    monkeypatch.setattr(common.evaluation, "evaluate_checkpoint", bug)
    with pytest.raises(KeyError):
        main(["eval", toy["cfg"], "--checkpoint", toy["ckpt"]])
    with pytest.raises(ConfigError, match="train.log_every"):
        main(["-v", "train", toy["cfg"], "--work-dir", str(toy["work"]), "train.log_every=0"])


def test_export_of_an_unseen_dataset_exports_its_branch(tmp_path, capsys, toy):
    """c is never trained: eval and predict serve it through b's branch, and so does export."""
    import json

    out = tmp_path / "c.onnx"
    assert main(["export", toy["ckpt"], "--dataset", "c", "--out", str(out)]) == 0
    text = capsys.readouterr().out
    report = json.loads(text[text.index("{"):])
    assert report["dataset"] == "c" and report["branch"] == "b" and out.stat().st_size > 0


def test_show_names_its_mistakes(tmp_path, capsys, kitti):
    cfg = write_config(tmp_path / "kitti.yaml", lidar_dict(kitti))
    png = tmp_path / "x.png"
    run_bad(capsys, ["show", cfg, "--index", "99", "--png", png, "--backend", "numpy"], "--index 99")
    run_bad(capsys, ["show", cfg, "--dataset", "zz", "--png", png, "--backend", "numpy"], "zz", "kitti.yaml")
    scan = str(sorted(kitti.glob("sequences/08/velodyne/*.bin"))[0])
    run_bad(capsys, ["show", scan, "--color", "pred", "--png", png, "--backend", "numpy"], "pred")
    bad = tmp_path / "bad.label"
    np.full(len(np.fromfile(scan, np.float32)) // 4, 7777, np.uint32).tofile(bad)  # no such raw id
    run_bad(capsys, ["show", scan, "--labels", bad, "--png", png, "--backend", "numpy"], bad)
    assert not png.exists()


def test_show_keeps_the_traceback_of_a_bug(tmp_path, monkeypatch, kitti):
    import cdcl3d.vis.cli

    def bug(*args, **kwargs):
        raise ValueError("a bug, not bad input")

    monkeypatch.setattr(cdcl3d.vis.cli, "colorize", bug)
    scan = str(sorted(kitti.glob("sequences/08/velodyne/*.bin"))[0])
    with pytest.raises(ValueError, match="a bug"):
        main(["show", scan, "--png", str(tmp_path / "x.png"), "--backend", "numpy"])


# -- Open3D without its system libraries --------------------------------------------------

def _scan(tmp_path):
    path = tmp_path / "000000.bin"
    np.random.default_rng(0).uniform(-10, 10, (200, 4)).astype(np.float32).tofile(path)
    return path


def test_render_without_open3d_system_libraries_in_process(tmp_path, capsys, monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "open3d" or name.startswith("open3d."):
            raise ImportError("libusb-1.0.so.0: cannot open shared object file: No such file or directory")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    monkeypatch.delitem(sys.modules, "open3d", raising=False)
    png = tmp_path / "x.png"
    run_bad(capsys, ["show", _scan(tmp_path), "--backend", "open3d", "--png", png],
            "libusb-1.0.so.0", "scripts/install.sh")
    assert not png.exists()


def test_render_without_open3d_system_libraries_in_the_child(tmp_path, capsys, monkeypatch):
    fake = tmp_path / "fake" / "open3d"
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text(
        'raise ImportError("libusb-1.0.so.0: cannot open shared object file: No such file or directory")\n')
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(fake.parent), os.environ.get("PYTHONPATH", "")]))
    run_bad(capsys, ["show", _scan(tmp_path), "--png", tmp_path / "x.png"], "libusb-1.0.so.0", "scripts/install.sh")
