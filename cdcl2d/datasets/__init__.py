"""Image segmentation datasets, each read from its own on-disk layout."""
from .base import SegmentationDataset, load_image, load_mask
from .labels import (CAMVID_CLASSES, CITYSCAPES_CLASSES, CITYSCAPES_LABELS, IGNORE_INDEX,
                     camvid_to_cityscapes_map, cityscapes_id_to_train_lut, cityscapes_train_to_id_lut)
from .readers import BDD100K, READERS, CamVid, Cityscapes, KITTISemantic

__all__ = ["SegmentationDataset", "load_image", "load_mask", "CAMVID_CLASSES", "CITYSCAPES_CLASSES",
           "CITYSCAPES_LABELS", "IGNORE_INDEX", "camvid_to_cityscapes_map", "cityscapes_id_to_train_lut",
           "cityscapes_train_to_id_lut", "BDD100K", "READERS", "CamVid", "Cityscapes", "KITTISemantic"]
