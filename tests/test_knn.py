"""KNN post-processing against a per-point brute-force reference."""
import math

import pytest
import torch

from cdcl3d.knn import KNNPostProcess, inverse_gaussian_window, knn_reference_unfold


def _toy_scan(seed=0, h=8, w=16, n=50, k_classes=4, ties=False):
    """A small scan: a smooth surface plus some occluded (farther) points,
    several points per pixel, many empty pixels; the nearest point wins."""
    g = torch.Generator().manual_seed(seed)
    py = torch.randint(0, h, (n,), generator=g)
    px = torch.randint(0, w, (n,), generator=g)
    r = 5.0 + 0.15 * px.float() + 0.3 * torch.rand(n, generator=g)
    far = torch.rand(n, generator=g) < 0.2
    r = torch.where(far, r + 3.0 * torch.rand(n, generator=g), r)
    if ties:
        r = (r * 4).round() / 4  # many equal ranges
    proj_range = torch.full((h, w), -1.0)
    order = torch.argsort(r, descending=True)
    proj_range[py[order], px[order]] = r[order]  # the last write (nearest) wins
    proj_argmax = torch.randint(0, k_classes, (h, w), generator=g)
    return proj_range, r, proj_argmax, px, py


def _brute_force(proj_range, unproj_range, proj_argmax, px, py, num_classes, search, k, sigma,
                 cutoff, gaussian=True):
    """One point at a time, straight from the definition."""
    h, w = proj_range.shape
    pad = search // 2
    coords = [i - pad for i in range(search)]
    gauss = [[math.exp(-(dy * dy + dx * dx) / (2 * sigma * sigma)) for dx in coords] for dy in coords]
    total = sum(map(sum, gauss))
    out = []
    for i in range(len(unproj_range)):
        r0, y0, x0 = float(unproj_range[i]), int(py[i]), int(px[i])
        cands = []
        for a, dy in enumerate(coords):
            for b, dx in enumerate(coords):
                y, x = y0 + dy, x0 + dx
                if not (0 <= y < h and 0 <= x < w) or float(proj_range[y, x]) < 0:
                    continue  # outside or empty: never votes
                weight = 1.0 - gauss[a][b] / total if gaussian else 1.0
                d = 0.0 if (dy, dx) == (0, 0) else abs(float(proj_range[y, x]) - r0) * weight
                cands.append((d, a * search + b, int(proj_argmax[y, x])))
        cands.sort()  # by distance, then window index
        votes = [0] * num_classes
        for d, _, lab in cands[:k]:
            if cutoff <= 0 or d <= cutoff:
                votes[lab] += 1
        if max(votes) == 0:
            out.append(int(proj_argmax[y0, x0]))
        else:
            out.append(votes.index(max(votes)))  # lowest class among ties
    return torch.tensor(out)


@pytest.mark.parametrize("search,k,sigma,cutoff,gaussian", [
    (5, 5, 1.0, 1.0, True), (3, 3, 0.5, 0.5, True), (5, 7, 1.0, 0.0, True),
    (7, 5, 2.0, 0.8, False)])
def test_knn_matches_brute_force(search, k, sigma, cutoff, gaussian):
    num_classes = 4
    for seed in range(3):
        scan = _toy_scan(seed, k_classes=num_classes)
        ref = _brute_force(*scan, num_classes, search, k, sigma, cutoff, gaussian)
        knn = KNNPostProcess(num_classes, search=search, k=k, sigma=sigma, cutoff=cutoff,
                             gaussian=gaussian)
        out = knn(*scan)
        assert out.dtype == torch.long and out.shape == (50,)
        assert torch.equal(out, ref)
        unfold = knn_reference_unfold(*scan, num_classes, search=search, k=k, sigma=sigma,
                                      cutoff=cutoff, gaussian=gaussian)
        assert torch.equal(unfold, ref)


def test_knn_ties_are_deterministic():
    scan = _toy_scan(1, ties=True)
    ref = _brute_force(*scan, 4, 5, 5, 1.0, 1.0)
    assert torch.equal(KNNPostProcess(4)(*scan), ref)


def test_empty_pixels_never_vote():
    proj_range, r, proj_argmax, px, py = _toy_scan(2)
    knn = KNNPostProcess(4, cutoff=0.0)  # no cutoff: only emptiness keeps pixels out
    out = knn(proj_range, r, proj_argmax, px, py)
    scrambled = proj_argmax.clone()
    empty = proj_range < 0
    scrambled[empty] = 3 - scrambled[empty]
    assert torch.equal(knn(proj_range, r, scrambled, px, py), out)


def test_isolated_point_keeps_its_pixel_label():
    proj_range = torch.full((4, 8), -1.0)
    proj_range[1, 2] = 10.0
    proj_range[1, 3] = 30.0  # far neighbour: beyond the cutoff
    proj_argmax = torch.zeros(4, 8, dtype=torch.long)
    proj_argmax[1, 2], proj_argmax[1, 3] = 2, 1
    out = KNNPostProcess(3, search=3, k=3)(proj_range, torch.tensor([10.0]), proj_argmax,
                                            torch.tensor([2]), torch.tensor([1]))
    assert out.tolist() == [2]


def test_inverse_gaussian_window():
    wts = inverse_gaussian_window(5, 1.0)
    assert wts.shape == (25,)
    assert wts[12] == wts.min() and wts[0] == wts.max()
    assert (1 - wts).sum().item() == pytest.approx(1.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="odd"):
        KNNPostProcess(4, search=4)
    with pytest.raises(ValueError, match="k must"):
        KNNPostProcess(4, search=3, k=10)
    proj_range, r, proj_argmax, px, py = _toy_scan(0)
    with pytest.raises(ValueError, match="out of the"):
        KNNPostProcess(4)(proj_range, r, proj_argmax, px + 100, py)
    with pytest.raises(ValueError, match="int64"):
        KNNPostProcess(4)(proj_range, r, proj_argmax.int(), px, py)


def test_points_kept_out_of_the_image_still_get_a_label():
    """Points left out of the range image (the ego vehicle within 1 m, see
    RangeProjection's ``ego_radius``) range metres below every pixel around
    them: beyond any cutoff. Each still gets a label: its own pixel's
    prediction (from the scene point that holds it, or the network's output
    at an empty pixel); none is dropped."""
    proj_range = torch.full((4, 8), -1.0)
    proj_range[1, 2:5] = torch.tensor([10.0, 10.2, 10.1])
    proj_argmax = torch.arange(32).reshape(4, 8) % 3
    px = torch.tensor([2, 3, 6, 0, 3])
    py = torch.tensor([1, 1, 1, 3, 1])
    ranges = torch.tensor([0.6, 0.7, 0.5, 0.8, 10.2])  # four near points, one scene point
    for cutoff in (1.0, 0.5):
        out = KNNPostProcess(3, search=3, k=3, cutoff=cutoff)(proj_range, ranges, proj_argmax, px, py)
        assert out.shape == (5,)
        assert out[:4].tolist() == proj_argmax[py[:4], px[:4]].tolist()
