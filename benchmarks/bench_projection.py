"""Read + range-project throughput: numba kernel vs the published numpy formula.

Writes random-but-plausible scans to a temporary folder (a KITTI-like 64-beam
scan of ~120k points, a nuScenes-like 32-beam scan of ~34k points with ring
index), then times ``read_points`` + ``RangeProjection.project`` against
``np.fromfile`` + SalsaNext's laserscan projection in numpy (float32, argsort,
fancy-index writes, normalisation, mask), on the same files, in one run.

Rates are per core: single-threaded code, timed with the thread's CPU clock
(robust to other processes sharing the machine); wall-clock rates are printed
beside them. The two run alternately in one process (a pass over the scans
each, order rotated every round); minimum and median of the passes.

    python benchmarks/bench_projection.py [--scans 8] [--repeat 5]
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time

import numba
import numpy as np
import torch

from cdcl3d.datasets import nuscenes as nus_io
from cdcl3d.datasets import semantickitti as kitti_io
from cdcl3d.projection import KITTI_SENSOR, NUSCENES_SENSOR, RangeProjection, reduce_page_faults
from timing import machine_line


def make_scan(rng: np.random.Generator, beams: np.ndarray, per_beam: int, height: float,
              intensity_scale: float, with_ring: bool) -> np.ndarray:
    """Rotating-sensor-like scan: ground plane below, random obstacles, in firing order."""
    rows = []
    for ring, el_deg in enumerate(beams):
        az = np.sort(rng.uniform(-np.pi, np.pi, per_beam))
        el = np.deg2rad(el_deg + rng.normal(0, 0.05, per_beam))
        ground = np.where(el < -0.01, height / np.maximum(np.sin(-el), 1e-3), 80.0)
        obstacle = rng.uniform(3.0, 60.0, per_beam)
        r = np.minimum(np.where(rng.random(per_beam) < 0.4, obstacle, ground), 80.0)
        r *= 1 + rng.normal(0, 0.002, per_beam)
        keep = rng.random(per_beam) < 0.93  # dropped returns (sky, absorbers)
        cols = [r * np.cos(el) * np.cos(az), r * np.cos(el) * np.sin(az), r * np.sin(el),
                np.clip(rng.gamma(2.0, 0.12, per_beam), 0, 1) * intensity_scale]
        if with_ring:
            cols.append(np.full(per_beam, ring, dtype=np.float64))
        rows.append(np.stack(cols, 1)[keep])
    return np.concatenate(rows).astype(np.float32)


def numpy_reference(points: np.ndarray, height: int, width: int, fov_up: float, fov_down: float,
                    means: np.ndarray, stds: np.ndarray, ring_rows: bool = False) -> dict:
    """SalsaNext/RangeNet++ laserscan.do_range_projection + the loader's image
    normalisation, in numpy as published (float32 maths, default argsort)."""
    fov_up = fov_up / 180.0 * np.pi
    fov_down = fov_down / 180.0 * np.pi
    fov = abs(fov_down) + abs(fov_up)
    xyz = points[:, :3]
    remission = points[:, 3]
    depth = np.linalg.norm(xyz, 2, axis=1)
    yaw = -np.arctan2(xyz[:, 1], xyz[:, 0])
    proj_x = 0.5 * (yaw / np.pi + 1.0) * width
    proj_x = np.maximum(0, np.minimum(width - 1, np.floor(proj_x))).astype(np.int32)
    if ring_rows:
        proj_y = (height - 1 - points[:, 4]).astype(np.int32)
    else:
        pitch = np.arcsin(xyz[:, 2] / depth)
        proj_y = (1.0 - (pitch + abs(fov_down)) / fov) * height
        proj_y = np.maximum(0, np.minimum(height - 1, np.floor(proj_y))).astype(np.int32)
    indices = np.arange(depth.shape[0])
    order = np.argsort(depth)[::-1]
    depth, indices = depth[order], indices[order]
    xyz, remission = xyz[order], remission[order]
    proj_y, proj_x = proj_y[order], proj_x[order]
    proj_range = np.full((height, width), -1, dtype=np.float32)
    proj_xyz = np.full((height, width, 3), -1, dtype=np.float32)
    proj_remission = np.full((height, width), -1, dtype=np.float32)
    proj_idx = np.full((height, width), -1, dtype=np.int32)
    proj_range[proj_y, proj_x] = depth
    proj_xyz[proj_y, proj_x] = xyz
    proj_remission[proj_y, proj_x] = remission
    proj_idx[proj_y, proj_x] = indices
    mask = proj_idx >= 0
    image = np.concatenate([proj_range[None], proj_xyz.transpose(2, 0, 1), proj_remission[None]])
    image = (image - means[:, None, None]) / stds[:, None, None] * mask
    return {"inputs": image, "mask": mask, "proj_idx": proj_idx}


def time_per_scan(fns: dict, paths, repeat: int) -> dict:
    """``{name: (cpu s/scan, wall s/scan)}`` lists, one entry per pass over
    ``paths``; the functions alternate pass by pass, the order rotated."""
    names = list(fns)
    out = {n: ([], []) for n in names}
    for r in range(repeat):
        k = r % len(names)
        for n in names[k:] + names[:k]:
            c0, w0 = time.thread_time(), time.perf_counter()
            for p in paths:
                fns[n](p)
            out[n][0].append((time.thread_time() - c0) / len(paths))
            out[n][1].append((time.perf_counter() - w0) / len(paths))
    return out


def _stats(xs) -> str:
    return f"min {min(xs) * 1e3:.2f} / median {float(np.median(xs)) * 1e3:.2f} ms"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--scans", type=int, default=8, help="different scans per sensor")
    parser.add_argument("--repeat", type=int, default=5, help="alternated timed passes (min and median)")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    print(machine_line())
    print(f"numba {numba.__version__}: kernel is single-threaded (@njit, no prange); "
          f"numba threads available {numba.get_num_threads()}, torch threads {torch.get_num_threads()}, "
          f"os.cpu_count {os.cpu_count()}")

    sensors = {
        "kitti": dict(sensor=KITTI_SENSOR, beams=np.linspace(2.0, -24.8, 64), per_beam=2010,
                      height=1.73, intensity=1.0, ring=False, reader=kitti_io.read_points, ext=".bin"),
        "nuscenes": dict(sensor=NUSCENES_SENSOR, beams=np.linspace(10.67, -30.67, 32)[::-1],
                         per_beam=1140, height=1.84, intensity=255.0, ring=True,
                         reader=nus_io.read_points, ext=".pcd.bin"),
    }
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, cfg in sensors.items():
            sensor = cfg["sensor"]
            # ring 0 = lowest beam (see cdcl3d.projection): beams listed bottom-up
            paths = []
            for i in range(args.scans):
                pts = make_scan(rng, cfg["beams"], cfg["per_beam"], cfg["height"], cfg["intensity"], cfg["ring"])
                path = os.path.join(tmp, f"{name}_{i:03d}{cfg['ext']}")
                pts.tofile(path)
                paths.append(path)
            npts = np.mean([os.path.getsize(p) // (4 * pts.shape[1]) for p in paths])
            proj = RangeProjection.from_sensor(sensor)
            means = np.asarray(sensor["means"], np.float32)
            stds = np.asarray(sensor["stds"], np.float32)
            reader, ncol = cfg["reader"], pts.shape[1]

            t0 = time.perf_counter()
            proj.project(reader(paths[0]))
            first = time.perf_counter() - t0

            def ours(p, proj=proj, reader=reader):
                return proj.project(reader(p))

            def ref(p, sensor=sensor, ncol=ncol, means=means, stds=stds):
                return numpy_reference(np.fromfile(p, dtype=np.float32).reshape(-1, ncol),
                                       sensor["height"], sensor["width"], sensor["fov_up"],
                                       sensor["fov_down"], means, stds, ring_rows=sensor["use_ring"])

            a, b = ours(paths[0]), ref(paths[0])
            agree = np.mean(a["proj_idx"] == b["proj_idx"])
            t = time_per_scan({"ours": ours, "ref": ref, "read": reader}, paths, args.repeat)
            cpu_ours, wall_ours = min(t["ours"][0]), min(t["ours"][1])
            cpu_ref, wall_ref = min(t["ref"][0]), min(t["ref"][1])
            med_ours, med_ref = float(np.median(t["ours"][0])), float(np.median(t["ref"][0]))
            print(f"{name}: {npts:.0f} points/scan -> {sensor['height']}x{sensor['width']} "
                  f"(use_ring={sensor['use_ring']}); first call incl. numba compile/cache load {first:.2f} s; "
                  f"winner agreement with numpy float32 reference {agree:.5f}")
            print(f"  read alone: cpu {_stats(t['read'][0])} per scan")
            print(f"  numba read+project: cpu {_stats(t['ours'][0])} per scan = {1 / cpu_ours:.1f} scans/s/core "
                  f"by min, {1 / med_ours:.1f} by median (wall {1 / wall_ours:.1f} scans/s)")
            print(f"  numpy read+project: cpu {_stats(t['ref'][0])} per scan = {1 / cpu_ref:.1f} scans/s/core "
                  f"by min, {1 / med_ref:.1f} by median (wall {1 / wall_ref:.1f} scans/s)")
            print(f"  speedup by median {med_ref / med_ours:.1f}x (cpu)")
            print(f"  speedup by minimum {cpu_ref / cpu_ours:.1f}x (cpu), {wall_ref / wall_ours:.1f}x (wall)")
            results[name] = (1 / med_ours, med_ref / med_ours, ours, ref, paths, 1 / cpu_ours)

        # The same again with glibc keeping freed memory (opt-in helper): on
        # VMs where page faults are slow, the fresh multi-MB output buffers
        # can dominate, depending on the allocator's history.
        if reduce_page_faults():
            for name, (_, _, ours, ref, paths, _) in results.items():
                t = time_per_scan({"ours": ours, "ref": ref}, paths, args.repeat)
                c_o, c_r = float(np.median(t["ours"][0])), float(np.median(t["ref"][0]))
                print(f"{name} after reduce_page_faults() (medians): numba {1 / c_o:.1f} scans/s/core, "
                      f"numpy {1 / c_r:.1f} scans/s/core, speedup {c_r / c_o:.1f}x")

    k, n = results["kitti"], results["nuscenes"]
    print(f"RESULT kitti_scans_per_s={k[0]:.1f} nuscenes_scans_per_s={n[0]:.1f} "
          f"kitti_scans_per_s_best={k[5]:.1f} nuscenes_scans_per_s_best={n[5]:.1f} "
          f"speedup_vs_numpy_kitti={k[1]:.1f} speedup_vs_numpy_nuscenes={n[1]:.1f}")


if __name__ == "__main__":
    main()
