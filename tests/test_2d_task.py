"""The image task: config -> datasets/model/criterion, evaluate, predict, a tiny run."""
import os

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
    for kind in ("cityscapes", "camvid"):
        write_dataset(kind, str(r), num_train=2, num_val=2, seed=1, size=(64, 32))
    return str(r)


def _data_cfg(root, kind, **extra):
    d = {"type": kind, "root": os.path.join(root, kind), "batch_size": 2, "loss_weight": 1.0,
         "train_split": "train", "val_split": "val", "num_workers": 0, "on_bad_sample": "raise",
         "crop": [24, 24]}
    d.update(extra)
    return d


class ColumnModel(nn.Module):
    """Predicts train id ``column % num_classes`` everywhere (no parameters that matter)."""

    def __init__(self, num_classes):
        super().__init__()
        self.k = num_classes

    def forward(self, x):
        b, _, h, w = x.shape
        cls = torch.arange(w) % self.k
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


def test_cityscapes_predictions_are_scored_by_cityscapesscripts(root, tmp_path):
    """The official evaluator reads our files and agrees with our own mIoU."""
    import cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling as ev
    from common.metrics import ConfusionMatrix

    task = ImageTask()
    ds = task.build_dataset("cityscapes", _data_cfg(root, "cityscapes"), "val", False)
    loader = torch.utils.data.DataLoader(ds, batch_size=1, collate_fn=collate)
    out = str(tmp_path / "pred")
    task.predict(ColumnModel(19), loader, "cityscapes", ds, torch.device("cpu"), out, {"split": "val"})
    ours = task.evaluate(ColumnModel(19), loader, "cityscapes", ds, torch.device("cpu"), {})["dense"]
    args = ev.args
    args.quiet, args.JSONOutput, args.evalInstLevelScore = True, False, False
    args.exportFile = str(tmp_path / "eval.json")
    args.predictionPath, args.predictionWalk = out, None
    gts = sorted(s[1] for s in ds.samples)
    preds = [ev.getPrediction(args, g) for g in gts]
    results = ev.evaluateImgLists(preds, gts, args)
    official = results["classScores"]
    compared = 0
    for name, iou in zip(ds.class_names, ours.iou().tolist()):
        if np.isnan(official[name]):
            assert np.isnan(iou)
        else:
            assert abs(official[name] - iou) < 1e-6, name
            compared += 1
    assert compared >= 5


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
