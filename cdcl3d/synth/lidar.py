"""Generate the three LiDAR datasets and measure their class histograms.

``generate_lidar(out, seed, scans, points_scale)`` writes

* ``<out>/semantickitti/sequences/NN/...`` -- labelled sequences 00-10 (08 is
  the validation split, as in the official split table) and unlabelled test
  sequences 11 and 12; scans are dealt over the sequences round-robin, 08
  first so that even a tiny set has a validation scan;
* ``<out>/nuscenes/...`` -- a ``v1.0-mini`` tree whose ten scenes carry the
  devkit's ``mini_train`` / ``mini_val`` names, so the devkit's own splits and
  ``LidarSegEval`` apply unchanged. Every scene has at least one sample, so
  the nuScenes set holds ``max(scans, 10)`` samples. Beside it, as on the real
  dataroot, a ``v1.0-test`` version: its own tables for the 150 scenes of the
  devkit's ``test`` split (one keyframe each by default), no annotations
  (empty ``instance``, ``sample_annotation`` and ``lidarseg`` tables, as the
  official release ships them), its scans in the shared
  ``samples/LIDAR_TOP``. ``cdcl predict --split test`` with
  ``data.nuscenes.version=v1.0-test`` writes a submission that the devkit's
  ``validate_submission`` accepts;
* ``<out>/semanticposs/sequences/NN/...`` -- SemanticPOSS's layout (that of
  SemanticKITTI): six labelled sequences 00-05, 02 the validation split and
  dealt first; campus scenes (:data:`~.world.POSS_STYLE`) seen by a 40-beam
  Pandora-like sensor (:data:`~.sensors.POSS_SENSOR`), labels in
  SemanticPOSS's raw ids (``person-group`` is raw id 5, "2+ persons"),
  intensity 0..255. SemanticKITTI and SemanticPOSS are rows of one writer
  (:class:`KittiLayoutSet`).

Everything is a pure function of ``seed`` (one random generator per world and
per scan, keyed by dataset, sequence and index), so two runs write the same
bytes.
"""
from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from common.errors import OptionError

from .sensors import KITTI_SENSOR, NUSCENES_SENSOR, POSS_SENSOR, Sensor, scan
from .world import (KINDS, KITTI_OF_KIND, KITTI_STYLE, NUSCENES_FINE, NUSCENES_OF_KIND,
                    NUSCENES_STYLE, POSS_OF_KIND, POSS_STYLE, Style, build_street)
from .writers import (ATTRIBUTES, VISIBILITY, attribute_of_kind, category_table, quaternion_yaw,
                      token, write_kitti_scan, write_kitti_sequence_meta, write_map_png,
                      write_tables, yaw_matrix)

DATASETS = ("semantickitti", "nuscenes", "semanticposs")
KITTI_LABELLED = tuple(range(11))           # 00-10; 08 is validation
KITTI_TEST = (11, 12)                       # velodyne only
# deal order: validation first, then a test sequence early, then the rest
_KITTI_ORDER = (8, 0, 11, 1, 2, 3, 4, 5, 6, 7, 9, 10, 12)
POSS_SEQUENCES = tuple(range(6))            # 00-05, all labelled; 02 is validation
POSS_ORDER = (2, 0, 1, 3, 4, 5)
KITTI_POINTS_PER_SCAN = 120_000             # about what points_scale=1 gives

NUSCENES_VERSION = "v1.0-mini"
_NUSCENES_LOCATIONS = ("singapore-onenorth", "boston-seaport", "singapore-queenstown",
                       "singapore-hollandvillage")
_LIDAR_TRANSLATION = (0.943713, 0.0, 1.84023)  # LIDAR_TOP in the ego frame
_LIDAR_ROTATION = quaternion_yaw(-math.pi / 2)   # sensor x right, y forward


# the scene names of nuscenes.utils.splits.mini_train / mini_val (written out so
# that generating needs no devkit; a test checks them against the devkit)
NUSCENES_MINI_TRAIN = ("scene-0061", "scene-0553", "scene-0655", "scene-0757", "scene-0796",
                       "scene-1077", "scene-1094", "scene-1100")
NUSCENES_MINI_VAL = ("scene-0103", "scene-0916")


# the scene names of nuscenes.utils.splits.test (what v1.0-test holds), as runs
# of scene numbers; a test checks them against the devkit
NUSCENES_TEST_VERSION = "v1.0-test"
_NUSCENES_TEST_RUNS = ((77, 91), (111, 119), (140, 140), (142, 148), (265, 266), (279, 282), (307, 314),
                       (333, 343), (481, 498), (547, 551), (601, 604), (606, 624), (827, 831), (833, 842),
                       (844, 846), (932, 933), (935, 943), (1026, 1043))
NUSCENES_TEST = tuple(f"scene-{n:04d}" for a, b in _NUSCENES_TEST_RUNS for n in range(a, b + 1))


def _nuscenes_scene_names() -> List[str]:
    return sorted(NUSCENES_MINI_TRAIN + NUSCENES_MINI_VAL)


def _deal(total: int, keys: Sequence[int], minimum: int = 0) -> Dict[int, int]:
    counts = {k: minimum for k in keys}
    for i in range(max(0, total - minimum * len(keys))):
        counts[keys[i % len(keys)]] += 1
    return counts


@dataclass(frozen=True)
class KittiLayoutSet:
    """A generated dataset in SemanticKITTI's on-disk layout: which world,
    which sensor, which sequences, which raw ids, which intensity scale."""

    name: str
    stream: int                  # random-stream key (nuScenes uses 1 and 2)
    style: Style
    sensor: Sensor
    order: Tuple[int, ...]       # sequences the scans are dealt over, validation first
    labelled: Tuple[int, ...]    # sequences with labels/ (the others: velodyne only)
    empty: Tuple[int, ...]       # sequences that exist without scans
    speed: Tuple[float, float]   # m/s, one scan a second
    raw_of_kind: np.ndarray      # kind -> raw semantic id
    intensity: Callable[[np.ndarray], np.ndarray]  # remission in [0, 1] -> the file's values


def _kitti_remission(rem: np.ndarray) -> np.ndarray:
    return np.round(rem, 2)      # KITTI remission: [0, 1], two decimals


def _poss_intensity(rem: np.ndarray) -> np.ndarray:
    # Pandora intensity: integers 0..255, most returns weak (a mean near 14)
    return np.round(255.0 * rem ** 2.5)


SEMANTICKITTI_SET = KittiLayoutSet(
    "semantickitti", 0, KITTI_STYLE, KITTI_SENSOR, _KITTI_ORDER, KITTI_LABELLED,
    tuple(range(13, 22)),  # the rest of the official test split, so split="test" resolves as on the real one
    (6.0, 12.0), KITTI_OF_KIND, _kitti_remission)
SEMANTICPOSS_SET = KittiLayoutSet(
    "semanticposs", 3, POSS_STYLE, POSS_SENSOR, POSS_ORDER, POSS_SEQUENCES, (),
    (2.0, 5.0), POSS_OF_KIND, _poss_intensity)


def generate_kitti_layout(out: str, spec: KittiLayoutSet, seed: int = 0, scans: int = 60,
                          points_scale: float = 1.0) -> Dict[str, object]:
    """Write ``spec``'s sequences under ``out`` (the folder holding ``sequences``)."""
    counts = _deal(scans, spec.order)
    counts.update({s: 0 for s in spec.empty})
    written = {}
    for seq in sorted(counts):
        n = counts[seq]
        seq_dir = os.path.join(out, "sequences", f"{seq:02d}")
        if n == 0:
            # an empty sequence still exists, so split lists always resolve
            os.makedirs(os.path.join(seq_dir, "velodyne"), exist_ok=True)
            if seq in spec.labelled:
                os.makedirs(os.path.join(seq_dir, "labels"), exist_ok=True)
            write_kitti_sequence_meta(seq_dir, [], [])
            continue
        wrng = np.random.default_rng([seed, spec.stream, seq])
        speed = wrng.uniform(*spec.speed)
        dt = 1.0
        world = build_street(spec.style, wrng, max(1, n - 1) * speed * dt)
        sy = world.sensor_path[0][1]
        poses, times = [], []
        for i in range(n):
            srng = np.random.default_rng([seed, spec.stream, seq, i])
            x = i * speed * dt + srng.normal(0, 0.3)
            y = sy + srng.normal(0, 0.15)
            yaw = srng.normal(0, 0.02)
            s = scan(world, spec.sensor, x, y, yaw, srng, points_scale)
            labels = None
            if seq in spec.labelled:
                raw = spec.raw_of_kind[s["kind"]]
                labels = (s["instance"].astype(np.uint32) << np.uint32(16)) | raw
            write_kitti_scan(seq_dir, i, s["xyz"], spec.intensity(s["remission"]), labels)
            poses.append(yaw_matrix(x, y, spec.sensor.height, yaw))
            times.append(i * dt)
        write_kitti_sequence_meta(seq_dir, poses, times)
        written[f"{seq:02d}"] = n
    return {"root": out, "sequences": written, "scans": int(sum(written.values()))}


def generate_semantickitti(out: str, seed: int = 0, scans: int = 60,
                           points_scale: float = 1.0) -> Dict[str, object]:
    """Write SemanticKITTI sequences under ``out`` (the folder holding ``sequences``)."""
    return generate_kitti_layout(out, SEMANTICKITTI_SET, seed, scans, points_scale)


def generate_semanticposs(out: str, seed: int = 0, scans: int = 60,
                          points_scale: float = 1.0) -> Dict[str, object]:
    """Write SemanticPOSS sequences 00-05 under ``out`` (the folder holding ``sequences``)."""
    return generate_kitti_layout(out, SEMANTICPOSS_SET, seed, scans, points_scale)


def generate_nuscenes(out: str, seed: int = 0, scans: int = 60, points_scale: float = 1.0,
                      test_scans: Optional[int] = None) -> Dict[str, object]:
    """Write a ``v1.0-mini`` nuScenes tree (tables, point clouds, lidarseg labels)
    under ``out`` and, unless ``test_scans`` is 0, a ``v1.0-test`` version beside
    it (unlabelled; ``test_scans`` keyframes dealt over its 150 scenes, at least
    one each; None: one each)."""
    names = _nuscenes_scene_names()
    counts = _deal(scans, list(range(len(names))), minimum=1)
    result = _write_nuscenes_version(out, NUSCENES_VERSION, names, counts, seed, points_scale,
                                     labelled=True)
    result = {"root": out, **result}
    if test_scans is None or test_scans > 0:
        test_counts = _deal(test_scans or len(NUSCENES_TEST), list(range(len(NUSCENES_TEST))), minimum=1)
        result["test"] = _write_nuscenes_version(out, NUSCENES_TEST_VERSION, list(NUSCENES_TEST), test_counts,
                                                 seed, points_scale, labelled=False)
    return result


def _write_nuscenes_version(out: str, version: str, names: Sequence[str], counts: Dict[int, int], seed: int,
                            points_scale: float, labelled: bool) -> Dict[str, object]:
    """One version's tables under ``out/<version>`` and its scans under
    ``out/samples/LIDAR_TOP`` (shared by the versions, as on the real
    dataroot); ``labelled``: lidarseg labels and box annotations, else the
    test layout (empty ``instance``, ``sample_annotation`` and ``lidarseg``)."""
    # v1.0-mini keeps the tokens, streams and names it always had; another
    # version draws from its own streams and names its logs and tokens apart
    mini = version == NUSCENES_VERSION
    stream = 1 if mini else 2
    key: Tuple[str, ...] = () if mini else (version,)

    def tok(*parts: object) -> str:
        return token(seed, *key, *parts)

    t = {name: [] for name in ("attribute", "calibrated_sensor", "category", "ego_pose", "instance",
                               "log", "map", "sample", "sample_annotation", "sample_data", "scene",
                               "sensor", "visibility", "lidarseg")}
    t["category"] = category_table(seed)
    cat_token = {c["index"]: c["token"] for c in t["category"]}
    t["attribute"] = [{"token": token(seed, "attribute", n), "name": n, "description": d}
                      for n, d in ATTRIBUTES]
    attr_token = {a["name"]: a["token"] for a in t["attribute"]}
    t["visibility"] = [{"token": vt, "level": lvl, "description": d} for vt, lvl, d in VISIBILITY]
    sensor_token = token(seed, "sensor", "LIDAR_TOP")
    t["sensor"] = [{"token": sensor_token, "channel": "LIDAR_TOP", "modality": "lidar"}]
    lidar_dir = os.path.join(out, "samples", "LIDAR_TOP")
    seg_dir = os.path.join(out, "lidarseg", version)  # empty for the test version, as released
    os.makedirs(lidar_dir, exist_ok=True)
    os.makedirs(seg_dir, exist_ok=True)

    for si, name in enumerate(names):
        n = counts[si]
        wrng = np.random.default_rng([seed, stream, si])
        location = _NUSCENES_LOCATIONS[si % len(_NUSCENES_LOCATIONS)]
        style = dataclasses.replace(NUSCENES_STYLE, left_hand=location.startswith("singapore"))
        speed = wrng.uniform(3.0, 8.0)
        dt = 0.5  # keyframes at 2 Hz
        world = build_street(style, wrng, max(1, n - 1) * speed * dt)
        sy = world.sensor_path[0][1]
        origin = (300.0 + 150.0 * si, 900.0 + 40.0 * si)  # scene placement in the map frame
        if mini:
            t0 = 1531000000000000 + si * 3_600_000_000
            date = f"2018-07-{10 + si:02d}"
            logfile = f"n015-{date}-11-22-45+0800"
        else:  # one day per scene, 28 a month
            t0 = 1546000000000000 + si * 86_400_000_000
            date = f"2019-{1 + si // 28:02d}-{1 + si % 28:02d}"
            logfile = f"n008-{date}-15-16-36-0500"
        log_token = tok("log", si)
        t["log"].append({"token": log_token, "logfile": logfile, "vehicle": logfile[:4],
                         "date_captured": date, "location": location})
        cs_token = tok("calibrated_sensor", si)
        t["calibrated_sensor"].append({"token": cs_token, "sensor_token": sensor_token,
                                       "translation": list(_LIDAR_TRANSLATION),
                                       "rotation": list(_LIDAR_ROTATION), "camera_intrinsic": []})
        scene_token = tok("scene", si)
        sample_tokens = [tok("sample", si, i) for i in range(n)]
        sd_tokens = [tok("sample_data", si, i) for i in range(n)]
        inst_anns: Dict[int, List[dict]] = {}
        for i in range(n):
            srng = np.random.default_rng([seed, stream, si, i])
            x = i * speed * dt + srng.normal(0, 0.2)
            y = sy + srng.normal(0, 0.1)
            yaw = srng.normal(0, 0.02)
            s = scan(world, NUSCENES_SENSOR, x, y, yaw, srng, points_scale)
            ts = t0 + i * 500_000 + int(srng.integers(0, 2000))
            pts = np.empty((s["xyz"].shape[0], 5), np.float32)
            pts[:, 0] = -s["xyz"][:, 1]      # sensor frame: x right, y forward
            pts[:, 1] = s["xyz"][:, 0]
            pts[:, 2] = s["xyz"][:, 2]
            # a different reflectivity curve and scale than KITTI: 0..255 integers
            pts[:, 3] = np.round(np.clip(255.0 * 1.2 * s["remission"] ** 1.7, 0, 255))
            pts[:, 4] = (len(NUSCENES_SENSOR.elevations_deg) - 1) - s["beam"]  # ring 0 = lowest beam
            fname = f"samples/LIDAR_TOP/{logfile}__LIDAR_TOP__{ts}.pcd.bin"
            pts.tofile(os.path.join(out, fname))
            sd = sd_tokens[i]
            if labelled:
                seg_name = f"lidarseg/{version}/{sd}_lidarseg.bin"
                NUSCENES_OF_KIND[s["kind"]].astype(np.uint8).tofile(os.path.join(out, seg_name))
                t["lidarseg"].append({"token": sd, "sample_data_token": sd, "filename": seg_name})
            # ego pose: the sensor sits 0.94 m ahead of the rear axle
            ex = x - _LIDAR_TRANSLATION[0] * math.cos(yaw) + origin[0]
            ey = y - _LIDAR_TRANSLATION[0] * math.sin(yaw) + origin[1]
            ep = tok("ego_pose", si, i)
            t["ego_pose"].append({"token": ep, "timestamp": ts, "rotation": quaternion_yaw(yaw),
                                  "translation": [ex, ey, 0.0]})
            t["sample"].append({"token": sample_tokens[i], "timestamp": ts, "scene_token": scene_token,
                                "prev": sample_tokens[i - 1] if i > 0 else "",
                                "next": sample_tokens[i + 1] if i + 1 < n else "",
                                "data": {"LIDAR_TOP": sd}})
            t["sample_data"].append({"token": sd, "sample_token": sample_tokens[i], "ego_pose_token": ep,
                                     "calibrated_sensor_token": cs_token, "timestamp": ts,
                                     "fileformat": "pcd", "is_key_frame": True, "height": 0, "width": 0,
                                     "filename": fname, "prev": sd_tokens[i - 1] if i > 0 else "",
                                     "next": sd_tokens[i + 1] if i + 1 < n else ""})
            ids, npts = np.unique(s["instance"][s["instance"] > 0], return_counts=True)
            for inst, cnt in zip(ids.tolist(), npts.tolist()):
                inst_anns.setdefault(inst, []).append({"sample": i, "points": cnt})
        for inst, anns in sorted(inst_anns.items()) if labelled else ():
            thing = world.things[inst - 1]
            inst_token = tok("instance", si, inst)
            ann_tokens = [tok("sample_annotation", si, inst, a["sample"]) for a in anns]
            attr = attribute_of_kind(thing.kind)
            for j, a in enumerate(anns):
                t["sample_annotation"].append({
                    "token": ann_tokens[j], "sample_token": sample_tokens[a["sample"]],
                    "instance_token": inst_token, "visibility_token": "4",
                    "attribute_tokens": [attr_token[attr]] if attr else [],
                    "translation": [thing.center[0] + origin[0], thing.center[1] + origin[1], thing.center[2]],
                    "size": [thing.size[1], thing.size[0], thing.size[2]],  # width, length, height
                    "rotation": quaternion_yaw(thing.yaw),
                    "prev": ann_tokens[j - 1] if j > 0 else "",
                    "next": ann_tokens[j + 1] if j + 1 < len(anns) else "",
                    "num_lidar_pts": int(a["points"]), "num_radar_pts": 0})
            t["instance"].append({"token": inst_token, "category_token": cat_token[KINDS[thing.kind].nuscenes],
                                  "nbr_annotations": len(anns), "first_annotation_token": ann_tokens[0],
                                  "last_annotation_token": ann_tokens[-1]})
        t["scene"].append({"token": scene_token, "log_token": log_token, "nbr_samples": n,
                           "first_sample_token": sample_tokens[0], "last_sample_token": sample_tokens[-1],
                           "name": name, "description": f"Generated street, {location}, {style.name} style."})
    # one map image shared by the versions (the real maps are too)
    map_token = token(seed, "map", 0)
    map_file = f"maps/{map_token}.png"
    write_map_png(os.path.join(out, map_file))
    t["map"] = [{"token": map_token, "category": "semantic_prior", "filename": map_file,
                 "log_tokens": [rec["token"] for rec in t["log"]]}]
    write_tables(os.path.join(out, version), t)
    return {"version": version, "scenes": len(names), "scans": len(t["sample"])}


def generate_lidar(out: str, seed: int = 0, scans: int = 60, points_scale: float = 1.0,
                   datasets: Sequence[str] = DATASETS, nuscenes_test_scans: Optional[int] = None) -> dict:
    """Write the generated LiDAR datasets under ``out`` and return their paths and counts.

    ``scans`` is per dataset; ``points_scale`` multiplies the azimuth steps of
    every sensor (1.0: ~120k points per KITTI scan, ~34k per nuScenes scan,
    at most 72k per SemanticPOSS scan). ``datasets``: which of
    :data:`DATASETS` to write.
    ``nuscenes_test_scans``: keyframes of the nuScenes ``v1.0-test`` version
    (None: one per test scene, 150; 0: no test version).
    """
    unknown = [d for d in datasets if d not in DATASETS]
    if unknown:
        raise OptionError(f"unknown dataset(s) {unknown}; choose from {list(DATASETS)}")
    if scans < 1:
        raise OptionError(f"scans must be >= 1, got {scans}")
    if not points_scale > 0:
        raise OptionError(f"points_scale must be > 0, got {points_scale}")
    if nuscenes_test_scans is not None and nuscenes_test_scans < 0:
        raise OptionError(f"nuscenes_test_scans must be >= 0, got {nuscenes_test_scans}")
    result: Dict[str, object] = {"out": out, "seed": seed}
    if "semantickitti" in datasets:
        result["semantickitti"] = generate_semantickitti(os.path.join(out, "semantickitti"), seed,
                                                         scans, points_scale)
    if "nuscenes" in datasets:
        result["nuscenes"] = generate_nuscenes(os.path.join(out, "nuscenes"), seed, scans, points_scale,
                                               test_scans=nuscenes_test_scans)
    if "semanticposs" in datasets:
        result["semanticposs"] = generate_semanticposs(os.path.join(out, "semanticposs"), seed, scans,
                                                       points_scale)
    return result


# -- statistics -----------------------------------------------------------------
def _kitti_yaml() -> dict:
    from ..datasets.labelmap import load_semantic_kitti_yaml
    return load_semantic_kitti_yaml()


#: the generated sets in SemanticKITTI's layout; each is compared with the point
#: shares of its dataset type's label map (:mod:`cdcl3d.datasets.specs`)
KITTI_LAYOUT = ("semantickitti", "semanticposs")


def real_histogram(dataset: str) -> Tuple[List[str], np.ndarray]:
    """Names and real point shares of the training classes of dataset type
    ``dataset`` (its label map's ``content`` by train id)."""
    from ..datasets.specs import DATASET_TYPES

    lm = DATASET_TYPES[dataset].label_map({})
    return list(lm.class_names), lm.content_by_train_id()


def kitti_real_histogram() -> Tuple[List[str], np.ndarray]:
    """Names and point shares of the 19 training classes in the real SemanticKITTI."""
    return real_histogram("semantickitti")


def _kitti_layout_histogram(seq_root: str, dataset: str) -> dict:
    from ..datasets.specs import DATASET_TYPES

    label_map = DATASET_TYPES[dataset].label_map({})
    names, real = real_histogram(dataset)
    counts = np.zeros(len(names) + 1, np.int64)  # 0: ignored, then the classes
    for seq in sorted(os.listdir(seq_root)):
        lab_dir = os.path.join(seq_root, seq, "labels")
        if not os.path.isdir(lab_dir):
            continue
        for f in sorted(os.listdir(lab_dir)):
            if f.endswith(".label"):
                train = label_map.to_train(np.fromfile(os.path.join(lab_dir, f), np.uint32))
                counts += np.bincount(np.where(train == label_map.ignore_index, 0, train + 1),
                                      minlength=len(counts))
    gen = counts[1:] / max(1, counts[1:].sum())
    return {"names": names, "counts": counts[1:], "generated": gen, "real": real,
            "tvd": float(0.5 * np.abs(gen - real).sum()), "ignored": int(counts[0]),
            "points": int(counts.sum())}


def class_histogram(root: str) -> dict:
    """Per-class point counts and shares of a generated tree (``root`` as given
    to :func:`generate_lidar`).

    ``result['semantickitti']`` and ``result['semanticposs']``: ``names``
    (the training classes: 19, 13), ``counts``, ``generated`` and ``real``
    shares over those classes, ``tvd`` (total variation distance),
    ``ignored`` (points of ignored raw ids), ``points``.
    ``result['nuscenes']``: ``names`` (32 fine classes), ``counts``, ``shares``.
    A dataset whose folder is missing is left out.
    """
    result: dict = {}
    for name in KITTI_LAYOUT:
        seq_root = os.path.join(root, name, "sequences")
        if os.path.isdir(seq_root):
            result[name] = _kitti_layout_histogram(seq_root, name)
    seg = os.path.join(root, "nuscenes", "lidarseg", NUSCENES_VERSION)
    if os.path.isdir(seg):
        counts = np.zeros(len(NUSCENES_FINE), np.int64)
        for f in sorted(os.listdir(seg)):
            if f.endswith("_lidarseg.bin"):
                counts += np.bincount(np.fromfile(os.path.join(seg, f), np.uint8),
                                      minlength=len(NUSCENES_FINE))[:len(NUSCENES_FINE)]
        result["nuscenes"] = {"names": list(NUSCENES_FINE), "counts": counts,
                              "shares": counts / max(1, counts.sum()), "points": int(counts.sum())}
    return result


def format_histogram(hist: dict) -> str:
    """The tables printed by ``cdcl synth lidar --stats``."""
    lines = []
    from ..datasets.specs import DATASET_TYPES

    for name in KITTI_LAYOUT:
        if name not in hist:
            continue
        h = hist[name]
        lines.append(f"{DATASET_TYPES[name].title}: {h['points']} points ({h['ignored']} ignored)")
        lines.append(f"{'class':16s} {'generated %':>12s} {'real %':>8s}")
        for n, g, r in zip(h["names"], h["generated"], h["real"]):
            lines.append(f"{n:16s} {100 * g:12.3f} {100 * r:8.3f}")
        lines.append(f"total variation distance: {h['tvd']:.4f}")
    if "nuscenes" in hist:
        h = hist["nuscenes"]
        lines.append(f"nuScenes-lidarseg: {h['points']} points")
        lines.append(f"{'index':>5s} {'class':38s} {'generated %':>12s}")
        for i, (n, s) in enumerate(zip(h["names"], h["shares"])):
            lines.append(f"{i:5d} {n:38s} {100 * s:12.3f}")
    return "\n".join(lines)
