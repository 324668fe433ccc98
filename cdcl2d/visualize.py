"""Colour label maps with each dataset's palette; ``cdcl show`` for images.

:func:`show_panels` draws one picture: image | ground truth | prediction (or
error), a title line, and a legend of every class of the dataset with the
classes present in the ground truth or the prediction marked.
:func:`show_sample` is :meth:`cdcl2d.task.ImageTask.show`: a config's sample,
optionally predicted with a checkpoint, written as PNG. Drawn with Pillow (no
Open3D, no matplotlib).
"""
from __future__ import annotations

import os
from typing import Any, List, Optional, Sequence, Tuple

import numpy as np

from .datasets.labels import CAMVID_PALETTE, CITYSCAPES_PALETTE

IGNORE_INDEX = 255
#: ``cdcl show --color`` modes of an image
MODES = ("label", "pred", "error")
# error map: correct pixels keep the image (grey), wrong ones red, ignored dark
WRONG_COLOR = (255, 0, 0)
IGNORED_COLOR = (40, 40, 40)
BACKGROUND = (24, 24, 24)
TEXT = (235, 235, 235)
DIM_TEXT = (120, 120, 120)
MIN_PANEL_HEIGHT = 256  # small images are enlarged to this height (nearest for labels)


def palette(kind: str) -> np.ndarray:
    """(256, 3) uint8 colour table for train ids of dataset type ``kind``
    (Cityscapes colours for the 19-class sets, SegNet colours for CamVid);
    ignore (255) is black."""
    colours = CAMVID_PALETTE if kind == "camvid" else CITYSCAPES_PALETTE
    table = np.zeros((256, 3), dtype=np.uint8)
    table[:len(colours)] = np.asarray(colours, dtype=np.uint8)
    return table


def colorize(labels: np.ndarray, kind: str) -> np.ndarray:
    """(H, W) train ids -> (H, W, 3) uint8 colours."""
    return palette(kind)[np.asarray(labels).astype(np.int64) & 255]


def error_map(image: np.ndarray, labels: np.ndarray, preds: np.ndarray,
              ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """(H, W, 3) uint8: correct pixels show the image in grey, wrong ones
    :data:`WRONG_COLOR`, pixels without a label :data:`IGNORED_COLOR`."""
    lab, prd = np.asarray(labels), np.asarray(preds)
    grey = np.asarray(image, dtype=np.float64).mean(axis=2)
    out = np.repeat((90 + 0.5 * grey).astype(np.uint8)[..., None], 3, axis=2)
    out[lab != prd] = WRONG_COLOR
    out[lab == ignore_index] = IGNORED_COLOR
    return out


def _font(size: int):
    from PIL import ImageFont
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1: no size argument
        return ImageFont.load_default()


def _enlarge(panel: np.ndarray, height: int, nearest: bool):
    from PIL import Image

    im = Image.fromarray(np.ascontiguousarray(panel, dtype=np.uint8))
    if im.height == height:
        return im
    width = max(1, round(im.width * height / im.height))
    return im.resize((width, height), Image.NEAREST if nearest else Image.BILINEAR)


def show_panels(image: np.ndarray, labels: Optional[np.ndarray], preds: Optional[np.ndarray],
                kind: str, class_names: Sequence[str], mode: str = "label", title: str = "",
                ignore_index: int = IGNORE_INDEX) -> np.ndarray:
    """image | ground truth | prediction (``mode`` 'pred') or error ('error'),
    or image | ground truth ('label'), with ``title`` above and a legend of
    every class below (present ones bright and marked, absent ones dim).
    ``image`` (H, W, 3) uint8, ``labels``/``preds`` (H, W) train ids.
    Returns (H', W', 3) uint8."""
    from PIL import Image, ImageDraw

    if mode not in MODES:
        raise ValueError(f"unknown colour mode {mode!r}; valid: {list(MODES)}")
    panels: List[Tuple[str, np.ndarray, bool]] = [("image", np.asarray(image, dtype=np.uint8), False)]
    valid = None if labels is None else np.asarray(labels) != ignore_index
    if labels is not None:
        panels.append(("ground truth", colorize(labels, kind), True))
    if mode in ("pred", "error") and preds is not None:
        acc = ""
        if valid is not None and valid.any():
            right = float((np.asarray(preds) == np.asarray(labels))[valid].mean())
            acc = f" ({right:.1%} of labelled pixels right)" if mode == "pred" else \
                f" ({1 - right:.1%} of labelled pixels wrong)"
        if mode == "pred":
            panels.append(("prediction" + acc, colorize(preds, kind), True))
        else:
            panels.append(("error: red wrong, dark unlabelled" + acc, error_map(image, labels, preds,
                                                                              ignore_index), True))
    height = max(MIN_PANEL_HEIGHT, int(np.asarray(image).shape[0]))
    ims = [_enlarge(p, height, nearest) for _, p, nearest in panels]
    font, small = _font(15), _font(13)
    gap, caption_h, title_h = 6, 22, 28 if title else 0
    width = sum(im.width for im in ims) + gap * (len(ims) + 1)
    # legend: every class, in as many columns as fit the width
    present = set()
    for arr in (labels, preds if mode != "label" else None):
        if arr is not None:
            present.update(int(v) for v in np.unique(np.asarray(arr)) if v != ignore_index)
    pal = palette(kind)
    entries = [(f"{'* ' if i in present else '  '}{n}", tuple(int(c) for c in pal[i]), i in present)
               for i, n in enumerate(class_names)]
    col_w = max(small.getbbox(e[0])[2] for e in entries) + 32 if entries else 0
    ncols = max(1, (width - gap) // max(col_w, 1))
    nrows = -(-len(entries) // ncols)
    legend_h = 24 + nrows * 18 + gap
    canvas = Image.new("RGB", (width, title_h + caption_h + height + legend_h), BACKGROUND)
    draw = ImageDraw.Draw(canvas)
    if title:
        draw.text((gap, 6), title, fill=TEXT, font=font)
    x = gap
    for (caption, _, _), im in zip(panels, ims):
        draw.text((x, title_h + 3), caption, fill=TEXT, font=small)
        canvas.paste(im, (x, title_h + caption_h))
        x += im.width + gap
    y0 = title_h + caption_h + height + gap
    draw.text((gap, y0), f"classes ({len(present & set(range(len(class_names))))} of {len(class_names)} "
              f"present, marked *)", fill=TEXT, font=small)
    for k, (text, rgb, here) in enumerate(entries):
        c, r = divmod(k, nrows)
        x, y = gap + c * col_w, y0 + 22 + r * 18
        draw.rectangle([x, y + 1, x + 12, y + 13], fill=rgb if here else tuple(v // 3 for v in rgb),
                       outline=(200, 200, 200) if here else (80, 80, 80))
        draw.text((x + 18, y), text, fill=TEXT if here else DIM_TEXT, font=small)
    return np.asarray(canvas, dtype=np.uint8)


def show_sample(task: Any, cfg: Any, name: str, split: str, index: int, checkpoint: Optional[str] = None,
                color: Optional[str] = None, png: Optional[str] = None, **options: Any) -> str:
    """``cdcl show CONFIG`` for images (:meth:`cdcl2d.task.ImageTask.show`):
    sample ``index`` of ``name``/``split`` as the evaluation sees it, its
    labels and, with ``checkpoint``, the prediction under the config's
    inference options; written to ``png`` (default ``<name>_<index>_<mode>.png``).
    Returns the path written. LiDAR-only options (``range_png``, ``window``)
    are refused; the others (camera, point size ...) do not apply and are ignored."""
    import torch

    from common.build import build_dataset
    from common.dataset_specific import route
    from common.errors import ShowError

    for key, flag in (("range_png", "--range-png"), ("window", "--window")):
        if options.get(key):
            raise ShowError(f"{flag} is for LiDAR scans; {cfg.source} is an image config (task {task.name})")
    if color is not None and color not in MODES:
        raise ShowError(f"--color {color}: an image has the colour modes {', '.join(MODES)}")
    ds = build_dataset(cfg, name, split, False, task)
    if not 0 <= index < len(ds):
        raise ShowError(f"--index {index} outside 0..{len(ds) - 1} ({name}/{split})")
    item = ds[index]
    labels = item["labels"].numpy() if "labels" in item else None
    mode = color or ("pred" if checkpoint else "label")
    if mode in ("pred", "error") and not checkpoint:
        raise ShowError(f"--color {mode} needs a prediction: pass --checkpoint")
    if mode in ("label", "error") and labels is None:
        raise ShowError(f"--color {mode} needs labels, and {name}/{split} has none (a test split?): "
                        "use --color pred")
    preds = None
    if checkpoint:
        from common.evaluation import eval_options, load_model_for_eval

        model = load_model_for_eval(cfg, checkpoint, torch.device("cpu"), task)
        with torch.no_grad(), route(model, name):
            preds = task.predict_batch(model, item["inputs"][None], eval_options(cfg, name))[0].numpy()
    from .datasets import READERS
    from .transforms import denormalize

    kind = cfg.data[name].type
    class_names = getattr(ds, "class_names", None) or READERS[kind].class_names
    what = name if kind == name else f"{name} ({kind})"
    title = f"{what} {split} #{index}: {item.get('id', index)}"
    picture = show_panels(denormalize(item["inputs"].numpy()), labels, preds, kind, class_names, mode, title)
    png = png or f"{name}_{index}_{mode}.png"
    from PIL import Image

    os.makedirs(os.path.dirname(os.path.abspath(png)), exist_ok=True)
    Image.fromarray(picture).save(png)
    return png
