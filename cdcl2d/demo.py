"""``cdcl demo --task 2d``: generated street scenes, single-dataset baselines
and CDCL on Cityscapes + BDD100K + CamVid, one table.

The configs are the ones in ``configs/2d/synth_*.yaml`` (kept in sync with
:func:`demo_config`, which builds the same thing in code so the demo also
runs from an installed package without the repository's configs).
"""
from __future__ import annotations

import argparse
import json
import os
from typing import Any, Dict, List, Sequence

DEMO_DATASETS = ("cityscapes", "bdd100k", "camvid")


def demo_config(strategy: str, names: Sequence[str], data_root: str, iterations: int = 200,
                seed: int = 0, crop: int = 80, batch_size: int = 2):
    """The small synthetic-image config (see ``configs/2d/_base_/synth.yaml``)."""
    from common.config import build_config

    d: Dict[str, Any] = {
        "task": "2d",
        "model": {"name": "pspnet", "backbone": "resnet18", "pretrained": None, "output_stride": 16,
                  "channels": 128, "aux_channels": 64, "dropout": 0.1, "aux_weight": 0.4},
        "data": {n: {"type": n, "root": os.path.join(data_root, n), "batch_size": batch_size,
                     "crop": [crop, crop], "scale": [0.75, 1.5]} for n in names},
        "strategy": {"name": strategy},
        "train": {"iterations": iterations, "lr": 0.01, "momentum": 0.9, "weight_decay": 1e-4,
                  "poly_power": 0.9, "warmup_iters": min(20, iterations // 5), "mode": "dat",
                  "seed": seed, "eval_every": 0, "checkpoint_every": iterations,
                  "log_every": max(1, iterations // 10), "progress": False, "tb_images": False,
                  "reference": names[0]},
        "eval": {"batch_size": 2, "options": {"mode": "whole"}},
    }
    return build_config(d, source=f"<demo {strategy}>")


def _ensure_data(data_root: str, num_train: int, num_val: int) -> None:
    from .synth import write_dataset

    for kind in DEMO_DATASETS:
        if not os.path.isdir(os.path.join(data_root, kind)):
            print(f"generating synthetic {kind} under {data_root} ...", flush=True)
            write_dataset(kind, data_root, num_train, num_val, seed=0)


def run_demo(args: argparse.Namespace) -> int:
    """Train the two runs per seed and print mIoU per dataset."""
    from common.trainer import train

    quick = bool(getattr(args, "quick", False))
    out = getattr(args, "out", None) or "demo_out"
    seeds: List[int] = list(getattr(args, "seeds", None) or [0])
    data_root = os.path.join("data", "synth", "images")
    _ensure_data(data_root, num_train=12 if quick else 40, num_val=4 if quick else 10)
    iterations = 10 if quick else 200

    rows: Dict[str, Dict[str, List[float]]] = {n: {"single": [], "cdcl": []} for n in DEMO_DATASETS}
    for seed in seeds:
        # a single-dataset baseline per dataset, same iterations and seed as CDCL
        runs = [("single", [n]) for n in DEMO_DATASETS] + [("cdcl", list(DEMO_DATASETS))]
        for strategy, names in runs:
            cfg = demo_config(strategy, names, data_root, iterations, seed)
            tag = names[0] if strategy == "single" else "joint"
            work_dir = os.path.join(out, "2d", f"{strategy}_{tag}_seed{seed}")
            print(f"== training {strategy} on {', '.join(names)} (seed {seed}, {iterations} iterations)"
                  f" -> {work_dir}", flush=True)
            results = train(cfg, work_dir, overwrite=True)  # a demo run again replaces its runs
            for n, r in results.items():
                rows[n][strategy].append(100.0 * float(r["miou"]))

    def fmt(values: List[float]) -> str:
        return f"{sum(values) / len(values):7.2f}" if values else "      -"

    lines = [f"{'dataset':<12} {'single':>7} {'CDCL':>7}   (mIoU %, mean over {len(seeds)} seed(s))"]
    for n in DEMO_DATASETS:
        lines.append(f"{n:<12} {fmt(rows[n]['single'])} {fmt(rows[n]['cdcl'])}")
    table = "\n".join(lines)
    print(table)
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "demo_2d.json"), "w", encoding="utf-8") as f:
        json.dump({"seeds": seeds, "iterations": iterations, "miou": rows}, f, indent=2)
    return 0
