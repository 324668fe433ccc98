"""Per-dataset evaluation, used during training and by ``cdcl eval``."""
from __future__ import annotations

import json
import logging
import os
from typing import Any, Dict, List, Optional

import torch
from torch import nn
from torch.utils.data import DataLoader, Subset

from .build import build_dataset, build_model, get_task, num_classes_of, strategy_of
from .checkpoint import CheckpointError, check_state_dict, load_checkpoint, unwrap
from .config import Config
from .data import DropSkipped, SkipTracker, bad_sample_action
from .dataset_specific import route
from .errors import DataError
from .progress import track
from .metrics import ConfusionMatrix, miou_definition
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
    "miou_mode", "miou_definition": str, "variant": headline, "variants":
    {variant: summary}, "class_names": [...], "confusion": [[int]] (the
    headline's, rows ground truth, columns prediction), "samples": int,
    "skipped": [id, ...], "table": str, "tables": str}}``; the headline
    numbers are those of the task's first evaluation variant (LiDAR: points
    after KNN where it is on; images: dense), ``table`` is its per-class
    table and ``tables`` adds every other variant's. Under ``on_bad_sample: skip`` a bad sample is left
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
        opts = eval_options(cfg, name)
        # an unseen dataset of other classes (data.<name>.label_map_from): scored through the map
        from .adapt import mapped_for_eval
        scoring, reach = mapped_for_eval(model, name, cfg.data[name].label_map_from, len(ds.class_names))
        with route(model, name), bad_sample_action(ds, "drop"):
            cms: Dict[str, ConfusionMatrix] = task.evaluate(scoring, batches, name, ds, device, opts)
        skipped = [sid for sid, _ in loader.skipped]
        if loader.samples == 0:
            raise DataError(f"{name}: nothing to evaluate: all {len(skipped)} skipped as bad data "
                            f"(on_bad_sample: skip; see the warnings above)" if skipped else
                            f"{name}: nothing to evaluate (no samples)")
        mode = task.miou_mode(name, cfg.data[name].as_dict())
        reference = task.miou_reference(name, cfg.data[name].as_dict()) or cfg.data[name].type
        scored = getattr(ds, "scored_classes", None)  # a remapped dataset's reachable classes
        if scored is None:  # ... or those data.<name>.label_map_from reaches
            scored = reach
        variants = {k: cm.summary(mode, scored) for k, cm in cms.items()}
        headline = next(iter(variants))
        res = dict(variants[headline])
        res["variant"] = headline
        res["variants"] = variants
        res["miou_definition"] = miou_definition(mode, cms[headline].num_classes, scored, reference)
        res["class_names"] = list(cms[headline].class_names)
        res["confusion"] = cms[headline].mat.cpu().tolist()  # [gt][pred] counts of the headline
        res["samples"], res["skipped"] = loader.samples, skipped
        notes = task.eval_notes(name, opts)  # e.g. the test-time augmentation used
        res.update(notes)
        tables = {k: _with_notes(cm.table(f"[{name}] {k}", mode, scored, reference), notes)
                  for k, cm in cms.items()}
        res["table"] = tables[headline]
        res["tables"] = "\n\n".join(tables.values())  # the headline first, then the other variants
        results[name] = res
    if was_training:
        model.train()
    return results


def _with_notes(table: str, notes: Dict[str, Any]) -> str:
    """``table`` with a ``key: value`` line per note under its title line."""
    title, _, rest = table.partition("\n")
    return "\n".join([title] + [f"{k}: {v}" for k, v in notes.items()] + [rest])


# kept out of the JSON: console text
_TEXT_KEYS = ("table", "tables")


def results_json(results: Dict[str, Dict[str, Any]]) -> Dict[str, Any]:
    """``results`` without the console tables: what ``results.json`` holds."""
    return {n: {k: v for k, v in r.items() if k not in _TEXT_KEYS} for n, r in results.items()}


def format_results(results: Dict[str, Dict[str, Any]], verbose: bool = False) -> str:
    """Each dataset's headline per-class table (``verbose``: every variant's
    too), then :func:`summary_table`."""
    tables = [r["tables"] if verbose else r["table"] for r in results.values()]
    return "\n\n".join(tables + [summary_table(results, verbose)])


def summary_table(results: Dict[str, Dict[str, Any]], verbose: bool = False) -> str:
    """One row per dataset: its headline variant (``verbose``: a row per
    variant), the mIoU mode and the samples left out as bad data."""
    lines = [f"{'dataset':<16} {'variant':<12} {'mIoU':>7} {'acc':>7} {'fwIoU':>7}  mIoU over"]
    for name, r in results.items():
        headline = r.get("variant") or next(iter(r["variants"]))
        shown = r["variants"] if verbose else {headline: r["variants"][headline]}
        for var, s in shown.items():
            mode = s.get("miou_mode", r.get("miou_mode"))
            over = {"all": "all classes", "present": "present classes"}.get(mode, mode)
            lines.append(f"{name:<16} {var:<12} {100 * s['miou']:7.2f} {100 * s['acc']:7.2f} "
                         f"{100 * s['fwiou']:7.2f}  {over}")
    others = sorted({v for r in results.values() for v in r["variants"] if v != r.get("variant")})
    if others and not verbose:
        lines.append(f"(also evaluated: {', '.join(others)}; shown with -v, and in the JSON)")
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
    # branches added by `cdcl adapt` (common.adapt): built as copies of their
    # source branch, then loaded; the config may still declare them unseen
    adapted = {n: a for n, a in (state.get("adapted") or {}).items() if n not in cfg.names}
    if num_classes is None:
        num_classes = {n: num_classes_of(build_dataset(cfg, n, cfg.data[n].val_split, False, task))
                       for n in cfg.names}
    else:
        num_classes = {n: k for n, k in num_classes.items() if n not in adapted}
        check_checkpoint_datasets(cfg, num_classes, checkpoint, task)
    model = build_model(cfg, dict(num_classes), task)
    if adapted:
        from .adapt import add_branch
        for n, a in adapted.items():
            add_branch(model, n, a["from"], a.get("label_map"), a.get("classes"))
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
        if not strategy_of(cfg).heads and n != cfg.names[0]:
            continue  # one head: trained in the first dataset's classes
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
                        verbose: bool = False, only: Optional[List[str]] = None) -> Dict[str, Any]:
    """``cdcl eval``: each dataset's headline table on the console (``verbose``:
    every evaluation variant's) and, with ``out``, the JSON there and beside it
    each dataset's confusion matrix (``.npy``, ``.png``) and IoU chart
    (:func:`common.report.save_eval_artifacts`)."""
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
    print(format_results(results, verbose))
    data = results_json(results)
    if out:
        from .report import save_eval_artifacts
        from .utils import atomic_write_bytes
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        atomic_write_bytes(out, json.dumps(data, indent=2).encode("utf-8"))
        save_eval_artifacts(data, os.path.dirname(os.path.abspath(out)), os.path.splitext(os.path.basename(out))[0])
    return data
