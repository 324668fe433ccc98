"""Confusion-matrix metrics: IoU per class, mIoU, frequency-weighted IoU, accuracy.

mIoU comes in the flavours the official evaluators use:

* ``"all"`` (SemanticKITTI's ``semantic-kitti-api``): the mean over every
  class; a class with an empty union scores 0.
* ``"present"`` (nuScenes ``LidarSegEval``, cityscapesscripts): IoU is NaN
  where the union is empty and the mean skips it (``nanmean``).
* ``"gt"`` (the BDD100K toolkit): the mean over the classes that occur in the
  ground truth; a class only predicted is left out.
"""
from __future__ import annotations

from typing import Dict, List, Optional, Sequence

import torch


class ConfusionMatrix:
    """``mat[gt, pred]`` counts over labelled elements (ignore index skipped)."""

    def __init__(self, num_classes: int, ignore_index: int = 255,
                 class_names: Optional[Sequence[str]] = None,
                 device: Optional[torch.device] = None) -> None:
        self.num_classes = num_classes
        self.ignore_index = ignore_index
        self.class_names: List[str] = list(class_names) if class_names is not None \
            else [str(i) for i in range(num_classes)]
        if len(self.class_names) != num_classes:
            raise ValueError(f"{len(self.class_names)} class names for {num_classes} classes")
        self.mat = torch.zeros(num_classes, num_classes, dtype=torch.int64, device=device)

    @torch.no_grad()
    def update(self, pred: torch.Tensor, target: torch.Tensor) -> None:
        """Add predictions and targets of any matching shape (train ids)."""
        if pred.shape != target.shape:
            raise ValueError(f"prediction shape {tuple(pred.shape)} != target shape {tuple(target.shape)}")
        pred = pred.reshape(-1).to(self.mat.device, torch.int64)
        target = target.reshape(-1).to(self.mat.device, torch.int64)
        keep = target != self.ignore_index
        pred, target = pred[keep], target[keep]
        if target.numel() and (int(target.max()) >= self.num_classes or int(target.min()) < 0):
            raise ValueError(f"target id {int(target.max())} outside 0..{self.num_classes - 1}")
        if pred.numel() and (int(pred.max()) >= self.num_classes or int(pred.min()) < 0):
            raise ValueError(f"predicted id outside 0..{self.num_classes - 1}")
        n = self.num_classes
        self.mat += torch.bincount(target * n + pred, minlength=n * n).reshape(n, n)

    def merge(self, other: "ConfusionMatrix") -> None:
        self.mat += other.mat.to(self.mat.device)

    def reset(self) -> None:
        self.mat.zero_()

    # -- scores ---------------------------------------------------------------
    def _tp_fp_fn(self):
        m = self.mat.double().cpu()
        tp = m.diag()
        fp = m.sum(0) - tp
        fn = m.sum(1) - tp
        return tp, fp, fn

    def iou(self) -> torch.Tensor:
        """IoU per class; NaN where the union is empty."""
        tp, fp, fn = self._tp_fp_fn()
        union = tp + fp + fn
        return torch.where(union > 0, tp / union.clamp(min=1), torch.full_like(tp, float("nan")))

    def miou(self, mode: str = "all", classes: Optional[Sequence[int]] = None) -> float:
        """Mean IoU over ``classes`` (default: every class). A dataset whose
        labels reach only some classes (a label-remapped one) is scored over
        those: the others are never in its ground truth."""
        iou = self.iou()
        if classes is not None:
            iou = iou[torch.as_tensor(list(classes), dtype=torch.long)]
        if mode == "all":
            return float(torch.nan_to_num(iou, nan=0.0).mean()) if iou.numel() else 0.0
        if mode == "present":
            valid = ~torch.isnan(iou)
            return float(iou[valid].mean()) if valid.any() else 0.0
        if mode == "gt":
            tp, _, fn = self._tp_fp_fn()
            in_gt = (tp + fn) > 0
            if classes is not None:
                in_gt = in_gt[torch.as_tensor(list(classes), dtype=torch.long)]
            return float(iou[in_gt].mean()) if in_gt.any() else 0.0
        raise ValueError(f"mIoU mode must be 'all', 'present' or 'gt', not {mode!r}")

    def fwiou(self) -> float:
        """Frequency-weighted IoU: IoU weighted by each class's share of labels."""
        tp, fp, fn = self._tp_fp_fn()
        freq = (tp + fn) / (tp + fn).sum().clamp(min=1)
        iou = torch.nan_to_num(self.iou(), nan=0.0)
        return float((freq * iou).sum())

    def accuracy(self) -> float:
        tp, _, fn = self._tp_fp_fn()
        total = (tp + fn).sum()
        return float(tp.sum() / total) if total > 0 else 0.0

    def summary(self, mode: str = "all", classes: Optional[Sequence[int]] = None) -> Dict:
        """JSON-ready numbers: ``{"miou", "miou_mode", "scored_classes", "fwiou",
        "acc", "iou": {class: ..}}``; ``scored_classes`` is None when every
        class is scored, else the names of the classes the mean runs over."""
        iou = self.iou()
        return {
            "miou": self.miou(mode, classes),
            "miou_mode": mode,
            "scored_classes": None if classes is None else [self.class_names[c] for c in classes],
            "fwiou": self.fwiou(),
            "acc": self.accuracy(),
            "iou": {name: (None if torch.isnan(v) else float(v))
                    for name, v in zip(self.class_names, iou)},
        }

    def table(self, title: str = "", mode: str = "all", classes: Optional[Sequence[int]] = None,
              reference: Optional[str] = None) -> str:
        """A console table: a header ``title: <mIoU definition> (reference)``,
        one row per class, then mIoU / fwIoU / accuracy. A class absent from
        ground truth and prediction says how it counts in the mean (``0.00
        (absent: counts 0)`` under ``"all"``, ``n/a (absent: not counted)``
        under ``"present"``)."""
        iou = self.iou()
        scored = set(range(self.num_classes) if classes is None else classes)
        width = max([len(n) for n in self.class_names] + [8])
        definition = miou_definition(mode, self.num_classes, classes, reference)
        lines = [f"{title}: {definition}" if title else definition]
        lines.append(f"{'class'.ljust(width)} {'IoU':>6}")
        lines.append("-" * (width + 9))
        for c, (name, v) in enumerate(zip(self.class_names, iou)):
            if c not in scored:
                val, note = ("   n/a" if torch.isnan(v) else f"{100 * float(v):6.2f}"), "  (not scored)"
            elif torch.isnan(v):
                val, note = ("  0.00", "  (absent: counts 0)") if mode == "all" else \
                    ("   n/a", "  (absent: not counted)")
            else:
                val, note = f"{100 * float(v):6.2f}", ""
            lines.append(f"{name.ljust(width)} {val}{note}")
        lines.append("-" * (width + 9))
        lines.append(f"{'mIoU'.ljust(width)} {100 * self.miou(mode, classes):6.2f}")
        lines.append(f"{'fwIoU'.ljust(width)} {100 * self.fwiou():6.2f}")
        lines.append(f"{'accuracy'.ljust(width)} {100 * self.accuracy():6.2f}")
        return "\n".join(lines)


def miou_definition(mode: str, num_classes: int, classes: Optional[Sequence[int]] = None,
                    reference: Optional[str] = None) -> str:
    """What the mean runs over, in words: ``mIoU over all 19 classes, absent
    classes count 0 (SemanticKITTI)`` for ``"all"``, ``mIoU over the classes
    present in ground truth or prediction (nuScenes LidarSegEval)`` for
    ``"present"``; ``classes`` (a remapped dataset's reachable ones) and
    ``reference`` (the official evaluator it follows) are named when given."""
    subset = None if classes is None else f"the {len(classes)} of {num_classes} classes the label map reaches"
    if mode == "all":
        text = f"mIoU over {subset or f'all {num_classes} classes'}, absent classes count 0"
    elif mode == "present":
        text = "mIoU over the classes present in ground truth or prediction" + \
            (f", of {subset}" if subset else "")
    elif mode == "gt":
        text = "mIoU over the classes present in ground truth" + (f", of {subset}" if subset else "")
    else:
        text = f"mIoU ({mode})" + (f" over {subset}" if subset else "")
    return f"{text} ({reference})" if reference else text
