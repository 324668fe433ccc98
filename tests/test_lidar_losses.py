"""Lovász-softmax, weighted CE + Lovász, class weights, frequency cache."""
import json

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from cdcl3d.losses import (LidarSegLoss, cached_frequencies, class_weights_from_frequencies,
                           compute_label_frequencies, lovasz_softmax)


def _lovasz_per_class_bruteforce(probs, labels, c):
    """Lovász extension by its definition: sum_i e_(i) * (J(i) - J(i-1))
    with J the Jaccard loss of the i largest errors, one class, plain Python."""
    fg = [1.0 if int(l) == c else 0.0 for l in labels]
    err = [abs(f - float(p)) for f, p in zip(fg, probs[:, c])]
    order = sorted(range(len(err)), key=lambda i: -err[i])
    gts = sum(fg)
    total, prev = 0.0, 0.0
    inter, union_extra = gts, 0.0
    for i in order:
        inter -= fg[i]
        union_extra += 1.0 - fg[i]
        jac = 1.0 - inter / (gts + union_extra)
        total += err[i] * (jac - prev)
        prev = jac
    return total


def test_lovasz_perfect_prediction_is_zero():
    labels = torch.tensor([[[0, 1], [2, 255]]])
    probs = F.one_hot(labels.clamp(max=2), 3).permute(0, 3, 1, 2).float()
    assert lovasz_softmax(probs, labels).item() == pytest.approx(0.0, abs=1e-7)


def test_lovasz_hand_example():
    # 2 pixels, 2 classes, labels [0, 1], both predict p(class 0) = 0.6.
    # Class 0: errors [0.4 (fg), 0.6 (bg)] -> sorted [0.6 bg, 0.4 fg];
    #   J after the bg pixel: 1 - 1/2 = 0.5, after both: 1 - 0/2 = 1
    #   loss = 0.6 * 0.5 + 0.4 * 0.5 = 0.5
    # Class 1: errors [0.4 (bg), 0.6 (fg)] -> sorted [0.6 fg, 0.4 bg];
    #   J after fg: 1 - 0/1 = 1 -> loss = 0.6 * 1 + 0.4 * 0 = 0.6
    probs = torch.tensor([[0.6, 0.4], [0.6, 0.4]])
    labels = torch.tensor([0, 1])
    assert lovasz_softmax(probs, labels).item() == pytest.approx((0.5 + 0.6) / 2)
    assert lovasz_softmax(probs, labels, classes=[1]).item() == pytest.approx(0.6)


def test_lovasz_matches_definition_and_ignores():
    g = torch.Generator().manual_seed(0)
    probs = torch.rand(2, 4, 5, 6, generator=g).softmax(1)
    labels = torch.randint(0, 3, (2, 5, 6), generator=g)  # class 3 absent
    labels[0, 0] = 255
    flat_p = probs.permute(0, 2, 3, 1).reshape(-1, 4)
    flat_l = labels.reshape(-1)
    keep = flat_l != 255
    flat_p, flat_l = flat_p[keep], flat_l[keep]
    present = [_lovasz_per_class_bruteforce(flat_p, flat_l, c) for c in range(3)]
    assert lovasz_softmax(probs, labels).item() == pytest.approx(np.mean(present), rel=1e-5)
    all_ = present + [_lovasz_per_class_bruteforce(flat_p, flat_l, 3)]
    assert lovasz_softmax(probs, labels, classes="all").item() == pytest.approx(np.mean(all_), rel=1e-5)
    # Changing the probabilities of ignored pixels changes nothing.
    probs2 = probs.clone()
    probs2[0, :, 0] = torch.tensor([1.0, 0, 0, 0])[:, None]
    assert lovasz_softmax(probs2, labels).item() == pytest.approx(lovasz_softmax(probs, labels).item())


def test_lovasz_all_ignored_and_bad_labels():
    probs = torch.rand(1, 3, 2, 2, requires_grad=True)
    loss = lovasz_softmax(probs, torch.full((1, 2, 2), 255))
    assert loss.item() == 0.0
    loss.backward()
    with pytest.raises(ValueError, match="labels"):
        lovasz_softmax(probs, torch.full((1, 2, 2), 7))
    with pytest.raises(ValueError, match="do not match"):
        lovasz_softmax(probs, torch.zeros(1, 3, 3, dtype=torch.long))


def test_lidar_seg_loss_is_weighted_ce_plus_lovasz_and_uses_ignore_index():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 4, 8, 8, generator=g, requires_grad=True)
    labels = torch.randint(0, 4, (2, 8, 8), generator=g)
    labels[:, :2] = 255
    w = torch.tensor([0.5, 1.0, 2.0, 4.0])
    crit = LidarSegLoss(w, ignore_index=255, lovasz_weight=0.7)
    loss = crit(logits, labels)
    expected = (F.cross_entropy(logits, labels, weight=w, ignore_index=255)
                + 0.7 * lovasz_softmax(F.softmax(logits, 1), labels))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
    loss.backward()
    # Ignored pixels get no gradient.
    assert logits.grad[:, :, :2].abs().max() == 0
    assert logits.grad[:, :, 2:].abs().max() > 0

    ce_only = LidarSegLoss(None, lovasz_weight=0.0)(logits, labels)
    assert ce_only.item() == pytest.approx(F.cross_entropy(logits, labels, ignore_index=255).item(), rel=1e-6)
    # All ignored: 0, not NaN.
    assert crit(logits, torch.full_like(labels, 255)).item() == 0.0
    with pytest.raises(ValueError, match="class weights"):
        LidarSegLoss(torch.ones(3))(logits, labels)


def test_class_weights_inverse_frequency():
    freq = np.array([0.5, 0.3, 0.2, 0.0])
    w = class_weights_from_frequencies(freq)
    assert w.dtype == torch.float32
    np.testing.assert_allclose(w.numpy(), [1 / 0.501, 1 / 0.301, 1 / 0.201, 0.0], rtol=1e-6)
    # Raw counts are normalised first.
    np.testing.assert_allclose(class_weights_from_frequencies(freq * 1000).numpy(), w.numpy(), rtol=1e-6)
    assert class_weights_from_frequencies(freq, ignore_zero_freq=False)[3].item() == pytest.approx(1000.0)
    with pytest.raises(ValueError):
        class_weights_from_frequencies(np.array([0.5, -0.1]))


def test_compute_label_frequencies():
    arrays = [np.array([0, 0, 1, 255]), np.array([[2, 2], [0, 255]], dtype=np.int64)]
    f = compute_label_frequencies(arrays, num_classes=4)
    np.testing.assert_allclose(f, [3 / 6, 1 / 6, 2 / 6, 0.0])
    with pytest.raises(ValueError, match="label array #1"):
        compute_label_frequencies([np.array([0]), np.array([9])], num_classes=4)


def test_cached_frequencies_round_trip(tmp_path):
    path = tmp_path / "sub" / "freq.json"
    calls = []

    def compute():
        calls.append(1)
        return np.array([0.25, 0.75, 0.0])

    meta = {"dataset": "toy", "split": ("train",)}
    f1 = cached_frequencies(str(path), compute, meta=meta)
    f2 = cached_frequencies(str(path), compute, meta=meta)
    assert len(calls) == 1 and path.exists()
    np.testing.assert_array_equal(f1, f2)
    assert json.loads(path.read_text())["frequencies"] == [0.25, 0.75, 0.0]
    cached_frequencies(str(path), compute, meta={"dataset": "toy", "split": ["val"]})
    assert len(calls) == 2  # different split: recounted
    path.write_text("{not json")
    with pytest.raises(ValueError, match="freq.json"):
        cached_frequencies(str(path), compute)


def test_lidar_seg_loss_on_per_point_logits():
    """(N, K) logits with (N,) labels, as the sparse-voxel network gives."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(30, 5, generator=g)
    labels = torch.randint(0, 5, (30,), generator=g)
    labels[:4] = 255
    w = class_weights_from_frequencies(np.array([0.4, 0.3, 0.2, 0.1, 0.0]))
    loss = LidarSegLoss(w)(logits, labels)
    expected = (F.cross_entropy(logits, labels, weight=w, ignore_index=255)
                + lovasz_softmax(F.softmax(logits, 1), labels))
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def _big_batch(seed=0):
    """131,072 pixels (2 x 256 x 256), 20 classes, ~10% ignored, so that the
    labelled count (~118k) is above fp16's largest finite value (65,504) and
    is not a power of two. Logits are rounded to bf16 (and fit fp16) so that
    both precisions see the same numbers and only the arithmetic differs."""
    g = torch.Generator().manual_seed(seed)
    logits = (2.0 * torch.randn(2, 20, 256, 256, generator=g)).bfloat16().float()
    labels = torch.randint(0, 20, (2, 256, 256), generator=g)
    labels[torch.rand(labels.shape, generator=g) < 0.1] = 255
    return logits, labels


@pytest.mark.parametrize("weighted", [False, True])
def test_loss_sums_pixels_in_float32_under_autocast(weighted):
    logits, labels = _big_batch()
    w = torch.linspace(0.5, 3.0, 20) if weighted else None
    loss = LidarSegLoss(w, lovasz_weight=1.0)
    ce_only = LidarSegLoss(w, lovasz_weight=0.0)
    ref, ref_ce = loss(logits, labels), ce_only(logits, labels)
    assert ref_ce.item() > 1.0  # random logits: a real CE term, not 0
    # CPU autocast (what train.amp=bf16 runs), logits as the network returns them
    with torch.autocast("cpu", dtype=torch.bfloat16):
        low, low_ce = loss(logits.bfloat16(), labels), ce_only(logits.bfloat16(), labels)
    assert low.dtype == torch.float32
    assert low_ce.item() == pytest.approx(ref_ce.item(), rel=1e-3)
    assert low.item() == pytest.approx(ref.item(), rel=1e-3)
    # fp16 logits (train.amp=fp16 hands the loss half logits): the count of
    # ~118k labelled pixels overflows fp16; the CE term must not become 0
    half_ce = ce_only(logits.half(), labels)
    assert half_ce.item() == pytest.approx(ref_ce.item(), rel=1e-3)
    if torch.cuda.is_available():
        with torch.autocast("cuda", dtype=torch.float16):
            cuda = loss.cuda()(logits.cuda().half(), labels.cuda())
        assert cuda.item() == pytest.approx(ref.item(), rel=1e-3)
