"""Voxelisation of point clouds for the sparse-voxel network (spconv).

:func:`voxelize` averages the features of the points that fall into each voxel
and keeps, for every point, the index of its voxel (``point2voxel``), so voxel
predictions return to *all* points by plain indexing (``logits[point2voxel]``).
:func:`collate_sparse` turns a list of LiDAR dataset items into one batch for
:class:`cdcl3d.models.sparse_unet.SparseUNet`.

Coordinates follow spconv's order: ``(z, y, x)`` per voxel, with the batch
index first in a collated batch, ``(b, z, y, x)``.

Points outside ``point_range`` are *clipped into the edge voxels* (their voxel
index is clamped to the grid), not dropped: every point keeps a voxel and a
prediction. Their features stay unclipped, so an edge voxel's mean feature
reflects where its points really are.
"""
from __future__ import annotations

from typing import Any, Dict, List, Optional, Sequence, Union

import numpy as np
import torch

IGNORE_INDEX = 255

ArrayLike = Union[np.ndarray, torch.Tensor]
VoxelSize = Union[float, Sequence[float]]


def _voxel_size_xyz(voxel_size: VoxelSize) -> torch.Tensor:
    vs = torch.as_tensor(voxel_size, dtype=torch.float64).reshape(-1)
    if vs.numel() == 1:
        vs = vs.expand(3).clone()
    if vs.numel() != 3 or not bool((vs > 0).all()) or not bool(torch.isfinite(vs).all()):
        raise ValueError(f"voxel_size must be a positive float or 3 positive floats (x, y, z), "
                         f"got {voxel_size!r}")
    return vs


def voxelize(points: ArrayLike, voxel_size: VoxelSize,
             point_range: Optional[Sequence[float]] = None,
             xyz: Optional[ArrayLike] = None) -> Dict[str, Any]:
    """Average point features per voxel.

    Args:
        points: ``(N, C)`` features, the first three columns ``x, y, z``
            (metres) unless ``xyz`` is given.
        voxel_size: edge length in metres, one float or ``(x, y, z)``.
        point_range: ``(x_min, y_min, z_min, x_max, y_max, z_max)``: the grid
            covers this box and points outside it are clipped into the edge
            voxels. ``None``: the grid starts at the voxel-aligned minimum of
            the points and ends at their maximum (nothing is clipped).
        xyz: ``(N, 3)`` positions used to place the points, when the feature
            columns are not raw positions (e.g. normalised features).

    Returns:
        dict with ``coords`` ``(V, 3)`` int32 ``(z, y, x)`` voxel indices,
        ``feats`` ``(V, C)`` float32 mean of the points' features in each voxel,
        ``point2voxel`` ``(N,)`` int64 voxel index of every point, and
        ``spatial_shape`` ``[Z, Y, X]`` (ints) of the grid.
    """
    pts = torch.as_tensor(points)
    if pts.dim() != 2 or (xyz is None and pts.shape[1] < 3):
        raise ValueError(f"points must be (N, C) with C >= 3 (x, y, z first), got shape {tuple(pts.shape)}")
    pts = pts.float()
    pos = pts[:, :3] if xyz is None else torch.as_tensor(xyz).float()
    if pos.shape != (pts.shape[0], 3):
        raise ValueError(f"xyz must be (N, 3) with N = {pts.shape[0]}, got {tuple(pos.shape)}")
    if pts.shape[0] == 0:
        raise ValueError("cannot voxelise an empty point cloud")
    if not bool(torch.isfinite(pos).all()):
        raise ValueError(f"{int((~torch.isfinite(pos)).any(1).sum())} point(s) with NaN or infinite coordinates")
    vs = _voxel_size_xyz(voxel_size)
    pos64 = pos.double()

    if point_range is None:
        lo = torch.floor(pos64.min(0).values / vs) * vs
        idx = torch.floor((pos64 - lo) / vs).long()
        shape_xyz = idx.max(0).values + 1
    else:
        rng = torch.as_tensor(point_range, dtype=torch.float64).reshape(-1)
        if rng.numel() != 6 or not bool((rng[3:] > rng[:3]).all()):
            raise ValueError("point_range must be (x_min, y_min, z_min, x_max, y_max, z_max) "
                             f"with max > min, got {point_range!r}")
        lo = rng[:3]
        shape_xyz = torch.ceil((rng[3:] - lo) / vs).long().clamp(min=1)
        idx = torch.floor((pos64 - lo) / vs).long()
        idx = torch.minimum(idx.clamp(min=0), shape_xyz - 1)  # clip into the edge voxels

    # One integer key per voxel; the grid is far below 2**63 cells.
    sx, sy, sz = (int(s) for s in shape_xyz)
    key = (idx[:, 2] * sy + idx[:, 1]) * sx + idx[:, 0]
    uniq, point2voxel = torch.unique(key, return_inverse=True)  # uniq sorted: z-major order
    num_voxels = uniq.numel()
    counts = torch.bincount(point2voxel, minlength=num_voxels).clamp(min=1)
    feats = torch.zeros(num_voxels, pts.shape[1], dtype=torch.float64)
    feats.index_add_(0, point2voxel, pts.double())
    feats = (feats / counts[:, None]).float()
    coords = torch.stack([uniq // (sx * sy), (uniq // sx) % sy, uniq % sx], dim=1).int()
    return {"coords": coords, "feats": feats, "point2voxel": point2voxel.long(),
            "spatial_shape": [sz, sy, sx]}


def point_features(points: ArrayLike, intensity_scale: float = 1.0,
                   use_range: bool = False) -> torch.Tensor:
    """Input features per point: ``x, y, z, intensity / intensity_scale``
    (plus ``range`` when ``use_range``). Extra columns (nuScenes' ring index)
    are dropped. ``intensity_scale`` is per sensor: 1 for SemanticKITTI
    remission (0..1), 255 for nuScenes intensity (0..255)."""
    pts = torch.as_tensor(points).float()
    if pts.dim() != 2 or pts.shape[1] < 4:
        raise ValueError(f"points must be (N, 4+) x, y, z, intensity; got shape {tuple(pts.shape)}")
    if intensity_scale <= 0:
        raise ValueError(f"intensity_scale must be > 0, got {intensity_scale}")
    cols = [pts[:, :3], pts[:, 3:4] / float(intensity_scale)]
    if use_range:
        cols.append(pts[:, :3].norm(dim=1, keepdim=True))
    return torch.cat(cols, dim=1)


def num_input_channels(use_range: bool = False) -> int:
    """Channels :func:`point_features` produces (the model's ``in_channels``)."""
    return 5 if use_range else 4


def collate_sparse(items: List[Dict[str, Any]], voxel_size: VoxelSize = 0.2,
                   point_range: Optional[Sequence[float]] = None, intensity_scale: float = 1.0,
                   use_range: bool = False) -> Dict[str, Any]:
    """Voxelise and batch LiDAR items for :class:`SparseUNet`.

    Use with ``functools.partial(collate_sparse, voxel_size=..., ...)`` as a
    DataLoader ``collate_fn``. Items are dicts with ``points`` ``(N, 4+)``
    float32 (x, y, z, intensity, ...), ``labels`` ``(N,)`` int64 or None, and
    optional ``id`` and ``dataset``. An empty scan (N = 0) owns no voxel and
    no point (its prediction is empty).

    Returns a dict:

    * ``voxel_feats`` ``(ΣV, C)`` float32 (C = :func:`num_input_channels`),
    * ``voxel_coords`` ``(ΣV, 4)`` int32 ``(b, z, y, x)``,
    * ``spatial_shape`` ``[Z, Y, X]`` (the largest over the batch),
      ``batch_size`` (int),
    * ``point2voxel`` ``(ΣN,)`` int64 into the concatenated voxels,
    * ``offsets`` ``(B + 1,)`` int64 point offsets (sample ``i`` owns points
      ``offsets[i]:offsets[i+1]``), ``voxel_offsets`` ``(B + 1,)`` likewise,
    * ``labels`` ``(ΣN,)`` int64, 255 for the points of unlabelled items;
      present only when at least one item has labels,
    * ``ids``, ``datasets`` (lists).
    """
    if not items:
        raise ValueError("collate_sparse got an empty list of items")
    feats, coords, p2v, labels = [], [], [], []
    offsets, voxel_offsets = [0], [0]
    shape = [1, 1, 1]
    any_labels = any(it.get("labels") is not None for it in items)
    for b, it in enumerate(items):
        name = it.get("id", b)
        pts = torch.as_tensor(it["points"])
        try:
            f = point_features(pts, intensity_scale, use_range)
            vox = voxelize(f, voxel_size, point_range, xyz=pts[:, :3]) if len(f) else None
        except ValueError as exc:
            raise ValueError(f"item {name!r}: {exc}") from None
        n, v = f.shape[0], (vox["coords"].shape[0] if vox is not None else 0)
        if vox is not None:
            feats.append(vox["feats"])
            coords.append(torch.cat([torch.full((v, 1), b, dtype=torch.int32), vox["coords"]], dim=1))
            p2v.append(vox["point2voxel"] + voxel_offsets[-1])
            shape = [max(a, s) for a, s in zip(shape, vox["spatial_shape"])]
        if any_labels:
            lab = it.get("labels")
            if lab is None:
                lab = torch.full((n,), IGNORE_INDEX, dtype=torch.int64)
            else:
                lab = torch.as_tensor(lab).long().reshape(-1)
                if lab.shape[0] != n:
                    raise ValueError(f"item {name!r}: {lab.shape[0]} labels for {n} points")
            labels.append(lab)
        offsets.append(offsets[-1] + n)
        voxel_offsets.append(voxel_offsets[-1] + v)
    if not feats:  # every scan empty
        feats = [torch.zeros(0, num_input_channels(use_range))]
        coords, p2v = [torch.zeros(0, 4, dtype=torch.int32)], [torch.zeros(0, dtype=torch.int64)]
    batch: Dict[str, Any] = {
        "voxel_feats": torch.cat(feats),
        "voxel_coords": torch.cat(coords),
        "spatial_shape": shape,
        "batch_size": len(items),
        "point2voxel": torch.cat(p2v),
        "offsets": torch.tensor(offsets, dtype=torch.int64),
        "voxel_offsets": torch.tensor(voxel_offsets, dtype=torch.int64),
        "ids": [it.get("id") for it in items],
        "datasets": [it.get("dataset") for it in items],
    }
    if any_labels:
        batch["labels"] = torch.cat(labels)
    return batch
