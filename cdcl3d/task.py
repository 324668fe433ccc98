"""The LiDAR task: dataset readers (:mod:`cdcl3d.datasets.specs`, one row per
type) -> range images (SalsaNext) or voxels (sparse U-Net)
(:mod:`cdcl3d.representations`, one row each) -> per-dataset losses,
point-wise evaluation, submissions.

``data.<name>`` keys (beyond the core's type/root/batch_size/...):

* ``type``: a registered dataset type (``semantickitti``, ``nuscenes``,
  ``semanticposs``, ``kitti_format``, ...); the type's own keys: ``version``
  (nuScenes tables, default ``v1.0-trainval``), ``sequences`` (SemanticKITTI's
  layout, overrides the split), ``labels`` (``kitti_format``: the label yaml).
* ``sensor``: the range-image sensor profile (:mod:`cdcl3d.sensors`): a preset
  name, or a mapping with an optional ``preset`` and fields on top of it
  (``height``, ``width``, ``fov_up``/``fov_down`` or ``elevations``, ``use_ring``,
  ``means``, ``stds``, ``intensity_scale``, ``mount_height``, ``ego_radius``:
  points with ``|x|`` and ``|y|`` below it, in metres, stay out of the range image
  but are still predicted; nuScenes 1.0 (its ego vehicle, as the devkit's
  ``remove_close``), SemanticKITTI 0 = off). Default: the type's preset.
* ``augment``: point augmentation for training (``rotate``, ``flip_x``,
  ``flip_y``, ``scale``, ``jitter``, ``dropout``) or ``null``.
* ``class_weights``: ``content`` (the label map's published point shares),
  ``computed`` (counted once on the training split and cached), or ``none``;
  default: the type's.
* ``representation``: ``range`` (default) or ``voxel`` (sparse network), with
  ``voxel_size`` and ``intensity_scale`` (default: the sensor profile's).

``eval.options``: ``knn`` (bool), ``knn_search``, ``knn_k``, ``knn_sigma``,
``knn_cutoff``; ``tta``: test-time augmentation (``flip_x``, ``flip_y``,
``yaw``: a list of degrees; :mod:`cdcl3d.tta`), off by default.
"""
from __future__ import annotations

import hashlib
import logging
import os
from typing import Any, Dict, Optional, Tuple, Union

import numpy as np
import torch

from common.config import DATA_KEYS, ConfigError
from common.metrics import ConfusionMatrix
from common.task import Task
from common.utils import to_device

from .datasets.specs import CLASS_WEIGHTS, LidarDatasetSpec, dataset_type
from .representations import REPRESENTATIONS, Representation
from .tta import TTA, build_views, check_tta, describe

logger = logging.getLogger(__name__)

#: ``data.<name>`` keys of every LiDAR type beyond the core's, with their types
#: (a type adds its own, :attr:`LidarDatasetSpec.options`); ``augment`` is
#: checked against what it is handed to
_LIDAR_KEYS: Dict[str, Any] = {
    "sensor": Any, "augment": Optional[Dict[str, Any]], "class_weights": str, "representation": str,
    "voxel_size": float, "intensity_scale": float, "lovasz_weight": float,
}


def resolve_data(name: str, cfg: Dict[str, Any], source: str = "") -> Tuple[LidarDatasetSpec, Dict[str, Any],
                                                                              Representation]:
    """``data.<name>`` checked, keys and values, without reading data: its type's
    row, its sensor profile and its representation's row."""
    from common.config import check_kwargs, check_options

    from .augment import augment_points
    from .sensors import resolve_sensor

    at = f"{source}: " if source else ""
    spec = dataset_type(cfg.get("type"), f"data.{name}.type", source)
    extra = {k: v for k, v in cfg.items() if k not in DATA_KEYS}
    check_options(extra, {**_LIDAR_KEYS, **spec.options}, f"data.{name}", source)
    check_kwargs(augment_points, cfg.get("augment") or {}, f"data.{name}.augment", source,
                 reserved=("points", "rng"))
    rep = cfg.get("representation", "range")
    if rep not in REPRESENTATIONS:
        raise ConfigError(f"{at}'data.{name}.representation' is {rep!r}; valid: {', '.join(REPRESENTATIONS)}")
    if cfg.get("class_weights", "none") not in CLASS_WEIGHTS:
        raise ConfigError(f"{at}'data.{name}.class_weights' is {cfg['class_weights']!r}; "
                          f"valid: {', '.join(CLASS_WEIGHTS)}")
    try:
        label_map = spec.label_map(cfg)
    except ConfigError as exc:
        raise ConfigError(f"{at}'data.{name}': {exc}") from None
    if cfg.get("class_weights") == "content" and label_map.content_by_train_id() is None:
        raise ConfigError(f"{at}'data.{name}.class_weights' content needs published point shares, which "
                          f"the {spec.title} label map lacks; use computed")
    for key in ("voxel_size", "intensity_scale"):
        if key in cfg and not cfg[key] > 0:
            raise ConfigError(f"{at}'data.{name}.{key}' must be > 0, got {cfg[key]!r}")
    if spec.sensor is None and cfg.get("sensor") is None:
        from .sensors import SENSORS
        raise ConfigError(f"{at}'data.{name}.sensor' is needed for type {spec.name} (no default sensor): "
                          f"a preset ({', '.join(SENSORS)}) or the fields (height, width, fov_up/fov_down "
                          "or elevations, means, stds, ...)")
    sensor = resolve_sensor(cfg.get("sensor"), spec.sensor, f"data.{name}.sensor", source)
    return spec, sensor, REPRESENTATIONS[rep]


def build_reader(name: str, cfg: Dict[str, Any], split: str):
    """The on-disk reader (items with ``points``/``labels``) of a dataset entry."""
    spec, _, _ = resolve_data(name, cfg)
    if not cfg.get("root"):
        raise ConfigError(f"'data.{name}.root' is empty: point it at the dataset folder")
    reader = spec.reader(name, cfg, split, spec.label_map(cfg))
    reader.spec = spec  # its writer and palette
    return reader


class LidarTask(Task):
    name = "3d"
    eval_option_types = {"knn": bool, "knn_search": int, "knn_k": int, "knn_sigma": float,
                         "knn_cutoff": float, "tta": Union[None, bool, Dict[str, Any]]}

    # -- config -----------------------------------------------------------------------
    def check_data(self, name, cfg, source=""):
        resolve_data(name, cfg, source)

    def check_config(self, cfg):
        if cfg.train.mode == "fused":
            for n in cfg.names:
                rep = resolve_data(n, cfg.data[n].as_dict(), cfg.source)[2]
                if not rep.dense:
                    raise ConfigError(f"{cfg.source}: 'train.mode' fused runs one forward over the datasets' "
                                      f"batches stacked into one tensor; 'data.{n}.representation: {rep.name}' "
                                      "has no such input: use dat or sequential")
        super().check_config(cfg)  # option keys and types first, then what tta holds
        check_tta(cfg.eval.options.get("tta"), "eval.options.tta", cfg.source)
        for n, entry in cfg.data.items():
            check_tta(entry.eval.get("tta"), f"data.{n}.eval.tta", cfg.source)

    # -- data -----------------------------------------------------------------------
    def build_dataset(self, name, cfg, split, train):
        _, sensor, rep = resolve_data(name, cfg)
        ds = rep.dataset(build_reader(name, cfg, split), sensor, cfg.get("augment") if train else None)
        ds.rebuild = rep.rebuild(cfg, sensor)  # test-time augmentation's views, made as ds makes its batches
        return ds

    def num_classes(self, name, cfg):
        spec = dataset_type(cfg.get("type"), f"data.{name}.type")
        return spec.label_map(cfg).num_classes

    def collate_fn(self, name, cfg):
        _, sensor, rep = resolve_data(name, cfg)
        return rep.collate(cfg, sensor)

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
        _, sensor, rep = resolve_data(name, cfg)
        return rep.input_shape(sensor)

    # -- loss -----------------------------------------------------------------------
    def class_frequencies(self, name: str, cfg: Dict[str, Any], dataset) -> Optional[np.ndarray]:
        """Per-class point shares in ``dataset``'s label space, or None.

        Counted on the on-disk reader's point labels (not on projected,
        augmented images), in the reader's own train ids, then carried through
        the label table of a remapped dataset (``label_remap``)."""
        spec = dataset_type(cfg["type"], f"data.{name}.type")
        mode = cfg.get("class_weights") or spec.default_class_weights(cfg)
        if mode == "none":
            return None
        from common.data import unwrap_dataset

        reader, remap = unwrap_dataset(dataset)
        if mode == "content":
            freq = spec.label_map(cfg).content_by_train_id()
        else:
            freq = self._counted_frequencies(name, cfg, reader)
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
        return REPRESENTATIONS[batch["representation"]].forward(model, batch)

    # -- evaluation -----------------------------------------------------------------
    @torch.no_grad()
    def predict_points(self, model, batch, opts, knn_module=None, tta: Optional[TTA] = None):
        """Per-point predictions of a batch: list of (N,) long tensors, the KNN
        ones (or None) and the dense argmax (or None); ``tta``: views averaged
        per point before KNN (:meth:`_tta`)."""
        return REPRESENTATIONS[batch["representation"]].predict(model, batch, knn_module, tta)

    @staticmethod
    def _tta(dataset, opts) -> Optional[TTA]:
        """The test-time augmentation ``opts`` ask for on ``dataset`` (None: off)."""
        views = build_views(opts.get("tta"))
        if len(views) == 1:
            return None
        rebuild = getattr(dataset, "rebuild", None)
        if rebuild is None:
            raise TypeError(f"{type(dataset).__name__} was not built by LidarTask.build_dataset: "
                            "it has no rebuild() for the test-time augmentation views")
        return TTA(views, rebuild)

    def eval_notes(self, name, opts) -> Dict[str, Any]:
        """``tta``: the test-time augmentation the results were computed with."""
        return {"tta": describe(build_views(opts.get("tta")))}

    def _knn(self, dataset, opts, device):
        """The KNN post-processing of ``dataset`` (None where ``opts`` turn it
        off or its representation has no range image)."""
        if not opts.get("knn", True) or not REPRESENTATIONS[dataset.representation].dense:
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
        knn_module, tta = self._knn(dataset, cfg, device), self._tta(dataset, cfg)
        if knn_module is not None:
            cms["points_knn"] = new()
        cms["points"] = new()
        for batch in loader:
            batch = to_device(batch, device)
            plain, knn, argmax = self.predict_points(model, batch, cfg, knn_module, tta)
            labels = REPRESENTATIONS[batch["representation"]].point_labels(batch)
            for i, pred in enumerate(plain):
                cms["points"].update(pred, labels[i])
                if knn is not None:
                    cms["points_knn"].update(knn[i], labels[i])
            if argmax is not None:
                cms.setdefault("range_image", new()).update(argmax, batch["labels"])
        return cms

    def miou_mode(self, name, cfg):
        return dataset_type(cfg.get("type"), f"data.{name}.type").miou_mode

    def miou_reference(self, name, cfg):
        return dataset_type(cfg.get("type"), f"data.{name}.type").evaluator

    # -- predictions in the benchmarks' formats ----------------------------------
    @torch.no_grad()
    def predict(self, model, loader, name, dataset, device, out_dir, cfg):
        from common.data import unwrap_dataset

        reader = unwrap_dataset(dataset)[0]
        writer = reader.spec.writer(out_dir, reader)
        knn_module, tta = self._knn(dataset, cfg, device), self._tta(dataset, cfg)
        n = 0
        for batch in loader:
            batch = to_device(batch, device)
            plain, knn, _ = self.predict_points(model, batch, cfg, knn_module, tta)
            ids = REPRESENTATIONS[batch["representation"]].sample_ids(batch)
            for i, pred in enumerate(knn if knn is not None else plain):
                writer.write(ids[i], pred.cpu().numpy())
                n += 1
        writer.close()
        writer.report()
        return n

    # -- TensorBoard pictures --------------------------------------------------------
    def log_images(self, writer, model, val_sets, cfg, device, step):
        """Each evaluation: the first validation scan of every dataset as range-image
        bands (range, intensity, labels, prediction, error) and as a bird's-eye
        render of ground truth beside prediction (Open3D in a child process)."""
        from common.checkpoint import unwrap
        from common.dataset_specific import route

        from .vis.tensorboard import add_range_images, add_scan_render

        m = unwrap(model)
        was = m.training
        m.eval()
        for name, ds in val_sets.items():
            if not REPRESENTATIONS[ds.representation].dense:  # pictures of range images
                continue
            item = ds[0]
            batch = to_device(self.collate_fn(name, cfg.data[name].as_dict())([item]), device)
            with torch.no_grad(), route(m, name):
                plain, _, argmax = self.predict_points(m, batch, {})
            palette = dataset_type(cfg.data[name].type).palette(cfg.data[name].as_dict())
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

