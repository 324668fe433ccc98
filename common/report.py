"""Evaluation artifacts beside ``results.json``: per dataset, the headline
confusion matrix as ``.npy`` and as a PNG (rows normalised), and a per-class
IoU bar chart.

Written by ``cdcl eval --out results.json`` (``results_<dataset>_confusion.npy``,
``results_<dataset>_confusion.png``, ``results_<dataset>_iou.png`` beside it)
and at the end of training (into the work dir). Usage::

    written = save_eval_artifacts(results, work_dir)   # {dataset: [paths]}
"""
from __future__ import annotations

import io
import logging
import math
import os
from typing import Any, Dict, List, Optional, Sequence

import numpy as np

from .utils import atomic_write_bytes

logger = logging.getLogger(__name__)

# `cdcl -v` turns on DEBUG for the root logger; matplotlib's font search would
# then print hundreds of lines per figure
if logging.getLogger("matplotlib").level == logging.NOTSET:
    logging.getLogger("matplotlib").setLevel(logging.WARNING)


def artifact_paths(folder: str, stem: str, name: str) -> Dict[str, str]:
    """``{"npy", "png", "iou"}``: where :func:`save_eval_artifacts` writes dataset ``name``'s files."""
    base = os.path.join(folder, f"{stem}_{name}")
    return {"npy": base + "_confusion.npy", "png": base + "_confusion.png", "iou": base + "_iou.png"}


def save_eval_artifacts(results: Dict[str, Dict[str, Any]], folder: str,
                        stem: str = "results") -> Dict[str, List[str]]:
    """Write every dataset's confusion matrix (``.npy``, int64, ``[gt, pred]``)
    and its two figures into ``folder``; returns ``{dataset: [paths]}``.

    ``results`` is :func:`common.evaluation.evaluate_model`'s dict or its JSON
    form (``results_json``); a dataset without ``"confusion"`` is passed over.
    A figure that cannot be drawn is a warning: the numbers are on disk."""
    written: Dict[str, List[str]] = {}
    for name, r in results.items():
        if r.get("confusion") is None:
            continue
        paths = artifact_paths(folder, stem, name)
        mat = np.asarray(r["confusion"], dtype=np.int64)
        class_names = list(r.get("class_names") or r["iou"])
        buf = io.BytesIO()
        np.save(buf, mat)
        atomic_write_bytes(paths["npy"], buf.getvalue())
        written[name] = [paths["npy"]]
        variant = r.get("variant") or ""
        try:
            atomic_write_bytes(paths["png"], plot_confusion(
                mat, class_names, f"{name} ({variant}): confusion matrix, rows normalised"))
            written[name].append(paths["png"])
            atomic_write_bytes(paths["iou"], plot_iou(
                r["iou"], r["miou"], f"{name} ({variant}): IoU per class",
                definition=r.get("miou_definition"), mode=r.get("miou_mode", "all"),
                scored=r.get("scored_classes")))
            written[name].append(paths["iou"])
        except Exception as exc:  # pictures never lose the numbers
            logger.warning("%s: evaluation figures not drawn (%s: %s); the confusion matrix is in %s",
                           name, type(exc).__name__, exc, paths["npy"])
    for name, paths in written.items():
        logger.info("%s: wrote %s in %s", name, ", ".join(os.path.basename(p) for p in paths), folder)
    return written


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)  # Agg, whatever pyplot's backend is: no display needed
    return fig


def _png(fig) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def plot_confusion(mat: np.ndarray, class_names: Sequence[str], title: str = "") -> bytes:
    """PNG of a ``(K, K)`` ``[gt, pred]`` count matrix, each row divided by its
    sum (the share of a class's labels predicted as each class); rows of
    classes absent from the ground truth stay 0 and say so."""
    mat = np.asarray(mat, dtype=np.float64)
    k = mat.shape[0]
    rows = mat.sum(axis=1, keepdims=True)
    norm = np.divide(mat, rows, out=np.zeros_like(mat), where=rows > 0)
    side = max(4.0, 0.42 * k + 2.5)
    fig = _figure(side + 1.0, side)
    ax = fig.add_subplot(1, 1, 1)
    im = ax.imshow(norm, cmap="Blues", vmin=0.0, vmax=1.0)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of the ground-truth row")
    labels_y = [f"{n} (absent)" if rows[i, 0] == 0 else n for i, n in enumerate(class_names)]
    ax.set_xticks(range(k))
    ax.set_xticklabels(class_names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(k))
    ax.set_yticklabels(labels_y, fontsize=8)
    ax.set_xlabel("prediction")
    ax.set_ylabel("ground truth")
    if k <= 24:  # percentages in the cells while they stay readable
        for i in range(k):
            for j in range(k):
                if norm[i, j] >= 0.005:
                    ax.text(j, i, f"{100 * norm[i, j]:.0f}", ha="center", va="center", fontsize=6,
                            color="white" if norm[i, j] > 0.5 else "black")
    if title:
        ax.set_title(title, fontsize=10)
    fig.tight_layout()
    return _png(fig)


def plot_iou(iou: Dict[str, Optional[float]], miou: float, title: str = "",
             definition: Optional[str] = None, mode: str = "all",
             scored: Optional[Sequence[str]] = None) -> bytes:
    """PNG bar chart of IoU per class (%) with the mIoU as a line; a class
    absent from ground truth and prediction is labelled with how it counts
    (``"all"``: 0, ``"present"``: not counted), an unscored one greyed."""
    names = list(iou)
    k = len(names)
    fig = _figure(7.5, max(3.0, 0.3 * k + 1.6))
    ax = fig.add_subplot(1, 1, 1)
    values, colours = [], []
    for n in names:
        v = iou[n]
        absent = v is None or (isinstance(v, float) and math.isnan(v))
        values.append(0.0 if absent else 100 * float(v))
        colours.append("#bbbbbb" if scored is not None and n not in scored else "#3b75af")
    y = np.arange(k)
    ax.barh(y, values, color=colours)
    for i, n in enumerate(names):
        v = iou[n]
        if scored is not None and n not in scored:
            note = "not scored"
        elif v is None or (isinstance(v, float) and math.isnan(v)):
            note = "absent: counts 0" if mode == "all" else "absent: not counted"
        else:
            note = f"{values[i]:.1f}"
        ax.text(values[i] + 1.0, i, note, va="center", fontsize=7)
    ax.axvline(100 * miou, color="#d62728", linestyle="--", linewidth=1)
    ax.text(100 * miou + 0.8, -0.9, f"mIoU {100 * miou:.2f}", color="#d62728", fontsize=8, ha="left")
    ax.set_yticks(y)
    ax.set_yticklabels(names, fontsize=8)
    ax.set_xlim(0, 115)
    ax.set_ylim(k - 0.5, -1.5)  # class 0 on top, as in the tables; the mIoU label above it
    ax.set_xlabel("IoU (%)")
    if title or definition:
        ax.set_title("\n".join(t for t in (title, definition) if t), fontsize=9)
    fig.tight_layout()
    return _png(fig)
