"""The LiDAR task (range-image SalsaNext on SemanticKITTI / nuScenes)."""
from common.task import Task


class LidarTask(Task):
    name = "3d"
