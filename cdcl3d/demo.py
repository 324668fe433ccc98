"""``cdcl demo``: generated LiDAR data, then the study
``configs/studies/demo_lidar.yaml`` (single-dataset baselines and CDCL, paired
seeds) through :func:`common.study.run_demo`, then one rendered scan per dataset.

Runs on 2 CPU cores in minutes with the CPU preset of the generated-data
configs (SalsaNext width 0.25, range images 64x256 / 32x256). Every method
sees the same number of iterations of each dataset and the same seeds.
"""
from __future__ import annotations

import os
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUDY = os.path.join(REPO, "configs", "studies", "demo_lidar.yaml")


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
    from common.study import run_demo as run_study_demo

    quick = bool(getattr(args, "quick", False))
    out = os.path.join(os.path.abspath(args.out), "lidar_quick" if quick else "lidar")
    # the configs read data/synth/lidar/* relative to the working directory: where the data is
    _ensure_data(os.path.abspath(os.path.join("data", "synth", "lidar")), scans=24 if quick else 60)
    report = run_study_demo(STUDY, out, ["iterations=30"] if quick else [], args.seeds, getattr(args, "jobs", 1))
    seed = report["study"]["seeds"][-1]
    try:
        render_examples(load_config(os.path.join(out, "configs", "cdcl", f"seed{seed}.yaml")),
                        os.path.join(out, "runs", "cdcl", f"seed{seed}"), out)
    except Exception as exc:  # rendering is a bonus, never a failure of the demo
        print(f"[demo] rendering skipped: {type(exc).__name__}: {exc}")
    return 0


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
