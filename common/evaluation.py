"""Per-dataset evaluation, used during training and by ``cdcl eval``."""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from .build import build_dataset, build_model, get_task, num_classes_of
from .checkpoint import CheckpointError, check_state_dict, load_checkpoint, unwrap
from .config import Config
from .data import DropSkipped, SkipTracker, bad_sample_action
from .dataset_specific import route
from .errors import DataError
from .progress import track
from .metrics import ConfusionMatrix
from .task import Task

logger = logging.getLogger(__name__)


def build_eval_loader(cfg: Config, name: str, dataset, task: Task) -> SkipTracker:
    """The evaluation batches of ``dataset``: a loader that leaves samples
    skipped as bad (``on_bad_sample: skip``) out of its batches and counts
    them (``.skipped``) and the samples it yields (``.samples``)."""
    if cfg.eval.max_samples is not None and len(dataset) > cfg.eval.max_samples:
        dataset_view = Subset(dataset, list(range(cfg.eval.max_samples)))
    else:
        dataset_view = dataset
    return SkipTracker(DataLoader(dataset_view, batch_size=cfg.eval.batch_size, shuffle=False,
                                  num_workers=cfg.eval.num_workers,
                                  collate_fn=DropSkipped(task.collate_fn(name, cfg.data[name].as_dict())),
                                  generator=torch.Generator().manual_seed(0)))


def eval_options(cfg: Config, name: str) -> Dict[str, Any]:
    """Task evaluation options: ``eval.options`` then ``data.<name>.eval`` overrides."""
    return {**cfg.eval.options, **cfg.data[name].eval}


@torch.no_grad()
def evaluate_model(cfg: Config, model: nn.Module, device: torch.device,
                   datasets: Optional[Dict[str, Any]] = None, task: Optional[Task] = None,
                   split: Optional[str] = None, only: Optional[List[str]] = None) -> Dict[str, Dict[str, Any]]:
    """Evaluate every dataset of ``cfg`` on its validation split.

    Returns ``{dataset: {"miou", "acc", "fwiou", "iou": {class: iou},
    "variants": {variant: summary}, "samples": int, "skipped": [id, ...],
    "tables": str}}``; the headline numbers are those of the task's first
    evaluation variant. Under ``on_bad_sample: skip`` a bad sample is left
    out, never replaced, and listed in ``skipped``; ``samples`` counts those
    scored. Nothing left to score is a :class:`DataError`.
    """
    task = task or get_task(cfg)
    model = unwrap(model)
    was_training = model.training
    model.eval()
    results: Dict[str, Dict[str, Any]] = {}
    for name in cfg.eval_names:
        if only and name not in only:
            continue
        ds = (datasets or {}).get(name)
        if ds is None:
            ds = build_dataset(cfg, name, split or cfg.data[name].val_split, False, task)
        loader = build_eval_loader(cfg, name, ds, task)
        batches = track(loader, desc=f"eval {name}")  # a bar at a terminal, else a log line every 10 %
        with route(model, cfg.branch_of(name)), bad_sample_action(ds, "drop"):
            cms: Dict[str, ConfusionMatrix] = task.evaluate(model, batches, name, ds, device,
                                                           eval_options(cfg, name))
        skipped = [sid for sid, _ in loader.skipped]
        if loader.samples == 0:
            raise DataError(f"{name}: nothing to evaluate: all {len(skipped)} skipped as bad data "
                            f"(on_bad_sample: skip; see the warnings above)" if skipped else
                            f"{name}: nothing to evaluate (no samples)")
        mode = task.miou_mode(name, cfg.data[name].as_dict())
        scored = getattr(ds, "scored_classes", None)  # a remapped dataset's reachable classes
        variants = {k: cm.summary(mode, scored) for k, cm in cms.items()}
        headline = next(iter(variants))
        res = dict(variants[headline])
        res["variant"] = headline
        res["variants"] = variants
        res["samples"], res["skipped"] = loader.samples, skipped
        res["tables"] = "\n\n".join(cm.table(f"[{name}] {k}", mode, scored) for k, cm in cms.items())
        results[name] = res
    if was_training:
        model.train()
    return results


def results_json(results: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    return {n: {k: v for k, v in r.items() if k != "tables"} for n, r in results.items()}


def summary_table(results: Dict[str, Dict[str, Any]]) -> str:
    lines = [f"{'dataset':<16} {'variant':<12} {'mIoU':>7} {'acc':>7} {'fwIoU':>7}"]
    for name, r in results.items():
        for var, s in r["variants"].items():
            lines.append(f"{name:<16} {var:<12} {100 * s['miou']:7.2f} {100 * s['acc']:7.2f} "
                         f"{100 * s['fwiou']:7.2f}")
    for name, r in results.items():
        skipped = r.get("skipped") or []
        if skipped:
            shown = ", ".join(str(s) for s in skipped[:10]) + (" ..." if len(skipped) > 10 else "")
            lines.append(f"{name}: skipped {len(skipped)} bad sample(s), not scored "
                         f"(on_bad_sample: skip; {r.get('samples')} scored): {shown}")
    return "\n".join(lines)


def load_model_for_eval(cfg: Config, checkpoint: str, device: torch.device,
                        task: Optional[Task] = None) -> nn.Module:
    """Build the model of ``cfg`` and load a checkpoint's weights into it; a
    checkpoint of another config raises :class:`CheckpointError` naming what
    differs (datasets, head sizes, keys and shapes)."""
    task = task or get_task(cfg)
    state = load_checkpoint(checkpoint, map_location="cpu")
    num_classes = state.get("num_classes")
    if num_classes is None:
        num_classes = {n: num_classes_of(build_dataset(cfg, n, cfg.data[n].val_split, False, task))
                       for n in cfg.names}
    else:
        check_checkpoint_datasets(cfg, num_classes, checkpoint, task)
    model = build_model(cfg, dict(num_classes), task)
    check_state_dict(model, state["model"], checkpoint, hint=_config_differences(cfg, state))
    model.load_state_dict(state["model"])
    return model.to(device).eval()


def check_checkpoint_datasets(cfg: Config, num_classes: Dict[str, int], checkpoint: str,
                              task: Optional[Task] = None) -> None:
    """A checkpoint's datasets and head sizes (``num_classes``) against ``cfg``'s
    trained datasets and the class counts known without reading files."""
    task = task or get_task(cfg)
    if set(num_classes) != set(cfg.names):
        lacking = [n for n in cfg.names if n not in num_classes]
        extra = [n for n in num_classes if n not in cfg.names]
        detail = ", ".join(p for p in (f"not in the checkpoint: {lacking}" if lacking else "",
                                       f"not in the config: {extra}" if extra else "") if p)
        raise CheckpointError(f"checkpoint {checkpoint} was trained on datasets {list(num_classes)}, "
                              f"the config {cfg.source} has {cfg.names} ({detail})")
    differ = []
    for n in cfg.names:
        if cfg.strategy.name == "label_remap" and n != cfg.names[0]:
            continue  # trained in the first dataset's classes
        k = cfg.data[n].num_classes or task.num_classes(n, cfg.data[n].as_dict())
        if k and int(k) != int(num_classes[n]):
            differ.append(f"{n}: {num_classes[n]} classes in the checkpoint, {k} in the config")
    if differ:
        raise CheckpointError(f"checkpoint {checkpoint} does not fit the config {cfg.source}: head sizes differ "
                              f"({'; '.join(differ)})")


def _config_differences(cfg: Config, state: Dict[str, Any]) -> str:
    """``model.width: 0.25 in the checkpoint, 0.125 in the config`` ... from the
    config stored in the checkpoint (empty when it has none or they agree)."""
    from .config import safe_load

    try:
        theirs = safe_load(state.get("config") or "") or {}
    except Exception:  # an old or odd checkpoint: no hint, the key lists say enough
        return ""
    if not isinstance(theirs, dict):
        return ""
    ours = cfg.to_dict()
    diffs = []
    for section in ("model", "strategy"):
        a, b = theirs.get(section) or {}, ours.get(section) or {}
        if not isinstance(a, dict):
            continue
        for k in sorted(set(a) | set(b), key=str):
            if a.get(k) != b.get(k) and k != "label_map":
                diffs.append(f"{section}.{k}: {a.get(k)!r} in the checkpoint, {b.get(k)!r} in the config")
    return ", ".join(diffs[:4])


def evaluate_checkpoint(cfg: Config, checkpoint: str, out: Optional[str] = None,
                        device: Optional[torch.device] = None, split: Optional[str] = None,
                        verbose: bool = True, only: Optional[List[str]] = None) -> Dict[str, Any]:
    """``cdcl eval``: tables on the console and (optionally) a JSON file."""
    from .dist import select_device

    from .config import ConfigError
    from .utils import check_writable

    if only:
        unknown = [n for n in only if n not in cfg.data]
        if unknown:
            raise ConfigError(f"unknown dataset(s) {unknown}; the config {cfg.source} has {cfg.eval_names}")
    if out:
        check_writable(out, "--out")  # before the work, not after it
    device = device or select_device(cfg.train.device)
    task = get_task(cfg)
    model = load_model_for_eval(cfg, checkpoint, device, task)
    results = evaluate_model(cfg, model, device, task=task, split=split, only=only)
    if verbose:
        for r in results.values():
            print(r["tables"], end="\n\n")
        print(summary_table(results))
    data = results_json(results)
    if out:
        from .utils import atomic_write_bytes
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        atomic_write_bytes(out, json.dumps(data, indent=2).encode("utf-8"))
    return data
