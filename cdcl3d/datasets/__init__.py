"""LiDAR dataset readers (SemanticKITTI, nuScenes-lidarseg) and the range-image wrapper."""
from .labelmap import (NuScenesLabelMap, SemanticKittiLabelMap, load_semantic_kitti_yaml,
                       nuscenes_challenge_classes, nuscenes_fine_to_train)
from .nuscenes import NuScenesLidarSeg
from .range_dataset import RangeImageDataset, collate_range
from .semantickitti import SemanticKITTI

__all__ = [
    "NuScenesLabelMap", "NuScenesLidarSeg", "RangeImageDataset", "SemanticKITTI",
    "SemanticKittiLabelMap", "collate_range", "load_semantic_kitti_yaml",
    "nuscenes_challenge_classes", "nuscenes_fine_to_train",
]
