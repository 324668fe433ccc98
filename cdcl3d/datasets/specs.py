"""The LiDAR dataset types: one row each.

A row says everything the rest of cdcl3d needs to know about a type: how
to read it, its label map (raw id -> train id, class names, palette, point
shares), the sensor profile its range images use by default, how its mIoU is
defined, where class weights come from and how predictions are written.
:class:`~cdcl3d.task.LidarTask`, :mod:`cdcl3d.vis`, :mod:`cdcl3d.submission`
and the generator read the rows; nothing else branches on a type name.

Add a type at runtime (a user's sensor in SemanticKITTI's layout, with a
label yaml)::

    from cdcl3d.datasets.specs import kitti_format_type, register_dataset_type
    register_dataset_type(kitti_format_type("mylidar", labels="my-labels.yaml", sensor="hdl32"))

No code is needed for that either: ``type: kitti_format`` with
``labels: my-labels.yaml`` and a ``sensor`` does the same from a config.
"""
from __future__ import annotations

import functools
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Optional

from .labelmap import KittiFormatLabelMap, load_label_yaml, package_label_yaml
from .scan_files import KITTI_LAYOUT_FILES, NUSCENES_FILES

MIOU_MODES = ("all", "present")
CLASS_WEIGHTS = ("content", "computed", "none")


@dataclass(frozen=True)
class LidarDatasetSpec:
    """One LiDAR dataset type.

    * ``reader(name, cfg, split, label_map)``: the on-disk reader
      (a :class:`~cdcl3d.datasets.base.ScanReader`) of ``data.<name>`` = ``cfg``.
    * ``label_map(cfg)``: an object with ``class_names``, ``num_classes``,
      ``palette()`` (``(K, 3) uint8`` RGB by train id) and
      ``content_by_train_id()`` (point shares by train id, or None).
    * ``sensor``: the default sensor preset (:data:`cdcl3d.sensors.SENSORS`);
      None: the config must give ``data.<name>.sensor``.
    * ``miou_mode``: ``all`` (every class, absent ones count 0) or ``present``
      (classes with a non-empty union); ``evaluator`` names the official tool
      whose mean that is.
    * ``class_weights``: the default source, ``content`` (the label map's point
      shares; ``computed`` where it has none) or ``computed`` (counted once).
    * ``writer(out_dir, reader)``: the submission writer, with ``write(id,
      train_ids)``, ``close()`` and ``report()``.
    * ``options``: the ``data.<name>`` keys this type reads, with their types.
    * ``forward``: the sensor frame's forward axis (``x``; nuScenes' LIDAR_TOP ``y``), for pictures.
    * ``files``: one scan's files read by themselves, for ``cdcl show SCAN``
      (:mod:`cdcl3d.datasets.scan_files`).
    """

    name: str
    title: str
    reader: Callable[..., Any]
    label_map: Callable[[Dict[str, Any]], Any]
    sensor: Optional[str]
    writer: Callable[[str, Any], Any]
    miou_mode: str = "all"
    evaluator: str = "semantic-kitti-api"
    class_weights: str = "content"
    options: Dict[str, Any] = field(default_factory=dict)
    forward: str = "x"
    files: Any = KITTI_LAYOUT_FILES

    def __post_init__(self) -> None:
        if self.miou_mode not in MIOU_MODES:
            raise ValueError(f"dataset type {self.name!r}: miou_mode must be one of {MIOU_MODES}")
        if self.class_weights not in ("content", "computed"):
            raise ValueError(f"dataset type {self.name!r}: class_weights must be content or computed")

    def class_names(self, cfg: Dict[str, Any]) -> List[str]:
        return list(self.label_map(cfg).class_names)

    def palette(self, cfg: Optional[Dict[str, Any]] = None) -> Any:
        return self.label_map(cfg or {}).palette()

    def default_class_weights(self, cfg: Dict[str, Any]) -> str:
        if self.class_weights == "content" and self.label_map(cfg).content_by_train_id() is None:
            return "computed"
        return self.class_weights


#: type name -> row; :func:`register_dataset_type` adds one
DATASET_TYPES: Dict[str, LidarDatasetSpec] = {}


def register_dataset_type(spec: LidarDatasetSpec) -> LidarDatasetSpec:
    """Add ``spec`` as ``data.<name>.type: spec.name``; a name taken by another row raises KeyError."""
    if spec.name in DATASET_TYPES and DATASET_TYPES[spec.name] is not spec:
        raise KeyError(f"LiDAR dataset type {spec.name!r} is already registered")
    DATASET_TYPES[spec.name] = spec
    return spec


def dataset_type(name: Any, where: str = "type", source: str = "") -> LidarDatasetSpec:
    """The row of type ``name``; an unknown one is a ConfigError listing the types."""
    if name not in DATASET_TYPES:
        from common.config import ConfigError
        at = f"{source}: " if source else ""
        raise ConfigError(f"{at}'{where}' must be one of {', '.join(DATASET_TYPES)}, got {name!r}")
    return DATASET_TYPES[name]


# -- SemanticKITTI's layout ------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def package_label_map(yaml_name: str, title: str) -> KittiFormatLabelMap:
    """The label map of a yaml shipped in ``cdcl3d/data``."""
    return KittiFormatLabelMap(package_label_yaml(yaml_name), yaml_name, title)


@functools.lru_cache(maxsize=32)
def _file_label_map(path: str, mtime: float, title: str) -> KittiFormatLabelMap:
    return KittiFormatLabelMap(load_label_yaml(path), path, title)


def file_label_map(path: str, title: str = "") -> KittiFormatLabelMap:
    """The label map of a user's label yaml (read again when the file changes)."""
    path = os.path.abspath(os.path.expanduser(path))
    return _file_label_map(path, os.path.getmtime(path) if os.path.exists(path) else -1.0, title)


def _config_label_map(cfg: Dict[str, Any]) -> KittiFormatLabelMap:
    from common.config import ConfigError

    path = cfg.get("labels")
    if not isinstance(path, str) or not path:
        raise ConfigError("'type: kitti_format' needs 'labels': the path of a label yaml (labels, "
                          "learning_map, split; optional learning_map_inv, color_map, content)")
    return file_label_map(path)


def read_kitti_format(name: str, cfg: Dict[str, Any], split: str, label_map: Any):
    """The reader of a dataset in SemanticKITTI's layout (``data.<name>.sequences``
    may override the label yaml's splits)."""
    from .semantickitti import KittiFormatReader

    seqs = cfg.get("sequences")
    return KittiFormatReader(cfg["root"], label_map, split=split,
                             sequences=seqs.get(split) if isinstance(seqs, dict) else None,
                             on_bad_sample=cfg.get("on_bad_sample", "raise"), name=name)


def kitti_writer(out_dir: str, reader: Any):
    from ..submission import KittiFormatWriter
    return KittiFormatWriter(out_dir, reader.label_map)


KITTI_OPTIONS = {"sequences": Dict[str, List[str]]}


def kitti_format_type(name: str, labels: str, sensor: Optional[str], title: str = "",
                      **fields: Any) -> LidarDatasetSpec:
    """A row for a dataset in SemanticKITTI's layout described by the label
    yaml at ``labels`` (a path), with default sensor preset ``sensor``;
    ``fields`` set the other :class:`LidarDatasetSpec` fields."""
    title = title or name
    return LidarDatasetSpec(name=name, title=title, reader=read_kitti_format,
                            label_map=lambda cfg: file_label_map(labels, title), sensor=sensor,
                            writer=kitti_writer, **{"options": KITTI_OPTIONS, **fields})


# -- nuScenes --------------------------------------------------------------------------

def read_nuscenes(name: str, cfg: Dict[str, Any], split: str, label_map: Any):
    from .nuscenes import NuScenesLidarSeg, cached_nuscenes

    version = cfg.get("version", "v1.0-trainval")
    return NuScenesLidarSeg(cfg["root"], version=version, split=split,
                            on_bad_sample=cfg.get("on_bad_sample", "raise"), name=name,
                            nusc=cached_nuscenes(cfg["root"], version))


def nuscenes_writer(out_dir: str, reader: Any):
    from ..submission import NuScenesWriter
    return NuScenesWriter(out_dir, reader)


def nuscenes_classes(cfg: Dict[str, Any]):
    from .labelmap import NuScenesClasses
    return NuScenesClasses()


# -- the rows ----------------------------------------------------------------------------

register_dataset_type(LidarDatasetSpec(
    name="semantickitti", title="SemanticKITTI", reader=read_kitti_format,
    label_map=lambda cfg: package_label_map("semantic-kitti.yaml", "SemanticKITTI"), sensor="hdl64",
    writer=kitti_writer, evaluator="SemanticKITTI semantic-kitti-api", options=KITTI_OPTIONS))
register_dataset_type(LidarDatasetSpec(
    name="nuscenes", title="nuScenes", reader=read_nuscenes, label_map=nuscenes_classes, sensor="hdl32",
    writer=nuscenes_writer, miou_mode="present", evaluator="nuScenes LidarSegEval",
    class_weights="computed", options={"version": str}, forward="y", files=NUSCENES_FILES))
register_dataset_type(LidarDatasetSpec(
    name="semanticposs", title="SemanticPOSS", reader=read_kitti_format,
    label_map=lambda cfg: package_label_map("semantic-poss.yaml", "SemanticPOSS"), sensor="pandora",
    writer=kitti_writer, evaluator="semantic-kitti-api with the SemanticPOSS yaml", options=KITTI_OPTIONS))
register_dataset_type(LidarDatasetSpec(
    name="kitti_format", title="KITTI-format", reader=read_kitti_format, label_map=_config_label_map,
    sensor=None, writer=kitti_writer, evaluator="semantic-kitti-api with the dataset's yaml",
    options=dict(KITTI_OPTIONS, labels=str)))
