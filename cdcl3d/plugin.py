"""Registers the LiDAR task, its commands and its synth target with the core."""
from __future__ import annotations

import importlib


def _lazy(module: str):
    """``(add_arguments, run)`` of ``cdcl3d.<module>``, imported when first called
    (the command's heavy imports wait until it runs)."""
    def add_arguments(parser):
        importlib.import_module(f"cdcl3d.{module}").add_arguments(parser)

    def run(args):
        return importlib.import_module(f"cdcl3d.{module}").run(args)

    return add_arguments, run


def register() -> None:
    from common.registry import COMMANDS, SYNTH, TASKS, Command

    from .task import LidarTask

    TASKS.register("3d", LidarTask())

    SYNTH.register("lidar", Command("generated SemanticKITTI + nuScenes + SemanticPOSS scans",
                                    *_lazy("synth.cli"),
                                    example="cdcl synth lidar --out data/synth/lidar --scans 60 --stats"))

    COMMANDS.register("show", Command(
        "show a scan (or a config's scan or image) with labels/predictions (Open3D window or PNG)",
        *_lazy("vis.cli"),
        example="cdcl show configs/3d/synth_cdcl.yaml --dataset nuscenes --index 0 "
                "--checkpoint work_dirs/synth_cdcl/checkpoints/latest.pth --color error --png err.png"))

    COMMANDS.register("sensor-stats", Command(
        "measure a LiDAR's range-image means/stds on a dataset and print the sensor: block to paste",
        *_lazy("sensor_stats"),
        example="cdcl sensor-stats configs/3d/synth_single_semanticposs.yaml --dataset semanticposs --max-scans 50"))
