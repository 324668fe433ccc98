"""Registers the image task and its synth target with the core (``cdcl.plugins``)."""
from __future__ import annotations


def register() -> None:
    """Fill :data:`common.registry.TASKS` (``"2d"``) and ``SYNTH`` (``"images"``).
    Heavy modules are imported only when a command runs."""
    from common.registry import SYNTH, TASKS, Command

    from .task import ImageTask

    if "2d" not in TASKS._items:
        TASKS.register("2d", ImageTask())

    def _synth_args(parser) -> None:
        from .synth import add_arguments
        add_arguments(parser)

    def _synth_run(args) -> int:
        from .synth import run
        return run(args)

    if "images" not in SYNTH._items:
        SYNTH.register("images", Command("generated street scenes in Cityscapes/BDD100K/CamVid/KITTI layouts",
                                         _synth_args, _synth_run,
                                         example="cdcl synth images --out data/synth/images "
                                                 "--datasets cityscapes,camvid --num-train 20"))
