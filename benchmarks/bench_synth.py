"""Throughput of the generated LiDAR world (``cdcl synth lidar``), per sensor.

Writes a full-resolution set (points scale 1.0) of each dataset into a
temporary folder and reports scans per second including world building, ray
casting and file writing. The numba kernels are compiled (or loaded from the
cache) by a one-scan warm-up that is not timed. The two sensors alternate,
``--runs`` times (order rotated each round); rates by median, minimum and
maximum of the runs.

Usage: python benchmarks/bench_synth.py [--scans 40] [--runs 3]
"""
from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
import time

from cdcl3d.synth.lidar import class_histogram, generate_lidar
from timing import machine_line


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=40, help="scans per dataset (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--runs", type=int, default=3, help="alternated runs per sensor (default: %(default)s)")
    args = parser.parse_args()
    print(machine_line())
    names = ("semantickitti", "nuscenes")
    runs = {n: [] for n in names}
    with tempfile.TemporaryDirectory() as tmp:
        generate_lidar(f"{tmp}/warmup", seed=args.seed, scans=1, points_scale=0.05)
        for r in range(args.runs):
            for name in names[r % 2:] + names[:r % 2]:
                shutil.rmtree(f"{tmp}/run/{name}", ignore_errors=True)
                start = time.perf_counter()
                # labelled scans only: the unlabelled nuScenes test version would count in the time, not in n
                res = generate_lidar(f"{tmp}/run", seed=args.seed, scans=args.scans, datasets=(name,),
                                     nuscenes_test_scans=0)
                took = time.perf_counter() - start
                n = res[name]["scans"]
                runs[name].append(n / took)
                if name == "semantickitti":
                    kitti_seqs = res[name]["sequences"]
                print(f"run {r + 1}: {name:14s} {n:4d} scans in {took:6.2f} s  -> {n / took:6.1f} scans/s")
        rates = {n: statistics.median(v) for n, v in runs.items()}
        for name, v in runs.items():
            print(f"{name:14s} median {rates[name]:6.1f} scans/s (min {min(v):.1f}, max {max(v):.1f})")
        hist = class_histogram(f"{tmp}/run")
        k, nu = hist["semantickitti"], hist["nuscenes"]
        labelled = sum(n for seq, n in kitti_seqs.items() if int(seq) <= 10)
        print(f"points per scan: semantickitti {k['points'] / labelled:.0f}, "
              f"nuscenes {nu['points'] / max(args.scans, 10):.0f}")
        print(f"SemanticKITTI class-share total variation distance vs. real: {k['tvd']:.4f}")
    print(f"RESULT kitti_scans_per_s={rates['semantickitti']:.2f} "
          f"nuscenes_scans_per_s={rates['nuscenes']:.2f} kitti_scans_per_s_max={max(runs['semantickitti']):.2f} "
          f"nuscenes_scans_per_s_max={max(runs['nuscenes']):.2f} kitti_tvd={k['tvd']:.4f}")


if __name__ == "__main__":
    main()
