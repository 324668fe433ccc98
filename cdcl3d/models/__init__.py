"""LiDAR segmentation networks."""
from common.flops import count_parameters

from .salsanext import SalsaNext, build_salsanext

__all__ = ["SalsaNext", "build_salsanext", "count_parameters"]
