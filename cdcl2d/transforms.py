"""Joint image/label transforms on numpy arrays.

Images are (H, W, 3) arrays (uint8, or float32 in 0..255 after jitter);
labels are (H, W) int64 train ids or None. Randomness comes only from
Python's ``random`` and numpy's global RNG, which the trainer seeds per sample
so that a resumed run draws the same augmentations.
"""
from __future__ import annotations

import random
from typing import List, Optional, Sequence, Tuple

import numpy as np
from PIL import Image

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

Pair = Tuple[np.ndarray, Optional[np.ndarray]]


def to_pair(size, what: str = "size") -> Tuple[int, int]:
    """``int`` or ``(height, width)`` -> ``(height, width)``."""
    if isinstance(size, int):
        return size, size
    if isinstance(size, (list, tuple)) and len(size) == 2:
        return int(size[0]), int(size[1])
    raise ValueError(f"{what} must be an int or [height, width], got {size!r}")


def resize_image(image: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Bilinear resize to ``size = (H, W)``, keeping the dtype family."""
    h, w = size
    if image.dtype == np.uint8:
        return np.asarray(Image.fromarray(image).resize((w, h), Image.BILINEAR))
    # float images (after jitter): resize channel by channel as 32-bit float ("F") images
    chans = [np.asarray(Image.fromarray(np.ascontiguousarray(image[..., c], dtype=np.float32))
                        .resize((w, h), Image.BILINEAR)) for c in range(image.shape[2])]
    return np.stack(chans, -1)


def resize_labels(labels: np.ndarray, size: Tuple[int, int]) -> np.ndarray:
    """Nearest-neighbour resize (label ids must never be interpolated)."""
    h, w = size
    resized = Image.fromarray(labels.astype(np.uint8)).resize((w, h), Image.NEAREST)
    return np.asarray(resized).astype(np.int64)


class Compose:
    """Apply transforms in order."""

    def __init__(self, transforms: Sequence) -> None:
        self.transforms = list(transforms)

    def __call__(self, image: np.ndarray, labels: Optional[np.ndarray]) -> Pair:
        for t in self.transforms:
            image, labels = t(image, labels)
        return image, labels


class RandomScale:
    """Resize by a factor drawn uniformly from ``scale_range``."""

    def __init__(self, scale_range: Sequence[float] = (0.5, 2.0)) -> None:
        lo, hi = float(scale_range[0]), float(scale_range[1])
        if not 0 < lo <= hi:
            raise ValueError(f"scale range must satisfy 0 < min <= max, got {scale_range!r}")
        self.lo, self.hi = lo, hi

    def __call__(self, image: np.ndarray, labels: Optional[np.ndarray]) -> Pair:
        s = random.uniform(self.lo, self.hi)
        h, w = image.shape[:2]
        size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
        image = resize_image(image, size)
        if labels is not None:
            labels = resize_labels(labels, size)
        return image, labels


class RandomCrop:
    """Crop ``size = (H, W)``; smaller images are padded first (image with the
    ImageNet mean, so it normalises to 0; labels with ``ignore_index``)."""

    def __init__(self, size, ignore_index: int = 255) -> None:
        self.size = to_pair(size)
        self.ignore_index = ignore_index

    def __call__(self, image: np.ndarray, labels: Optional[np.ndarray]) -> Pair:
        ch, cw = self.size
        h, w = image.shape[:2]
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        if ph or pw:
            fill = np.array(IMAGENET_MEAN) * 255.0
            padded = np.empty((h + ph, w + pw, 3), dtype=image.dtype)
            padded[...] = fill.astype(image.dtype)
            padded[:h, :w] = image
            image = padded
            if labels is not None:
                lab = np.full((h + ph, w + pw), self.ignore_index, dtype=labels.dtype)
                lab[:h, :w] = labels
                labels = lab
            h, w = image.shape[:2]
        y = random.randint(0, h - ch)
        x = random.randint(0, w - cw)
        image = image[y:y + ch, x:x + cw]
        if labels is not None:
            labels = labels[y:y + ch, x:x + cw]
        return image, labels


class RandomHorizontalFlip:
    def __init__(self, p: float = 0.5) -> None:
        self.p = p

    def __call__(self, image: np.ndarray, labels: Optional[np.ndarray]) -> Pair:
        if random.random() < self.p:
            image = image[:, ::-1]
            if labels is not None:
                labels = labels[:, ::-1]
        return image, labels


class PhotometricJitter:
    """Random brightness, contrast and saturation (factors in ``1 ± strength``)
    plus a little Gaussian noise; returns float32 in 0..255."""

    def __init__(self, brightness: float = 0.25, contrast: float = 0.25, saturation: float = 0.25,
                 noise: float = 2.0, p: float = 0.8) -> None:
        self.brightness, self.contrast, self.saturation = brightness, contrast, saturation
        self.noise, self.p = noise, p

    def __call__(self, image: np.ndarray, labels: Optional[np.ndarray]) -> Pair:
        img = image.astype(np.float32)
        if np.random.rand() < self.p:
            img = img * np.random.uniform(1 - self.brightness, 1 + self.brightness)
            mean = img.mean()
            img = (img - mean) * np.random.uniform(1 - self.contrast, 1 + self.contrast) + mean
            grey = img.mean(axis=2, keepdims=True)
            img = (img - grey) * np.random.uniform(1 - self.saturation, 1 + self.saturation) + grey
            if self.noise > 0:
                img = img + np.random.normal(0.0, self.noise, img.shape).astype(np.float32)
        return np.clip(img, 0, 255).astype(np.float32), labels


class Resize:
    """Deterministic resize to ``size = (H, W)`` (labels nearest)."""

    def __init__(self, size) -> None:
        self.size = to_pair(size)

    def __call__(self, image: np.ndarray, labels: Optional[np.ndarray]) -> Pair:
        image = resize_image(image, self.size)
        if labels is not None:
            labels = resize_labels(labels, self.size)
        return image, labels


class Normalize:
    """(H, W, 3) in 0..255 -> (3, H, W) float32 with ImageNet mean/std."""

    def __init__(self, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD) -> None:
        self.mean = np.asarray(mean, dtype=np.float32) * 255.0
        self.std = np.asarray(std, dtype=np.float32) * 255.0

    def __call__(self, image: np.ndarray) -> np.ndarray:
        img = (image.astype(np.float32) - self.mean) / self.std
        return img.transpose(2, 0, 1)


def denormalize(inputs: np.ndarray, mean: Sequence[float] = IMAGENET_MEAN,
                std: Sequence[float] = IMAGENET_STD) -> np.ndarray:
    """(3, H, W) normalised -> (H, W, 3) uint8, for visualisation."""
    img = inputs.transpose(1, 2, 0) * (np.asarray(std) * 255.0) + np.asarray(mean) * 255.0
    return np.clip(img, 0, 255).astype(np.uint8)


def build_train_transform(crop=(512, 512), scale: Sequence[float] = (0.5, 2.0), flip: bool = True,
                          jitter: bool = True, ignore_index: int = 255) -> Compose:
    """The paper's training augmentation: random scale, crop (padded), flip,
    photometric jitter."""
    ts: List = []
    if scale is not None:
        ts.append(RandomScale(scale))
    ts.append(RandomCrop(crop, ignore_index))
    if flip:
        ts.append(RandomHorizontalFlip())
    if jitter:
        ts.append(PhotometricJitter())
    return Compose(ts)


def build_eval_transform(size=None) -> Optional[Compose]:
    """Whole image as is, or resized to ``size = (H, W)``."""
    return Compose([Resize(size)]) if size else None
