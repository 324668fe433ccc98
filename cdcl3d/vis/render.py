"""Offscreen rendering of coloured point clouds to images.

Open3D's ``OffscreenRenderer`` (Filament) draws the points. Without a GPU it
renders on the CPU through Vulkan (Mesa lavapipe / llvmpipe); where no Vulkan
or EGL driver exists the process *aborts* (no Python exception), so callers
that must survive that use :func:`render_scan_subprocess`, which runs the
renderer in a child process and turns a crash
into a ``RuntimeError``. :func:`splat_scan` is a pure-numpy z-buffered point
splatter for the same cameras (no Open3D needed), used by tests as a
cross-check and available as ``backend='numpy'``.

Colours come out exactly as given: post-processing (tone mapping, dithering)
and anti-aliasing are switched off, and points are drawn unlit, as
``point_size`` x ``point_size`` pixel squares.

Cameras (:func:`make_camera`):

* ``bev``: orthographic, straight down, centred on the sensor; ``+x`` points
  right and ``+y`` up in the picture; ``view_m`` metres across the width
  (default 100 m, so 800x600 shows 100 m x 75 m).
* ``chase``: perspective (60 degrees vertical field of view) from 20 m behind
  and 12 m above the sensor, looking ahead along ``+x`` (``forward='y'`` for
  nuScenes, whose LIDAR_TOP frame has ``+y`` forward).

:func:`fit_camera` fits either to a cloud's extent (``cdcl show``): every
point inside the picture, room left for a title and a scale bar.

:func:`project_points_to_image` tells where each point lands in the picture.
"""
from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from typing import Any, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from common.errors import UserError

from .colors import BACKGROUND_COLOR


class RenderError(UserError, RuntimeError):
    """Open3D cannot render on this machine (no display, no Vulkan/EGL driver,
    a crashed or stalled renderer); the message says what is needed."""

CAMERAS = ("bev", "chase")


@dataclass(frozen=True)
class Camera:
    """A camera in the Open3D conventions (look-at plus projection).

    ``projection`` is 'ortho' (``half_width``/``half_height`` in metres) or
    'perspective' (``fov_deg`` vertical field of view).
    """

    projection: str
    eye: Tuple[float, float, float]
    center: Tuple[float, float, float]
    up: Tuple[float, float, float]
    near: float = 0.1
    far: float = 1000.0
    half_width: float = 50.0
    half_height: float = 37.5
    fov_deg: float = 60.0


def make_camera(camera: Union[str, Camera], width: int, height: int, view_m: float = 100.0,
                forward: str = "x") -> Camera:
    """The named camera ('bev' or 'chase') for a ``width`` x ``height`` picture;
    a :class:`Camera` passes through. ``forward`` is the sensor's driving
    axis, which the chase camera looks along: 'x' for SemanticKITTI, 'y' for
    nuScenes' LIDAR_TOP frame."""
    if isinstance(camera, Camera):
        return camera
    if camera == "bev":
        half_w = view_m / 2.0
        half_h = half_w * height / width  # square pixels
        # Eye far above: anything between z = -500 m and +500 m is drawn.
        return Camera("ortho", eye=(0.0, 0.0, 500.0), center=(0.0, 0.0, 0.0), up=(0.0, 1.0, 0.0),
                      near=1.0, far=1000.0, half_width=half_w, half_height=half_h)
    if camera == "chase":
        if forward not in ("x", "y"):
            raise ValueError(f"forward axis must be 'x' or 'y', got {forward!r}")
        ax = np.array([1.0, 0.0, 0.0]) if forward == "x" else np.array([0.0, 1.0, 0.0])
        eye = tuple(float(c) for c in -20.0 * ax + np.array([0.0, 0.0, 12.0]))
        center = tuple(float(c) for c in 20.0 * ax)
        return Camera("perspective", eye=eye, center=center,
                      up=(0.0, 0.0, 1.0), near=0.5, far=500.0, fov_deg=60.0)
    raise ValueError(f"unknown camera {camera!r}; valid: {list(CAMERAS)}")


def fit_camera(camera: Union[str, Camera], points: np.ndarray, width: int, height: int, forward: str = "x",
               pad: Tuple[int, int, int, int] = (0, 0, 0, 0), margin: float = 0.03) -> Camera:
    """The named camera fitted to the cloud's extent: every point of ``points``
    lands inside the picture minus ``pad`` (top, right, bottom, left pixels,
    room for a title and a scale bar) with a ``margin`` (fraction) around it.

    ``bev``: orthographic, straight down, ``+x`` right and ``+y`` up as in
    :func:`make_camera`, its centre and scale chosen so the x/y bounding box
    fills the free area (square pixels). ``chase``: the viewing direction of
    :func:`make_camera`'s chase camera (behind and above, along ``forward``),
    moved back along it until every point is in the view. A
    :class:`Camera` passes through; an empty cloud gets :func:`make_camera`'s view.
    """
    if isinstance(camera, Camera):
        return camera
    xyz = np.asarray(points, dtype=np.float64)[:, :3] if len(points) else np.zeros((0, 3))
    xyz = xyz[np.isfinite(xyz).all(axis=1)]
    base = make_camera(camera, width, height, forward=forward)
    if not len(xyz):
        return base
    top, right, bottom, left = (int(v) for v in pad)
    free_w, free_h = max(width - left - right, 1), max(height - top - bottom, 1)
    lo, hi = xyz.min(axis=0), xyz.max(axis=0)
    mid = (lo + hi) / 2.0
    if camera == "bev":
        ext = np.maximum(hi[:2] - lo[:2], 1.0) * (1.0 + 2.0 * margin)
        mpp = max(ext[0] / free_w, ext[1] / free_h)  # metres per pixel
        # shift so that the box's centre lands on the free area's centre
        cx = mid[0] - (left + free_w / 2.0 - width / 2.0) * mpp
        cy = mid[1] + (top + free_h / 2.0 - height / 2.0) * mpp
        eye_z = max(500.0, hi[2] + 100.0)
        return Camera("ortho", eye=(cx, cy, eye_z), center=(cx, cy, 0.0), up=(0.0, 1.0, 0.0),
                      near=1.0, far=eye_z - lo[2] + 100.0, half_width=mpp * width / 2.0,
                      half_height=mpp * height / 2.0)
    # chase: keep the direction, aim at the sensor's track (no sideways
    # offset: the road stays upright), move the eye back until all fit
    f = np.subtract(base.center, base.eye)
    f /= np.linalg.norm(f)
    mid[1 if forward == "x" else 0] = 0.0
    view = _view_matrix(base)[:3, :3]  # rows: right, up, -forward
    rel = xyz - mid
    side, up, along = rel @ view[0], rel @ view[1], rel @ f
    tan_v = np.tan(np.radians(base.fov_deg) / 2.0) * (1.0 - 2.0 * margin)
    tan_h = tan_v * width / height
    kx = (width - 2 * max(left, right)) / width
    ky = (height - 2 * max(top, bottom)) / height
    # a point at depth d + along is inside when |side| <= kx tan_h (d + along), same for up
    d = float(np.max(np.maximum(np.abs(side) / (kx * tan_h), np.abs(up) / (ky * tan_v)) - along))
    d = max(d, float(np.max(base.near - along)) + 1.0, 1.0)
    eye = mid - d * f
    far = float(np.max(d + along)) + 10.0
    return Camera("perspective", eye=tuple(float(c) for c in eye), center=tuple(float(c) for c in mid),
                  up=base.up, near=base.near, far=far, fov_deg=base.fov_deg)


def metres_per_pixel(cam: Camera, width: int) -> Optional[float]:
    """The scale of an orthographic camera's picture (None for a perspective one)."""
    return 2.0 * cam.half_width / width if cam.projection == "ortho" else None


def _view_matrix(cam: Camera) -> np.ndarray:
    eye, center, up = (np.asarray(v, dtype=np.float64) for v in (cam.eye, cam.center, cam.up))
    f = center - eye
    f /= np.linalg.norm(f)
    s = np.cross(f, up)
    s /= np.linalg.norm(s)
    u = np.cross(s, f)
    m = np.eye(4)
    m[0, :3], m[1, :3], m[2, :3] = s, u, -f
    m[:3, 3] = -m[:3, :3] @ eye
    return m


def project_points_to_image(points: np.ndarray, camera: Union[str, Camera], width: int, height: int,
                            view_m: float = 100.0) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Where each point lands in a ``width`` x ``height`` render.

    Returns ``(u, v, visible)``: float column and row (pixel ``(int(v),
    int(u))`` holds the point's centre; pixel centres sit at ``i + 0.5``) and a
    bool mask of points inside the view volume and the picture. Occlusion is
    not considered.
    """
    cam = make_camera(camera, width, height, view_m)
    xyz = np.asarray(points, dtype=np.float64)[:, :3]
    pc = xyz @ _view_matrix(cam)[:3, :3].T + _view_matrix(cam)[:3, 3]
    depth = -pc[:, 2]  # distance in front of the camera
    with np.errstate(divide="ignore", invalid="ignore"):
        if cam.projection == "ortho":
            ndc_x, ndc_y = pc[:, 0] / cam.half_width, pc[:, 1] / cam.half_height
        elif cam.projection == "perspective":
            f = 1.0 / np.tan(np.radians(cam.fov_deg) / 2.0)
            aspect = width / height
            ndc_x = f / aspect * pc[:, 0] / depth
            ndc_y = f * pc[:, 1] / depth
        else:
            raise ValueError(f"unknown projection {cam.projection!r}")
    u = (ndc_x + 1.0) / 2.0 * width
    v = (1.0 - ndc_y) / 2.0 * height
    visible = ((depth >= cam.near) & (depth <= cam.far) & np.isfinite(u) & np.isfinite(v)
               & (u >= 0) & (u < width) & (v >= 0) & (v < height))
    return u, v, visible


def _as_uint8_colors(colors: np.ndarray, n: int) -> np.ndarray:
    c = np.asarray(colors)
    if c.shape != (n, 3):
        raise ValueError(f"colors must be ({n}, 3) for {n} points, got {c.shape}")
    if c.dtype == np.uint8:
        return c
    if np.issubdtype(c.dtype, np.floating):
        return np.rint(np.clip(c, 0.0, 1.0) * 255.0).astype(np.uint8)
    return np.clip(c, 0, 255).astype(np.uint8)


def _check_points(points: np.ndarray) -> np.ndarray:
    p = np.asarray(points)
    if p.ndim != 2 or p.shape[1] < 3:
        raise ValueError(f"points must be (N, 3+), got {p.shape}")
    return p


# -- numpy splatter ---------------------------------------------------------------

def splat_scan(points: np.ndarray, colors: np.ndarray, width: int = 800, height: int = 600,
               camera: Union[str, Camera] = "bev", point_size: float = 2.0,
               background: Sequence[int] = BACKGROUND_COLOR, view_m: float = 100.0) -> np.ndarray:
    """Pure-numpy render: each point a ``point_size`` square, nearest point wins.

    Same cameras and pixel coverage rule as the Open3D renderer (a pixel is
    covered when its centre lies in ``[u - s/2, u + s/2)``).
    """
    p = _check_points(points)
    col = _as_uint8_colors(colors, len(p))
    cam = make_camera(camera, width, height, view_m)
    u, v, vis = project_points_to_image(p, cam, width, height, view_m)
    pc = p[:, :3].astype(np.float64) @ _view_matrix(cam)[:3, :3].T + _view_matrix(cam)[:3, 3]
    depth = -pc[:, 2]
    img = np.empty((height, width, 3), dtype=np.uint8)
    img[:] = np.asarray(background, dtype=np.uint8)
    idx = np.flatnonzero(vis)
    if idx.size == 0:
        return img
    s = float(point_size)
    c0 = np.ceil(u[idx] - s / 2 - 0.5).astype(np.int64)
    r0 = np.ceil(v[idx] - s / 2 - 0.5).astype(np.int64)
    k = max(int(np.ceil(s)), 1)
    # Far points first, so nearer ones overwrite them (painter's algorithm).
    order = np.argsort(-depth[idx], kind="stable")
    idx, c0, r0 = idx[order], c0[order], r0[order]
    for dr in range(k):
        for dc in range(k):
            # Keep offsets whose pixel centre is inside the square.
            cc, rr = c0 + dc, r0 + dr
            ok = ((cc + 0.5 < u[idx] + s / 2) & (rr + 0.5 < v[idx] + s / 2)
                  & (cc >= 0) & (cc < width) & (rr >= 0) & (rr < height))
            img[rr[ok], cc[ok]] = col[idx[ok]]
    return img


# -- Open3D renderer (in-process) ---------------------------------------------------

#: exit status of a render child that could not import Open3D (its stderr says why)
_MISSING_OPEN3D_EXIT = 3


def import_open3d():
    """``import open3d``, or :class:`common.errors.MissingDependencyError` saying
    what is missing (the package, or a system library it loads such as
    ``libusb-1.0.so.0``) and that ``scripts/install.sh`` installs it."""
    try:
        import open3d
    except (ImportError, OSError) as exc:
        from common.errors import MissingDependencyError
        raise MissingDependencyError(open3d_missing(exc)) from None
    return open3d


def open3d_missing(exc: BaseException) -> str:
    """One line on why Open3D does not import."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    lib = re.search(r"(lib[\w.+-]*\.so[\w.]*)", text)
    if lib:
        return (f"Open3D cannot load the system library {lib.group(1)} ({text}); scripts/install.sh "
                "installs the libraries Open3D needs (apt-get install libusb-1.0-0 libgl1 libegl1 libgomp1 "
                "libvulkan1 mesa-vulkan-drivers); --backend numpy renders without Open3D")
    return (f"Open3D is not importable ({type(exc).__name__}: {text}); scripts/install.sh installs it "
            "(pip install open3d) and the system libraries it needs; --backend numpy renders without Open3D")


_RENDERERS: Dict[Tuple[int, int], Any] = {}


def _renderer(width: int, height: int):
    # One renderer per process, kept for the process' life: with two
    # OffscreenRenderers alive, Filament aborts at interpreter exit
    # ("destroying MaterialInstance ... still in use"), and a renderer's
    # picture size is fixed at creation.
    key = (width, height)
    if key not in _RENDERERS:
        if _RENDERERS:
            (w0, h0), = _RENDERERS
            raise RuntimeError(f"this process already renders at {w0}x{h0}; Open3D cannot hold a second "
                               f"offscreen renderer ({width}x{height}) safely: use render_scan_subprocess")
        o3d = import_open3d()
        o3d.utility.set_verbosity_level(o3d.utility.VerbosityLevel.Error)
        r = o3d.visualization.rendering.OffscreenRenderer(width, height)
        # Exact colours: no tone mapping / dithering, no anti-aliasing.
        r.scene.view.set_post_processing(False)
        r.scene.view.set_antialiasing(False)
        r.scene.view.set_sample_count(1)
        _RENDERERS[key] = r
    return _RENDERERS[key]


def render_scan(points: np.ndarray, colors: np.ndarray, width: int = 800, height: int = 600,
                camera: Union[str, Camera] = "bev", point_size: float = 2.0,
                background: Sequence[int] = BACKGROUND_COLOR, view_m: float = 100.0) -> np.ndarray:
    """Render coloured points with Open3D offscreen; ``(height, width, 3) uint8``.

    ``colors`` is ``(N, 3)`` uint8 (0..255) or float (0..1). Runs in this
    process: where no Vulkan/EGL driver exists this aborts the interpreter, so
    prefer :func:`render_scan_subprocess` when that matters.
    """
    o3d = import_open3d()
    p = _check_points(points)
    col = _as_uint8_colors(colors, len(p))
    cam = make_camera(camera, width, height, view_m)
    rendering = o3d.visualization.rendering
    r = _renderer(int(width), int(height))
    r.scene.clear_geometry()
    bg = np.asarray(background, dtype=np.float64) / 255.0
    r.scene.set_background([float(bg[0]), float(bg[1]), float(bg[2]), 1.0])
    if len(p):
        pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(p[:, :3].astype(np.float64)))
        pcd.colors = o3d.utility.Vector3dVector(col.astype(np.float64) / 255.0)
        mat = rendering.MaterialRecord()
        mat.shader = "defaultUnlit"
        mat.point_size = float(point_size)
        r.scene.add_geometry("scan", pcd, mat)
    if cam.projection == "ortho":
        r.scene.camera.set_projection(rendering.Camera.Projection.Ortho, -cam.half_width, cam.half_width,
                                      -cam.half_height, cam.half_height, cam.near, cam.far)
    else:
        r.scene.camera.set_projection(cam.fov_deg, width / height, cam.near, cam.far,
                                      rendering.Camera.FovType.Vertical)
    r.scene.camera.look_at(list(cam.center), list(cam.eye), list(cam.up))
    img = np.asarray(r.render_to_image())
    return np.ascontiguousarray(img[:, :, :3]).astype(np.uint8, copy=False)


# -- subprocess wrapper ------------------------------------------------------------

def render_scans_subprocess(jobs: Sequence[Dict[str, Any]], timeout: float = 180.0) -> List[np.ndarray]:
    """Render several scans in child processes, one per picture size (a
    process holds one Open3D renderer, see :func:`render_scan`).

    Each job is a dict with ``points``, ``colors`` and optional keyword
    arguments of :func:`render_scan` (``width``, ``height``, ``camera`` (a
    name or :class:`Camera`), ``point_size``, ``background``, ``view_m``). A
    crash, a timeout or a missing Open3D in a child raises ``RuntimeError``
    with the child's output.
    """
    groups: Dict[Tuple[int, int], List[int]] = {}
    for i, job in enumerate(jobs):
        groups.setdefault((int(job.get("width", 800)), int(job.get("height", 600))), []).append(i)
    images: List[Optional[np.ndarray]] = [None] * len(jobs)
    for idx in groups.values():
        for i, img in zip(idx, _render_in_child([jobs[i] for i in idx], timeout)):
            images[i] = img
    return images  # type: ignore[return-value]


def _render_in_child(jobs: Sequence[Dict[str, Any]], timeout: float) -> List[np.ndarray]:
    with tempfile.TemporaryDirectory(prefix="cdcl_render_") as tmp:
        arrays: Dict[str, np.ndarray] = {}
        meta = []
        for i, job in enumerate(jobs):
            p = _check_points(job["points"])
            arrays[f"points_{i}"] = np.asarray(p[:, :3], dtype=np.float32)
            arrays[f"colors_{i}"] = _as_uint8_colors(job["colors"], len(p))
            kw = {k: v for k, v in job.items() if k not in ("points", "colors")}
            if isinstance(kw.get("camera"), Camera):
                kw["camera"] = {"__camera__": asdict(kw["camera"])}
            meta.append(kw)
        arrays["meta"] = np.array(json.dumps(meta))
        src, dst = os.path.join(tmp, "in.npz"), os.path.join(tmp, "out.npz")
        np.savez(src, **arrays)
        # Through -c rather than -m: cdcl3d.vis imports this module already.
        code = "import sys; from cdcl3d.vis.render import _child_main; _child_main(sys.argv[1:])"
        cmd = [sys.executable, "-c", code, "--npz", src, "--out", dst]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        except subprocess.TimeoutExpired as exc:
            raise RenderError(f"Open3D offscreen rendering timed out after {timeout:.0f} s") from exc
        if proc.returncode == _MISSING_OPEN3D_EXIT:
            from common.errors import MissingDependencyError
            raise MissingDependencyError(proc.stderr.strip().splitlines()[-1] if proc.stderr.strip()
                                         else "Open3D is not importable in the render child process")
        if proc.returncode != 0 or not os.path.exists(dst):
            how = (f"killed by signal {-proc.returncode}" if proc.returncode < 0
                   else f"exit status {proc.returncode}")
            tail = (proc.stdout[-1500:] + "\n" + proc.stderr[-1500:]).strip()
            raise RenderError(
                f"Open3D offscreen rendering failed in the child process ({how}); a Vulkan or EGL "
                "driver is needed (e.g. apt packages libvulkan1 mesa-vulkan-drivers libegl1 libgl1). "
                f"Child output:\n{tail}")
        with np.load(dst) as out:
            return [out[f"image_{i}"] for i in range(len(jobs))]


def render_scan_subprocess(points: np.ndarray, colors: np.ndarray, width: int = 800, height: int = 600,
                           camera: Union[str, Camera] = "bev", point_size: float = 2.0,
                           background: Sequence[int] = BACKGROUND_COLOR, view_m: float = 100.0,
                           timeout: float = 180.0) -> np.ndarray:
    """:func:`render_scan` in a child process; a renderer crash raises RuntimeError."""
    job = dict(points=points, colors=colors, width=int(width), height=int(height), camera=camera,
               point_size=float(point_size), background=[int(c) for c in background], view_m=float(view_m))
    return render_scans_subprocess([job], timeout=timeout)[0]


def render_any(points: np.ndarray, colors: np.ndarray, backend: str = "subprocess", **kwargs: Any) -> np.ndarray:
    """Render with ``backend``: 'subprocess' (Open3D in a child), 'open3d' (in
    this process) or 'numpy' (:func:`splat_scan`)."""
    if backend == "subprocess":
        return render_scan_subprocess(points, colors, **kwargs)
    kwargs.pop("timeout", None)
    if backend == "open3d":
        return render_scan(points, colors, **kwargs)
    if backend == "numpy":
        return splat_scan(points, colors, **kwargs)
    raise ValueError(f"unknown render backend {backend!r}; valid: subprocess, open3d, numpy")


def save_png(image: np.ndarray, path: str) -> str:
    """Write an ``(H, W, 3) uint8`` image as PNG (creating the folder); returns the path."""
    from PIL import Image

    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    Image.fromarray(np.asarray(image, dtype=np.uint8)).save(path)
    return path


def render_gt_vs_pred(points: np.ndarray, labels: np.ndarray, preds: np.ndarray, palette: np.ndarray,
                      class_names: Sequence[str], path: Optional[str] = None, width: int = 800,
                      height: int = 600, camera: Union[str, Camera] = "bev", point_size: float = 2.0,
                      backend: str = "subprocess", ignore_index: int = 255) -> np.ndarray:
    """Ground truth and prediction side by side, with a legend of the classes
    present in either; written as PNG when ``path`` is given.

    ``labels``/``preds`` are train ids (``ignore_index`` drawn dark grey). Both
    renders run in one child process with ``backend='subprocess'``. Returns
    ``(height, 2 * width + legend, 3) uint8``.
    """
    from .colors import label_colors, present_classes
    from .legend import add_legend, draw_caption, legend_entries

    p = _check_points(points)
    n = len(p)
    for name, arr in (("labels", labels), ("preds", preds)):
        if np.asarray(arr).shape != (n,):
            raise ValueError(f"{name} has shape {np.asarray(arr).shape}, expected ({n},)")
    cols = [label_colors(labels, palette, ignore_index), label_colors(preds, palette, ignore_index)]
    kw = dict(width=int(width), height=int(height), camera=camera, point_size=float(point_size))
    if backend == "subprocess":
        images = render_scans_subprocess([dict(points=p, colors=c, **kw) for c in cols])
    else:
        images = [render_any(p, c, backend=backend, **kw) for c in cols]
    acc = float((np.asarray(preds) == np.asarray(labels))[np.asarray(labels) != ignore_index].mean()) \
        if (np.asarray(labels) != ignore_index).any() else float("nan")
    images = [draw_caption(images[0], "ground truth"),
              draw_caption(images[1], f"prediction (point accuracy {acc:.1%})")]
    sep = np.full((int(height), 4, 3), 255, dtype=np.uint8)
    both = np.concatenate([images[0], sep, images[1]], axis=1)
    ids = present_classes(labels, preds, num_classes=len(palette), ignore_index=ignore_index)
    out = add_legend(both, legend_entries(ids, class_names, palette), title="classes")
    if path is not None:
        save_png(out, path)
    return out


def _child_main(argv: Optional[Sequence[str]] = None) -> int:
    """Child-process entry: render the jobs of ``--npz`` into ``--out``."""
    parser = argparse.ArgumentParser(description="Render point clouds offscreen (child process of "
                                     "render_scans_subprocess).")
    parser.add_argument("--npz", required=True, help="input .npz with points_i, colors_i, meta")
    parser.add_argument("--out", required=True, help="output .npz with image_i")
    args = parser.parse_args(argv)
    try:
        import_open3d()
    except ImportError as exc:  # one line for the parent, no traceback
        print(exc, file=sys.stderr, flush=True)
        os._exit(_MISSING_OPEN3D_EXIT)
    with np.load(args.npz) as data:
        meta = json.loads(str(data["meta"]))
        images = {}
        for i, kw in enumerate(meta):
            cam = kw.get("camera")
            if isinstance(cam, dict) and "__camera__" in cam:
                fields = cam["__camera__"]
                kw["camera"] = Camera(**{k: tuple(v) if isinstance(v, list) else v for k, v in fields.items()})
            images[f"image_{i}"] = render_scan(data[f"points_{i}"], data[f"colors_{i}"], **kw)
    tmp = args.out + ".part.npz"
    np.savez(tmp, **images)
    os.replace(tmp, args.out)
    sys.stdout.flush()
    sys.stderr.flush()
    # Skip interpreter teardown: the output is written, and Filament's
    # destructors are where a broken driver tends to abort.
    os._exit(0)


if __name__ == "__main__":
    sys.exit(_child_main())
