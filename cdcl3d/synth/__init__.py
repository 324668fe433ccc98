"""Generated LiDAR data in each dataset's own on-disk format (``cdcl synth lidar``).

The heavy parts (numba ray casting) are imported on first use, so that the
command line can declare its options without compiling anything.
"""
from __future__ import annotations

from typing import Any

__all__ = ["generate_lidar", "class_histogram"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import lidar

        return getattr(lidar, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
