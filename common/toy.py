"""A toy task for the core's own tests, benchmark and smoke runs.

Datasets are generated in memory: images of coloured blobs whose class is a
function of the colour, with a per-dataset "style" (brightness, contrast and
channel gain) so that per-dataset BatchNorm has something to learn. The model
is a small conv net with ordinary BatchNorm and one classifier.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Optional

import numpy as np
import torch
from torch import nn
from torch.utils.data import Dataset

from .config import DATA_KEYS
from .task import Task


class ToySegmentation(Dataset):
    """``size`` images (3, H, W) with labels in 0..num_classes-1 (255 border)."""

    def __init__(self, size: int = 16, height: int = 32, width: int = 32, num_classes: int = 4,
                 style: float = 0.0, seed: int = 0, augment: bool = False, name: str = "toy",
                 nan_at: Optional[int] = None) -> None:
        self.size, self.height, self.width = size, height, width
        self.num_classes = num_classes
        self.class_names = [f"class{i}" for i in range(num_classes)]
        self.ignore_index = 255
        self.style, self.seed, self.augment, self.name = style, seed, augment, name
        self.nan_at = nan_at
        # one fixed colour per class; datasets differ by style, not by colour
        self.palette = np.random.default_rng(1234).uniform(-1, 1, (num_classes, 3)).astype(np.float32)

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, i: int) -> Dict[str, Any]:
        rng = np.random.default_rng([self.seed, i])
        labels = np.zeros((self.height, self.width), np.int64)
        for _ in range(4):  # random rectangles of random classes
            c = rng.integers(self.num_classes)
            y0, x0 = rng.integers(0, self.height - 4), rng.integers(0, self.width - 4)
            h, w = rng.integers(4, self.height // 2 + 4), rng.integers(4, self.width // 2 + 4)
            labels[y0:y0 + h, x0:x0 + w] = c
        img = self.palette[labels].transpose(2, 0, 1).copy()
        img += rng.normal(0, 0.3, img.shape).astype(np.float32)
        img = img * (1.0 + self.style) + self.style  # the dataset's "style"
        labels[0, :] = self.ignore_index
        if self.augment and np.random.rand() < 0.5:  # global RNG: seeded per sample by the loader
            img, labels = img[:, :, ::-1].copy(), labels[:, ::-1].copy()
        if self.nan_at is not None and i == self.nan_at:
            img[:] = np.nan
        return {"inputs": torch.from_numpy(img), "labels": torch.from_numpy(labels),
                "id": f"{self.name}/{i}", "dataset": self.name}


class ToyNet(nn.Module):
    """conv-BN-ReLU x3 + 1x1 classifier; ``heads = ["cls"]``."""

    def __init__(self, num_classes: int = 4, width: int = 16, in_channels: int = 3,
                 norm_layer: Optional[Callable[[int], nn.Module]] = None, dropout: float = 0.0) -> None:
        super().__init__()
        norm_layer = norm_layer or nn.BatchNorm2d
        self.conv1 = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn1 = norm_layer(width)
        self.conv2 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn2 = norm_layer(width)
        self.conv3 = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn3 = norm_layer(width)
        self.drop = nn.Dropout2d(dropout)
        self.cls = nn.Conv2d(width, num_classes, 1)
        self.heads = ["cls"]

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # (B, 3, H, W) -> (B, K, H, W)
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        x = torch.relu(self.bn3(self.conv3(x)))
        return self.cls(self.drop(x))


class ToyTask(Task):
    name = "toy"

    def check_data(self, name, cfg, source=""):
        from .config import check_kwargs

        params = {k: v for k, v in cfg.items() if k not in DATA_KEYS}
        check_kwargs(ToySegmentation.__init__, params, f"data.{name}", source, reserved=("name", "augment"))

    def build_dataset(self, name, cfg, split, train):
        self.check_data(name, cfg)
        params = {k: v for k, v in cfg.items() if k not in DATA_KEYS}
        if cfg.get("num_classes"):
            params["num_classes"] = cfg["num_classes"]
        seed = int(params.pop("seed", 0)) + (0 if split == "train" else 10_000)
        if split != "train":
            params["size"] = max(2, int(params.get("size", 16)) // 2)
        return ToySegmentation(seed=seed, augment=train, name=name, **params)

    def check_model(self, model_cfg, source=""):
        from .config import check_kwargs

        kwargs = {k: v for k, v in model_cfg.items() if k != "name"}
        check_kwargs(ToyNet.__init__, kwargs, "model", source, reserved=("num_classes", "norm_layer"))

    def build_model(self, model_cfg, num_classes, norm_layer):
        self.check_model(model_cfg)
        kwargs = {k: v for k, v in model_cfg.items() if k != "name"}
        return ToyNet(num_classes=num_classes, norm_layer=norm_layer, **kwargs)

    def input_shape(self, name, cfg):
        return (3, int(cfg.get("height", 32)), int(cfg.get("width", 32)))


def register() -> None:
    from .registry import TASKS
    if "toy" not in TASKS._items:
        TASKS.register("toy", ToyTask())
