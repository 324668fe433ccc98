"""LiDAR segmentation networks."""
from .salsanext import SalsaNext, build_salsanext, count_parameters

__all__ = ["SalsaNext", "build_salsanext", "count_parameters"]
