"""The image task: config -> datasets/model/criterion, evaluate, predict, a tiny run."""
import glob
import json
import math
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn

from cdcl2d.datasets.labels import CITYSCAPES_LABELS, cityscapes_train_to_id_lut
from cdcl2d.synth import write_dataset
from cdcl2d.task import ImageTask, collate
from common.config import ConfigError


@pytest.fixture(scope="module")
def root(tmp_path_factory):
    r = tmp_path_factory.mktemp("synth2d")
    for kind in ("cityscapes", "camvid", "bdd100k", "kitti"):
        write_dataset(kind, str(r), num_train=2, num_val=2, seed=1, size=(64, 32))
    return str(r)


def _data_cfg(root, kind, **extra):
    d = {"type": kind, "root": os.path.join(root, kind), "batch_size": 2, "loss_weight": 1.0,
         "train_split": "train", "val_split": "val", "num_workers": 0, "on_bad_sample": "raise",
         "crop": [24, 24]}
    d.update(extra)
    return d


def _eval_config(root, kind, **eval_cfg):
    from common.config import build_config

    splits = {"train_split": "training", "val_split": "training"} if kind == "kitti" else {}
    return build_config({"task": "2d", "model": {"name": "pspnet"},
                         "data": {kind: _data_cfg(root, kind, **splits)},
                         "eval": {"batch_size": 1, **eval_cfg}}, source="test")


class ColumnModel(nn.Module):
    """Predicts train id ``classes[column % len(classes)]`` everywhere (``classes``
    defaults to all ``num_classes``; no parameters that matter)."""

    def __init__(self, num_classes, classes=None):
        super().__init__()
        self.k = num_classes
        self.classes = torch.as_tensor(range(num_classes) if classes is None else list(classes))

    def forward(self, x):
        b, _, h, w = x.shape
        cls = self.classes[torch.arange(w) % len(self.classes)]
        logits = nn.functional.one_hot(cls, self.k).T.float()[None, :, None, :].expand(b, self.k, h, w)
        return {"out": logits.contiguous()}


def test_build_dataset_and_collate(root):
    task = ImageTask()
    ds = task.build_dataset("city", _data_cfg(root, "cityscapes"), "train", True)
    item = ds[0]
    assert item["inputs"].shape == (3, 24, 24) and item["dataset"] == "city"
    assert task.input_shape("city", _data_cfg(root, "cityscapes")) == (3, 24, 24)
    a = {"inputs": torch.ones(3, 4, 6), "labels": torch.zeros(4, 6, dtype=torch.long), "id": "a", "dataset": "x"}
    b = {"inputs": torch.ones(3, 5, 3), "labels": torch.ones(5, 3, dtype=torch.long), "id": "b", "dataset": "x"}
    batch = collate([a, b])
    assert batch["inputs"].shape == (2, 3, 5, 6) and batch["sizes"] == [(4, 6), (5, 3)]
    assert batch["labels"][0, 4].eq(255).all() and batch["labels"][1, :, 3:].eq(255).all()
    assert batch["inputs"][1, :, :, 3:].eq(0).all()


def test_build_dataset_bad_config(root):
    task = ImageTask()
    with pytest.raises(ConfigError, match="unknown key 'data.c.cropp'"):
        task.build_dataset("c", _data_cfg(root, "cityscapes", cropp=3), "train", True)
    with pytest.raises(ConfigError, match="valid image dataset types"):
        task.build_dataset("c", _data_cfg(root, "mapillary"), "train", True)


def test_build_model_and_bad_key():
    task = ImageTask()
    m = task.build_model({"name": "pspnet", "channels": 16, "aux_channels": 8, "aux_weight": 0.4}, 5, None)
    assert m.heads == ["cls", "aux"] and m.cls.out_channels == 5
    with pytest.raises(Exception, match="model.chanels"):
        task.build_model({"name": "pspnet", "chanels": 16}, 5, None)
    with pytest.raises(ConfigError, match="pspnet"):
        task.build_model({"name": "deeplab"}, 5, None)


def test_criterion_adds_aux_with_weight():
    task = ImageTask()

    class DS:
        ignore_index = 255

    crit = task.build_criterion("c", {}, DS(), {"name": "pspnet"})
    torch.manual_seed(0)
    out, aux = torch.randn(2, 4, 5, 5), torch.randn(2, 4, 5, 5)
    labels = torch.randint(0, 4, (2, 5, 5))
    labels[0, 0] = 255
    ce = nn.functional.cross_entropy
    expected = ce(out, labels, ignore_index=255) + 0.4 * ce(aux, labels, ignore_index=255)
    assert torch.allclose(crit({"out": out, "aux": aux}, {"labels": labels}), expected)
    assert torch.allclose(crit({"out": out}, {"labels": labels}), ce(out, labels, ignore_index=255))


def test_criterion_reduces_in_float32_for_half_logits():
    # 118k labelled pixels: a fp16 mean gives NaN, a bf16 one keeps 8 bits
    task = ImageTask()

    class DS:
        ignore_index = 255

    crit = task.build_criterion("c", {}, DS(), {"name": "pspnet"})
    g = torch.Generator().manual_seed(0)
    out = (2 * torch.randn(2, 19, 256, 256, generator=g)).bfloat16().float()
    labels = torch.randint(0, 19, (2, 256, 256), generator=g)
    labels[torch.rand(labels.shape, generator=g) < 0.1] = 255
    ref = crit({"out": out, "aux": out}, {"labels": labels})
    for dtype in (torch.float16, torch.bfloat16):
        low = crit({"out": out.to(dtype), "aux": out.to(dtype)}, {"labels": labels})
        assert low.dtype == torch.float32
        assert low.item() == pytest.approx(ref.item(), rel=1e-3)


def test_evaluate_counts_every_labelled_pixel(root):
    task = ImageTask()
    ds = task.build_dataset("cityscapes", _data_cfg(root, "cityscapes"), "val", False)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    cms = task.evaluate(ColumnModel(19), loader, "cityscapes", ds, torch.device("cpu"),
                        {"mode": "slide", "crop": [32, 32]})
    cm = cms["dense"]
    labelled = sum(int((ds[i]["labels"] != 255).sum()) for i in range(len(ds)))
    assert int(cm.mat.sum()) == labelled


def test_cityscapes_predict_writes_label_ids(root, tmp_path):
    task = ImageTask()
    ds = task.build_dataset("cityscapes", _data_cfg(root, "cityscapes"), "val", False)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, collate_fn=collate)
    out = str(tmp_path / "pred")
    n = task.predict(ColumnModel(19), loader, "cityscapes", ds, torch.device("cpu"), out, {"split": "val"})
    assert n == 2
    gt_names = sorted(os.path.basename(s[1]) for s in ds.samples)
    assert sorted(os.listdir(out)) == gt_names  # *_gtFine_labelIds.png, as in gtFine
    valid_ids = {l.id for l in CITYSCAPES_LABELS if l.train_id != 255}
    lut = cityscapes_train_to_id_lut()
    for name in gt_names:
        with Image.open(os.path.join(out, name)) as img:
            assert img.mode == "L"
            pred = np.asarray(img)
        gt = np.asarray(Image.open(os.path.join(os.path.dirname(ds.samples[0][1]), name)))
        assert pred.dtype == np.uint8 and pred.shape == gt.shape
        assert set(np.unique(pred).tolist()) <= valid_ids
        expected = lut[np.arange(pred.shape[1]) % 19]
        assert np.array_equal(pred[0], expected)  # label ids, not train ids
        assert pred[0, 0] == 7 and pred[0, 13] == 26  # road, car


def _run_cityscapes_evaluator(dataset_root, results_dir):
    """cityscapesscripts' pixel-level evaluator as its README runs it: the
    environment names the dataset and the results, no arguments (so the defaults,
    the instance-level score included). Returns its JSON result file."""
    export = os.path.join(dataset_root, "evaluationResults", "resultPixelLevelSemanticLabeling.json")
    if os.path.exists(export):
        os.remove(export)
    env = dict(os.environ, CITYSCAPES_DATASET=dataset_root, CITYSCAPES_RESULTS=results_dir)
    env.pop("CITYSCAPES_EXPORT_DIR", None)
    proc = subprocess.run([sys.executable, "-m", "cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling"],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-3000:]
    with open(export) as f:
        return json.load(f)


def _predict(task, model, root, kind, out, max_samples=None):
    cfg = _eval_config(root, kind)
    ds = task.build_dataset(kind, cfg.data[kind].as_dict(), cfg.data[kind].val_split, False)
    view = ds if max_samples is None else torch.utils.data.Subset(ds, range(max_samples))
    loader = torch.utils.data.DataLoader(view, batch_size=1, collate_fn=collate)
    task.predict(model, loader, kind, ds, torch.device("cpu"), out, {})
    return ds


def test_cityscapes_predictions_are_scored_by_cityscapesscripts(root, tmp_path):
    """The official evaluator, run with its defaults on the generated tree, reads our
    files and agrees with our IoU per class and our mIoU."""
    pytest.importorskip("cityscapesscripts")
    from common.evaluation import evaluate_model

    task, model = ImageTask(), ColumnModel(19)
    out = str(tmp_path / "pred")
    ds = _predict(task, model, root, "cityscapes", out)
    official = _run_cityscapes_evaluator(os.path.join(root, "cityscapes"), out)
    ours = evaluate_model(_eval_config(root, "cityscapes"), model, torch.device("cpu"), task=task)["cityscapes"]
    compared = 0
    for name in ds.class_names:
        if math.isnan(official["classScores"][name]):
            assert ours["iou"][name] is None, name
        else:
            assert abs(official["classScores"][name] - ours["iou"][name]) < 1e-9, name
            compared += 1
    assert compared >= 5
    assert abs(official["averageScoreClasses"] - ours["miou"]) < 1e-9
    assert not math.isnan(official["averageScoreInstClasses"])  # the instance-level score ran too


def test_cityscapes_subset_miou_equals_cityscapesscripts_with_an_absent_class(root, tmp_path):
    """eval.max_samples=1, a model that never predicts "train" (nor does the ground
    truth hold one): our mIoU is the official evaluator's on that one image, which
    leaves the absent class out of the mean."""
    pytest.importorskip("cityscapesscripts")
    from common.evaluation import evaluate_model

    task, model = ImageTask(), ColumnModel(19, [c for c in range(19) if c != 16])  # 16 = train
    out = str(tmp_path / "pred")
    ds = _predict(task, model, root, "cityscapes", out, max_samples=1)
    # The official tool scores every gtFine/val image it finds: a tree holding the subset.
    subset = tmp_path / "subset"
    gt_dir = subset / "gtFine" / "val" / "frankfurt"
    gt_dir.mkdir(parents=True)
    stem = ds.samples[0][1][:-len("_labelIds.png")]
    for path in glob.glob(stem + "_*"):
        shutil.copy(path, gt_dir)
    official = _run_cityscapes_evaluator(str(subset), out)
    assert math.isnan(official["classScores"]["train"])

    ours = evaluate_model(_eval_config(root, "cityscapes", max_samples=1), model, torch.device("cpu"),
                          task=task)["cityscapes"]
    assert ours["iou"]["train"] is None
    assert abs(ours["miou"] - official["averageScoreClasses"]) < 1e-9
    absent_as_zero = sum(v or 0.0 for v in ours["iou"].values()) / 19
    assert ours["miou"] > absent_as_zero + 1e-3  # the two definitions differ here


def _official_miou(kind, gts, preds, num_classes):
    """mIoU as each dataset's reference tool defines it, from train-id arrays.

    Cityscapes and KITTI (cityscapesscripts' getIouScoreForLabel + getScoreAverage)
    and CamVid (mmsegmentation's IoUMetric): IoU is NaN where the union is empty
    and the mean skips NaN. BDD100K (bdd100k/eval/seg.py): IoU is 0 where the
    union is empty and the mean runs over the classes found in the ground truth.
    """
    n = num_classes
    hist = np.zeros((n, n), np.int64)
    for gt, pred in zip(gts, preds):
        keep = gt != 255
        hist += np.bincount(n * gt[keep] + pred[keep], minlength=n * n).reshape(n, n)
    tp = np.diag(hist).astype(np.float64)
    union = hist.sum(0) + hist.sum(1) - tp
    if kind == "bdd100k":
        iou = np.where(union > 0, tp / np.maximum(union, 1), 0.0)
        return float(iou[hist.sum(1) > 0].mean())
    iou = np.where(union > 0, tp / np.maximum(union, 1), np.nan)
    return float(np.nanmean(iou))


@pytest.mark.parametrize("kind,num_classes", [("cityscapes", 19), ("bdd100k", 19), ("camvid", 11),
                                              ("kitti", 19)])
def test_subset_miou_follows_each_official_definition(root, kind, num_classes):
    """On one image (eval.max_samples) several classes are absent from the ground
    truth; the model predicts only the classes present, so the absent ones are
    absent from both. Our headline mIoU equals the official tool's definition."""
    from cdcl2d.datasets import READERS
    from cdcl2d.task import MIOU_MODES
    from common.evaluation import evaluate_model

    assert set(MIOU_MODES) == set(READERS)  # every image dataset type has its definition
    task = ImageTask()
    cfg = _eval_config(root, kind, max_samples=1)
    ds = task.build_dataset(kind, cfg.data[kind].as_dict(), cfg.data[kind].val_split, False)
    gt = ds[0]["labels"].numpy()
    present = sorted(set(np.unique(gt).tolist()) - {255})
    assert 0 < len(present) < num_classes
    model = ColumnModel(num_classes, present)
    pred = np.asarray(present)[np.arange(gt.shape[1]) % len(present)][None].repeat(gt.shape[0], 0)

    ours = evaluate_model(cfg, model, torch.device("cpu"), task=task)[kind]
    assert abs(ours["miou"] - _official_miou(kind, [gt], [pred], num_classes)) < 1e-9
    assert ours["miou"] > np.mean([v or 0.0 for v in ours["iou"].values()]) + 1e-3


def test_bdd100k_class_predicted_but_absent_from_ground_truth(root):
    from common.evaluation import evaluate_model

    task = ImageTask()
    cfg = _eval_config(root, "bdd100k", max_samples=1)
    ds = task.build_dataset("bdd100k", cfg.data["bdd100k"].as_dict(), "val", False)
    gt = ds[0]["labels"].numpy()
    pred = np.arange(gt.shape[1])[None].repeat(gt.shape[0], 0) % 19  # every class predicted
    ours = evaluate_model(cfg, ColumnModel(19), torch.device("cpu"), task=task)["bdd100k"]
    assert abs(ours["miou"] - _official_miou("bdd100k", [gt], [pred], 19)) < 1e-9


def test_camvid_predict_writes_train_ids(root, tmp_path):
    task = ImageTask()
    ds = task.build_dataset("camvid", _data_cfg(root, "camvid"), "val", False)
    loader = torch.utils.data.DataLoader(ds, batch_size=2, collate_fn=collate)
    out = str(tmp_path / "pred")
    assert task.predict(ColumnModel(11), loader, "camvid", ds, torch.device("cpu"), out, {}) == 2
    pred = np.asarray(Image.open(os.path.join(out, sorted(os.listdir(out))[0])))
    assert np.array_equal(pred[0], np.arange(64) % 11)


def test_plugin_registers_task_and_synth():
    from common.registry import SYNTH, TASKS
    assert isinstance(TASKS.get("2d"), ImageTask)
    assert "images" in SYNTH


def test_tiny_cdcl_run(root, tmp_path):
    from common.config import build_config
    from common.trainer import train

    cfg = build_config({
        "task": "2d",
        "model": {"name": "pspnet", "output_stride": 16, "channels": 16, "aux_channels": 8},
        "data": {"cityscapes": _data_cfg(root, "cityscapes"), "camvid": _data_cfg(root, "camvid")},
        "strategy": {"name": "cdcl"},
        "train": {"iterations": 2, "progress": False, "tb_images": False, "log_every": 1, "mode": "fused"},
        "eval": {"batch_size": 2},
    })
    results = train(cfg, str(tmp_path / "run"))
    assert set(results) == {"cityscapes", "camvid"}
    assert all(0.0 <= r["miou"] <= 1.0 for r in results.values())
    assert os.path.isfile(tmp_path / "run" / "checkpoints" / "latest.pth")


def test_log_images_keeps_bn_statistics_and_mode(root):
    from common.dataset_specific import convert_dataset_specific, convert_heads

    task = ImageTask()
    ds = task.build_dataset("cityscapes", _data_cfg(root, "cityscapes"), "val", False)
    model = task.build_model({"name": "pspnet", "channels": 16, "aux_channels": 8}, 19, None)
    convert_dataset_specific(model, ["cityscapes"])
    convert_heads(model, {"cityscapes": 19})
    model.train()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    images = []

    class Writer:
        def add_image(self, tag, img, step, dataformats):
            images.append((tag, img.shape, dataformats))

    from common.config import build_config
    cfg = build_config({"task": "2d", "model": {"name": "pspnet"},
                        "data": {"cityscapes": _data_cfg(root, "cityscapes")}}, source="test")
    task.log_images(Writer(), model, {"cityscapes": ds}, cfg, torch.device("cpu"), 3)
    assert images == [("val/cityscapes", (32, 64 * 3, 3), "HWC")]
    assert model.training
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
