"""Point-cloud visualisation: colours, offscreen renders, range-image pictures,
an interactive viewer, ``cdcl show`` and TensorBoard helpers.

Open3D is only imported where a render or a window is made, and offscreen
rendering runs in a child process (:func:`render_scan_subprocess`) so a missing
graphics driver raises instead of killing the caller.
"""
from .colors import (apply_colormap, class_names, colorize, error_colors, kitti_train_palette,
                     label_colors, nuscenes_train_palette, train_palette)
from .legend import add_legend, draw_legend
from .range_image import range_image_png
from .render import (project_points_to_image, render_gt_vs_pred, render_scan, render_scan_subprocess,
                     render_scans_subprocess, splat_scan)

__all__ = [
    "apply_colormap", "class_names", "colorize", "error_colors", "kitti_train_palette", "label_colors",
    "nuscenes_train_palette", "train_palette", "add_legend", "draw_legend", "range_image_png",
    "project_points_to_image", "render_gt_vs_pred", "render_scan", "render_scan_subprocess",
    "render_scans_subprocess", "splat_scan",
]
