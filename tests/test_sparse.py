"""Voxelisation, collation and the spconv sparse U-Net (CPU, Native algorithm)."""
from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
from torch import nn

with warnings.catch_warnings():  # spconv uses deprecated torch.cuda.amp decorators
    warnings.simplefilter("ignore")
    from cdcl3d.models.sparse_unet import (SparseApply, SparseUNet, build_sparse_unet,
                                           parse_conv_algo, set_conv_algo)
    from spconv.pytorch import ConvAlgo
    from spconv.pytorch.conv import SparseConvolution

from cdcl3d.voxel import collate_sparse, voxelize

TINY = dict(base_channels=8, channels=(8, 16, 32))


@pytest.fixture(autouse=True)
def _one_thread():
    """These tensors are tiny: extra OpenMP threads only spin on a busy machine
    (seen 30x slower with 2 threads under load)."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _cloud(n: int, seed: int, size: float = 8.0) -> np.ndarray:
    g = np.random.default_rng(seed)
    pts = g.uniform([-size, -size, -1.5, 0.0], [size, size, 1.5, 1.0], size=(n, 4))
    return pts.astype(np.float32)


def _batch(n: int = 2000, num_classes: int = 4, seed: int = 0) -> dict:
    g = np.random.default_rng(seed + 100)
    items = [dict(points=_cloud(n + 37 * i, seed + i),
                  labels=g.integers(0, num_classes, n + 37 * i).astype(np.int64),
                  id=f"s{i}", dataset="semantickitti") for i in range(2)]
    return collate_sparse(items, voxel_size=0.5)


# -- voxelisation -----------------------------------------------------------------

def test_voxelize_hand_example():
    pts = torch.tensor([[0.05, 0.05, 0.05, 1.0],   # voxel x=1 (origin -0.2), y=0, z=0
                        [0.15, 0.10, 0.10, 3.0],   # same voxel
                        [0.25, 0.05, 0.05, 5.0],   # x=2
                        [-0.10, 0.00, 0.30, 7.0]])  # x=0, z=1
    v = voxelize(pts, 0.2)
    assert v["spatial_shape"] == [2, 1, 3]  # z, y, x
    assert v["coords"].dtype == torch.int32 and v["point2voxel"].dtype == torch.int64
    assert v["coords"].tolist() == [[0, 0, 1], [0, 0, 2], [1, 0, 0]]  # (z, y, x)
    assert v["point2voxel"].tolist() == [0, 0, 1, 2]
    torch.testing.assert_close(v["feats"], torch.tensor([[0.10, 0.075, 0.075, 2.0],
                                                         [0.25, 0.05, 0.05, 5.0],
                                                         [-0.10, 0.0, 0.30, 7.0]]))


def test_voxelize_point_range_clips_into_edge_voxels():
    pts = np.array([[0.1, 0.1, 0.1], [5.0, 0.1, 0.1], [-3.0, 0.3, 0.1]], np.float32)
    v = voxelize(pts, (0.2, 0.2, 0.2), point_range=(0, 0, 0, 0.4, 0.4, 0.4))
    assert v["spatial_shape"] == [2, 2, 2]
    coords = v["coords"][v["point2voxel"]].tolist()
    assert coords == [[0, 0, 0], [0, 0, 1], [0, 1, 0]]  # x clamped to 1 and to 0
    assert v["feats"][v["point2voxel"][1], 0] == pytest.approx(5.0)  # features not clipped


def test_voxelize_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN"):
        voxelize(np.array([[0, 0, np.nan, 1]], np.float32), 0.1)
    with pytest.raises(ValueError, match="voxel_size"):
        voxelize(np.zeros((3, 4), np.float32), 0.0)
    with pytest.raises(ValueError, match="item 'bad'"):
        collate_sparse([dict(points=np.zeros((5, 4), np.float32), labels=np.zeros(4, np.int64),
                             id="bad")], voxel_size=0.1)


def test_collate_sparse_concatenates_and_offsets():
    a, b = _cloud(300, 1), _cloud(200, 2)
    b[:, 3] *= 255.0
    batch = collate_sparse([dict(points=a, labels=np.ones(300, np.int64), id="a"),
                            dict(points=b, labels=None, id="b")],
                           voxel_size=0.5, intensity_scale=255.0, use_range=True)
    va = voxelize(a, 0.5)["coords"].shape[0]
    assert batch["voxel_feats"].shape[1] == 5
    assert batch["voxel_coords"].shape == (batch["voxel_feats"].shape[0], 4)
    assert batch["voxel_coords"][:va, 0].eq(0).all() and batch["voxel_coords"][va:, 0].eq(1).all()
    assert batch["offsets"].tolist() == [0, 300, 500]
    assert batch["voxel_offsets"][1] == va
    p2v = batch["point2voxel"]
    assert p2v.shape == (500,) and p2v[:300].max() < va and p2v[300:].min() >= va
    # every point lands in a voxel of its own sample
    assert batch["voxel_coords"][p2v, 0].tolist() == [0] * 300 + [1] * 200
    assert batch["labels"].dtype == torch.int64
    assert batch["labels"][:300].eq(1).all() and batch["labels"][300:].eq(255).all()
    assert batch["ids"] == ["a", "b"] and batch["batch_size"] == 2
    # intensity / 255 brings the second sensor into 0..1
    assert batch["voxel_feats"][:, 3].max() <= 1.0 + 1e-6


# -- the network ------------------------------------------------------------------

def test_forward_backward_every_parameter_gets_grad():
    torch.manual_seed(0)
    batch = _batch()
    model = SparseUNet(in_channels=4, num_classes=4, **TINY)
    out = model(batch)
    n = batch["point2voxel"].shape[0]
    assert out.shape == (n, 4)  # de-voxelisation: one logit row per point
    # points of one voxel share its logits
    p2v = batch["point2voxel"]
    first = torch.full((int(p2v.max()) + 1,), -1, dtype=torch.long)
    first.scatter_(0, p2v.flip(0), torch.arange(n).flip(0))  # some point of each voxel
    torch.testing.assert_close(out, out[first[p2v]])
    nn.functional.cross_entropy(out, batch["labels"]).backward()
    missing = [k for k, p in model.named_parameters()
               if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, missing
    assert all(m.algo == ConvAlgo.Native for m in model.modules() if isinstance(m, SparseConvolution))


def test_forward_resets_algo_on_cpu_and_norms_are_plain_modules():
    model = SparseUNet(num_classes=3, **TINY)
    set_conv_algo(model, ConvAlgo.MaskImplicitGemm)
    model.eval()
    with torch.no_grad():
        model(_batch(500, 3))  # would fail on CPU without Native
    norms = [m.module for m in model.modules() if isinstance(m, SparseApply)
             and isinstance(m.module, nn.BatchNorm1d)]
    assert len(norms) == sum(isinstance(m, nn.BatchNorm1d) for m in model.modules()) > 0
    assert model.heads == ["cls"] and isinstance(model.cls, nn.Linear)


def test_builder_and_algo_names():
    model = build_sparse_unet(3, channels=[8, 16], base_channels=8, algo="mask_implicit_gemm",
                              norm_layer=None)
    assert model.conv_algo(torch.device("cuda")) == ConvAlgo.MaskImplicitGemm
    assert model.conv_algo(torch.device("cpu")) == ConvAlgo.Native
    assert build_sparse_unet(3, **TINY).conv_algo(torch.device("cuda")) == ConvAlgo.MaskImplicitGemm
    assert parse_conv_algo("auto") is None and parse_conv_algo("Native") == ConvAlgo.Native
    with pytest.raises(ValueError, match="valid: auto"):
        parse_conv_algo("fast")
    assert any(isinstance(m, nn.BatchNorm1d) for m in model.modules())


def test_norm_layer_argument_is_used():
    model = SparseUNet(num_classes=3, norm_layer=lambda c: nn.GroupNorm(1, c), **TINY)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    with torch.no_grad():
        assert model(_batch(300, 3)).shape[1] == 3


def test_dataset_aware_bn_routes_to_one_branch():
    from common import dataset_specific as ds
    torch.manual_seed(0)
    names = ["semantickitti", "nuscenes"]
    model = SparseUNet(num_classes=4, **TINY)
    n_bn = sum(isinstance(m, nn.BatchNorm1d) for m in model.modules())
    ds.convert_dataset_specific(model, names, types=(nn.BatchNorm1d,))
    ds.convert_heads(model, {"semantickitti": 4, "nuscenes": 3})
    wrappers = [m for _, m in ds.dataset_specific_modules(model)]
    assert len(wrappers) == n_bn + 1
    # no BatchNorm is left outside a wrapper
    for m in model.modules():
        if isinstance(m, SparseApply):
            assert isinstance(m.module, (ds.DatasetSpecific, nn.ReLU))

    calls = []
    hooks = [w.register_forward_hook(lambda *_: calls.append(1)) for w in wrappers]
    before = {k: v.clone() for k, v in model.state_dict().items() if "running_mean" in k}
    batch = _batch(800, 4)
    model.train()
    with ds.route(model, "semantickitti"):
        out = model(batch)
    assert len(calls) == len(wrappers)  # every wrapper ran once: the wrapper is what runs
    assert out.shape == (batch["point2voxel"].shape[0], 4)
    for k, v in model.state_dict().items():
        if "running_mean" in k:
            changed = not torch.equal(v, before[k])
            assert changed == (".semantickitti." in k), k
    for h in hooks:
        h.remove()

    with ds.route(model, "nuscenes"):
        assert model(batch).shape[1] == 3
    with pytest.raises(ds.RouteError):
        model(batch)

    # collapse gives a plain network computing what the routed one computes
    model.eval()
    plain = ds.collapse(model, "semantickitti")
    assert not any(True for _ in ds.dataset_specific_modules(plain))
    with torch.no_grad(), ds.route(model, "semantickitti"):
        torch.testing.assert_close(plain(batch), model(batch))


def test_generic_wrapper_swap_runs():
    """Independently of the core: swapping each BatchNorm1d attribute for
    another module (what any converter does) changes what runs."""
    model = SparseUNet(num_classes=2, **TINY)

    class Counting(nn.Module):
        def __init__(self, inner: nn.Module, log: list) -> None:
            super().__init__()
            self.inner, self.log = inner, log

        def forward(self, x):
            self.log.append(1)
            return self.inner(x)

    log: list = []
    targets = [n for n, m in model.named_modules() if isinstance(m, nn.BatchNorm1d)]
    for path in targets:
        parent, _, child = path.rpartition(".")
        setattr(model.get_submodule(parent), child, Counting(model.get_submodule(path), log))
    with torch.no_grad():
        model(_batch(300, 2))
    assert len(log) == len(targets) > 0


def test_sgd_reduces_loss_on_two_class_cloud():
    torch.manual_seed(0)
    g = np.random.default_rng(0)
    # class 0: a flat ground patch; class 1: vertical poles standing on it
    ground = np.c_[g.uniform(-6, 6, (1500, 2)), g.normal(0, 0.03, 1500), g.uniform(0.1, 0.3, 1500)]
    poles = np.c_[g.normal(0, 0.1, (600, 2)) + g.choice([-3, 0, 3], (600, 2)),
                  g.uniform(0.2, 2.5, 600), g.uniform(0.1, 0.3, 600)]
    pts = np.concatenate([ground, poles]).astype(np.float32)
    labels = np.r_[np.zeros(1500), np.ones(600)].astype(np.int64)
    batch = collate_sparse([dict(points=pts, labels=labels, id="toy")], voxel_size=0.25)
    model = SparseUNet(num_classes=2, **TINY)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    losses = []
    for _ in range(8):
        loss = nn.functional.cross_entropy(model(batch), batch["labels"])
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert all(np.isfinite(losses))
    assert losses[-1] < 0.5 * losses[0], losses
