"""SalsaNext: shapes, gradients, published parameter count, norm_layer."""
from functools import partial

import pytest
import torch
from torch import nn

from cdcl3d.models import SalsaNext, build_salsanext, count_parameters


def test_forward_backward_every_parameter_gets_a_gradient():
    torch.manual_seed(0)
    model = build_salsanext(num_classes=4, width=0.25)
    model.train()
    x = torch.randn(2, 5, 32, 64)
    logits = model(x)
    assert logits.shape == (2, 4, 32, 64)
    logits.square().mean().backward()
    missing = [n for n, p in model.named_parameters() if p.grad is None or not torch.isfinite(p.grad).all()]
    assert not missing, f"parameters without a finite gradient: {missing}"
    assert model.heads == ["logits"]
    assert isinstance(model.get_submodule(model.heads[0]), nn.Conv2d)


def test_published_parameter_count():
    model = SalsaNext(in_channels=5, num_classes=20)
    n = count_parameters(model)
    print(f"SalsaNext(width=1.0, 20 classes): {n:,} parameters")
    assert n == 6_711_572


@pytest.mark.parametrize("width", [0.25, 0.5, 0.3, 0.75])
def test_widths_keep_pixel_shuffle_valid(width):
    torch.manual_seed(0)
    model = build_salsanext(num_classes=3, width=width).eval()
    with torch.no_grad():
        assert model(torch.randn(1, 5, 16, 32)).shape == (1, 3, 16, 32)


def test_norm_layer_is_honoured():
    class MyNorm(nn.BatchNorm2d):
        pass

    model = build_salsanext(num_classes=4, width=0.25, norm_layer=partial(MyNorm, momentum=0.05))
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._NormBase)]
    # 3 context blocks x 2 + 5 encoder blocks x 4 + 4 decoder blocks x 4
    assert len(norms) == 6 + 20 + 16
    assert all(type(m) is MyNorm and m.momentum == 0.05 for m in norms)

    # A non-BN norm (GroupNorm) also goes everywhere.
    model = build_salsanext(num_classes=4, width=0.25, norm_layer=lambda c: nn.GroupNorm(2, c))
    assert sum(isinstance(m, nn.GroupNorm) for m in model.modules()) == 42
    assert not any(isinstance(m, nn.BatchNorm2d) for m in model.modules())


def test_bn_follows_activation():
    """Published order conv -> LeakyReLU -> BN: each BN's input is exactly its
    activation's output."""
    model = build_salsanext(num_classes=4, width=0.25)
    pairs = [(model.downCntx.act2, model.downCntx.bn1), (model.resBlock2.act4, model.resBlock2.bn3),
             (model.resBlock5.act5, model.resBlock5.bn4), (model.upBlock1.act1, model.upBlock1.bn1)]
    seen = {}
    for act, bn in pairs:
        act.register_forward_hook(lambda m, i, o: seen.__setitem__(id(m), o))
        bn.register_forward_hook(lambda m, i, o: seen.__setitem__(id(m), i[0]))
    model(torch.randn(2, 5, 32, 64))
    for act, bn in pairs:
        assert seen[id(bn)] is seen[id(act)]


def test_any_image_size_is_padded_and_cropped_back():
    """A 40-beam sensor's image (not a multiple of 16) runs as if it had empty rows
    (zeros) below it and columns to the right of it."""
    torch.manual_seed(0)
    model = build_salsanext(num_classes=4, width=0.25).eval()
    x = torch.randn(1, 5, 40, 72)
    out = model(x)
    assert out.shape == (1, 4, 40, 72)
    padded = torch.zeros(1, 5, 48, 80)
    padded[..., :40, :72] = x
    torch.testing.assert_close(out, model(padded)[..., :40, :72])


def test_bad_input_raises():
    model = build_salsanext(num_classes=4, width=0.25)
    with pytest.raises(ValueError, match="expected input"):
        model(torch.randn(1, 4, 32, 64))
    with pytest.raises(ValueError, match="width"):
        build_salsanext(num_classes=4, width=0)


def test_returns_logits_not_probabilities():
    torch.manual_seed(0)
    model = build_salsanext(num_classes=4, width=0.25).eval()
    with torch.no_grad():
        out = model(torch.randn(1, 5, 16, 32))
    assert not torch.allclose(out.sum(1), torch.ones(1, 16, 32))


def test_dataset_aware_collapse_and_fold_match_routed_model():
    """The core's converters carry over: dataset-aware BN, route, collapse,
    fold_bn (which needs the model to be torch.fx-traceable)."""
    from common import dataset_specific
    from common.fold import fold_bn
    torch.manual_seed(0)
    model = dataset_specific.convert_dataset_specific(build_salsanext(4, width=0.25), ["a", "b"])
    x = torch.randn(2, 5, 16, 32)
    for name in ("a", "b"):  # give each branch its own statistics
        with dataset_specific.route(model, name):
            model(x + (name == "b"))
    model.eval()
    with torch.no_grad():
        with dataset_specific.route(model, "b"):
            ref = model(x)
        plain = dataset_specific.collapse(model, "b")
        assert count_parameters(plain) == count_parameters(build_salsanext(4, width=0.25))
        torch.testing.assert_close(plain(x), ref)
        torch.testing.assert_close(fold_bn(plain)(x), ref)
