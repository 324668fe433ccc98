"""Dataset-specific modules: conversion, routing, collapse, folding, SyncBN, DDP."""
import copy

import pytest
import torch
from torch import nn

from common.dataset_specific import (DatasetSpecific, RouteError, collapse, convert_dataset_specific,
                                     convert_heads, route, set_aliases)
from common.engine import select_output
from common.fold import fold_bn
from common.flops import count_macs, count_parameters
from common.toy import ToyNet

NAMES = ["kitti", "nuscenes"]


def make(seed=0, **kw):
    torch.manual_seed(seed)
    return ToyNet(num_classes=4, width=8, **kw)


def converted(heads=True):
    m = convert_dataset_specific(make(), NAMES)
    if heads:
        convert_heads(m, {"kitti": 4, "nuscenes": 3})
    return m


def test_conversion_swaps_every_bn_and_nothing_else():
    plain = make()
    m = convert_dataset_specific(copy.deepcopy(plain), NAMES)
    for name, mod in plain.named_modules():
        if isinstance(mod, nn.BatchNorm2d):
            wrapped = m.get_submodule(name)
            assert isinstance(wrapped, DatasetSpecific) and wrapped.names == NAMES
            for b in wrapped.branches.values():
                assert torch.equal(b.weight, mod.weight) and torch.equal(b.running_var, mod.running_var)
        elif isinstance(mod, nn.Conv2d):
            assert type(m.get_submodule(name)) is nn.Conv2d
    assert "bn1.branches.kitti.running_mean" in m.state_dict()
    assert sum(isinstance(x, DatasetSpecific) for x in m.modules()) == 3


def test_conversion_on_convs_and_heads_with_different_class_counts():
    m = convert_dataset_specific(make(), NAMES, types=(nn.Conv2d,))
    assert isinstance(m.conv1, DatasetSpecific) and isinstance(m.bn1, nn.BatchNorm2d)
    m = converted()
    x = torch.randn(2, 3, 16, 16)
    with route(m, "nuscenes"):
        assert m(x).shape == (2, 3, 16, 16)
    with route(m, "kitti"):
        assert m(x).shape == (2, 4, 16, 16)


def test_no_route_and_unknown_name_raise():
    m = converted()
    x = torch.randn(2, 3, 8, 8)
    with pytest.raises(RouteError, match="without a route"):
        m(x)
    with pytest.raises(RouteError, match="unknown dataset 'waymo'"):
        with route(m, "waymo"):
            m(x)
    with pytest.raises(RouteError, match="sum to"):
        with route(m, {"kitti": 1, "nuscenes": 2}):
            m(x)


def test_training_forward_changes_only_that_datasets_statistics():
    m = converted().train()
    before = copy.deepcopy(m.state_dict())
    with route(m, "kitti"):
        m(torch.randn(2, 3, 8, 8) * 3 + 1)
    after = m.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert changed and all(".branches.kitti." in k for k in changed)
    assert any("running_mean" in k for k in changed)


def test_eval_routed_equals_collapsed_and_counts_match_plain():
    m = converted()
    m.train()
    for name in NAMES:  # give each branch its own statistics
        with route(m, name):
            m(torch.randn(4, 3, 8, 8) * (2 if name == "kitti" else 0.5))
    m.eval()
    x = torch.randn(2, 3, 16, 16)
    for name, k in (("kitti", 4), ("nuscenes", 3)):
        with torch.no_grad(), route(m, name):
            ref = m(x)
        plain = collapse(m, name)
        assert not any(isinstance(x_, DatasetSpecific) for x_ in plain.modules())
        assert torch.allclose(plain(x), ref, atol=1e-6)
        single = ToyNet(num_classes=k, width=8)
        assert count_parameters(plain) == count_parameters(single)
        assert count_macs(plain, x) == count_macs(single, x)


def test_an_alias_routes_and_collapses_to_its_branch():
    """An unseen dataset (``data.<name>.branch``) is served by a trained one's branch."""
    m = converted().eval()
    set_aliases(m, {"kitti360": "kitti"})
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        with route(m, "kitti"):
            ref = m(x)
        with route(m, "kitti360"):
            assert torch.equal(m(x), ref)
        assert torch.equal(collapse(m, "kitti360")(x), ref)
    with pytest.raises(RouteError, match="waymo"):
        set_aliases(m, {"kitti360": "waymo"})


def test_fused_route_normalises_each_chunk_with_its_branch():
    m = converted().train()
    xa, xb = torch.randn(2, 3, 8, 8), torch.randn(1, 3, 8, 8) * 4
    ref = copy.deepcopy(m)
    with route(m, {"kitti": 2, "nuscenes": 1}):
        out = m(torch.cat([xa, xb]))
    assert set(out) == {"kitti", "nuscenes"}
    with route(ref, "kitti"):
        a = ref(xa)
    with route(ref, "nuscenes"):
        b = ref(xb)
    assert torch.allclose(out["kitti"], a, atol=1e-6) and torch.allclose(out["nuscenes"], b, atol=1e-6)
    assert torch.equal(select_output(out, "nuscenes", {"kitti": 2, "nuscenes": 1}), out["nuscenes"])
    for k, v in m.state_dict().items():
        assert torch.allclose(v.float(), ref.state_dict()[k].float(), atol=1e-6), k


def test_fold_bn_matches_and_removes_bn():
    m = converted().eval()
    plain = collapse(m, "kitti")
    for bn in (plain.bn1, plain.bn2, plain.bn3):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 16, 16)
    folded = fold_bn(plain)
    assert folded.folded_bn == 3
    assert not any(isinstance(y, nn.BatchNorm2d) for y in folded.modules())
    assert torch.allclose(folded(x), plain(x), atol=1e-5)
    with pytest.raises(ValueError, match="collapse"):
        fold_bn(m)


def test_sync_batchnorm_conversion_keeps_the_wrapper():
    m = nn.SyncBatchNorm.convert_sync_batchnorm(converted())
    assert isinstance(m.bn1, DatasetSpecific)
    assert all(isinstance(b, nn.SyncBatchNorm) for b in m.bn1.branches.values())


def test_route_survives_ddp_wrapping(tmp_path):
    import torch.distributed as dist
    if not dist.is_available():
        pytest.skip("this torch build has no torch.distributed (some macOS/Windows wheels)")
    dist.init_process_group("gloo", init_method=f"file://{tmp_path}/pg", rank=0, world_size=1)
    try:
        m = converted()
        ddp = nn.parallel.DistributedDataParallel(m)
        with route(ddp, "nuscenes"):
            out = ddp(torch.randn(2, 3, 8, 8))
        assert out.shape[1] == 3
        with pytest.raises(RouteError):
            ddp(torch.randn(2, 3, 8, 8))
    finally:
        dist.destroy_process_group()


def test_onnx_export_of_collapsed_model(tmp_path):
    plain = fold_bn(collapse(converted().eval(), "kitti"))
    path = tmp_path / "m.onnx"
    torch.onnx.export(plain, (torch.randn(1, 3, 16, 16),), str(path), dynamo=False)
    assert path.stat().st_size > 1000
