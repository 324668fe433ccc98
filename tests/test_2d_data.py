"""Image readers on generated data, label tables, transforms, bad input."""
import json
import os
import random

import numpy as np
import pytest
import torch
from PIL import Image

from cdcl2d.datasets import READERS, BDD100K, CamVid, Cityscapes, KITTISemantic
from cdcl2d.datasets.labels import (CITYSCAPES_CLASSES, camvid_to_cityscapes_map, cityscapes_id_to_train_lut,
                                    cityscapes_train_to_id_lut)
from cdcl2d.synth import write_dataset
from cdcl2d.transforms import (IMAGENET_MEAN, Normalize, RandomCrop, build_train_transform)


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("synth")
    for kind in ("cityscapes", "bdd100k", "camvid", "kitti"):
        write_dataset(kind, str(root), num_train=2, num_val=1, seed=0, size=(64, 32))
    return str(root)


def _save(path, array):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array).save(path)


def _tiny_cityscapes(root, label_ids, split="val", size=(8, 16)):
    h, w = size
    stem = "frankfurt_000000_000019"
    _save(os.path.join(root, "leftImg8bit", split, "frankfurt", stem + "_leftImg8bit.png"),
          np.zeros((h, w, 3), np.uint8))
    lab_path = os.path.join(root, "gtFine", split, "frankfurt", stem + "_gtFine_labelIds.png")
    _save(lab_path, label_ids.astype(np.uint8))
    return lab_path


@pytest.mark.parametrize("kind,num_classes", [("cityscapes", 19), ("bdd100k", 19), ("camvid", 11),
                                              ("kitti", 19)])
def test_reader_roundtrip(synth_root, kind, num_classes):
    split = "train"
    ds = READERS[kind](os.path.join(synth_root, kind), split)
    assert len(ds) == (3 if kind == "kitti" else 2)
    assert ds.num_classes == num_classes and len(ds.class_names) == num_classes and ds.ignore_index == 255
    item = ds[0]
    assert item["inputs"].shape == (3, 32, 64) and item["inputs"].dtype == torch.float32
    assert item["labels"].shape == (32, 64) and item["labels"].dtype == torch.int64
    vals = set(item["labels"].unique().tolist())
    assert vals <= set(range(num_classes)) | {255}
    assert len(vals - {255}) >= 3  # a scene has several classes
    assert item["dataset"] == kind and isinstance(item["id"], str)


def test_cityscapes_ids_and_val_split(synth_root):
    ds = Cityscapes(os.path.join(synth_root, "cityscapes"), "val")
    assert ds.samples[0][2] == "frankfurt/frankfurt_000000_000019"


def test_cityscapes_label_table():
    lut = cityscapes_id_to_train_lut()
    expected = {0: 255, 1: 255, 6: 255, 7: 0, 8: 1, 9: 255, 11: 2, 12: 3, 13: 4, 14: 255, 17: 5, 18: 255,
                19: 6, 20: 7, 21: 8, 22: 9, 23: 10, 24: 11, 25: 12, 26: 13, 27: 14, 28: 15, 29: 255,
                30: 255, 31: 16, 32: 17, 33: 18}
    for k, v in expected.items():
        assert lut[k] == v, k
    inv = cityscapes_train_to_id_lut()
    for train_id in range(19):
        assert lut[inv[train_id]] == train_id
    assert CITYSCAPES_CLASSES[:3] == ["road", "sidewalk", "building"] and CITYSCAPES_CLASSES[-1] == "bicycle"


def test_cityscapes_label_conversion(tmp_path):
    ids = np.array([[7, 26, 0, 24] * 4] * 8)
    _tiny_cityscapes(str(tmp_path), ids)
    labels = Cityscapes(str(tmp_path), "val")[0]["labels"]
    assert labels[0, :4].tolist() == [0, 13, 255, 11]


def test_cityscapes_unknown_label_id(tmp_path):
    ids = np.full((8, 16), 7)
    ids[0, 0] = 40
    path = _tiny_cityscapes(str(tmp_path), ids)
    with pytest.raises(ValueError, match=r"unknown label id.*40") as err:
        Cityscapes(str(tmp_path), "val")[0]
    assert path in str(err.value)


def test_size_mismatch_names_files(tmp_path):
    path = _tiny_cityscapes(str(tmp_path), np.full((8, 16), 7))
    _save(path, np.full((9, 16), 7, np.uint8))
    with pytest.raises(ValueError, match="does not match") as err:
        Cityscapes(str(tmp_path), "val")[0]
    assert path in str(err.value)


def test_missing_label_file(tmp_path):
    path = _tiny_cityscapes(str(tmp_path), np.full((8, 16), 7))
    os.remove(path)
    with pytest.raises(FileNotFoundError, match="gtFine_labelIds.png"):
        Cityscapes(str(tmp_path), "val")


def test_missing_root_and_split(tmp_path):
    with pytest.raises(FileNotFoundError, match="nowhere"):
        Cityscapes(str(tmp_path / "nowhere"), "train")
    with pytest.raises(FileNotFoundError, match="leftImg8bit"):
        Cityscapes(str(tmp_path), "train")


def test_rgb_mask_rejected(tmp_path):
    path = _tiny_cityscapes(str(tmp_path), np.full((8, 16), 7))
    _save(path, np.zeros((8, 16, 3), np.uint8))
    with pytest.raises(ValueError, match="single-channel"):
        Cityscapes(str(tmp_path), "val")[0]


def test_camvid_void_and_unknown(tmp_path):
    _save(str(tmp_path / "val" / "a.png"), np.zeros((4, 4, 3), np.uint8))
    lab = np.array([[0, 10, 11, 3]] * 4, np.uint8)
    _save(str(tmp_path / "valannot" / "a.png"), lab)
    assert CamVid(str(tmp_path), "val")[0]["labels"][0].tolist() == [0, 10, 255, 3]
    lab[0, 0] = 12
    _save(str(tmp_path / "valannot" / "a.png"), lab)
    with pytest.raises(ValueError, match="unknown label id"):
        CamVid(str(tmp_path), "val")[0]


def test_bdd_unknown_train_id(tmp_path):
    _save(str(tmp_path / "images" / "10k" / "val" / "x.jpg"), np.zeros((4, 4, 3), np.uint8))
    _save(str(tmp_path / "labels" / "sem_seg" / "masks" / "val" / "x.png"), np.full((4, 4), 19, np.uint8))
    with pytest.raises(ValueError, match=r"x.png: unknown label id\(s\) \[19\]"):
        BDD100K(str(tmp_path), "val")[0]


def test_kitti_reads_training(synth_root):
    ds = KITTISemantic(os.path.join(synth_root, "kitti"), "val")
    assert len(ds) == 3 and ds.samples[0][2] == "000000_10"


def test_camvid_to_cityscapes_map():
    m = camvid_to_cityscapes_map()
    assert len(m) == 11
    assert [CITYSCAPES_CLASSES[i] for i in m][:4] == ["sky", "building", "pole", "road"]


# -- transforms ---------------------------------------------------------------------

def _coded_pair(h=40, w=60):
    labels = np.zeros((h, w), np.int64)
    labels[:, w // 3: 2 * w // 3] = 1
    labels[h // 2:, :] += 2
    image = np.zeros((h, w, 3), np.uint8)
    image[..., 0] = labels * 60  # the label is readable from the image
    image[..., 1] = np.arange(w)[None, :] * 4
    return image, labels


def test_crop_flip_keep_alignment():
    image, labels = _coded_pair()
    t = build_train_transform(crop=(24, 24), scale=None, flip=True, jitter=False)
    for seed in range(6):
        random.seed(seed)
        np.random.seed(seed)
        img, lab = t(image, labels)
        assert img.shape == (24, 24, 3) and lab.shape == (24, 24)
        assert np.array_equal(img[..., 0].astype(np.int64), lab * 60)


def test_scale_keeps_alignment():
    image, labels = _coded_pair()
    t = build_train_transform(crop=(30, 30), scale=(0.5, 2.0), flip=True, jitter=False)
    for seed in range(5):
        random.seed(seed)
        np.random.seed(seed)
        img, lab = t(image, labels)
        valid = lab != 255
        decoded = np.rint(img[..., 0].astype(np.float64) / 60)
        # bilinear image vs nearest labels differ only along class borders
        assert (decoded[valid] == lab[valid]).mean() > 0.9


def test_transforms_reproducible_from_global_rng():
    image, labels = _coded_pair()
    t = build_train_transform(crop=(24, 24))
    outs = []
    for _ in range(2):
        random.seed(3)
        np.random.seed(3)
        outs.append(t(image, labels))
    assert np.array_equal(outs[0][0], outs[1][0]) and np.array_equal(outs[0][1], outs[1][1])


def _gtfine_files(root):
    """``{stem: sorted suffixes}`` of every file under ``root/gtFine``."""
    files = {}
    for dirpath, _, names in os.walk(os.path.join(root, "gtFine")):
        for name in names:
            stem, _, suffix = name.partition("_gtFine_")
            files.setdefault(os.path.join(dirpath, stem), []).append(suffix)
    return {k: sorted(v) for k, v in files.items()}


def test_cityscapes_tree_has_the_gtfine_file_set(synth_root):
    """Every image has labelIds, instanceIds, color and polygons, in the formats of
    the real gtFine files (what cityscapesscripts and users' tools read)."""
    pytest.importorskip("cityscapesscripts")
    from cityscapesscripts.helpers.annotation import Annotation
    from cityscapesscripts.helpers.labels import id2label, name2label
    from cityscapesscripts.preparation.json2labelImg import createLabelImage

    from cdcl2d.synth import INSTANCE_IDS

    root = os.path.join(synth_root, "cityscapes")
    files = _gtfine_files(root)
    assert len(files) == 3  # 2 train + 1 val images
    colours = np.zeros((256, 4), np.uint8)
    for label in id2label.values():
        if label.id >= 0:
            colours[label.id] = (*label.color, 255)
    instance_ids = {l.id for l in id2label.values() if l.hasInstances and l.id >= 0}
    assert INSTANCE_IDS == instance_ids
    for stem, suffixes in files.items():
        assert suffixes == ["color.png", "instanceIds.png", "labelIds.png", "polygons.json"], stem
        with Image.open(stem + "_gtFine_labelIds.png") as img:
            assert img.mode == "L"
            lab = np.asarray(img)
        assert lab.dtype == np.uint8 and lab.shape == (32, 64)
        with Image.open(stem + "_gtFine_instanceIds.png") as img:
            assert img.mode in ("I", "I;16")  # a 16-bit PNG, as json2instanceImg writes
            inst = np.asarray(img).astype(np.int64)
        assert inst.shape == lab.shape
        is_inst = inst >= 1000
        assert np.array_equal(inst[is_inst] // 1000, lab[is_inst])
        assert np.array_equal(inst[~is_inst], lab[~is_inst])
        assert np.array_equal(is_inst, np.isin(lab, list(instance_ids)))  # every object pixel has an id
        with Image.open(stem + "_gtFine_color.png") as img:
            assert img.mode == "RGBA"
            assert np.array_equal(np.asarray(img), colours[lab])
        annotation = Annotation()
        annotation.fromJsonFile(stem + "_gtFine_polygons.json")
        assert (annotation.imgHeight, annotation.imgWidth) == (32, 64)
        with open(stem + "_gtFine_polygons.json") as f:
            raw = json.load(f)
        assert set(raw) == {"imgHeight", "imgWidth", "objects"} and raw["objects"]
        for obj in raw["objects"]:
            assert set(obj) == {"label", "polygon"} and obj["label"] in name2label
            assert len(obj["polygon"]) >= 3
            assert all(len(p) == 2 and all(isinstance(v, int) for v in p) for p in obj["polygon"])
        # The polygons drawn back to front, as cityscapesscripts does, give the label ids.
        assert np.array_equal(np.asarray(createLabelImage(annotation, "ids")), lab)
        assert np.array_equal(np.asarray(createLabelImage(annotation, "color")), colours[lab])


def test_synth_instances_are_the_generated_objects():
    """Objects of instance classes get ids labelId*1000 + 0..n-1, one per drawn object
    (a cyclist is a rider and a bicycle), numbered in drawing order."""
    from cdcl2d.synth import STYLES, draw_scene, generate_scene

    per_class = []
    for seed in range(6):
        scene = draw_scene(np.random.default_rng(seed), STYLES["cityscapes"])
        assert scene.instances.dtype == np.int32 and scene.instances.shape == scene.labels.shape
        ids = np.unique(scene.instances[scene.instances >= 1000])
        for label in np.unique(ids // 1000):
            numbers = sorted(int(i) % 1000 for i in ids if i // 1000 == label)
            assert numbers == list(range(len(numbers)))
            per_class.append(len(numbers))
        rgb, labels = generate_scene(np.random.default_rng(seed), STYLES["cityscapes"])
        assert np.array_equal(rgb, scene.rgb) and np.array_equal(labels, scene.labels)
    assert max(per_class) >= 2  # several objects of one class are told apart


def test_crop_pads_with_ignore_and_mean():
    image = np.full((10, 10, 3), 200, np.uint8)
    labels = np.zeros((10, 10), np.int64)
    img, lab = RandomCrop((16, 20))(image, labels)
    assert img.shape == (16, 20, 3) and lab.shape == (16, 20)
    assert (lab == 255).sum() == 16 * 20 - 100
    pad = Normalize()(img)[:, lab == 255]
    assert np.abs(pad).max() < 0.05  # the padding normalises to ~0
    assert np.allclose(Normalize()(np.full((2, 2, 3), 255 * np.array(IMAGENET_MEAN))), 0, atol=1e-5)


def test_synth_is_deterministic_and_styled():
    from cdcl2d.synth import STYLES, generate_scene

    a = generate_scene(np.random.default_rng(5), STYLES["bdd100k"], "night")
    b = generate_scene(np.random.default_rng(5), STYLES["bdd100k"], "night")
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    day = generate_scene(np.random.default_rng(5), STYLES["bdd100k"], "day")
    assert a[0].mean() < 0.6 * day[0].mean()  # night is dark
    assert a[0].shape == (128, 228, 3) and a[1].shape == (128, 228)


def test_synth_cli_run(tmp_path):
    import argparse

    from cdcl2d.synth import add_arguments, run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--out", str(tmp_path), "--datasets", "camvid", "--num-train", "1",
                              "--num-val", "1"])
    assert run(args) == 0
    assert sorted(os.listdir(tmp_path / "camvid")) == ["train", "trainannot", "val", "valannot"]
    with pytest.raises(ValueError, match="unknown dataset"):
        run(parser.parse_args(["--out", str(tmp_path), "--datasets", "mapillary"]))
