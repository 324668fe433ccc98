"""Transfer to an unseen domain, measured: the numbers behind a study's ``unseen:`` table.

:func:`evaluate_transfer` takes a trained checkpoint and an unseen dataset NEW
of its config (``data.NEW.branch``) and measures, without writing a checkpoint:

1. the branches that can serve NEW (:func:`common.adapt.candidate_branches`:
   a head of NEW's classes, or one ``data.NEW.label_map_from`` maps onto
   them), each scored on NEW's unlabelled scans by both measures of ``cdcl
   adapt --branch auto`` (BN-statistics distance, prediction entropy): the
   branch each measure picks;
2. every such branch evaluated on NEW's labelled validation split directly
   (no adaptation): which branch is the best one, by the mIoU over the
   classes every candidate reaches (their mIoUs are over different classes
   when their label maps reach different ones; ties are all best);
3. the branch ``auto`` picks (smallest BN distance), evaluated after each
   adaptation asked for: ``none``, ``precise-bn``, ``tent``.

Each network is a collapsed copy of one branch (:func:`common.dataset_specific.collapse`)
read in NEW's classes through its label map (:class:`common.adapt.MappedOutput`),
so every strategy is measured the same way, shared-BN ones included (the
copy's one BatchNorm is adapted). The adaptation is ``cdcl adapt``'s own
(:func:`common.adapt.adapt_network` on the same seeded batches), so a cell
here is what ``cdcl adapt`` then ``cdcl eval`` give for a strategy with
dataset-specific BatchNorm.

``python -m common.transfer CONFIG [key=value ...] --checkpoint C --dataset NEW
--out R.json [--adapt none precise-bn tent] [--batches N] [--steps N] [--lr LR]``
is how ``cdcl study`` runs one (a subprocess per run and domain, resumable:
the JSON holds :func:`transfer_key` of what it was computed from).
"""
from __future__ import annotations

import argparse
import hashlib
import math
import json
import logging
import os
import sys
import time
from typing import Any, Dict, List, Optional, Sequence

import torch

from .adapt import TENT_LR, TENT_STEPS

#: what a cell of the table may be: the picked branch as it is, or adapted
ADAPTATIONS = ("none", "precise-bn", "tent")

logger = logging.getLogger(__name__)


def transfer_key(config: str, checkpoint: str, adapt: Sequence[str], batches: int, steps: int,
                 lr: float) -> Dict[str, Any]:
    """What a result was computed from: the config file's bytes (its hash),
    the checkpoint's size and time, the adaptation settings."""
    with open(config, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()
    st = os.stat(checkpoint)
    return {"config_sha256": digest, "checkpoint": {"size": st.st_size, "mtime_ns": st.st_mtime_ns},
            "adapt": list(adapt), "batches": int(batches), "steps": int(steps), "lr": float(lr)}


def miou_over(res: Dict[str, Any], classes: Sequence[str]) -> Optional[float]:
    """The mean IoU of ``res`` (one dataset of :func:`common.evaluation.evaluate_model`)
    over ``classes``, by its own definition (``all``: an absent class counts 0;
    ``present``: it is left out)."""
    vals = [res["iou"].get(c) for c in classes]
    if res.get("miou_mode") == "all":
        vals = [0.0 if v is None else v for v in vals]
    vals = [v for v in vals if v is not None]
    return sum(vals) / len(vals) if vals else None


def _scored(res: Dict[str, Any]) -> List[str]:
    return list(res.get("scored_classes") or res.get("class_names") or list(res["iou"]))


def evaluate_transfer(cfg, checkpoint: str, new: str, adapt: Sequence[str] = ADAPTATIONS, batches: int = 200,
                      steps: int = TENT_STEPS, lr: float = TENT_LR,
                      device: Optional[torch.device] = None) -> Dict[str, Any]:
    """Score, pick, evaluate and adapt on the unseen dataset ``new`` of ``cfg``
    (see the module's docstring); returns JSON-ready numbers (mIoU as fractions)."""
    from .adapt import (MappedOutput, adapt_network, candidate_branches, check_label_map, pick_branch,
                        score_branches, unlabelled_batches)
    from .build import build_dataset, get_task, num_classes_of
    from .checkpoint import load_checkpoint
    from .config import ConfigError
    from .dataset_specific import collapse
    from .dist import select_device
    from .evaluation import evaluate_model, load_model_for_eval

    if new not in cfg.data or new in cfg.names:
        raise ConfigError(f"{cfg.source}: {new!r} is no unseen dataset (one declared with 'data.{new}.branch'); "
                          f"unseen: {[n for n in cfg.eval_names if n not in cfg.names]}")
    bad = [a for a in adapt if a not in ADAPTATIONS]
    if bad:
        raise ConfigError(f"unknown adaptation(s) {bad}; choose from {list(ADAPTATIONS)}")
    task = get_task(cfg)
    device = device or select_device(cfg.train.device)
    model = load_model_for_eval(cfg, checkpoint, device, task)
    entry = cfg.data[new]
    unlabelled = build_dataset(cfg, new, entry.train_split, False, task)
    if len(unlabelled) == 0:
        raise ConfigError(f"data.{new}: split {entry.train_split!r} has no scans to adapt on")
    val = build_dataset(cfg, new, entry.val_split, False, task)
    k_new = num_classes_of(val)
    heads = dict(load_checkpoint(checkpoint).get("num_classes") or {})
    maps = entry.label_map_from or {}
    fits, others = candidate_branches(model, cfg.names, heads, maps, k_new)
    for b in fits:
        if b in maps:
            check_label_map(maps[b], b, int(heads.get(b, k_new)), new, k_new)
    if not fits:
        raise ConfigError(f"{cfg.source}: no trained branch can serve {new}'s {k_new} classes ({others}); map one "
                          f"with 'data.{new}.label_map_from'")
    make = unlabelled_batches(unlabelled, entry.batch_size, task.collate_fn(new, entry.as_dict()), cfg.train.seed,
                              batches, device, desc=f"scans of {new}")

    def network(branch: str) -> torch.nn.Module:  # a copy of one branch, read in NEW's classes
        plain = collapse(model, branch)
        return MappedOutput(plain, maps[branch], k_new) if branch in maps else plain

    def score(net: torch.nn.Module, what: str) -> Dict[str, Any]:
        res = evaluate_model(cfg, net, device, datasets={new: val}, task=task, only=[new])[new]
        print(f"[{what}]\n{res['table']}", flush=True)
        return {"miou": res["miou"], "miou_mode": res.get("miou_mode"), "scored_classes": _scored(res),
                "iou": res["iou"], "samples": res.get("samples")}

    seconds: Dict[str, float] = {}
    t0 = time.time()
    scores = score_branches(model, make, task.forward, fits)
    pick = {"bn_distance": pick_branch(scores), "entropy": min(fits, key=lambda b: scores[b]["entropy"])}
    seconds["scores"] = time.time() - t0
    t0 = time.time()
    direct = {b: score(network(b), f"branch {b}, direct") for b in fits}
    common = [c for c in direct[fits[0]]["scored_classes"] if all(c in direct[b]["scored_classes"] for b in fits)]
    for b in fits:
        direct[b]["miou_common"] = miou_over(direct[b], common)
    top = max(-1.0 if direct[b]["miou_common"] is None else direct[b]["miou_common"] for b in fits)
    best = [b for b in fits if direct[b]["miou_common"] is not None and direct[b]["miou_common"] >= top - 1e-12]
    seconds["direct"] = time.time() - t0
    auto = pick["bn_distance"]
    adapted: Dict[str, Any] = {}
    for a in adapt:
        t0 = time.time()
        if a == "none":
            adapted[a] = dict(direct[auto], branch=auto)
            continue
        net = network(auto)
        info = adapt_network(net, make, task.forward, a, batches, steps, lr)
        info["scans"] = min(len(unlabelled), info["batches"] * entry.batch_size)
        adapted[a] = dict(score(net, f"branch {auto}, {a}"), branch=auto, **info)
        seconds[a] = time.time() - t0
    return {"dataset": new, "classes": k_new, "candidates": fits, "other_branches": others,
            "label_maps": sorted(b for b in fits if b in maps), "scores": scores, "pick": pick,
            "best": best or fits[:1], "best_over": common, "direct": direct, "adapted": adapted,
            "unlabelled_split": entry.train_split, "unlabelled_scans": len(unlabelled),
            "val_split": entry.val_split, "seconds": {k: round(v, 1) for k, v in seconds.items()}}


def format_transfer(res: Dict[str, Any]) -> str:
    """A few lines: each branch's two scores and direct mIoU, the picks, each adaptation."""
    lines = [f"{'branch':<16} {'BN distance':>12} {'entropy':>8} {'mIoU':>7} {'common':>7}  classes"]
    for b in res["candidates"]:
        s, d = res["scores"][b], res["direct"][b]
        common = "n/a" if d["miou_common"] is None else f"{100 * d['miou_common']:.2f}"
        lines.append(f"{b:<16} {s['bn_distance']:>12.4f} {s['entropy']:>8.4f} {100 * d['miou']:>7.2f} {common:>7}  "
                     f"{len(d['scored_classes'])}/{res['classes']}")
    for b, why in res["other_branches"].items():
        lines.append(f"{b:<16} (cannot serve {res['dataset']}: {why})")
    lines.append(f"auto (BN distance) picks {res['pick']['bn_distance']!r}, the entropy {res['pick']['entropy']!r}; "
                 f"best by mIoU over the {len(res['best_over'])} classes all reach: {', '.join(res['best'])}")
    for a, r in res["adapted"].items():
        lines.append(f"{a:<11} branch {r['branch']!r}: mIoU {100 * r['miou']:.2f}")
    return "\n".join(lines)


def _no_nan(x: Any) -> Any:
    """NaN (an empty mean) as null: the JSON stays strict."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _no_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_no_nan(v) for v in x]
    return x


def main(argv: Optional[Sequence[str]] = None) -> int:
    from .config import load_config
    from .errors import UserError
    from .registry import load_plugins
    from .utils import atomic_write_bytes

    p = argparse.ArgumentParser(prog="python -m common.transfer", description=__doc__.split("\n\n")[0])
    p.add_argument("config", help="a config that declares the unseen dataset (data.NEW.branch)")
    p.add_argument("overrides", nargs="*", metavar="key=value")
    p.add_argument("--checkpoint", required=True)
    p.add_argument("--dataset", required=True, help="the unseen dataset")
    p.add_argument("--adapt", nargs="+", default=list(ADAPTATIONS), help="of %(default)s")
    p.add_argument("--batches", type=int, default=200, help="unlabelled batches scored and adapted on")
    p.add_argument("--steps", type=int, default=TENT_STEPS, help="TENT steps")
    p.add_argument("--lr", type=float, default=TENT_LR, help="TENT learning rate")
    p.add_argument("--out", required=True, help="the JSON to write")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    load_plugins()
    try:
        cfg = load_config(args.config, args.overrides)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        key = transfer_key(args.config, args.checkpoint, args.adapt, args.batches, args.steps, args.lr)
        t0 = time.time()
        res = evaluate_transfer(cfg, args.checkpoint, args.dataset, args.adapt, args.batches, args.steps, args.lr)
    except (UserError, FileNotFoundError) as exc:
        print(f"unseen {args.dataset}: error: {exc}", file=sys.stderr)
        return 2
    res = _no_nan(dict(res, key=key, wall_s=round(time.time() - t0, 1)))
    print(format_transfer(res), flush=True)
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    atomic_write_bytes(args.out, json.dumps(res, indent=2, allow_nan=False).encode("utf-8"))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
