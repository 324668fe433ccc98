"""The generated SemanticPOSS set (cdcl synth lidar): layout, Pandora-like beams,
the taxonomy's raw ids, campus crowds; it loads in the real reader, and the two
generated-data configs that use it train."""
from __future__ import annotations

import os

import numpy as np
import pytest

from cdcl3d.synth import generate_lidar
from cdcl3d.synth.sensors import PANDAR40_ELEVATIONS_DEG

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = dict(seed=4, scans=10, points_scale=0.1)
# SemanticPOSS's raw ids (shared/reference/semantic-poss.md): 0-1, 4-22 (2 and 3 unused)
POSS_RAW_IDS = {0, 1} | set(range(4, 23))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("synth") / "lidar")
    generate_lidar(out, nuscenes_test_scans=0, **TINY)
    return out


def _scans(root: str, dataset: str):
    """(points (N, 4), labels (N,) uint32) of every labelled scan."""
    seqs = os.path.join(root, dataset, "sequences")
    for seq in sorted(os.listdir(seqs)):
        lab_dir = os.path.join(seqs, seq, "labels")
        if not os.path.isdir(lab_dir):
            continue
        for f in sorted(os.listdir(lab_dir)):
            pts = np.fromfile(os.path.join(seqs, seq, "velodyne", f[:-6] + ".bin"), np.float32).reshape(-1, 4)
            yield pts, np.fromfile(os.path.join(lab_dir, f), np.uint32)


def test_layout_sequences_and_splits(tiny):
    seqs = os.path.join(tiny, "semanticposs", "sequences")
    assert sorted(os.listdir(seqs)) == [f"{i:02d}" for i in range(6)]
    total = 0
    for seq in sorted(os.listdir(seqs)):
        velo = sorted(os.listdir(os.path.join(seqs, seq, "velodyne")))
        labels = sorted(os.listdir(os.path.join(seqs, seq, "labels")))
        assert velo == [f"{i:06d}.bin" for i in range(len(velo))]
        assert labels == [v[:-4] + ".label" for v in velo]
        total += len(velo)
    assert total == TINY["scans"]
    assert os.listdir(os.path.join(seqs, "02", "velodyne"))  # the validation sequence is dealt first
    for pts, lab in _scans(tiny, "semanticposs"):
        assert lab.shape[0] == pts.shape[0] and np.isfinite(pts).all()
        assert pts.shape[0] <= 40 * 1800


def test_forty_non_uniform_beams():
    """Every return lies on one of 40 beams, +7 to -16 deg, 1/3 deg apart near the
    horizon and 1 deg apart at the edges (Pandar40)."""
    e = PANDAR40_ELEVATIONS_DEG
    assert len(np.unique(e)) == 40 and e.max() == 7.0 and e.min() == -16.0
    steps = -np.diff(e)
    np.testing.assert_allclose(sorted(set(np.round(steps, 6))), [1 / 3, 1.0], atol=1e-6)
    near = (e[:-1] <= 2.0) & (e[1:] >= -6.0)
    assert np.allclose(steps[near], 1 / 3) and np.allclose(steps[~near], 1.0)


def test_scans_have_forty_beam_elevations(tiny):
    e = PANDAR40_ELEVATIONS_DEG
    for pts, _ in _scans(tiny, "semanticposs"):
        pitch = np.degrees(np.arcsin(pts[:, 2] / np.linalg.norm(pts[:, :3], axis=1)))
        beam = np.abs(pitch[:, None] - e[None]).argmin(1)
        assert np.abs(pitch - e[beam]).max() < 0.01  # range noise moves a return along its ray only
        assert len(np.unique(beam)) == 40


def test_raw_ids_of_the_taxonomy_only_and_intensity_scale(tiny):
    seen, intensity = set(), []
    for pts, lab in _scans(tiny, "semanticposs"):
        seen |= set(np.unique(lab & 0xFFFF).tolist())
        intensity.append(pts[:, 3])
    assert seen <= POSS_RAW_IDS
    # the campus classes show up: people, groups, riders, cars, trunks, plants, buildings,
    # bins, cone/stone, fences, bikes, ground
    assert {4, 5, 6, 7, 8, 9, 15, 16, 17, 21, 22} <= seen
    i = np.concatenate(intensity)
    assert i.min() >= 0 and i.max() <= 255 and np.array_equal(i, np.round(i))
    assert 5 < i.mean() < 40  # 0..255 scale, most returns weak (SemanticPOSS: mean ~14)


def test_many_people_on_the_campus(tiny):
    """More people per scan than the generated SemanticKITTI streets, some in groups
    (raw id 5, one instance for 2+ persons)."""
    def people(dataset, ids):
        counts = []
        for _, lab in _scans(tiny, dataset):
            sem, inst = lab & 0xFFFF, lab >> 16
            counts.append(len(np.unique(inst[np.isin(sem, ids)])))
        return np.array(counts)

    poss = people("semanticposs", [4, 5])
    assert poss.mean() >= 5 and poss.mean() > 3 * max(people("semantickitti", [30, 254]).mean(), 0.5)
    assert sum(len(np.unique((lab >> 16)[(lab & 0xFFFF) == 5])) for _, lab in _scans(tiny, "semanticposs")) >= 2


def test_tree_loads_in_the_real_reader(tiny):
    """The dataset type's own reader and label map (cdcl3d/data/semantic-poss.yaml)
    read the generated tree unchanged: its splits, 13 classes, raw -> train ids."""
    from cdcl3d.datasets.specs import dataset_type

    spec = dataset_type("semanticposs")
    label_map = spec.label_map({})
    assert label_map.num_classes == 13
    lut = np.full(1 << 16, 255, np.int64)
    for raw, cls in label_map.config["learning_map"].items():
        lut[raw] = cls - 1 if cls > 0 else 255
    seen = set()
    for split, seqs in (("train", {"00", "01", "03", "04", "05"}), ("valid", {"02"})):
        reader = spec.reader("semanticposs", {"root": os.path.join(tiny, "semanticposs")}, split, label_map)
        assert set(reader.sequences) == seqs and len(reader) > 0
        for i in range(len(reader)):
            item = reader[i]
            np.testing.assert_array_equal(
                np.asarray(item["points"]), np.fromfile(item["path"], np.float32).reshape(-1, 4))
            raw = np.fromfile(item["path"].replace("velodyne", "labels")[:-4] + ".label", np.uint32) & 0xFFFF
            np.testing.assert_array_equal(np.asarray(item["labels"]), lut[raw])
            seen |= set(np.unique(np.asarray(item["labels"])).tolist()) - {255}
    assert len(seen) >= 10  # most of the 13 classes occur even in a tiny set


@pytest.mark.parametrize("config", ["synth_single_semanticposs.yaml", "synth_cdcl3.yaml"])
def test_generated_configs_train(tiny, tmp_path, config):
    """The shipped generated-data configs build, train 2 iterations and evaluate
    every dataset they name (roots moved to the tiny tree, smaller images)."""
    from common.config import load_config
    from common.trainer import train

    cfg = load_config(os.path.join(ROOT, "configs", "3d", config))
    overrides = ["train.iterations=2", "train.progress=false", "train.tb_images=false",
                 "train.checkpoint_every=2", "model.width=0.125"]
    for name in cfg.names:
        overrides += [f"data.{name}.root={os.path.join(tiny, name)}", f"data.{name}.sensor.width=64",
                      f"data.{name}.num_workers=0"]
    cfg = load_config(os.path.join(ROOT, "configs", "3d", config), overrides)
    expected = ["semanticposs"] if "single" in config else ["semantickitti", "nuscenes", "semanticposs"]
    assert cfg.names == expected
    assert cfg.data["semanticposs"].type == "semanticposs"
    res = train(cfg, str(tmp_path / "work"))
    assert set(res) == set(expected)
    assert all(0.0 <= r["miou"] <= 1.0 for r in res.values())
