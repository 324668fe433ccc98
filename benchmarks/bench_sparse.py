"""Sparse U-Net on the CPU: voxelisation time and one training step.

A synthetic LiDAR-like scan (~30k points: a ground disc whose density falls
with range like a spinning sensor's, plus walls and poles) is voxelised at
0.2 m and pushed through the default SparseUNet (channels 16-32-64-128,
19 classes) with spconv's Native algorithm (the only one on the CPU).

    python benchmarks/bench_sparse.py [--points 30000] [--steps 5]
"""
from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import torch
from torch import nn

with warnings.catch_warnings():  # spconv uses deprecated torch.cuda.amp decorators
    warnings.simplefilter("ignore")
    from cdcl3d.models.sparse_unet import SparseUNet

from cdcl3d.voxel import collate_sparse, voxelize
from timing import alternate, machine_line, med


def synthetic_scan(n: int, seed: int = 0) -> np.ndarray:
    """``(n, 4)`` float32 x, y, z, intensity."""
    g = np.random.default_rng(seed)
    n_ground, n_wall = int(n * 0.6), int(n * 0.3)
    n_pole = n - n_ground - n_wall
    r = g.uniform(2.0, 45.0, n_ground)  # uniform range: density ~ 1/r like a sensor
    a = g.uniform(-np.pi, np.pi, n_ground)
    ground = np.c_[r * np.cos(a), r * np.sin(a), g.normal(-1.7, 0.03, n_ground)]
    side = g.choice([-8.0, 8.0], n_wall)
    wall = np.c_[g.uniform(-40, 40, n_wall), side + g.normal(0, 0.05, n_wall),
                 g.uniform(-1.7, 4.0, n_wall)]
    centres = g.uniform(-30, 30, (20, 2))[g.integers(0, 20, n_pole)]
    pole = np.c_[centres + g.normal(0, 0.1, (n_pole, 2)), g.uniform(-1.7, 3.0, n_pole)]
    xyz = np.concatenate([ground, wall, pole])
    return np.c_[xyz, g.uniform(0, 1, n)].astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--points", type=int, default=30000)
    parser.add_argument("--voxel", type=float, default=0.2)
    parser.add_argument("--steps", type=int, default=5)
    # One thread by default: on a small shared machine OpenMP threads that
    # spin-wait on busy cores make small ops 10-50x slower and timings erratic.
    parser.add_argument("--threads", type=int, default=1, help="torch threads (0: leave as is)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    pts = synthetic_scan(args.points)
    labels = np.random.default_rng(1).integers(0, 19, args.points).astype(np.int64)

    print(machine_line())
    vox_times = alternate({"voxelize": lambda: voxelize(pts, args.voxel)}, 10)["voxelize"]
    vox_s = med(vox_times)
    vox = voxelize(pts, args.voxel)
    num_voxels = vox["coords"].shape[0]
    print(f"points {args.points}  voxels {num_voxels} at {args.voxel} m  grid {vox['spatial_shape']}")
    print(f"voxelize: {vox_s * 1e3:.1f} ms median of 10 (min {min(vox_times) * 1e3:.1f}; "
          f"{num_voxels / vox_s / 1e6:.2f} M voxels/s, {args.points / vox_s / 1e6:.2f} M points/s)")

    batch = collate_sparse([dict(points=pts, labels=labels, id="bench")], voxel_size=args.voxel)
    model = SparseUNet(in_channels=4, num_classes=19)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    print(f"SparseUNet: {sum(p.numel() for p in model.parameters()) / 1e6:.2f} M parameters, "
          f"torch threads {torch.get_num_threads()}")

    def step() -> float:
        loss = nn.functional.cross_entropy(model(batch), batch["labels"], ignore_index=255)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return loss.item()

    step()  # warm-up (spconv kernel set-up)
    times = []
    for _ in range(args.steps):
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    step_s = float(np.median(times))
    model.eval()
    with torch.no_grad():
        infer_times = alternate({"inference": lambda: model(batch)}, args.steps)["inference"]
    infer_s = med(infer_times)
    print(f"train step (forward + backward + SGD), median of {args.steps}: {step_s:.3f} s "
          f"(min {min(times):.3f}, max {max(times):.3f})")
    print(f"inference forward, median of {args.steps}: {infer_s:.3f} s (min {min(infer_times):.3f})")
    print(f"RESULT step_s={step_s:.3f} step_min_s={min(times):.3f} voxelize_ms={vox_s * 1e3:.1f} "
          f"voxelize_min_ms={min(vox_times) * 1e3:.1f} voxels_per_s={num_voxels / vox_s:.0f} "
          f"num_voxels={num_voxels} infer_s={infer_s:.3f} infer_min_s={min(infer_times):.3f}")


if __name__ == "__main__":
    main()
