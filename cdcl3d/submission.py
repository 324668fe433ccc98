"""Predictions in each benchmark's own submission format; each dataset type's
row (:mod:`cdcl3d.datasets.specs`) names its writer. A writer has
``write(sample_id, train_ids)``, ``close()`` and ``report()`` (after close:
print the official score where one can be computed here).

* SemanticKITTI's layout (SemanticKITTI, SemanticPOSS, ``kitti_format``):
  ``OUT/sequences/NN/predictions/NNNNNN.label``, uint32 raw label ids (the
  label yaml's inverse learning map; a class of several raw ids writes its
  first), one per point, as the official ``validate_submission.py`` /
  ``evaluate_semantics.py`` expect.
* nuScenes-lidarseg: ``OUT/lidarseg/<split>/<sample_data token>_lidarseg.bin``
  (uint8 challenge ids 1..16; 0 is forbidden in a prediction) and
  ``OUT/<split>/submission.json`` with the challenge's ``meta`` block, where
  ``<split>`` is the devkit's split name (``val``, ``test``, ``mini_val``...).
  :func:`score_nuscenes` scores a labelled split's predictions with the
  devkit's own ``LidarSegEval``.
"""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, Optional

import numpy as np

logger = logging.getLogger(__name__)


class KittiFormatWriter:
    def __init__(self, out_dir: str, label_map: Any) -> None:
        self.out_dir, self.label_map = out_dir, label_map

    def write(self, sample_id: str, train_ids: np.ndarray) -> str:
        seq, frame = sample_id.split("/")
        folder = os.path.join(self.out_dir, "sequences", seq, "predictions")
        os.makedirs(folder, exist_ok=True)
        path = os.path.join(folder, f"{frame}.label")
        raw = self.label_map.to_raw(np.asarray(train_ids, dtype=np.int64)).astype(np.uint32)
        raw.tofile(path)
        return path

    def close(self) -> None:
        pass

    def report(self) -> None:
        pass


class NuScenesWriter:
    META = {"use_camera": False, "use_lidar": True, "use_radar": False, "use_map": False,
            "use_external": False}

    def __init__(self, out_dir: str, reader: Any, meta: Dict[str, bool] = None) -> None:
        from .datasets.nuscenes import _split_name

        self.out_dir, self.reader = out_dir, reader
        self.split = _split_name(reader.version, reader.split)
        self.bin_dir = os.path.join(out_dir, "lidarseg", self.split)
        os.makedirs(self.bin_dir, exist_ok=True)
        self.meta = dict(meta or self.META)

    def write(self, token: str, train_ids: np.ndarray) -> str:
        train_ids = np.asarray(train_ids, dtype=np.int64)
        if train_ids.size and (train_ids.min() < 0 or train_ids.max() > 15):
            raise ValueError(f"nuScenes prediction for {token}: train ids must be 0..15")
        path = os.path.join(self.bin_dir, f"{token}_lidarseg.bin")
        (train_ids + 1).astype(np.uint8).tofile(path)  # challenge ids 1..16
        return path

    def close(self) -> None:
        meta_dir = os.path.join(self.out_dir, self.split)
        os.makedirs(meta_dir, exist_ok=True)
        with open(os.path.join(meta_dir, "submission.json"), "w", encoding="utf-8") as f:
            json.dump({"meta": self.meta}, f, indent=2)

    def report(self) -> None:
        """A labelled split's predictions: the devkit's score, printed."""
        if self.reader.has_labels:
            report_nuscenes_score(self.out_dir, self.reader)


def score_nuscenes(out_dir: str, reader: Any) -> Optional[Dict[str, Any]]:
    """The devkit's own score of the predictions under ``out_dir`` for
    ``reader``'s split (``nuscenes.eval.lidarseg.evaluate.LidarSegEval``:
    ``{"miou", "freq_weighted_iou", "iou_per_class"}`` plus ``"eval_set"``);
    None for a split without labels (``v1.0-test``)."""
    from nuscenes.eval.lidarseg.evaluate import LidarSegEval

    from .datasets.nuscenes import _split_name, load_nuscenes

    if not reader.has_labels:
        return None
    nusc = reader.nusc if reader.nusc is not None else load_nuscenes(reader.root, reader.version)
    eval_set = _split_name(reader.version, reader.split)
    res = LidarSegEval(nusc, out_dir, eval_set=eval_set, verbose=False).evaluate()
    return dict(res, eval_set=eval_set)


def report_nuscenes_score(out_dir: str, reader: Any) -> Optional[Dict[str, Any]]:
    """Print :func:`score_nuscenes`'s table and return the score (None for a
    split without labels). What the devkit refuses to score (an empty scan:
    its ``load_bin_file`` asserts on an empty file) is a warning: the
    predictions written stand."""
    try:
        res = score_nuscenes(out_dir, reader)
    except AssertionError as exc:
        logger.warning("nuScenes devkit LidarSegEval did not score the predictions under %s: %s",
                       out_dir, exc)
        return None
    if res is not None:
        print(format_nuscenes_score(res))
    return res


def format_nuscenes_score(res: Dict[str, Any]) -> str:
    """:func:`score_nuscenes`'s result as a console table (the ignored class 0
    left out, as the devkit's mean leaves it out)."""
    from nuscenes.eval.lidarseg.utils import LidarsegClassMapper

    ignored = LidarsegClassMapper.get_ignore_class()["name"]
    per_class = {n: v for n, v in res["iou_per_class"].items() if n != ignored}
    width = max([len(n) for n in per_class] + [8])
    lines = [f"nuScenes devkit LidarSegEval on {res['eval_set']}: mIoU over the classes present in ground "
             "truth or prediction",
             f"{'class'.ljust(width)} {'IoU':>6}", "-" * (width + 9)]
    for n, v in per_class.items():
        absent = v is None or np.isnan(v)
        lines.append(f"{n.ljust(width)} " + ("   n/a  (absent: not counted)" if absent else f"{100 * v:6.2f}"))
    lines += ["-" * (width + 9), f"{'mIoU'.ljust(width)} {100 * res['miou']:6.2f}",
              f"{'fwIoU'.ljust(width)} {100 * res['freq_weighted_iou']:6.2f}"]
    return "\n".join(lines)
