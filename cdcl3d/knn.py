"""KNN post-processing: range-image predictions back onto every point.

A range image keeps one point per pixel (the nearest), so the label of an
occluded point, and the label of a point at an object boundary, read straight
from its pixel is often wrong. RangeNet++/SalsaNext fix this with a cheap
nearest-neighbour vote in the image: for every point, look at the
``search x search`` window around its pixel, measure how far each window
pixel's range is from the point's own range (weighted by ``1 - g`` with ``g``
a normalised Gaussian over the window offsets, so near pixels count as
nearer), keep the ``k`` nearest within ``cutoff`` and take a majority vote of
their predicted classes.

Conventions here (they differ from the published code on purpose):

* all ``num_classes`` train ids vote (the published code drops class 0,
  its "unlabelled" class; here unlabelled is 255 and never predicted);
* empty pixels (range < 0) and pixels outside the image never vote, whatever
  the cutoff (the published code pads with range 0, which can vote when the
  cutoff is off);
* the point's own pixel counts with distance 0 when it is not empty;
* among equal distances the lower window index (row-major) wins; among equal
  vote counts the lower class id wins; a point with no vote at all keeps its
  pixel's prediction.
"""
from __future__ import annotations


import torch
import torch.nn.functional as F
from torch import nn


def inverse_gaussian_window(search: int, sigma: float) -> torch.Tensor:
    """``1 - g`` over a ``search x search`` window, flattened row-major
    ``(search * search,)``, with ``g`` a Gaussian of std ``sigma`` (pixels)
    centred on the window and normalised to sum 1."""
    coords = torch.arange(search, dtype=torch.float64) - (search - 1) / 2.0
    d2 = coords[:, None] ** 2 + coords[None, :] ** 2
    g = torch.exp(-d2 / (2.0 * sigma ** 2))
    g = g / g.sum()
    return (1.0 - g).reshape(-1).to(torch.float32)


def _check_args(num_classes: int, search: int, k: int, sigma: float) -> None:
    if num_classes < 1:
        raise ValueError(f"KNN: num_classes must be >= 1, got {num_classes}")
    if search < 1 or search % 2 == 0:
        raise ValueError(f"KNN: search window must be a positive odd number, got {search}")
    if not 1 <= k <= search * search:
        raise ValueError(f"KNN: k must lie in 1..{search * search} for a {search}x{search} "
                         f"window, got {k}")
    if not sigma > 0:
        raise ValueError(f"KNN: sigma must be > 0, got {sigma}")


def _check_inputs(proj_range: torch.Tensor, unproj_range: torch.Tensor,
                  proj_argmax: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> None:
    if proj_range.dim() != 2:
        raise ValueError(f"KNN: proj_range must be (H, W), got {tuple(proj_range.shape)}")
    if proj_argmax.shape != proj_range.shape:
        raise ValueError(f"KNN: proj_argmax {tuple(proj_argmax.shape)} does not match "
                         f"proj_range {tuple(proj_range.shape)}")
    n = unproj_range.shape
    if unproj_range.dim() != 1 or px.shape != n or py.shape != n:
        raise ValueError(f"KNN: unproj_range, px, py must be (N,) each, got "
                         f"{tuple(unproj_range.shape)}, {tuple(px.shape)}, {tuple(py.shape)}")
    for name, t in (("proj_argmax", proj_argmax), ("px", px), ("py", py)):
        if t.dtype != torch.long:
            raise ValueError(f"KNN: {name} must be int64, got {t.dtype}")
    if unproj_range.is_floating_point() and bool(torch.isnan(unproj_range).any()):
        raise ValueError("KNN: unproj_range holds NaN")
    h, w = proj_range.shape
    if n[0] and (int(px.min()) < 0 or int(px.max()) >= w or int(py.min()) < 0 or int(py.max()) >= h):
        raise ValueError(f"KNN: pixel coordinates out of the {h}x{w} image "
                         f"(px in [{int(px.min())}, {int(px.max())}], "
                         f"py in [{int(py.min())}, {int(py.max())}])")


def _vote(knn_labels: torch.Tensor, votes_ok: torch.Tensor, own_label: torch.Tensor,
          num_classes: int) -> torch.Tensor:
    """Majority vote over the last dim of ``knn_labels (N, k)``; entries
    with ``votes_ok`` False do not vote; no vote at all -> ``own_label``."""
    n = knn_labels.shape[0]
    # Non-voters go to an extra bin K that is dropped before the argmax.
    bins = torch.where(votes_ok, knn_labels, torch.full_like(knn_labels, num_classes))
    counts = torch.zeros(n, num_classes + 1, dtype=torch.int32, device=knn_labels.device)
    counts.scatter_add_(1, bins, torch.ones_like(bins, dtype=torch.int32))
    counts[:, num_classes] = -1
    # argmax returns the first maximum: ties go to the lower class id.
    winner = counts.argmax(dim=1)
    return torch.where(votes_ok.any(dim=1), winner, own_label)


class KNNPostProcess(nn.Module):
    """Range-image KNN voting (see the module docstring).

    ``forward(proj_range (H, W), unproj_range (N,), proj_argmax (H, W) long,
    px (N,) long column, py (N,) long row) -> (N,) long`` labels for all
    points. ``cutoff <= 0`` disables the range cutoff; ``gaussian=False``
    uses plain range differences instead of the inverse-Gaussian weighting.

    Vectorised: the window offsets are added to every point's flat pixel
    index at once and ``(N, search^2)`` ranges and labels are gathered from
    the padded image; no per-point loop and no unfold of the whole image.
    """

    def __init__(self, num_classes: int, search: int = 5, k: int = 5, sigma: float = 1.0,
                 cutoff: float = 1.0, gaussian: bool = True) -> None:
        super().__init__()
        _check_args(num_classes, search, k, sigma)
        self.num_classes = num_classes
        self.search = search
        self.k = k
        self.sigma = sigma
        self.cutoff = cutoff
        self.gaussian = gaussian
        weights = inverse_gaussian_window(search, sigma) if gaussian else torch.ones(search * search)
        self.register_buffer("weights", weights, persistent=False)

    def extra_repr(self) -> str:
        return (f"num_classes={self.num_classes}, search={self.search}, k={self.k}, "
                f"sigma={self.sigma}, cutoff={self.cutoff}, gaussian={self.gaussian}")

    @torch.no_grad()
    def forward(self, proj_range: torch.Tensor, unproj_range: torch.Tensor,
                proj_argmax: torch.Tensor, px: torch.Tensor, py: torch.Tensor) -> torch.Tensor:
        _check_inputs(proj_range, unproj_range, proj_argmax, px, py)
        s, pad = self.search, self.search // 2
        h, w = proj_range.shape
        dev = proj_range.device
        n_win = s * s
        # Empty pixels get range +inf: their distance to any point is then
        # +inf, never <= the cutoff and never before a finite one. The
        # border is padded the same way.
        img = proj_range.float()
        img = img.masked_fill(img < 0, float("inf"))
        rng = F.pad(img, (pad, pad, pad, pad), value=float("inf")).reshape(-1)
        lab = F.pad(proj_argmax, (pad, pad, pad, pad), value=0).reshape(-1)
        wp = w + 2 * pad
        # In padded coordinates the window of pixel (py, px) starts at (py, px).
        ar = torch.arange(s, device=dev)
        offsets = (ar[:, None] * wp + ar[None, :]).reshape(-1)           # (S,) row-major
        idx = (py * wp + px)[:, None] + offsets[None, :]                   # (N, S)

        dist = rng[idx]                                                    # (N, S)
        dist.sub_(unproj_range.float()[:, None]).abs_().mul_(self.weights.to(dev))
        # The point's own pixel counts at distance 0 (its own range), unless empty.
        own_empty = proj_range[py, px] < 0
        dist[:, n_win // 2] = torch.where(own_empty, float("inf"), 0.0)

        # k smallest with ties broken by window index, deterministically:
        # the bit pattern of a non-negative float32 orders like the float,
        # so (bits << shift) | window_index is a unique int64 sort key.
        shift = max(1, (n_win - 1).bit_length())
        key = dist.view(torch.int32).to(torch.int64)
        key.bitwise_left_shift_(shift).bitwise_or_(torch.arange(n_win, device=dev))
        knn_key, _ = key.topk(self.k, dim=1, largest=False, sorted=False)  # (N, k)
        knn_pos = knn_key & ((1 << shift) - 1)
        knn_labels = lab[torch.gather(idx, 1, knn_pos)]                    # (N, k)
        # distance <= limit  <=>  key < (bits(limit) + 1) << shift
        limit = self.cutoff if self.cutoff > 0 else float(torch.finfo(torch.float32).max)
        limit_bits = int(torch.tensor(limit, dtype=torch.float32).view(torch.int32))
        ok = knn_key < ((limit_bits + 1) << shift)
        own = proj_argmax[py, px]
        return _vote(knn_labels, ok, own, self.num_classes)


def knn_reference_unfold(proj_range: torch.Tensor, unproj_range: torch.Tensor,
                         proj_argmax: torch.Tensor, px: torch.Tensor, py: torch.Tensor,
                         num_classes: int, search: int = 5, k: int = 5, sigma: float = 1.0,
                         cutoff: float = 1.0, gaussian: bool = True) -> torch.Tensor:
    """The same vote computed the way the published RangeNet++/SalsaNext code
    does: unfold the whole range image (and the argmax image, as floats) into
    ``(search^2, H*W)`` columns, index the columns of the points, ``topk``.

    Kept as the benchmark baseline and a cross-check; same conventions as
    :class:`KNNPostProcess` (the tie order of ``topk`` is unspecified, so
    results may differ where distances tie exactly).
    """
    _check_args(num_classes, search, k, sigma)
    _check_inputs(proj_range, unproj_range, proj_argmax, px, py)
    h, w = proj_range.shape
    pad = (search - 1) // 2
    with torch.no_grad():
        padded = F.pad(proj_range.float()[None, None], (pad, pad, pad, pad), value=-1.0)
        unfold_range = F.unfold(padded, kernel_size=(search, search))[0]   # (S, H*W)
        idx_list = py * w + px
        point_range = unfold_range[:, idx_list]                             # (S, N)
        empty = point_range < 0
        point_range = point_range.masked_fill(empty, float("inf"))
        center = (search * search - 1) // 2
        point_range[center, :] = unproj_range.float()
        dist = (point_range - unproj_range.float()[None, :]).abs()
        weights = inverse_gaussian_window(search, sigma) if gaussian else torch.ones(search * search)
        dist = dist * weights.to(dist.device)[:, None]
        dist[center, empty[center]] = float("inf")  # an empty own pixel does not vote
        knn_dist, knn_idx = dist.topk(k, dim=0, largest=False, sorted=False)  # (k, N)

        padded_argmax = F.pad(proj_argmax.float()[None, None], (pad, pad, pad, pad), value=0.0)
        unfold_argmax = F.unfold(padded_argmax, kernel_size=(search, search))[0].long()
        point_argmax = unfold_argmax[:, idx_list]                            # (S, N)
        knn_labels = torch.gather(point_argmax, 0, knn_idx)                  # (k, N)
        ok = torch.isfinite(knn_dist)
        if cutoff > 0:
            ok &= knn_dist <= cutoff
        own = proj_argmax[py, px]
        return _vote(knn_labels.t(), ok.t(), own, num_classes)


__all__ = ["KNNPostProcess", "knn_reference_unfold", "inverse_gaussian_window"]
