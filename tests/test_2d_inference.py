"""Whole-image, sliding-window and multi-scale inference."""
import pytest
import torch
from torch import nn

from cdcl2d.inference import (infer, inference_options, multiscale_inference, slide_inference,
                              whole_inference, window_starts)
from cdcl2d.models import build_pspnet


def _pspnet():
    torch.manual_seed(0)
    m = build_pspnet(4, channels=16, aux_channels=8).eval()
    return lambda x: m(x)["out"]


@torch.no_grad()
def test_slide_equals_whole_when_window_covers_image():
    fn = _pspnet()
    x = torch.randn(1, 3, 40, 56)
    whole = whole_inference(fn, x)
    assert torch.equal(slide_inference(fn, x, crop=(40, 56)), whole)
    # a crop larger than the image, without padding, shrinks to one window
    assert torch.equal(slide_inference(fn, x, crop=(64, 64), pad=False), whole)


@torch.no_grad()
def test_slide_stitching_is_exact_for_a_pointwise_model():
    torch.manual_seed(0)
    conv = nn.Conv2d(3, 5, 1)
    x = torch.randn(2, 3, 37, 53)
    out = slide_inference(conv, x, crop=(16, 20))  # stride 11x14: many overlapping windows
    assert out.shape == (2, 5, 37, 53)
    assert torch.allclose(out, conv(x), atol=1e-6)


@torch.no_grad()
def test_slide_pads_small_images():
    conv = nn.Conv2d(3, 2, 1)
    x = torch.randn(1, 3, 10, 12)
    out = slide_inference(conv, x, crop=(16, 16))
    assert out.shape == (1, 2, 10, 12) and torch.allclose(out, conv(x), atol=1e-6)


def test_window_starts_cover_the_length():
    for length, crop, stride in [(100, 32, 21), (32, 32, 21), (33, 32, 21), (10, 32, 21)]:
        starts = window_starts(length, crop, stride)
        covered = set()
        for s in starts:
            covered |= set(range(s, min(s + crop, length)))
        assert covered == set(range(length))
        assert all(s + min(crop, length) <= max(length, crop) for s in starts)


@torch.no_grad()
def test_multiscale_single_scale_is_softmax_of_whole():
    fn = _pspnet()
    x = torch.randn(1, 3, 32, 32)
    probs = multiscale_inference(fn, x, scales=[1.0], flip=False)
    assert torch.allclose(probs, fn(x).softmax(1), atol=1e-6)
    probs = infer(fn, x, scales=[0.5, 1.0, 1.75], flip=True)
    assert probs.shape == (1, 4, 32, 32)
    assert torch.allclose(probs.sum(1), torch.ones(1, 32, 32), atol=1e-5)


def test_inference_options_validation():
    assert inference_options({"mode": "slide", "crop": [8, 8], "split": "val"})["mode"] == "slide"
    with pytest.raises(ValueError, match="unknown inference option"):
        inference_options({"window": 3})
    with pytest.raises(ValueError, match="needs 'crop'"):
        inference_options({"mode": "slide"})
