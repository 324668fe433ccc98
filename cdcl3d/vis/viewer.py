"""Interactive Open3D window for scans, with key bindings.

Keys: C cycles the colour modes the data supports, N / P go to the next /
previous scan of the list, Q quits. The key logic lives in
:class:`ViewerState` (plain Python, tested without a display); the window
itself needs a display (``$DISPLAY`` / ``$WAYLAND_DISPLAY``).
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Callable, List, Optional, Sequence

import numpy as np

from .colors import available_modes, colorize

KEY_BINDINGS = (
    ("C", "cycle colour mode (label / pred / error / intensity / range)"),
    ("N", "next scan"),
    ("P", "previous scan"),
    ("Q", "quit"),
)


def key_help() -> str:
    """The key bindings as printable lines."""
    return "\n".join(f"  {k}  {what}" for k, what in KEY_BINDINGS)


def has_display() -> bool:
    """Whether a window can be opened (an X11 or Wayland display is set)."""
    return bool(os.environ.get("DISPLAY") or os.environ.get("WAYLAND_DISPLAY"))


@dataclass
class ScanData:
    """One scan to show: ``points`` (N, 3+), optional train-id ``labels`` and
    ``preds`` (N,), and a ``name`` for titles."""

    points: np.ndarray
    labels: Optional[np.ndarray] = None
    preds: Optional[np.ndarray] = None
    name: str = "scan"

    def modes(self) -> List[str]:
        """Colour modes this scan supports."""
        return available_modes(self.labels is not None, self.preds is not None,
                               self.points.ndim == 2 and self.points.shape[1] >= 4)


@dataclass
class ViewerState:
    """Which scan of ``num_scans`` and which colour mode is shown."""

    num_scans: int
    index: int = 0
    mode: str = "label"
    modes: List[str] = field(default_factory=lambda: ["label"])

    def __post_init__(self) -> None:
        if self.num_scans < 1:
            raise ValueError("the viewer needs at least one scan")
        self.set_modes(self.modes)

    def set_modes(self, modes: Sequence[str]) -> None:
        """The modes of the current scan; keeps the mode when still possible."""
        self.modes = list(modes)
        if self.mode not in self.modes:
            self.mode = self.modes[0]

    def cycle_mode(self) -> str:
        """C: the next colour mode (wraps)."""
        i = self.modes.index(self.mode)
        self.mode = self.modes[(i + 1) % len(self.modes)]
        return self.mode

    def next(self) -> int:
        """N: the next scan (stays at the last)."""
        self.index = min(self.index + 1, self.num_scans - 1)
        return self.index

    def prev(self) -> int:
        """P: the previous scan (stays at the first)."""
        self.index = max(self.index - 1, 0)
        return self.index


def show_window(load_scan: Callable[[int], ScanData], num_scans: int, palette: Optional[np.ndarray],
                start: int = 0, mode: Optional[str] = None, point_size: float = 2.0,
                title: str = "cdcl show") -> None:
    """Open an Open3D window on scan ``start`` of ``num_scans`` (loaded lazily by
    ``load_scan(i)``) and run until Q or the window closes."""
    from .render import RenderError, import_open3d

    o3d = import_open3d()

    if not has_display():
        raise RenderError("no display ($DISPLAY and $WAYLAND_DISPLAY are unset): render to PNG "
                          "instead (cdcl show ... --png OUT.png)")
    first = load_scan(start)
    state = ViewerState(num_scans=num_scans, index=start, mode=mode or first.modes()[0], modes=first.modes())
    current = {"scan": first}
    pcd = o3d.geometry.PointCloud()

    def fill() -> None:
        scan = current["scan"]
        pcd.points = o3d.utility.Vector3dVector(np.asarray(scan.points)[:, :3].astype(np.float64))
        cols = colorize(state.mode, scan.points, scan.labels, scan.preds, palette)
        pcd.colors = o3d.utility.Vector3dVector(cols.astype(np.float64) / 255.0)

    def refresh(vis, reset_view: bool = False) -> bool:
        scan = current["scan"]
        fill()
        vis.update_geometry(pcd)
        if reset_view:
            vis.reset_view_point(True)
        print(f"[{state.index + 1}/{num_scans}] {scan.name}: {state.mode}", flush=True)
        return True

    def on_cycle(vis) -> bool:
        state.cycle_mode()
        return refresh(vis)

    def on_move(step: int):
        def cb(vis) -> bool:
            before = state.index
            (state.next if step > 0 else state.prev)()
            if state.index == before:
                return False
            current["scan"] = load_scan(state.index)
            state.set_modes(current["scan"].modes())
            return refresh(vis)
        return cb

    def on_quit(vis) -> bool:
        vis.close()
        return False

    vis = o3d.visualization.VisualizerWithKeyCallback()
    if not vis.create_window(window_name=title, width=1280, height=800):
        raise RenderError("Open3D could not create a window (is the display reachable?)")
    opt = vis.get_render_option()
    opt.point_size = float(point_size)
    opt.background_color = np.zeros(3)
    fill()  # before add_geometry, which sizes the view on the points
    vis.add_geometry(pcd)
    vis.register_key_callback(ord("C"), on_cycle)
    vis.register_key_callback(ord("N"), on_move(+1))
    vis.register_key_callback(ord("P"), on_move(-1))
    vis.register_key_callback(ord("Q"), on_quit)
    print("cdcl show keys:\n" + key_help(), flush=True)
    refresh(vis, reset_view=True)
    vis.run()
    vis.destroy_window()
