"""Registers the LiDAR task, its commands and its synth target with the core."""
from __future__ import annotations


def register() -> None:
    from common.registry import COMMANDS, SYNTH, TASKS, Command

    from .task import LidarTask

    TASKS.register("3d", LidarTask())

    def _synth_args(p):
        from .synth.cli import add_arguments
        add_arguments(p)

    def _synth_run(args):
        from .synth.cli import run
        return run(args)

    SYNTH.register("lidar", Command("generated SemanticKITTI + nuScenes + SemanticPOSS scans", _synth_args,
                                    _synth_run,
                                    example="cdcl synth lidar --out data/synth/lidar --scans 60 --stats"))

    def _show_args(p):
        from .vis.cli import add_arguments
        add_arguments(p)

    def _show_run(args):
        from .vis.cli import run
        return run(args)

    COMMANDS.register("show", Command(
        "show a scan (or a config's scan or image) with labels/predictions (Open3D window or PNG)",
        _show_args, _show_run,
        example="cdcl show configs/3d/synth_cdcl.yaml --dataset nuscenes --index 0 "
                "--checkpoint work_dirs/synth_cdcl/checkpoints/latest.pth --color error --png err.png"))

    def _stats_args(p):
        from .sensor_stats import add_arguments
        add_arguments(p)

    def _stats_run(args):
        from .sensor_stats import run
        return run(args)

    COMMANDS.register("sensor-stats", Command(
        "measure a LiDAR's range-image means/stds on a dataset and print the sensor: block to paste",
        _stats_args, _stats_run,
        example="cdcl sensor-stats configs/3d/synth_single_semanticposs.yaml --dataset semanticposs --max-scans 50"))
