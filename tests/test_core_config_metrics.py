"""Config loading/validation and confusion-matrix metrics."""
import math

import pytest
import torch

from common.config import ConfigError, apply_overrides, load_config
from common.metrics import ConfusionMatrix


def write(p, text):
    p.write_text(text)
    return str(p)


BASE = """
task: toy
model: {name: toynet, width: 8}
data:
  a: {type: toy, batch_size: 2, size: 4}
train: {iterations: 10, lr: 0.1}
"""


def test_base_inheritance_merges_dicts_replaces_lists_and_overrides(tmp_path):
    write(tmp_path / "base.yaml", BASE + "eval: {options: {scales: [0.5, 1.0]}}\n")
    child = write(tmp_path / "child.yaml", "_base_: base.yaml\ntrain: {iterations: 20}\n"
                                          "eval: {options: {scales: [1.0]}}\n")
    cfg = load_config(child, ["train.lr=0.5", "data.a.root=/data/x", "train.clip_grad=null"])
    assert cfg.train.iterations == 20 and cfg.train.lr == 0.5
    assert cfg.eval.options["scales"] == [1.0]
    assert cfg.data["a"].root == "/data/x" and cfg.data["a"].params == {"size": 4}
    assert cfg.names == ["a"]


def test_unknown_key_names_key_file_and_valid_keys(tmp_path):
    path = write(tmp_path / "bad.yaml", BASE.replace("iterations: 10", "iteratons: 10"))
    with pytest.raises(ConfigError) as e:
        load_config(path)
    msg = str(e.value)
    assert "train.iteratons" in msg and "bad.yaml" in msg and "iterations" in msg


def test_type_and_value_errors(tmp_path):
    path = write(tmp_path / "c.yaml", BASE)
    with pytest.raises(ConfigError, match="train.iterations"):
        load_config(path, ["train.iterations=many"])
    with pytest.raises(ConfigError, match="strategy.name"):
        load_config(path, ["strategy.name=magic"])
    with pytest.raises(ConfigError, match="train.mode"):
        load_config(path, ["train.mode=parallel"])
    with pytest.raises(ConfigError, match="unknown top-level key 'trian'"):
        load_config(path, ["trian.lr=1"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(str(tmp_path / "missing.yaml"))


def test_yaml_is_loaded_safely(tmp_path):
    path = write(tmp_path / "evil.yaml", BASE + "x: !!python/object/apply:os.system ['true']\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(path)


def test_override_syntax():
    with pytest.raises(ConfigError, match="key.path=value"):
        apply_overrides({}, ["train.lr"])


def test_confusion_matrix_against_hand_computed_example():
    # 3 classes, ignore 255. gt/pred pairs:
    gt = torch.tensor([0, 0, 0, 1, 1, 2, 255, 0])
    pr = torch.tensor([0, 0, 1, 1, 0, 0, 2, 0])
    cm = ConfusionMatrix(3, 255, ["road", "car", "person"])
    cm.update(pr, gt)
    # class 0: tp 3, fp 2 (1->0, 2->0), fn 1 (0->1) -> 3/6
    # class 1: tp 1, fp 1, fn 1 -> 1/3 ; class 2: tp 0, fp 0, fn 1 -> 0
    iou = cm.iou()
    assert torch.allclose(iou, torch.tensor([0.5, 1 / 3, 0.0], dtype=torch.float64))
    assert math.isclose(cm.miou("all"), (0.5 + 1 / 3 + 0) / 3)
    assert math.isclose(cm.accuracy(), 4 / 7)
    assert math.isclose(cm.fwiou(), 4 / 7 * 0.5 + 2 / 7 * (1 / 3))
    assert "person" in cm.table("t")


def test_miou_modes_differ_on_absent_classes():
    cm = ConfusionMatrix(3, 255)
    cm.update(torch.tensor([0, 1]), torch.tensor([0, 1]))
    assert math.isnan(float(cm.iou()[2]))
    assert math.isclose(cm.miou("present"), 1.0)  # nuScenes: nanmean over present classes
    assert math.isclose(cm.miou("all"), 2 / 3)    # SemanticKITTI: every class, absent scores 0
    with pytest.raises(ValueError, match="outside"):
        cm.update(torch.tensor([5]), torch.tensor([0]))


def test_remapped_dataset_is_scored_over_the_classes_its_table_reaches():
    """label_remap: B (3 classes) mapped into A's 4 classes reaches targets 1 and 2
    only; a perfect prediction scores 1.0, not 2/4 (classes B never labels)."""
    from torch import nn
    from torch.utils.data import Dataset

    from common.config import build_config
    from common.data import RemapLabels, build_label_lut
    from common.evaluation import evaluate_model
    from common.toy import ToySegmentation

    lut = build_label_lut({0: 1, 1: 2})  # B's class 2 is not mapped (ignored)

    class Perfect(Dataset):
        """B's items, with the inputs one-hot of the remapped label: an identity
        'network' predicts every labelled pixel right."""

        def __init__(self):
            self.toy = ToySegmentation(size=4, height=16, width=16, num_classes=3, seed=1, name="b")
            self.class_names, self.ignore_index = self.toy.class_names, 255

        def __len__(self):
            return len(self.toy)

        def __getitem__(self, i):
            item = dict(self.toy[i])
            target = torch.as_tensor(lut)[item["labels"]]
            item["inputs"] = torch.nn.functional.one_hot(target.clamp(max=4), 5)[..., :4] \
                .permute(2, 0, 1).float()
            return item

    cfg = build_config({"task": "toy", "model": {"name": "toynet"},
                        "data": {"a": {"type": "toy"}, "b": {"type": "toy", "num_classes": 3}},
                        "strategy": {"name": "label_remap", "label_map": {"b": {0: 1, 1: 2}}}},
                       source="test")
    ds = RemapLabels(Perfect(), lut, [f"class{i}" for i in range(4)])
    assert ds.scored_classes == [1, 2]
    res = evaluate_model(cfg, nn.Identity(), torch.device("cpu"), datasets={"b": ds}, only=["b"])["b"]
    assert res["miou"] == pytest.approx(1.0)
    assert res["scored_classes"] == ["class1", "class2"]
    assert "not scored" in res["tables"] and "2 of 4 classes" in res["tables"]


def test_gt_mode_leaves_out_classes_only_predicted():
    # class 2 only predicted, class 3 in neither: "gt" (BDD100K) averages classes 0, 1
    cm = ConfusionMatrix(4)
    cm.update(torch.tensor([0, 0, 1, 2]), torch.tensor([0, 0, 1, 1]))
    iou = [1.0, 0.5, 0.0]
    assert cm.miou("gt") == pytest.approx((iou[0] + iou[1]) / 2)
    assert cm.miou("present") == pytest.approx(sum(iou) / 3)
    assert cm.miou("all") == pytest.approx(sum(iou) / 4)
    assert cm.miou("gt", classes=[1, 2]) == pytest.approx(0.5)
