"""The LiDAR task: SemanticKITTI / nuScenes readers → range images (SalsaNext)
or voxels (sparse U-Net) → per-dataset losses, point-wise evaluation, submissions.

``data.<name>`` keys (beyond the core's type/root/batch_size/...):

* ``type``: ``semantickitti`` or ``nuscenes``; ``version`` (nuScenes tables,
  default ``v1.0-trainval``); ``sequences`` (SemanticKITTI, overrides the split).
* ``sensor``: range-projection overrides on top of the sensor defaults
  (``height``, ``width``, ``fov_up``, ``fov_down``, ``use_ring``, ``means``, ``stds``,
  ``ego_radius``: points with ``|x|`` and ``|y|`` below it, in metres, stay out of the
  range image but are still predicted; nuScenes 1.0 (its ego vehicle, as the devkit's
  ``remove_close``), SemanticKITTI 0 = off).
* ``augment``: point augmentation for training (``rotate``, ``flip_x``,
  ``flip_y``, ``scale``, ``jitter``, ``dropout``) or ``null``.
* ``class_weights``: ``content`` (SemanticKITTI's published point shares),
  ``computed`` (counted once on the training split and cached), or ``none``.
* ``representation``: ``range`` (default) or ``voxel`` (sparse network), with
  ``voxel_size`` and ``intensity_scale``.

``eval.options``: ``knn`` (bool), ``knn_search``, ``knn_k``, ``knn_sigma``,
``knn_cutoff``.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
from typing import Any, Dict, List, Optional

import numpy as np
import torch
from torch import nn

from common.config import DATA_KEYS
from common.metrics import ConfusionMatrix
from common.task import Task
from common.utils import to_device

logger = logging.getLogger(__name__)

#: ``data.<name>`` keys of the LiDAR task beyond the core's, with their types;
#: ``sensor`` and ``augment`` are checked against what they are handed to
_LIDAR_KEYS: Dict[str, Any] = {
    "version": str, "sequences": Dict[str, List[str]], "sensor": Optional[Dict[str, Any]],
    "augment": Optional[Dict[str, Any]], "class_weights": str, "representation": str,
    "voxel_size": float, "intensity_scale": float, "lovasz_weight": float,
}
DATASET_TYPES = ("semantickitti", "nuscenes")
REPRESENTATIONS = ("range", "voxel")
CLASS_WEIGHTS = ("content", "computed", "none")


def _check_keys(name: str, cfg: Dict[str, Any], source: str = "") -> None:
    """``data.<name>`` of the LiDAR task, keys and values, without reading files."""
    from common.config import ConfigError, check_kwargs, check_options

    from .augment import augment_points
    from .projection import RangeProjection

    at = f"{source}: " if source else ""
    extra = {k: v for k, v in cfg.items() if k not in DATA_KEYS}
    check_options(extra, _LIDAR_KEYS, f"data.{name}", source)
    if cfg.get("type") not in DATASET_TYPES:
        raise ConfigError(f"{at}'data.{name}.type' must be one of {DATASET_TYPES}, got {cfg.get('type')!r}")
    # the sensor keys are RangeProjection's parameters, the augment keys augment_points'
    check_kwargs(RangeProjection.__init__, cfg.get("sensor") or {}, f"data.{name}.sensor", source)
    check_kwargs(augment_points, cfg.get("augment") or {}, f"data.{name}.augment", source,
                 reserved=("points", "rng"))
    for key, valid in (("representation", REPRESENTATIONS), ("class_weights", CLASS_WEIGHTS)):
        if key in cfg and cfg[key] not in valid:
            raise ConfigError(f"{at}'data.{name}.{key}' is {cfg[key]!r}; valid: {', '.join(valid)}")
    if cfg.get("class_weights") == "content" and cfg["type"] != "semantickitti":
        raise ConfigError(f"{at}'data.{name}.class_weights' content exists only for SemanticKITTI "
                          "(its published point shares); use computed")
    for key in ("voxel_size", "intensity_scale"):
        if key in cfg and not cfg[key] > 0:
            raise ConfigError(f"{at}'data.{name}.{key}' must be > 0, got {cfg[key]!r}")


def sensor_of(cfg: Dict[str, Any]) -> Dict[str, Any]:
    from .projection import KITTI_SENSOR, NUSCENES_SENSOR

    base = KITTI_SENSOR if cfg["type"] == "semantickitti" else NUSCENES_SENSOR
    sensor = dict(base)
    sensor.update(cfg.get("sensor") or {})
    return sensor


def build_reader(name: str, cfg: Dict[str, Any], split: str):
    """The on-disk reader (items with ``points``/``labels``) of a dataset entry."""
    _check_keys(name, cfg)
    root = cfg.get("root") or ""
    if not root:
        from common.config import ConfigError
        raise ConfigError(f"'data.{name}.root' is empty: point it at the dataset folder")
    if cfg["type"] == "semantickitti":
        from .datasets.semantickitti import SemanticKITTI
        seqs = cfg.get("sequences")
        return SemanticKITTI(root, split=split, sequences=seqs.get(split) if isinstance(seqs, dict) else None,
                             on_bad_sample=cfg.get("on_bad_sample", "raise"), name=name)
    from .datasets.nuscenes import NuScenesLidarSeg
    return NuScenesLidarSeg(root, version=cfg.get("version", "v1.0-trainval"), split=split,
                            on_bad_sample=cfg.get("on_bad_sample", "raise"), name=name,
                            nusc=_nusc_cache(root, cfg.get("version", "v1.0-trainval")))


@functools.lru_cache(maxsize=4)
def _nusc_cache(root: str, version: str):
    """One devkit database per (root, version), shared by the splits."""
    from nuscenes import NuScenes

    table_root = os.path.join(root, version)
    if not os.path.isdir(table_root):
        raise FileNotFoundError(f"nuScenes tables not found: {table_root} (expected <root>/{version}/*.json)")
    if not version.endswith("test") and not os.path.isfile(os.path.join(table_root, "lidarseg.json")):
        raise FileNotFoundError(f"nuScenes root {root} has no lidarseg annotations "
                                f"({os.path.join(table_root, 'lidarseg.json')} missing)")
    return NuScenes(version=version, dataroot=root, verbose=False)


class _PointsOnly(torch.utils.data.Dataset):
    """Reader items for the voxel representation (optionally augmented)."""

    def __init__(self, base, augment: Optional[Dict[str, Any]]) -> None:
        self.base, self.augment = base, augment
        self.class_names, self.ignore_index = base.class_names, base.ignore_index
        self.num_classes = len(base.class_names)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        item = dict(self.base[i])
        if self.augment:
            from .augment import augment_points
            rng = np.random.default_rng(np.random.randint(2 ** 31))
            pts, keep = augment_points(item["points"], rng, **self.augment)
            item["points"] = pts
            if item.get("labels") is not None:
                item["labels"] = item["labels"][keep]
        return item


class LidarTask(Task):
    name = "3d"
    eval_option_types = {"knn": bool, "knn_search": int, "knn_k": int, "knn_sigma": float,
                         "knn_cutoff": float}

    # -- config -----------------------------------------------------------------------
    def check_data(self, name, cfg, source=""):
        _check_keys(name, cfg, source)

    def check_config(self, cfg):
        if cfg.train.mode == "fused":
            voxel = [n for n in cfg.names if cfg.data[n].params.get("representation", "range") == "voxel"]
            if voxel or cfg.model.get("name") == "sparse_unet":
                from common.config import ConfigError
                raise ConfigError(f"{cfg.source}: 'train.mode' fused runs one forward over the datasets' "
                                  f"batches stacked into one tensor; the sparse network ("
                                  f"{'data.' + voxel[0] + '.representation: voxel' if voxel else 'sparse_unet'})"
                                  f" has no such input: use dat or sequential")
        super().check_config(cfg)

    # -- data -----------------------------------------------------------------------
    def build_dataset(self, name, cfg, split, train):
        base = build_reader(name, cfg, split)
        augment = cfg.get("augment") if train else None
        if cfg.get("representation", "range") == "voxel":
            return _PointsOnly(base, augment)
        from .datasets.range_dataset import RangeImageDataset
        from .projection import RangeProjection
        return RangeImageDataset(base, RangeProjection(**sensor_of(cfg)), augment=augment)

    def num_classes(self, name, cfg):
        return {"semantickitti": 19, "nuscenes": 16}.get(cfg.get("type"))

    def collate_fn(self, name, cfg):
        if cfg.get("representation", "range") == "voxel":
            from .voxel import collate_sparse
            default_scale = 255.0 if cfg.get("type") == "nuscenes" else 1.0
            return functools.partial(collate_sparse, voxel_size=cfg.get("voxel_size", 0.2),
                                     intensity_scale=float(cfg.get("intensity_scale", default_scale)))
        from .datasets.range_dataset import collate_range
        return collate_range

    # -- model ----------------------------------------------------------------------
    @staticmethod
    def model_builder(model_cfg, source=""):
        """The builder named by ``model.name``."""
        name = model_cfg.get("name")
        if name == "salsanext":
            from .models.salsanext import build_salsanext
            return build_salsanext
        if name == "sparse_unet":
            from .models.sparse_unet import build_sparse_unet
            return build_sparse_unet
        from common.config import ConfigError
        raise ConfigError(f"{source + ': ' if source else ''}'model.name' is {name!r}; "
                          "the 3d task has salsanext, sparse_unet")

    def check_model(self, model_cfg, source=""):
        from common.config import check_kwargs

        kwargs = {k: v for k, v in model_cfg.items() if k != "name"}
        check_kwargs(self.model_builder(model_cfg, source), kwargs, "model", source,
                     reserved=("num_classes", "norm_layer"))

    def build_model(self, model_cfg, num_classes, norm_layer):
        self.check_model(model_cfg)
        fn = self.model_builder(model_cfg)
        kwargs = {k: v for k, v in model_cfg.items() if k != "name"}
        if norm_layer is not None:
            kwargs["norm_layer"] = norm_layer
        return fn(num_classes=num_classes, **kwargs)

    def input_shape(self, name, cfg):
        if cfg.get("representation", "range") == "voxel":
            raise NotImplementedError("the sparse voxel network has no dense input shape "
                                      "(no FLOP count or ONNX export through spconv)")
        s = sensor_of(cfg)
        return (5, int(s["height"]), int(s["width"]))

    # -- loss -----------------------------------------------------------------------
    def class_frequencies(self, name: str, cfg: Dict[str, Any], dataset) -> Optional[np.ndarray]:
        """Per-class point shares in ``dataset``'s label space, or None.

        Counted on the on-disk reader's point labels (not on projected,
        augmented images), in the reader's own train ids, then carried through
        the label table of a remapped dataset (``label_remap``)."""
        mode = cfg.get("class_weights", "content" if cfg["type"] == "semantickitti" else "computed")
        if mode == "none":
            return None
        from common.data import unwrap_dataset

        reader, remap = unwrap_dataset(dataset)
        if mode == "content":
            if cfg["type"] != "semantickitti":
                from common.config import ConfigError
                raise ConfigError(f"'data.{name}.class_weights' content exists only for SemanticKITTI")
            from .datasets.labelmap import SemanticKittiLabelMap
            freq = SemanticKittiLabelMap().content_by_train_id()
        elif mode == "computed":
            freq = self._counted_frequencies(name, cfg, reader)
        else:
            from common.config import ConfigError
            raise ConfigError(f"'data.{name}.class_weights' must be content, computed or none, not {mode!r}")
        return remap.map_frequencies(freq) if remap is not None else np.asarray(freq)

    @staticmethod
    def _counted_frequencies(name: str, cfg: Dict[str, Any], reader) -> np.ndarray:
        from .losses import cached_frequencies, compute_label_frequencies

        k = len(reader.class_names)
        key = hashlib.sha1(f"{os.path.abspath(cfg['root'])}|{cfg.get('version')}|{cfg['type']}|"
                           f"{cfg.get('train_split', 'train')}|{len(reader)}".encode()).hexdigest()[:16]
        cache = os.path.join(os.path.expanduser(os.environ.get("CDCL_CACHE", "~/.cache/cdcl")),
                             f"freq_{name}_{key}.json")
        os.makedirs(os.path.dirname(cache), exist_ok=True)

        def count() -> np.ndarray:
            logger.info("counting class frequencies of %s (%d scans) once; cache %s", name, len(reader), cache)
            labels = (reader[i]["labels"] for i in range(len(reader)))  # each scan read once
            return compute_label_frequencies((x for x in labels if x is not None), k)
        # the meta names the label space, so a cache counted in another one is redone
        return np.asarray(cached_frequencies(cache, count, meta={"space": "reader train ids",
                                                                 "num_classes": k}))

    def build_criterion(self, name, cfg, dataset, model_cfg):
        from .losses import LidarSegLoss, class_weights_from_frequencies

        freq = self.class_frequencies(name, cfg, dataset)
        weights = class_weights_from_frequencies(freq) if freq is not None else None
        loss = LidarSegLoss(weights, ignore_index=dataset.ignore_index,
                            lovasz_weight=float(cfg.get("lovasz_weight", 1.0)))

        def criterion(output, batch):
            # dense (B, K, H, W) vs (B, H, W), or per-point (N, K) vs (N,) for voxels
            if loss.class_weights is not None and loss.class_weights.device != output.device:
                loss.to(output.device)  # once, on the first batch
            return loss(output, batch["labels"])

        return criterion

    def forward(self, model, batch):
        if "voxel_feats" in batch:
            return model(batch)
        return model(batch["inputs"])

    # -- evaluation -----------------------------------------------------------------
    @torch.no_grad()
    def predict_points(self, model, batch, opts, knn_module=None):
        """Per-point predictions of a batch: list of (N,) long tensors (and KNN ones)."""
        out = self.forward(model, batch)
        if "voxel_feats" in batch:
            return _split_points(out.argmax(1), batch), None, None
        argmax = out.argmax(1)  # (B, H, W)
        plain, knn = [], []
        for b in range(argmax.shape[0]):
            rows, cols = batch["proj_row"][b], batch["proj_col"][b]
            plain.append(argmax[b][rows, cols])
            if knn_module is not None:
                knn.append(knn_module(batch["proj_range"][b], batch["range"][b], argmax[b], cols, rows))
        return plain, (knn if knn_module is not None else None), argmax

    def _knn(self, dataset, opts, device):
        # KNN votes in the range image: only for the range-image representation
        if not opts.get("knn", True) or not hasattr(dataset, "projection"):
            return None
        from .knn import KNNPostProcess
        return KNNPostProcess(len(dataset.class_names), search=int(opts.get("knn_search", 5)),
                              k=int(opts.get("knn_k", 5)), sigma=float(opts.get("knn_sigma", 1.0)),
                              cutoff=float(opts.get("knn_cutoff", 1.0))).to(device)

    @torch.no_grad()
    def evaluate(self, model, loader, name, dataset, device, cfg):
        k, ignore = len(dataset.class_names), dataset.ignore_index
        new = lambda: ConfusionMatrix(k, ignore, dataset.class_names, device=device)
        cms = {}
        knn_module = self._knn(dataset, cfg, device)
        if knn_module is not None:
            cms["points_knn"] = new()
        cms["points"] = new()
        cms["range_image"] = new()
        voxel = False
        for batch in loader:
            batch = to_device(batch, device)
            voxel = "voxel_feats" in batch
            plain, knn, argmax = self.predict_points(model, batch, cfg, knn_module)
            labels = _point_labels(batch)
            for i, pred in enumerate(plain):
                cms["points"].update(pred, labels[i])
                if knn is not None:
                    cms["points_knn"].update(knn[i], labels[i])
            if argmax is not None:
                cms["range_image"].update(argmax, batch["labels"])
        if voxel:
            cms.pop("range_image")
        return cms

    def miou_mode(self, name, cfg):
        return "present" if cfg.get("type") == "nuscenes" else "all"

    def miou_reference(self, name, cfg):
        return "nuScenes LidarSegEval" if cfg.get("type") == "nuscenes" else "SemanticKITTI semantic-kitti-api"

    # -- predictions in the benchmarks' formats ----------------------------------
    @torch.no_grad()
    def predict(self, model, loader, name, dataset, device, out_dir, cfg):
        from .submission import NuScenesWriter, SemanticKittiWriter

        reader = getattr(dataset, "base", dataset)
        if reader.__class__.__name__ == "SemanticKITTI":
            writer = SemanticKittiWriter(out_dir, reader.label_map)
        else:
            writer = NuScenesWriter(out_dir, reader)
        knn_module = self._knn(dataset, cfg, device)
        n = 0
        for batch in loader:
            batch = to_device(batch, device)
            plain, knn, _ = self.predict_points(model, batch, cfg, knn_module)
            preds = knn if knn is not None else plain
            for i, pred in enumerate(preds):
                ids = batch["id"] if "id" in batch else batch["ids"]
                writer.write(ids[i], pred.cpu().numpy())
                n += 1
        writer.close()
        if isinstance(writer, NuScenesWriter) and reader.has_labels:  # a labelled split: the devkit's score
            from .submission import report_nuscenes_score
            report_nuscenes_score(out_dir, reader)
        return n

    # -- TensorBoard pictures --------------------------------------------------------
    def log_images(self, writer, model, val_sets, cfg, device, step):
        """Each evaluation: the first validation scan of every dataset as range-image
        bands (range, intensity, labels, prediction, error) and as a bird's-eye
        render of ground truth beside prediction (Open3D in a child process)."""
        from common.checkpoint import unwrap
        from common.dataset_specific import route

        from .vis.colors import train_palette
        from .vis.tensorboard import add_range_images, add_scan_render

        m = unwrap(model)
        was = m.training
        m.eval()
        for name, ds in val_sets.items():
            if not hasattr(ds, "projection"):
                continue
            item = ds[0]
            batch = to_device(self.collate_fn(name, cfg.data[name].as_dict())([item]), device)
            with torch.no_grad(), route(m, cfg.branch_of(name)):
                plain, _, argmax = self.predict_points(m, batch, {})
            palette = train_palette(cfg.data[name].type)
            add_range_images(writer, f"val/{name}/range_image", step, item["proj_range"],
                             item["inputs"][4], item["labels"], argmax[0].cpu(), palette, max_images=1)
            add_scan_render(writer, f"val/{name}/scan", step, ds.base[0]["points"],
                            item["points_labels"], plain[0].cpu(), palette, ds.class_names)
        m.train(was)

    # -- pictures --------------------------------------------------------------------
    def show(self, cfg, name, split, index, checkpoint=None, color=None, png=None, **options):
        """A scan with labels / prediction / error rendered to PNG or a window
        (:func:`cdcl3d.vis.cli.show_sample`)."""
        from .vis.cli import show_sample
        return show_sample(self, cfg, name, split, index, checkpoint, color, png, **options)

    # -- demo ------------------------------------------------------------------------
    def demo(self, args) -> int:
        from .demo import run_demo
        return run_demo(args)


def _point_labels(batch) -> list:
    if "voxel_feats" in batch:
        return _split_points(batch["labels"], batch)
    return list(batch["points_labels"])


def _split_points(x: torch.Tensor, batch) -> list:
    offsets = batch.get("offsets")
    if offsets is None:
        return [x]
    offsets = [int(o) for o in offsets]  # (B+1,) starts of each scan's points
    return [x[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
