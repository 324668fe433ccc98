"""Point-cloud visualisation: colours, offscreen renders, range-image pictures,
an interactive viewer and TensorBoard helpers.

Open3D is only imported where a render or a window is made, and offscreen
rendering runs in a child process (:func:`render_scan_subprocess`) so a missing
graphics driver raises instead of killing the caller.
"""
