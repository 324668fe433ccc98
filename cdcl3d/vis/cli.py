"""``cdcl show``: look at a scan (or an image), its labels and a prediction.

    cdcl show SCAN [--labels L] [--pred P] [--color MODE] [--png OUT]
    cdcl show CONFIG.yaml [key=value ...] --index I [--dataset NAME] [--split S] [--checkpoint CKPT]
                   [--png OUT] [--width W --height H] [--camera bev|chase]
                   [--dataset TYPE] [--range-png OUT] [--window]

With a config the config's task draws the sample (:meth:`common.task.Task.show`):
a LiDAR scan here (:func:`show_sample`), an image as image | ground truth |
prediction (or error) in :mod:`cdcl2d.visualize`.

Files and the ids they hold:

* SemanticKITTI (``.bin``): labels default to ``../labels/NNNNNN.label``
  beside the ``velodyne`` folder when present. Labels and predictions are
  both ``.label`` files of raw ids (uint32, instance bits allowed), i.e. the
  benchmark's submission format; they go through the learning map to train ids.
  ``--pred`` may also name a folder holding ``NNNNNN.label``.
* nuScenes (``.pcd.bin``, inferred from the suffix): ``--labels`` is a
  ``<token>_lidarseg.bin`` of uint8 *fine* ids (0..31, official category
  order); ``--pred`` is a uint8 ``.bin`` of *challenge* ids (1..16, 0 =
  ignore), the lidarseg submission format. Values above 16 in a prediction
  file are rejected with a message (a fine-id file is not a prediction).

With a display (``$DISPLAY``) and no ``--png``, or with ``--window``, an
Open3D window opens (keys: C colour mode, N/P next/previous scan of the
folder, Q quit). Otherwise the scan is rendered offscreen to ``--png``
(default ``<scan name>_<mode>.png`` in the working directory).
"""
from __future__ import annotations

import argparse
import glob
import os
import sys
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from common.errors import ShowError, UserError

from .colors import (CORRECT_COLOR, IGNORE_INDEX, IGNORED_COLOR, MODES, WRONG_COLOR, class_names,
                     colorize, display_palette, point_ranges, present_classes,
                     train_palette)
from .render import CAMERAS, fit_camera, render_any, save_png
from .viewer import ScanData, has_display, show_window

# -- reading files ----------------------------------------------------------------

def _types():
    from cdcl3d.datasets.specs import DATASET_TYPES
    return DATASET_TYPES


def infer_dataset(path: str) -> str:
    """The first dataset type whose scan files end like ``path``, the longest
    ending winning (``.pcd.bin``: nuScenes; ``.bin``: SemanticKITTI)."""
    matches = [s for s in _types().values() if path.endswith(s.files.suffix)]
    if not matches:
        raise ShowError(f"{path}: not a scan file of any dataset type (endings: "
                        f"{', '.join(sorted({s.files.suffix for s in _types().values()}))})")
    return max(matches, key=lambda s: len(s.files.suffix)).name


def load_scan_files(scan: str, labels: Optional[str] = None, pred: Optional[str] = None,
                    dataset: Optional[str] = None) -> Tuple[ScanData, str]:
    """Read a scan (and its labels / prediction) from disk through its dataset
    type's row; returns the scan with train ids and the type name. Bad files
    raise the readers' errors (FileNotFoundError / DataError naming the file)."""
    dataset = dataset or infer_dataset(scan)
    if dataset not in _types():
        raise ShowError(f"--dataset must be a dataset type ({', '.join(_types())}) for a scan file")
    spec = _types()[dataset]
    points, lab, prd = spec.files.read(spec, scan, labels, pred)
    return ScanData(points=points, labels=lab, preds=prd, name=os.path.basename(scan)), dataset


def sibling_scans(scan: str, dataset: str) -> List[str]:
    """The scans of ``scan``'s folder (same kind), sorted, for N / P in the viewer."""
    pattern = "*" + _types()[dataset].files.suffix
    found = sorted(glob.glob(os.path.join(os.path.dirname(os.path.abspath(scan)), pattern)))
    return found if os.path.abspath(scan) in found else [os.path.abspath(scan)]


# -- the core --------------------------------------------------------------------

def _legend_for(mode: str, points: np.ndarray, labels, preds, palette, names, ignore_index):
    from .legend import class_legend_entries

    if mode in ("label", "pred"):
        ids = present_classes(labels if mode == "label" else preds, num_classes=len(palette),
                              ignore_index=ignore_index)
        return class_legend_entries(names, palette, ids), f"classes ({len(ids)} of {len(names)} present: *)"
    if mode == "error":
        lab, prd = np.asarray(labels), np.asarray(preds)
        valid = lab != ignore_index
        wrong = int((valid & (lab != prd)).sum())
        return [(f"correct ({int(valid.sum()) - wrong})", CORRECT_COLOR), (f"wrong ({wrong})", WRONG_COLOR),
                (f"ignored ({int((~valid).sum())})", IGNORED_COLOR)], "error"
    if mode == "range":
        vmax = float(np.percentile(point_ranges(points), 99)) if len(points) else 0.0
        return [], f"range 0-{vmax:.0f} m"
    return [], "intensity"


def render_range_png(points: np.ndarray, labels: Optional[np.ndarray], preds: Optional[np.ndarray],
                     dataset: str, palette: np.ndarray, path: Optional[str],
                     sensor: Optional[Dict] = None) -> np.ndarray:
    """Project a scan with ``sensor`` (a profile; default: the dataset type's
    sensor preset) and write its range-image picture."""
    from cdcl3d.datasets.specs import dataset_type
    from cdcl3d.projection import RangeProjection
    from cdcl3d.sensors import resolve_sensor

    from .range_image import range_image_png, range_images_from_projection

    sensor = dict(sensor or resolve_sensor(None, dataset_type(dataset).sensor, "--range-png sensor"))
    if sensor.get("use_ring") and points.shape[1] < 5:
        sensor["use_ring"] = False  # no ring column: rows from the elevation angle
    proj = RangeProjection.from_sensor(sensor).project(points)
    ims = range_images_from_projection(points, proj)
    lab = range_images_from_projection(points, proj, labels)["ids"] if labels is not None else None
    prd = range_images_from_projection(points, proj, preds)["ids"] if preds is not None else None
    if lab is None:
        lab, prd = prd, None
    return range_image_png(ims["proj_range"], ims["intensity"], lab, palette, path, preds=prd)


def show_scan(points: np.ndarray, labels: Optional[np.ndarray] = None, preds: Optional[np.ndarray] = None,
              dataset: str = "semantickitti", mode: Optional[str] = None, png: Optional[str] = None,
              width: int = 800, height: int = 600, camera: str = "bev", point_size: float = 2.0,
              range_png: Optional[str] = None, window: bool = False, backend: str = "subprocess",
              title: Optional[str] = None, palette: Optional[np.ndarray] = None,
              names: Optional[Sequence[str]] = None, sensor: Optional[Dict] = None,
              ignore_index: int = IGNORE_INDEX) -> Optional[np.ndarray]:
    """Show one in-memory scan: ``points`` (N, 4+), ``labels``/``preds`` train ids.

    With ``window`` an Open3D window opens (returns None). Otherwise the scan
    is rendered offscreen and returned as ``(H, W', 3) uint8``, written to
    ``png`` when given: the camera fitted to the cloud (every point inside,
    :func:`~cdcl3d.vis.render.fit_camera`), a title (``title``: dataset and
    scan id), a metric scale bar (top-down view) and an arrow along the
    sensor's forward axis below, and on the right a legend of every class
    with the present ones marked (label / pred) or the error counts. Class
    colours darker than L* 40 are lifted for the black background
    (:func:`~cdcl3d.vis.colors.display_palette`). ``range_png`` also writes
    the range-image picture. ``mode`` defaults to label, else pred, else
    intensity. ``palette``/``names``/``sensor`` default to the dataset
    type's (:mod:`cdcl3d.datasets.specs`).
    """
    from cdcl3d.datasets.specs import dataset_type

    points = np.asarray(points)
    if points.ndim != 2 or points.shape[1] < 3:
        raise ValueError(f"points must be (N, 3+), got {points.shape}")
    palette = train_palette(dataset) if palette is None else np.asarray(palette, dtype=np.uint8)
    names = class_names(dataset) if names is None else list(names)
    scan = ScanData(points=points, labels=labels, preds=preds, name=title or "scan")
    modes = scan.modes()
    if mode is None:
        mode = modes[0]
    if mode not in MODES:
        raise ShowError(f"unknown colour mode {mode!r}; valid: {list(MODES)}")
    if mode not in modes:
        raise ShowError(f"colour mode {mode!r} needs data this scan lacks "
                         f"(labels: {labels is not None}, predictions: {preds is not None}); "
                         f"possible: {modes}")
    if range_png:
        render_range_png(points, labels, preds, dataset, palette, range_png, sensor)
    if window:
        show_window(lambda i: scan, 1, palette, mode=mode, point_size=point_size, title=title or "cdcl show")
        return None
    from .legend import add_legend, draw_caption

    shown = display_palette(palette)  # dark classes lifted: the background is black
    colors = colorize(mode, points, labels, preds, shown, ignore_index)
    forward = dataset_type(dataset).forward
    cam = fit_camera(camera, points, width, height, forward=forward, pad=PICTURE_PAD)
    img = render_any(points, colors, backend=backend, width=width, height=height, camera=cam,
                     point_size=point_size)
    img = draw_caption(img, f"{title or dataset + ' scan'}: {mode}, {len(points)} points ({camera})")
    img = _draw_scale_and_forward(img, cam, forward)
    entries, legend_title = _legend_for(mode, points, labels, preds, shown, names, ignore_index)
    img = add_legend(img, entries, title=legend_title)
    if png:
        save_png(img, png)
    return img


#: picture border kept free of points (top, right, bottom, left pixels): the
#: title above, the scale bar and the forward arrow below
PICTURE_PAD = (28, 8, 36, 8)


def _draw_scale_and_forward(img: np.ndarray, cam, forward: str) -> np.ndarray:
    """The bottom strip: a metric scale bar (top-down views) and an arrow
    along the sensor's forward axis as the picture shows it."""
    from .legend import draw_arrow, draw_scale_bar
    from .render import metres_per_pixel, project_points_to_image

    h, w = img.shape[:2]
    mpp = metres_per_pixel(cam, w)
    if mpp is not None:
        img = draw_scale_bar(img, mpp, (12, h - 12))
    mid = np.asarray(cam.center, dtype=np.float64)  # on the picture's axis: no perspective skew
    axis = np.eye(3)[0 if forward == "x" else 1]
    u, v, _ = project_points_to_image(np.stack([mid, mid + axis]), cam, w, h)
    direction = (u[1] - u[0], v[1] - v[0])
    if not np.all(np.isfinite(direction)) or np.hypot(*direction) < 1e-9:
        direction = (0.0, -1.0)
    vertical = abs(direction[1]) > abs(direction[0])
    start = (w - 150, h - 6) if vertical else (w - 190, h - 16)
    return draw_arrow(img, start, direction, length=24 if vertical else 30, label=f"forward (+{forward})")


# -- command line ----------------------------------------------------------------

def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``cdcl show``."""
    parser.add_argument("scan", help="SemanticKITTI .bin, nuScenes .pcd.bin, or a config (.yaml: LiDAR or "
                        "image task) with --index")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="with a config: dotted overrides, e.g. data.nuscenes.root=/data/nuscenes")
    parser.add_argument("--index", type=int, default=0, help="with a config: the sample index")
    parser.add_argument("--split", default=None, help="with a config: split (default: the dataset's val_split)")
    parser.add_argument("--checkpoint", help="with a config: predict the scan with this checkpoint")
    parser.add_argument("--labels", help="label file (default for KITTI: ../labels/NNNNNN.label if present)")
    parser.add_argument("--pred", help="prediction file in the labels' format (KITTI: raw-id .label or a "
                        "folder of them; nuScenes: uint8 challenge ids 1..16)")
    parser.add_argument("--color", choices=MODES, default=None,
                        help="colour mode (default: label, else pred, else intensity; an image: label, "
                        "pred with --checkpoint, or error)")
    parser.add_argument("--png", help="write the picture to this PNG (a scan: rendered offscreen)")
    parser.add_argument("--width", type=int, default=800, help="scan render width in pixels (default: %(default)s)")
    parser.add_argument("--height", type=int, default=600, help="scan render height in pixels (default: %(default)s)")
    parser.add_argument("--camera", choices=CAMERAS, default="bev",
                        help="bev: from above, fitted to the scan; chase: from behind the sensor (default: %(default)s)")
    parser.add_argument("--point-size", type=float, default=2.0,
                        help="point side in pixels (default: %(default)s)")
    parser.add_argument("--dataset", default=None,
                        help="file mode: the dataset type (semantickitti, nuscenes, semanticposs, ...; "
                        "default: from the file ending, nuscenes for *.pcd.bin); "
                        "config mode: the dataset name under data: (default: the first)")
    parser.add_argument("--range-png", help="also write the range-image picture here")
    parser.add_argument("--window", action="store_true", help="open a window even without $DISPLAY")
    parser.add_argument("--backend", choices=("subprocess", "open3d", "numpy"), default="subprocess",
                        help="offscreen renderer: Open3D in a child process (default), in this "
                        "process, or the numpy point splatter")


def run(args: argparse.Namespace) -> int:
    """Run ``cdcl show``; bad input prints ``cdcl show: error: ...`` and returns 2
    (``cdcl -v show`` keeps the traceback); anything else is a bug and keeps it."""
    try:
        return _run(args)
    except (UserError, FileNotFoundError) as exc:
        if getattr(args, "verbose", False):
            raise
        print(f"cdcl show: error: {exc}", file=sys.stderr)
        return 2


def _from_config(args: argparse.Namespace) -> int:
    """``cdcl show CONFIG [key=value ...] --index I [--dataset NAME] [--checkpoint CKPT]``:
    the config's task draws the sample (:meth:`common.task.Task.show`), a LiDAR
    scan here (:func:`show_sample`), an image in ``cdcl2d``."""
    from common.build import get_task
    from common.config import load_config

    cfg = load_config(args.scan, getattr(args, "overrides", None) or [])
    name = args.dataset or cfg.names[0]
    if name not in cfg.data:
        raise ShowError(f"--dataset {name!r}: the config {args.scan} has {list(cfg.data)}")
    split = args.split or cfg.data[name].val_split
    png = get_task(cfg).show(cfg, name, split, args.index, checkpoint=args.checkpoint, color=args.color,
                             png=args.png, width=args.width, height=args.height, camera=args.camera,
                             point_size=args.point_size, range_png=args.range_png, backend=args.backend,
                             window=bool(args.window))
    for path in (png, args.range_png):
        if path:
            print(f"wrote {path}")
    return 0


def show_sample(task, cfg, name: str, split: str, index: int, checkpoint: Optional[str] = None,
                color: Optional[str] = None, png: Optional[str] = None, width: int = 800, height: int = 600,
                camera: str = "bev", point_size: float = 2.0, range_png: Optional[str] = None,
                backend: str = "subprocess", window: bool = False, **_: object) -> Optional[str]:
    """:meth:`cdcl3d.task.LidarTask.show`: scan ``index`` of ``name``/``split``
    with its labels and, with ``checkpoint``, the prediction (KNN on the points
    where the config turns it on), rendered by :func:`show_scan` to ``png``
    (default ``<name>_<index>_<mode>.png``) or a window. Returns the PNG path
    (None for a window)."""
    import torch

    from common.build import build_dataset
    from common.dataset_specific import route

    from cdcl3d.task import resolve_data

    ds = build_dataset(cfg, name, split, False, task)
    if not 0 <= index < len(ds):
        raise ShowError(f"--index {index} outside 0..{len(ds) - 1} ({name}/{split})")
    reader = getattr(ds, "base", ds)
    raw = reader[index]
    labels = raw.get("labels")
    preds = None
    if checkpoint:
        from common.evaluation import eval_options, load_model_for_eval

        model = load_model_for_eval(cfg, checkpoint, torch.device("cpu"))
        batch = task.collate_fn(name, cfg.data[name].as_dict())([ds[index]])
        knn = task._knn(ds, eval_options(cfg, name), torch.device("cpu"))
        with torch.no_grad(), route(model, name):
            plain, with_knn, _ = task.predict_points(model, batch, {}, knn)
        preds = (with_knn or plain)[0].numpy()
    dtype = cfg.data[name].type
    scan = ScanData(points=raw["points"], labels=labels, preds=preds, name=str(raw.get("id", index)))
    mode = color or scan.modes()[0]
    png = None if window else (png or f"{name}_{index}_{mode}.png")
    what = name if name == dtype else f"{name} ({dtype})"
    data = cfg.data[name].as_dict()
    show_scan(scan.points, labels, preds, dataset=dtype, mode=mode, png=png, width=width, height=height,
              camera=camera, point_size=point_size, range_png=range_png, backend=backend,
              title=f"{what} {split} scan {scan.name}", window=bool(window),
              palette=train_palette(dtype, data), names=class_names(dtype, data), sensor=resolve_data(name, data)[1])
    return png


def _run(args: argparse.Namespace) -> int:
    if args.scan.endswith((".yaml", ".yml")):
        return _from_config(args)
    if getattr(args, "overrides", None):
        raise ShowError(f"key=value overrides ({' '.join(args.overrides)}) apply to a config, not to the scan "
                        f"file {args.scan}")
    scan, dataset = load_scan_files(args.scan, args.labels, args.pred, args.dataset)
    window = bool(args.window or (has_display() and not args.png))
    if window:
        palette = train_palette(dataset)
        if args.range_png:
            render_range_png(scan.points, scan.labels, scan.preds, dataset, palette, args.range_png)
            print(f"wrote {args.range_png}")
        files = sibling_scans(args.scan, dataset)
        start = files.index(os.path.abspath(args.scan)) if os.path.abspath(args.scan) in files else 0

        def load(i: int) -> ScanData:
            if i == start:
                return scan
            # Siblings: KITTI labels from ../labels, predictions from a --pred folder.
            pred = args.pred if (args.pred and os.path.isdir(args.pred)) else None
            return load_scan_files(files[i], None, pred, dataset)[0]

        show_window(load, len(files), palette, start=start, mode=args.color, point_size=args.point_size,
                    title=f"cdcl show {scan.name}")
        return 0
    mode = args.color or scan.modes()[0]
    png = args.png or f"{scan.name.split('.')[0]}_{mode}.png"
    show_scan(scan.points, scan.labels, scan.preds, dataset=dataset, mode=mode, png=png,
              width=args.width, height=args.height, camera=args.camera, point_size=args.point_size,
              range_png=args.range_png, backend=args.backend, title=f"{dataset} {scan.name}")
    print(f"wrote {png}")
    if args.range_png:
        print(f"wrote {args.range_png}")
    return 0


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Stand-alone entry (``python -m cdcl3d.vis.cli``) until ``cdcl show`` is wired."""
    parser = argparse.ArgumentParser(prog="cdcl show", description=__doc__.split("\n")[0])
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
