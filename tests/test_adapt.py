"""``cdcl adapt``: branch choice, precise BN / TENT into a new branch, and the
LiDAR corruptions of ``cdcl synth lidar --corrupt``."""
from __future__ import annotations

import json

import pytest
import torch

from common.checkpoint import load_checkpoint
from common.config import build_config
from common.trainer import train


def unseen_cfg(tmp_path, new_style=1.2, **data):
    """Toy a (style 0) and b (style 1.0) trained; c unseen, served by a."""
    d = {"task": "toy", "model": {"name": "toynet", "width": 8},
         "data": {"a": {"type": "toy", "batch_size": 2, "size": 6, "height": 16, "width": 16},
                  "b": {"type": "toy", "batch_size": 2, "size": 6, "height": 16, "width": 16, "style": 1.0},
                  "c": dict({"type": "toy", "batch_size": 2, "size": 6, "height": 16, "width": 16,
                             "style": new_style, "branch": "a"}, **data)},
         "strategy": {"name": "cdcl"},
         "train": {"iterations": 8, "lr": 0.05, "checkpoint_every": 8, "eval_every": 0, "progress": False,
                   "log_every": 4}}
    return build_config(d, source=str(tmp_path / "toy.yaml"))


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adapt")
    cfg = unseen_cfg(tmp)
    train(cfg, str(tmp / "run"))
    # eight steps leave running statistics near their start: set each branch's
    # to its own dataset's (precise BN), so each branch's statistics describe its style
    from common.adapt import copy_into_branch
    from common.build import build_dataset
    from common.checkpoint import save_checkpoint
    from common.dataset_specific import collapse
    from common.evaluation import load_model_for_eval
    from common.precise_bn import update_bn_stats

    ckpt = str(tmp / "run" / "checkpoints" / "latest.pth")
    model = load_model_for_eval(cfg, ckpt, torch.device("cpu"))
    for name in ("a", "b"):
        ds = build_dataset(cfg, name, "train", False)
        x = torch.stack([ds[i]["inputs"] for i in range(len(ds))])
        plain = collapse(model, name)
        update_bn_stats(plain, [x], lambda m, b: m(b))
        copy_into_branch(model, plain, name)
    ck = load_checkpoint(ckpt)
    ck["model"] = model.state_dict()
    save_checkpoint(ck, str(tmp / "set.pth"))
    return tmp, str(tmp / "run" / "config.yaml"), str(tmp / "set.pth")


def _adapt(config, ckpt, out, *extra):
    from common.cli import main
    return main(["adapt", config, "--checkpoint", ckpt, "--dataset", "c", "--out", str(out), "--batches", "3",
                 *extra])


def test_auto_picks_the_branch_whose_training_style_is_closest(trained, capsys):
    from common.adapt import pick_branch, score_branches
    from common.build import build_dataset
    from common.evaluation import load_model_for_eval

    tmp, config, ckpt = trained
    cfg = unseen_cfg(tmp)
    model = load_model_for_eval(cfg, ckpt, torch.device("cpu"))
    for style, want in ((0.1, "a"), (1.1, "b")):
        cfg.data["c"].params.update(style=style)
        ds = build_dataset(cfg, "c", "train", False)
        x = torch.stack([ds[i]["inputs"] for i in range(len(ds))])
        scores = score_branches(model, lambda: [{"inputs": x}], lambda m, b: m(b["inputs"]))
        assert pick_branch(scores) == want, scores
        assert all(s["entropy"] >= 0 and s["bn_distance"] >= 0 for s in scores.values())
    # through the command: the table of both measures, the choice
    capsys.readouterr()
    assert _adapt(config, ckpt, tmp / "auto.pth") == 0  # c has style 1.2 in the config: b
    out = capsys.readouterr().out
    assert "BN distance" in out and "entropy" in out and "branch 'c' = branch 'b'" in out
    assert load_checkpoint(str(tmp / "auto.pth"))["adapted"]["c"]["from"] == "b"


def test_adapted_checkpoint_has_the_new_branch_and_sources_bit_identical(trained):
    from common.adapt import add_branch
    from common.dataset_specific import collapse, dataset_names, route
    from common.evaluation import load_model_for_eval

    tmp, config, ckpt = trained
    out = tmp / "pbn.pth"
    assert _adapt(config, ckpt, out, "--branch", "a") == 0
    before, after = load_checkpoint(ckpt), load_checkpoint(str(out))
    for k, v in before["model"].items():
        assert torch.equal(v, after["model"][k]), k  # every source entry, bit for bit
    new_keys = set(after["model"]) - set(before["model"])
    assert new_keys and all(".branches.c." in k for k in new_keys)
    assert any(k.startswith("cls.branches.c.") for k in new_keys)  # a head for c
    assert after["num_classes"]["c"] == before["num_classes"]["a"]
    # the new statistics differ from a's (precise BN on c), the affine ones are a's
    assert not torch.equal(after["model"]["bn1.branches.c.running_mean"], before["model"]["bn1.branches.a.running_mean"])
    assert torch.equal(after["model"]["bn1.branches.c.weight"], before["model"]["bn1.branches.a.weight"])
    # loads with the config that declares c unseen: c now routes to its own branch
    cfg = unseen_cfg(tmp)
    model = load_model_for_eval(cfg, str(out), torch.device("cpu"))
    assert dataset_names(model) == ["a", "b", "c"]
    x = torch.randn(2, 3, 16, 16) * 2 + 1
    with torch.no_grad(), route(model, "c"):
        y = model(x)
    assert torch.allclose(y, collapse(model, "c")(x))
    # ... and with a config where c is a trained dataset
    d = cfg.to_dict()
    del d["data"]["c"]["branch"]
    d["data"]["c"]["num_classes"] = 4
    cfg2 = build_config(d, source="toy2")
    model2 = load_model_for_eval(cfg2, str(out), torch.device("cpu"))
    assert all(torch.equal(v, model2.state_dict()[k]) for k, v in model.state_dict().items())
    with pytest.raises(KeyError):
        add_branch(model, "c", "a")


def test_eval_and_export_of_the_new_branch_through_the_cli(trained):
    from common.cli import main

    tmp, config, ckpt = trained
    out = tmp / "cli.pth"
    assert _adapt(config, ckpt, out, "--branch", "a") == 0
    res = tmp / "res.json"
    assert main(["eval", config, "--checkpoint", str(out), "--dataset", "c", "--out", str(res)]) == 0
    data = json.loads(res.read_text())
    assert "c" in json.dumps(data)
    pytest.importorskip("onnx")
    onnx_out = tmp / "c.onnx"
    assert main(["export", str(out), "--dataset", "c", "--out", str(onnx_out)]) == 0
    assert onnx_out.stat().st_size > 0


def test_tent_lowers_entropy_and_changes_only_bn_affine_parameters(trained):
    from common.adapt import tent
    from common.build import build_dataset
    from common.dataset_specific import collapse
    from common.evaluation import load_model_for_eval

    tmp, config, ckpt = trained
    cfg = unseen_cfg(tmp)
    model = load_model_for_eval(cfg, ckpt, torch.device("cpu"))
    plain = collapse(model, "a")
    ds = build_dataset(cfg, "c", "train", False)
    x = torch.stack([ds[i]["inputs"] for i in range(len(ds))])
    start = {k: v.clone() for k, v in plain.state_dict().items()}
    losses = tent(plain, lambda: [{"inputs": x}], lambda m, b: m(b["inputs"]), steps=30, lr=0.05)
    assert len(losses) == 30 and losses[-1] < losses[0]
    changed = {k for k, v in plain.state_dict().items() if not torch.equal(v, start[k])}
    assert changed and all(k.split(".")[0].startswith("bn") and k.endswith(("weight", "bias")) for k in changed)
    # through the command
    out = tmp / "tent.pth"
    assert _adapt(config, ckpt, out, "--branch", "a", "--method", "tent", "--steps", "5") == 0
    ck = load_checkpoint(str(out))
    assert ck["adapted"]["c"]["method"] == "tent"
    assert not torch.equal(ck["model"]["bn1.branches.c.weight"], ck["model"]["bn1.branches.a.weight"])
    assert torch.equal(ck["model"]["conv1.weight"], load_checkpoint(ckpt)["model"]["conv1.weight"])


def test_bad_input_is_a_clear_error(trained, capsys):
    from common.cli import main

    tmp, config, ckpt = trained
    capsys.readouterr()
    assert main(["adapt", config, "--checkpoint", ckpt, "--dataset", "a", "--out", str(tmp / "x.pth")]) != 0
    assert "is trained" in capsys.readouterr().err
    assert _adapt(config, ckpt, tmp / "x.pth", "--branch", "zzz") != 0
    assert "--branch 'zzz'" in capsys.readouterr().err
    assert _adapt(config, ckpt, tmp / "once.pth", "--branch", "a") == 0
    capsys.readouterr()
    assert _adapt(config, str(tmp / "once.pth"), tmp / "x.pth") != 0
    assert "already has a branch 'c'" in capsys.readouterr().err
    assert _adapt(config, ckpt, tmp / "x.pth", "data.c.size=0") != 0
    assert "no scans" in capsys.readouterr().err
    assert not (tmp / "x.pth").exists()


# -- LiDAR corruptions (cdcl synth lidar --corrupt) -------------------------------------

@pytest.fixture(scope="module")
def kitti(tmp_path_factory):
    from cdcl3d.synth import generate_lidar

    root = tmp_path_factory.mktemp("corrupt")
    generate_lidar(str(root), seed=0, scans=8, points_scale=0.2, datasets=("semantickitti",))
    return root


def _scans(root):
    import glob
    import numpy as np

    out = []
    for path in sorted(glob.glob(str(root / "sequences" / "08" / "velodyne" / "*.bin"))):
        pts = np.fromfile(path, np.float32).reshape(-1, 4)
        lab = np.fromfile(path.replace("velodyne", "labels")[:-4] + ".label", np.uint32)
        out.append((pts, lab))
    return out


@pytest.mark.parametrize("corruption", ["fog", "snow", "beam-drop", "crosstalk", "motion-blur"])
def test_corruption_keeps_the_layout_and_readers_and_grows_with_severity(kitti, corruption):

    import numpy as np

    from cdcl3d.datasets.semantickitti import SemanticKITTI
    from cdcl3d.synth.corrupt import corrupt_semantickitti
    from common.errors import DataError

    src = kitti / "semantickitti"
    clean = _scans(src)
    measures = []
    for severity in (1, 3, 5):
        out = kitti / f"{corruption}_{severity}"
        corrupt_semantickitti(str(src), str(out), corruption, severity, seed=0)
        scans = _scans(out)
        assert len(scans) == len(clean)
        for pts, lab in scans:
            assert pts.dtype == np.float32 and len(pts) == len(lab) and np.isfinite(pts).all()
        ds = SemanticKITTI(str(out), split="valid")  # the real reader, the official split list
        assert len(ds) == len(clean)
        with pytest.raises(DataError, match="no scans"):  # only the validation split is corrupted
            SemanticKITTI(str(out), split="train")
        item = ds[0]
        assert len(item["points"]) == len(item["labels"]) == len(scans[0][0])
        n = sum(len(p) for p, _ in scans)
        n0 = sum(len(p) for p, _ in clean)
        zero = sum(int((l == 0).sum()) for _, l in scans)
        moved = sum(float(np.abs(p[:, :3] - c[:, :3]).mean()) for (p, _), (c, _) in zip(scans, clean)
                    if len(p) == len(c))
        if corruption in ("fog", "beam-drop"):
            measures.append(n0 - n)           # points lost
        elif corruption in ("snow", "crosstalk"):
            measures.append(zero)             # points with label 0 (added, moved)
        else:
            assert n == n0
            measures.append(moved)            # displacement
    assert measures[0] > 0 and measures[0] < measures[1] < measures[2], measures
    # deterministic for a seed
    again = kitti / f"{corruption}_again"
    corrupt_semantickitti(str(src), str(again), corruption, 5, seed=0)
    for a, b in zip(_scans(again), _scans(kitti / f"{corruption}_5")):
        assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])


def test_fog_drops_far_points_and_labels_follow(kitti):
    import numpy as np

    from cdcl3d.synth.corrupt import corrupt_scan

    (pts, lab), = _scans(kitti / "semantickitti")[:1]
    r = np.linalg.norm(pts[:, :3], axis=1)
    out, olab = corrupt_scan(pts, lab, "fog", 5, np.random.default_rng(0))
    ro = np.linalg.norm(out[:, :3], axis=1)
    assert (ro > 40).sum() < 0.5 * (r > 40).sum()
    # a kept, unmoved point keeps its label
    same = {tuple(p): l for p, l in zip(pts[:, :3].tolist(), lab.tolist())}
    kept = [(tuple(p), l) for p, l in zip(out[:, :3].tolist(), olab.tolist()) if tuple(p) in same]
    assert kept and all(same[p] == l for p, l in kept)


def test_synth_lidar_corrupt_command(kitti, capsys):
    from common.cli import main

    assert main(["synth", "lidar", "--out", str(kitti), "--corrupt", "beam-drop", "snow", "--severity", "2"]) == 0
    assert (kitti / "semantickitti_beam_drop_2" / "sequences" / "08" / "labels").is_dir()
    assert (kitti / "semantickitti_snow_2" / "sequences" / "08" / "velodyne").is_dir()
    capsys.readouterr()
    assert main(["synth", "lidar", "--out", str(kitti), "--corrupt", "fog", "--severity", "9"]) != 0
    assert "1..5" in capsys.readouterr().err


def test_label_map_from_scores_only_the_reachable_classes(trained, capsys):
    from common.adapt import MappedHead
    from common.cli import main

    tmp, config, ckpt = trained
    # c has 3 classes: a's 0 -> 0, a's 1 and 2 -> 1; c's class 2 is reached by none
    maps = "data.c.label_map_from={a: {0: 0, 1: 1, 2: 1}}"
    assert _adapt(config, ckpt, tmp / "mapped.pth", "data.c.num_classes=3", maps) == 0
    ck = load_checkpoint(str(tmp / "mapped.pth"))
    assert ck["adapted"]["c"]["from"] == "a" and ck["num_classes"]["c"] == 3  # b (4 classes) cannot serve c
    res = tmp / "mapped.json"
    capsys.readouterr()
    assert main(["eval", config, "data.c.num_classes=3", maps, "--checkpoint", str(tmp / "mapped.pth"),
                 "--dataset", "c", "--out", str(res)]) == 0
    out = capsys.readouterr().out
    assert "the 2 of 3 classes the label map reaches" in out and "(not scored)" in out
    data = json.loads(res.read_text())
    assert json.dumps(data).count("class2") >= 1
    # before adapting, c is scored through a's branch and the same map
    capsys.readouterr()
    assert main(["eval", config, "data.c.num_classes=3", maps, "--checkpoint", ckpt, "--dataset", "c"]) == 0
    assert "the 2 of 3 classes the label map reaches" in capsys.readouterr().out
    # the mapped head: probabilities of the mapped source classes summed
    head = MappedHead(torch.nn.Identity(), {0: 0, 1: 1, 2: 1}, 3)
    logits = torch.log(torch.tensor([[0.1, 0.2, 0.3, 0.4]]))
    p = torch.softmax(head(logits), 1)
    assert torch.allclose(p, torch.tensor([[0.1 / 0.6, 0.5 / 0.6, 0.0]]), atol=1e-4)
    # unknown classes: a clear error before any work
    assert _adapt(config, ckpt, tmp / "bad.pth", "data.c.num_classes=3", "data.c.label_map_from={a: {7: 0, 0: 5}}") != 0
    err = capsys.readouterr().err
    assert "unknown classes" in err and "[7]" in err and "[5]" in err and not (tmp / "bad.pth").exists()
    assert _adapt(config, ckpt, tmp / "bad.pth", "data.c.label_map_from={zz: {0: 0}}") != 0
    assert "no trained dataset" in capsys.readouterr().err


def test_lidar_recipe_train_adapt_eval_on_the_unseen_sensor(tmp_path):
    """configs/3d/synth_unseen_semanticposs.yaml's recipe on tiny generated
    data: train, adapt (auto, TENT), eval the new branch through its table."""
    import yaml

    from cdcl3d.synth import generate_lidar
    from common.cli import main
    from common.config import load_yaml

    root = tmp_path / "data"
    generate_lidar(str(root), seed=0, scans=12, points_scale=0.2)
    assert main(["synth", "lidar", "--out", str(root), "--corrupt", "fog", "--severity", "3"]) == 0
    shipped = load_yaml("configs/3d/synth_unseen_semanticposs.yaml")["data"]["semanticposs"]  # _base_ merged
    sensor = {"height": 16, "width": 64}
    d = {"task": "3d", "model": {"name": "salsanext", "width": 0.125, "dropout": 0.0},
         "data": {"semantickitti": {"type": "semantickitti", "root": str(root / "semantickitti"), "batch_size": 2,
                                    "sensor": dict(sensor, fov_up=3.0, fov_down=-25.0)},
                  "nuscenes": {"type": "nuscenes", "root": str(root / "nuscenes"), "version": "v1.0-mini",
                               "batch_size": 2, "sensor": dict(sensor, height=32, use_ring=True)},
                  "semanticposs": {"type": "semanticposs", "root": str(root / "semanticposs"), "batch_size": 2,
                                   "sensor": {"preset": "pandora", "width": 64}, "branch": shipped["branch"],
                                   "label_map_from": shipped["label_map_from"]},
                  # a corrupted copy of SemanticKITTI's validation split: adapts on the scans it scores
                  "kitti_fog": {"type": "semantickitti", "root": str(root / "semantickitti_fog_3"), "batch_size": 2,
                                "sensor": dict(sensor, fov_up=3.0, fov_down=-25.0), "branch": "semantickitti",
                                "train_split": "valid"}},
         "strategy": {"name": "cdcl"},
         "train": {"iterations": 2, "lr": 0.01, "progress": False, "checkpoint_every": 100, "log_every": 1,
                   "threads": 1},
         "eval": {"max_samples": 2, "options": {"knn": False}}}
    config = tmp_path / "unseen.yaml"
    config.write_text(yaml.safe_dump(d))
    assert main(["train", str(config), "--work-dir", str(tmp_path / "run")]) == 0
    ckpt = str(tmp_path / "run" / "checkpoints" / "latest.pth")
    out = tmp_path / "poss.pth"
    assert main(["adapt", str(config), "--checkpoint", ckpt, "--dataset", "semanticposs", "--method", "tent",
                 "--steps", "2", "--batches", "2", "--out", str(out)]) == 0
    ck = load_checkpoint(str(out))
    assert ck["adapted"]["semanticposs"]["from"] in ("semantickitti", "nuscenes")
    assert ck["num_classes"]["semanticposs"] == 13
    before = load_checkpoint(ckpt)["model"]
    assert all(torch.equal(v, ck["model"][k]) for k, v in before.items())
    res = tmp_path / "poss.json"
    assert main(["eval", str(config), "--checkpoint", str(out), "--dataset", "semanticposs", "--out", str(res)]) == 0
    data = json.loads(res.read_text())
    assert "semanticposs" in json.dumps(data)
    preds = tmp_path / "preds"
    assert main(["predict", str(config), "--checkpoint", str(out), "--dataset", "semanticposs", "--split", "val",
                 "--out", str(preds)]) == 0
    written = [p for p in preds.rglob("*.label")]
    assert written
    import numpy as np
    raw = np.concatenate([np.fromfile(p, np.uint32) for p in written])
    assert set(np.unique(raw & 0xFFFF).tolist()) <= {4, 6, 7, 8, 9, 10, 13, 14, 15, 16, 17, 21, 22}  # POSS raw ids
    fog = tmp_path / "fog.pth"
    assert main(["adapt", str(config), "--checkpoint", ckpt, "--dataset", "kitti_fog", "--branch", "semantickitti",
                 "--batches", "2", "--out", str(fog)]) == 0
    assert main(["eval", str(config), "--checkpoint", str(fog), "--dataset", "kitti_fog"]) == 0


def test_label_remap_serves_an_unseen_dataset_of_other_classes_through_label_map_from(tmp_path):
    """One head in a's classes (label remapping): an unseen dataset of 3 classes
    is read through data.c.label_map_from, its labels left in its own ids."""
    from common.build import build_dataset
    from common.config import ConfigError

    d = unseen_cfg(tmp_path, num_classes=3).to_dict()
    d["strategy"] = {"name": "label_remap", "label_map": {"b": {0: 0, 1: 1, 2: 2, 3: 3}}}
    with pytest.raises(ConfigError, match="strategy.label_map.c"):
        build_dataset(build_config(d, source="toy"), "c", "val", False)
    d["data"]["c"]["label_map_from"] = {"a": {0: 0, 1: 1, 2: 2, 3: 2}}
    ds = build_dataset(build_config(d, source="toy"), "c", "val", False)
    assert len(ds.class_names) == 3
