"""Readers for Cityscapes, BDD100K (semantic), CamVid (SegNet 11-class) and
KITTI semantic, each in its own on-disk layout."""
from __future__ import annotations

import os
from typing import List

import numpy as np

from .base import Sample, SegmentationDataset, require_dir, sorted_files
from .labels import (CAMVID_CLASSES, CAMVID_VOID, CITYSCAPES_CLASSES, BDD100K_CLASSES,
                     cityscapes_id_to_train_lut, identity_lut)


class Cityscapes(SegmentationDataset):
    """``leftImg8bit/{split}/{city}/*_leftImg8bit.png`` with
    ``gtFine/{split}/{city}/*_gtFine_labelIds.png`` (label ids -> 19 train ids).
    The ``test`` split (no public labels) is read without labels. Sample ids
    are ``{city}/{city}_{seq}_{frame}``."""

    name = "cityscapes"
    class_names = CITYSCAPES_CLASSES
    IMAGE_SUFFIX = "_leftImg8bit.png"
    LABEL_SUFFIX = "_gtFine_labelIds.png"

    def label_table(self) -> np.ndarray:
        return cityscapes_id_to_train_lut()

    def _list_samples(self) -> List[Sample]:
        layout = ["leftImg8bit/{split}/{city}/*_leftImg8bit.png",
                  "gtFine/{split}/{city}/*_gtFine_labelIds.png"]
        image_dir = self.image_dir = require_dir(os.path.join(self.root, "leftImg8bit", self.split), "Cityscapes image", layout)
        label_dir = os.path.join(self.root, "gtFine", self.split)
        with_labels = self.split != "test" and os.path.isdir(label_dir)
        if self.split != "test":
            require_dir(label_dir, "Cityscapes label", layout)
        samples = []
        for image_path in sorted_files(image_dir, self.IMAGE_SUFFIX):
            rel = os.path.relpath(image_path, image_dir)[: -len(self.IMAGE_SUFFIX)]
            label_path = os.path.join(label_dir, rel + self.LABEL_SUFFIX) if with_labels else None
            if label_path is not None and not os.path.isfile(label_path):
                raise FileNotFoundError(f"Cityscapes label missing for {image_path}: expected {label_path}")
            samples.append((image_path, label_path, rel.replace(os.sep, "/")))
        return samples


class BDD100K(SegmentationDataset):
    """``images/10k/{split}/*.jpg`` with ``labels/sem_seg/masks/{split}/*.png``
    (train ids 0..18, 255 ignore). ``test`` has no labels."""

    name = "bdd100k"
    class_names = BDD100K_CLASSES

    def label_table(self) -> np.ndarray:
        return identity_lut(len(self.class_names))

    def _list_samples(self) -> List[Sample]:
        layout = ["images/10k/{split}/*.jpg", "labels/sem_seg/masks/{split}/*.png"]
        image_dir = self.image_dir = require_dir(os.path.join(self.root, "images", "10k", self.split), "BDD100K image", layout)
        label_dir = os.path.join(self.root, "labels", "sem_seg", "masks", self.split)
        with_labels = self.split != "test"
        if with_labels:
            require_dir(label_dir, "BDD100K label", layout)
        samples = []
        for image_path in sorted_files(image_dir, ".jpg"):
            stem = os.path.splitext(os.path.basename(image_path))[0]
            label_path = os.path.join(label_dir, stem + ".png") if with_labels else None
            if label_path is not None and not os.path.isfile(label_path):
                raise FileNotFoundError(f"BDD100K label missing for {image_path}: expected {label_path}")
            samples.append((image_path, label_path, stem))
        return samples


class CamVid(SegmentationDataset):
    """SegNet layout: ``{split}/*.png`` with ``{split}annot/*.png`` holding
    ids 0..10; 11 (void) -> 255."""

    name = "camvid"
    class_names = CAMVID_CLASSES

    def label_table(self) -> np.ndarray:
        return identity_lut(len(self.class_names), void=(CAMVID_VOID,))

    def _list_samples(self) -> List[Sample]:
        layout = ["{split}/*.png", "{split}annot/*.png"]
        image_dir = self.image_dir = require_dir(os.path.join(self.root, self.split), "CamVid image", layout)
        label_dir = require_dir(os.path.join(self.root, self.split + "annot"), "CamVid label", layout)
        samples = []
        for image_path in sorted_files(image_dir, ".png"):
            name = os.path.basename(image_path)
            label_path = os.path.join(label_dir, name)
            if not os.path.isfile(label_path):
                raise FileNotFoundError(f"CamVid label missing for {image_path}: expected {label_path}")
            samples.append((image_path, label_path, os.path.splitext(name)[0]))
        return samples


class KITTISemantic(SegmentationDataset):
    """KITTI semantic benchmark: ``training/image_2/*.png`` with
    ``training/semantic/*.png`` in Cityscapes label ids. It has no validation
    split: ``train``/``val``/``training`` all read ``training`` (it serves as an
    unseen domain), ``test``/``testing`` reads ``testing/image_2`` unlabelled."""

    name = "kitti"
    class_names = CITYSCAPES_CLASSES

    def label_table(self) -> np.ndarray:
        return cityscapes_id_to_train_lut()

    def _list_samples(self) -> List[Sample]:
        layout = ["training/image_2/*.png", "training/semantic/*.png"]
        testing = self.split in ("test", "testing")
        part = "testing" if testing else "training"
        image_dir = self.image_dir = require_dir(os.path.join(self.root, part, "image_2"), "KITTI image", layout)
        label_dir = None if testing else require_dir(os.path.join(self.root, part, "semantic"),
                                                     "KITTI label", layout)
        samples = []
        for image_path in sorted_files(image_dir, ".png"):
            name = os.path.basename(image_path)
            label_path = None
            if label_dir is not None:
                label_path = os.path.join(label_dir, name)
                if not os.path.isfile(label_path):
                    raise FileNotFoundError(f"KITTI label missing for {image_path}: expected {label_path}")
            samples.append((image_path, label_path, os.path.splitext(name)[0]))
        return samples


READERS = {"cityscapes": Cityscapes, "bdd100k": BDD100K, "camvid": CamVid, "kitti": KITTISemantic}
