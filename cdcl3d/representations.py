"""How a scan reaches the network: one row per representation.

* ``range``: spherical range images (:class:`~cdcl3d.datasets.range_dataset.RangeImageDataset`)
  for SalsaNext; predictions go back to the points through each point's pixel
  (optionally KNN).
* ``voxel``: the points themselves, voxelised in the collate
  (:func:`cdcl3d.voxel.collate_sparse`) for the sparse U-Net; predictions
  go back through each point's voxel.

Every collated batch names its row (``batch["representation"]``), so
:class:`~cdcl3d.task.LidarTask` runs and reads it without looking at its keys.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import Any, Callable, Dict, List, Optional, Tuple

import numpy as np
import torch

Batch = Dict[str, Any]
#: per-scan predictions, per-scan KNN predictions (or None), dense argmax (or None)
Predictions = Tuple[List[torch.Tensor], Optional[List[torch.Tensor]], Optional[torch.Tensor]]


@dataclass(frozen=True)
class Representation:
    """One representation.

    * ``dataset(reader, sensor, augment)``: the training/evaluation dataset
      over a reader (``sensor``: the resolved profile, ``augment``: point
      augmentation or None).
    * ``collate(cfg, sensor)``: the DataLoader's collate function for
      ``data.<name>`` = ``cfg``; its batches carry ``representation``.
    * ``forward(model, batch)``: the logits.
    * ``predict(model, batch, knn, tta=None)``: :data:`Predictions` (``knn``: a
      :class:`~cdcl3d.knn.KNNPostProcess` or None; ``tta``: a
      :class:`~cdcl3d.tta.TTA` or None, views averaged per point).
    * ``rebuild(cfg, sensor)``: ``(points, view) -> batch``, the scans of a
      batch seen in a :class:`~cdcl3d.tta.View`, projected / voxelised as
      this row's dataset and collate do it (test-time augmentation).
    * ``point_labels(batch)``, ``sample_ids(batch)``: per scan.
    * ``input_shape(sensor)``: one input ``(C, ...)`` (FLOPs, export);
      NotImplementedError where there is no dense input.
    * ``dense``: a batch holds one dense image per scan: batches of several
      datasets stack into one tensor (``train.mode: fused``), KNN
      post-processing votes in it, TensorBoard shows it.
    """

    name: str
    dataset: Callable[[Any, Dict[str, Any], Optional[Dict[str, Any]]], torch.utils.data.Dataset]
    collate: Callable[[Dict[str, Any], Dict[str, Any]], Callable[[List[Dict[str, Any]]], Batch]]
    forward: Callable[[torch.nn.Module, Batch], Any]
    predict: Callable[..., Predictions]
    rebuild: Callable[[Dict[str, Any], Dict[str, Any]], Callable[[List[torch.Tensor], Any], Batch]]
    point_labels: Callable[[Batch], List[torch.Tensor]]
    sample_ids: Callable[[Batch], List[Any]]
    input_shape: Callable[[Dict[str, Any]], tuple]
    dense: bool


def _tagged(collate: Callable[[List[Dict[str, Any]]], Batch], name: str, items: List[Dict[str, Any]]) -> Batch:
    batch = collate(items)
    batch["representation"] = name
    return batch


# -- range images ------------------------------------------------------------------------

def _range_dataset(reader, sensor, augment):
    from .datasets.range_dataset import RangeImageDataset
    from .projection import RangeProjection
    return RangeImageDataset(reader, RangeProjection.from_sensor(sensor), augment=augment)


def _range_collate(cfg, sensor):
    from .datasets.range_dataset import collate_range
    return functools.partial(_tagged, collate_range, "range")


def _range_scores(model, batch, probs: bool) -> Tuple[List[torch.Tensor], torch.Tensor]:
    logits = model(batch["inputs"])  # (B, K, H, W)
    src = torch.softmax(logits.float(), dim=1) if probs else logits
    w = logits.shape[-1]
    # each point's pixel as a flat index: one index_select per scan, (K, N)
    return [src[b].reshape(src.shape[1], -1).index_select(1, r * w + c)
            for b, (r, c) in enumerate(zip(batch["proj_row"], batch["proj_col"]))], logits


def _range_predict_tta(model, batch, knn, tta) -> Predictions:
    from .tta import averaged_scores

    scores, logits = averaged_scores(model, batch, tta, _range_scores)
    # the scan's own range image with each pixel's winner's averaged label
    # (empty pixels: the first view's argmax, which no KNN vote reads)
    image = logits.argmax(1)  # (B, H, W)
    plain, voted = [], []
    for b, s in enumerate(scores):
        labels = s.argmax(0)  # (N,)
        idx = batch["proj_idx"][b]
        won = idx >= 0
        image[b][won] = labels[idx[won]]
        plain.append(labels)
        if knn is not None:
            voted.append(knn(batch["proj_range"][b], batch["range"][b], image[b],
                             batch["proj_col"][b], batch["proj_row"][b]))
    return plain, (voted if knn is not None else None), image


def _range_predict(model, batch, knn, tta=None) -> Predictions:
    if tta is not None:
        return _range_predict_tta(model, batch, knn, tta)
    argmax = model(batch["inputs"]).argmax(1)  # (B, H, W)
    plain, voted = [], []
    for b in range(argmax.shape[0]):
        rows, cols = batch["proj_row"][b], batch["proj_col"][b]
        plain.append(argmax[b][rows, cols])
        if knn is not None:
            voted.append(knn(batch["proj_range"][b], batch["range"][b], argmax[b], cols, rows))
    return plain, (voted if knn is not None else None), argmax


def _range_rebuild(cfg, sensor):
    from .projection import RangeProjection

    projection = RangeProjection.from_sensor(sensor)

    def rebuild(points: List[torch.Tensor], view) -> Batch:
        inputs, rows, cols = [], [], []
        for pts in points:
            p = pts.cpu().numpy()
            # the points kept out of the image are those of the scan as read
            exclude = projection.near_sensor(p) if projection.ego_radius > 0 else None
            out = projection.project(view.apply(p), exclude=exclude)
            inputs.append(torch.from_numpy(out["inputs"]))
            rows.append(torch.from_numpy(out["proj_row"]).to(pts.device))
            cols.append(torch.from_numpy(out["proj_col"]).to(pts.device))
        device = points[0].device
        return {"inputs": torch.stack(inputs).to(device), "proj_row": rows, "proj_col": cols,
                "representation": "range"}

    return rebuild


# -- voxels ------------------------------------------------------------------------------

class PointsDataset(torch.utils.data.Dataset):
    """Reader items for the voxel representation (optionally augmented)."""

    representation = "voxel"

    def __init__(self, base, augment: Optional[Dict[str, Any]]) -> None:
        self.base, self.augment = base, augment
        self.class_names, self.ignore_index = base.class_names, base.ignore_index
        self.num_classes = len(base.class_names)

    def __len__(self) -> int:
        return len(self.base)

    def __getitem__(self, i: int) -> Dict[str, Any]:
        item = dict(self.base[i])
        if self.augment and "skipped" not in item:  # a skipped item passes as it is
            from .augment import augment_points
            rng = np.random.default_rng(np.random.randint(2 ** 31))
            pts, keep = augment_points(item["points"], rng, **self.augment)
            item["points"] = pts
            if item.get("labels") is not None:
                item["labels"] = item["labels"][keep]
        return item


def _collate_sparse_points(items: List[Dict[str, Any]], **kwargs: Any) -> Batch:
    """:func:`cdcl3d.voxel.collate_sparse`, keeping each scan's points (TTA views)."""
    from .voxel import collate_sparse
    batch = collate_sparse(items, **kwargs)
    batch["points"] = [torch.as_tensor(it["points"]) for it in items]
    return batch


def _voxel_collate(cfg, sensor):
    scale = float(cfg.get("intensity_scale", sensor["intensity_scale"]))
    return functools.partial(_tagged, functools.partial(_collate_sparse_points, voxel_size=cfg.get("voxel_size", 0.2),
                                                        intensity_scale=scale), "voxel")


def _voxel_rebuild(cfg, sensor):
    collate = _voxel_collate(cfg, sensor)

    def rebuild(points: List[torch.Tensor], view) -> Batch:
        from common.utils import to_device
        batch = collate([{"points": view.apply(p.cpu().numpy()), "labels": None} for p in points])
        return to_device(batch, points[0].device)

    return rebuild


def _split_points(x: torch.Tensor, batch: Batch) -> List[torch.Tensor]:
    offsets = [int(o) for o in batch["offsets"]]  # (B+1,) starts of each scan's points
    return [x[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]


def _voxel_scores(model, batch, probs: bool) -> Tuple[List[torch.Tensor], None]:
    if batch["voxel_feats"].shape[0] == 0:  # only empty scans: nothing to run
        return [x.t() for x in _split_points(batch["voxel_feats"].new_zeros(0, 1), batch)], None
    out = model(batch)  # (ΣN, K)
    out = torch.softmax(out.float(), dim=1) if probs else out
    return [x.t() for x in _split_points(out, batch)], None  # (K, N) each


def _voxel_predict(model, batch, knn, tta=None) -> Predictions:
    if tta is not None:
        from .tta import averaged_scores
        return [s.argmax(0) for s in averaged_scores(model, batch, tta, _voxel_scores)[0]], None, None
    if batch["voxel_feats"].shape[0] == 0:  # only empty scans: nothing to run
        return _split_points(batch["point2voxel"].new_zeros(0), batch), None, None
    return _split_points(model(batch).argmax(1), batch), None, None


def _no_dense_input(sensor):
    from common.errors import UnsupportedError
    raise UnsupportedError("the sparse voxel network has no dense input shape "
                           "(no FLOP count or ONNX export through spconv)")


REPRESENTATIONS: Dict[str, Representation] = {
    "range": Representation(
        name="range", dataset=_range_dataset, collate=_range_collate,
        forward=lambda model, batch: model(batch["inputs"]), predict=_range_predict, rebuild=_range_rebuild,
        point_labels=lambda batch: list(batch["points_labels"]), sample_ids=lambda batch: batch["id"],
        input_shape=lambda sensor: (5, int(sensor["height"]), int(sensor["width"])), dense=True),
    "voxel": Representation(
        name="voxel", dataset=lambda reader, sensor, augment: PointsDataset(reader, augment),
        collate=_voxel_collate, forward=lambda model, batch: model(batch), predict=_voxel_predict,
        rebuild=_voxel_rebuild,
        point_labels=lambda batch: _split_points(batch["labels"], batch), sample_ids=lambda batch: batch["ids"],
        input_shape=_no_dense_input, dense=False),
}
