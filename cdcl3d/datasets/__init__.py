"""LiDAR dataset readers (SemanticKITTI's layout, nuScenes-lidarseg), the table of
dataset types (:mod:`.specs`) and the range-image wrapper."""
from .labelmap import (KittiFormatLabelMap, NuScenesLabelMap, SemanticKittiLabelMap, load_semantic_kitti_yaml,
                       nuscenes_challenge_classes, nuscenes_fine_to_train)
from .nuscenes import NuScenesLidarSeg
from .range_dataset import RangeImageDataset, collate_range
from .semantickitti import KittiFormatReader, SemanticKITTI

__all__ = [
    "KittiFormatLabelMap", "KittiFormatReader", "NuScenesLabelMap", "NuScenesLidarSeg", "RangeImageDataset",
    "SemanticKITTI", "SemanticKittiLabelMap", "collate_range", "load_semantic_kitti_yaml",
    "nuscenes_challenge_classes", "nuscenes_fine_to_train",
]
