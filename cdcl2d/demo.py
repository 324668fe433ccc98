"""``cdcl demo --task 2d``: generated street scenes, then the study
``configs/studies/demo_images.yaml`` (single-dataset baselines and CDCL on
Cityscapes + BDD100K + CamVid) through :func:`common.study.run_demo`.
"""
from __future__ import annotations

import argparse
import os

DEMO_DATASETS = ("cityscapes", "bdd100k", "camvid")
STUDY = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs", "studies",
                     "demo_images.yaml")


def _ensure_data(data_root: str, num_train: int, num_val: int) -> None:
    from .synth import write_dataset

    for kind in DEMO_DATASETS:
        if not os.path.isdir(os.path.join(data_root, kind)):
            print(f"generating synthetic {kind} under {data_root} ...", flush=True)
            write_dataset(kind, data_root, num_train, num_val, seed=0)


def run_demo(args: argparse.Namespace) -> int:
    from common.study import run_demo as run_study_demo

    quick = bool(getattr(args, "quick", False))
    out = os.path.join(os.path.abspath(getattr(args, "out", None) or "demo_out"), "images_quick" if quick else "images")
    # the configs read data/synth/images/* relative to the working directory: where the data is
    _ensure_data(os.path.join("data", "synth", "images"), num_train=12 if quick else 40, num_val=4 if quick else 10)
    run_study_demo(STUDY, out, ["iterations=10"] if quick else [], getattr(args, "seeds", None),
                   getattr(args, "jobs", 1))
    return 0
