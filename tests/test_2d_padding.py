"""Zero padding of mixed-size image batches never reaches the network: not the
precise-BN statistics, not PSPNet's pyramid pooling, not eval predictions."""
import copy
import os

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import DataLoader

from cdcl2d.task import ImageTask, collate
from common.precise_bn import update_bn_stats

SMALL, LARGE = (16, 24), (24, 32)


def _item(size, seed, num_classes=4):
    g = torch.Generator().manual_seed(seed)
    # a non-zero mean makes zero padding visibly pull the statistics
    return {"inputs": torch.randn(3, *size, generator=g) + 0.5,
            "labels": torch.randint(0, num_classes, size, generator=g),
            "id": f"img{seed}", "dataset": "d", "orig_size": size}


def _pspnet(seed=0):
    torch.manual_seed(seed)
    return ImageTask().build_model({"name": "pspnet", "channels": 16, "aux_channels": 8,
                                    "bins": [1, 2, 3, 6]}, 4, None)


def _running_stats(model, batches):
    m = copy.deepcopy(model)
    update_bn_stats(m, batches, ImageTask().forward)
    return {k: v for k, v in m.state_dict().items() if k.endswith(("running_mean", "running_var"))}


def _assert_same_stats(got, want):
    assert got.keys() == want.keys() and want
    for k in want:
        assert torch.allclose(got[k], want[k], atol=1e-5), k


class ListDataset(torch.utils.data.Dataset):
    name = "camvid"
    class_names = ["a", "b", "c", "d"]
    ignore_index = 255

    def __init__(self, items):
        self.items = items

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def test_precise_bn_of_a_mixed_size_batch_equals_the_unpadded_batches():
    small = [_item(SMALL, 0), _item(SMALL, 1)]
    large = [_item(LARGE, 2), _item(LARGE, 3)]
    model = _pspnet()
    mixed = _running_stats(model, DataLoader(small + large, batch_size=4, collate_fn=collate))
    unpadded = _running_stats(model, DataLoader(small + large, batch_size=2, collate_fn=collate))
    _assert_same_stats(mixed, unpadded)


def test_precise_bn_loader_batches_equal_sizes_only():
    from common.precise_bn import equal_size_batches

    items = [_item(SMALL, 0), _item(LARGE, 1), _item(SMALL, 2), _item(LARGE, 3), _item(LARGE, 4),
             _item(SMALL, 5), _item(LARGE, 6)]
    batches = list(equal_size_batches(ListDataset(items), 2, collate))
    sizes = [b["sizes"] for b in batches]
    # full batches as soon as a size has two; the lone small leftover is skipped
    assert sizes == [[SMALL, SMALL], [LARGE, LARGE], [LARGE, LARGE]]
    assert [b["id"] for b in batches] == [["img0", "img2"], ["img1", "img3"], ["img4", "img6"]]
    assert all(b["inputs"].shape[-2:] == b["sizes"][0] for b in batches)
    # precise BN over a mixed-size dataset = over the same images batched by size
    model = _pspnet()
    by_size = _running_stats(model, equal_size_batches(ListDataset(items[:4]), 2, collate))
    unpadded = _running_stats(model, DataLoader([items[0], items[2], items[1], items[3]], batch_size=2,
                                                collate_fn=collate))
    _assert_same_stats(by_size, unpadded)


def test_precise_bn_loader_of_one_size_is_the_plain_loader():
    from common.precise_bn import equal_size_batches

    # range images (LiDAR) and eval_size-resized images all share one size:
    # the same batches, in the same shuffled order, leftover included
    ds = ListDataset([_item(SMALL, i) for i in range(7)])
    plain = DataLoader(ds, batch_size=3, shuffle=True, collate_fn=collate,
                       generator=torch.Generator().manual_seed(5))
    ours = equal_size_batches(ds, 3, collate, shuffle=True, generator=torch.Generator().manual_seed(5))
    want, got = list(plain), list(ours)
    assert [b["id"] for b in got] == [b["id"] for b in want] and len(got[-1]["id"]) == 1
    for a, b in zip(got, want):
        assert torch.equal(a["inputs"], b["inputs"]) and torch.equal(a["labels"], b["labels"])


def test_mixed_size_forward_equals_per_size_forward():
    small, large = _item(SMALL, 0), _item(LARGE, 1)
    model = _pspnet().eval()
    batch = collate([small, large])
    out = ImageTask().forward(model, batch)["out"]  # (2, K, 24, 32)
    with torch.no_grad():
        alone = model(small["inputs"][None])["out"][0]
    assert torch.allclose(out[0, :, :SMALL[0], :SMALL[1]], alone, atol=1e-5)


@pytest.mark.parametrize("options", [{}, {"scales": [0.75, 1.0], "flip": True},
                                     {"mode": "slide", "crop": [16, 16]}])
def test_eval_prediction_does_not_depend_on_batch_mates(options):
    small, large = _item(SMALL, 0), _item(LARGE, 1)
    model = _pspnet().eval()
    task, cpu = ImageTask(), torch.device("cpu")

    def confusion(items, batch_size):
        ds = ListDataset(items)
        loader = DataLoader(ds, batch_size=batch_size, collate_fn=collate)
        return task.evaluate(model, loader, "d", ds, cpu, options)["dense"].mat

    alone = confusion([small], 1) + confusion([large], 1)
    assert torch.equal(confusion([small, large], 2), alone)
    assert torch.equal(confusion([large, small], 2), alone)


def test_predicted_png_does_not_depend_on_batch_mates(tmp_path):
    small, large = _item(SMALL, 0), _item(LARGE, 1)
    model = _pspnet().eval()
    task, cpu = ImageTask(), torch.device("cpu")
    ds = ListDataset([small, large])
    for bs in (1, 2):
        task.predict(model, DataLoader(ds, batch_size=bs, collate_fn=collate), "d", ds, cpu,
                     str(tmp_path / f"bs{bs}"), {})
    for name in ("img0.png", "img1.png"):
        one = np.asarray(Image.open(os.path.join(tmp_path, "bs1", name)))
        two = np.asarray(Image.open(os.path.join(tmp_path, "bs2", name)))
        assert one.shape == two.shape and np.array_equal(one, two), name
