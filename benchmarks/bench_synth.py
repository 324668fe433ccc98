"""Throughput of the generated LiDAR world (``cdcl synth lidar``), per sensor.

Writes a full-resolution set (points scale 1.0) of each dataset into a
temporary folder and reports scans per second including world building, ray
casting and file writing. The numba kernels are compiled (or loaded from the
cache) by a one-scan warm-up that is not timed.

Usage: python benchmarks/bench_synth.py [--scans 40]
"""
from __future__ import annotations

import argparse
import tempfile
import time

from cdcl3d.synth.lidar import class_histogram, generate_lidar


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=40, help="scans per dataset (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rates = {}
    with tempfile.TemporaryDirectory() as tmp:
        generate_lidar(f"{tmp}/warmup", seed=args.seed, scans=1, points_scale=0.05)
        for name in ("semantickitti", "nuscenes"):
            start = time.perf_counter()
            # labelled scans only: the unlabelled nuScenes test version would count in the time, not in n
            res = generate_lidar(f"{tmp}/run", seed=args.seed, scans=args.scans, datasets=(name,),
                                 nuscenes_test_scans=0)
            took = time.perf_counter() - start
            n = res[name]["scans"]
            rates[name] = n / took
            if name == "semantickitti":
                kitti_seqs = res[name]["sequences"]
            print(f"{name:14s} {n:4d} scans in {took:6.2f} s  -> {rates[name]:6.1f} scans/s")
        hist = class_histogram(f"{tmp}/run")
        k, nu = hist["semantickitti"], hist["nuscenes"]
        labelled = sum(n for seq, n in kitti_seqs.items() if int(seq) <= 10)
        print(f"points per scan: semantickitti {k['points'] / labelled:.0f}, "
              f"nuscenes {nu['points'] / max(args.scans, 10):.0f}")
        print(f"SemanticKITTI class-share total variation distance vs. real: {k['tvd']:.4f}")
    print(f"RESULT kitti_scans_per_s={rates['semantickitti']:.2f} "
          f"nuscenes_scans_per_s={rates['nuscenes']:.2f} kitti_tvd={k['tvd']:.4f}")


if __name__ == "__main__":
    main()
