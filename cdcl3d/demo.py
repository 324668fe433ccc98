"""``cdcl demo``: generated LiDAR data → single-dataset baselines and CDCL → one table.

Runs on 2 CPU cores in minutes with the CPU preset of the generated-data
configs (SalsaNext width 0.25, range images 64x512 / 32x512). Every method
sees the same number of iterations of each dataset and the same seeds.
"""
from __future__ import annotations

import json
import os
import statistics
import time
from typing import Any, Dict, List

CONFIG_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "3d")
RUNS = [  # (method, dataset evaluated, config)
    ("single", "semantickitti", "synth_single_semantickitti.yaml"),
    ("single", "nuscenes", "synth_single_nuscenes.yaml"),
    ("cdcl", None, "synth_cdcl.yaml"),
]


def _ensure_data(root: str, scans: int, seed: int = 0) -> None:
    kitti = os.path.join(root, "semantickitti", "sequences")
    nusc = os.path.join(root, "nuscenes", "v1.0-mini", "lidarseg.json")
    if os.path.isdir(kitti) and os.path.isfile(nusc):
        print(f"[demo] using generated data in {root}")
        return
    from .synth import generate_lidar

    print(f"[demo] generating LiDAR data into {root} ({scans} scans per dataset) ...")
    t0 = time.time()
    # the demo trains on two datasets and predicts no test split
    generate_lidar(root, seed=seed, scans=scans, datasets=("semantickitti", "nuscenes"), nuscenes_test_scans=0)
    print(f"[demo] generated in {time.time() - t0:.0f} s")


def run_demo(args) -> int:
    from common.config import load_config
    from common.trainer import train

    out = os.path.abspath(args.out)
    os.makedirs(out, exist_ok=True)
    seeds: List[int] = list(args.seeds) if args.seeds else [0, 1, 2]
    quick = bool(getattr(args, "quick", False))
    iterations = 30 if quick else 150
    data_root = os.path.abspath(os.path.join("data", "synth", "lidar"))
    _ensure_data(data_root, scans=24 if quick else 60)
    preset = ("CPU preset: SalsaNext width 0.25, range images 64x256 (KITTI-like) and 32x256 "
              f"(nuScenes-like), {iterations} iterations per dataset, batch 2, seeds {seeds}")
    print(f"[demo] {preset}")
    # the configs read data/synth/lidar/* relative to the working directory: where the data is
    overrides = [f"train.iterations={iterations}", "train.progress=false", "train.tb_images=false"]
    scores: Dict[str, Dict[str, List[float]]] = {"semantickitti": {}, "nuscenes": {}}
    t0 = time.time()
    last_cdcl = None
    for seed in seeds:
        for method, dataset, config in RUNS:
            path = os.path.join(CONFIG_DIR, config)
            cfg = load_config(path, overrides + [f"train.seed={seed}"])
            tag = f"{method}_{dataset or 'joint'}_seed{seed}"
            work = os.path.join(out, "runs", tag)
            t1 = time.time()
            res = train(cfg, work, overwrite=True)  # a demo run again replaces its runs
            for name, r in res.items():
                scores[name].setdefault(method, []).append(r["miou"])
            print(f"[demo] {tag}: " + ", ".join(f"{n} mIoU {100 * r['miou']:.1f}" for n, r in res.items())
                  + f" ({time.time() - t1:.0f} s)")
            if method == "cdcl":
                last_cdcl = (cfg, work)
    results: Dict[str, Any] = {}
    for name, methods in scores.items():
        results[name] = {m: {"miou_mean": statistics.mean(v),
                             "miou_std": statistics.pstdev(v) if len(v) > 1 else 0.0,
                             "seeds": v} for m, v in methods.items()}
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    table = format_table(results, seeds, preset)
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write(table + "\n")
    print("\n" + table)
    print(f"\n[demo] total training/eval time {time.time() - t0:.0f} s; wrote {out}/results.md, results.json")
    if last_cdcl is not None:
        try:
            render_examples(*last_cdcl, out)
        except Exception as exc:  # rendering is a bonus, never a failure of the demo
            print(f"[demo] rendering skipped: {type(exc).__name__}: {exc}")
    return 0


def format_table(results: Dict[str, Any], seeds: List[int], preset: str) -> str:
    lines = ["| dataset | single mIoU (%) | CDCL mIoU (%) | CDCL - single |",
             "|---|---|---|---|"]
    for name, m in results.items():
        s, c = m.get("single"), m.get("cdcl")
        if not s or not c:
            continue
        delta = 100 * (c["miou_mean"] - s["miou_mean"])
        lines.append(f"| {name} | {100 * s['miou_mean']:.1f} ± {100 * s['miou_std']:.1f} | "
                     f"{100 * c['miou_mean']:.1f} ± {100 * c['miou_std']:.1f} | {delta:+.1f} |")
    lines.append("")
    lines.append(f"Mean ± std over seeds {seeds}; mIoU on points of the generated validation "
                 "split (SemanticKITTI: all 19 classes; nuScenes: classes present), KNN post-processing on.")
    lines.append(preset + ".")
    return "\n".join(lines)


def render_examples(cfg, work_dir: str, out: str) -> None:
    """One validation scan per dataset: ground truth and CDCL prediction side by side."""
    import torch

    from common.build import build_dataset, get_task
    from common.dataset_specific import route
    from common.evaluation import load_model_for_eval

    from .vis.colors import train_palette
    from .vis.render import render_gt_vs_pred

    task = get_task(cfg)
    model = load_model_for_eval(cfg, os.path.join(work_dir, "checkpoints", "latest.pth"), torch.device("cpu"))
    for name in cfg.names:
        ds = build_dataset(cfg, name, cfg.data[name].val_split, False, task)
        item = ds[0]
        batch = task.collate_fn(name, cfg.data[name].as_dict())([item])
        with torch.no_grad(), route(model, name):
            plain, _, _ = task.predict_points(model, batch, {})
        points = ds.base[0]["points"]
        path = os.path.join(out, f"render_{name}.png")
        render_gt_vs_pred(points, item["points_labels"].numpy(), plain[0].numpy(),
                          train_palette(cfg.data[name].type), ds.class_names, path)
        print(f"[demo] rendered {path}")
