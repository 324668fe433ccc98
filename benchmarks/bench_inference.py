"""End-to-end LiDAR inference per scan, as a user runs it: read, projection,
network, back-projection, KNN, write.

cdcl's path (``cdcl predict``: numba projection, the dataset's branch
collapsed and BatchNorm folded, :mod:`cdcl3d.representations`' prediction with
KNN and optional TTA) with three engines for the network (torch eager,
torch channels_last, onnxruntime), with and without TTA (onnxruntime; views
identity, flip_x, flip_y, flip_x+flip_y), against a pipeline written the way
the published SalsaNext code does it: numpy projection sorting the points by
decreasing range (``argsort``), the eager network ending in a softmax, the
argmax image, the unfold-based KNN. Both see the same files and the same
weights; the point labels are compared.

Settings: full resolution (SalsaNext width 1.0; SemanticKITTI-like 64x2048,
~120k points; nuScenes-like 32x1024, ~34k points) and the CPU preset of the
generated-data configs (width 0.25, 64x256 and 32x256). Scans are random but
plausible (ground, obstacles, dropped returns; :mod:`bench_projection`),
written to a temporary folder; random weights (BatchNorm statistics
perturbed so the network is no identity).

All variants of a setting run alternately in one process (order rotated
every round), each over the same scan; per stage the median, per variant
the median and minimum of the total.

    python benchmarks/bench_inference.py [--repeats 5] [--threads 2] [--only kitti,nuscenes,kitti_cpu,nuscenes_cpu]
"""
from __future__ import annotations

import argparse
import copy
import os
import statistics
import tempfile
import time
from typing import Any, Callable, Dict, List

import numpy as np
import torch
import torch.nn.functional as F

from bench_projection import make_scan
from timing import machine_line

from cdcl3d.datasets import nuscenes as nus_io
from cdcl3d.datasets import semantickitti as kitti_io
from cdcl3d.knn import KNNPostProcess, knn_reference_unfold
from cdcl3d.models import build_salsanext
from cdcl3d.projection import KITTI_SENSOR, NUSCENES_SENSOR, RangeProjection
from cdcl3d.representations import REPRESENTATIONS
from cdcl3d.tta import TTA, build_views
from common.dataset_specific import collapse, convert_dataset_specific
from common.fold import fold_bn
from common.onnx_engine import OnnxNetwork

STAGES = ("read", "projection", "network", "back-projection", "knn", "write")
TTA_OPTION = {"flip_x": True, "flip_y": True}

SETTINGS = {
    "kitti": dict(sensor=KITTI_SENSOR, width=1.0, classes=20, beams=np.linspace(2.0, -24.8, 64),
                  per_beam=2010, mount=1.73, intensity=1.0, ring=False),
    "nuscenes": dict(sensor=NUSCENES_SENSOR, width=1.0, classes=17, beams=np.linspace(10.67, -30.67, 32)[::-1],
                     per_beam=1140, mount=1.84, intensity=255.0, ring=True),
    "kitti_cpu": dict(sensor=dict(KITTI_SENSOR, width=256), width=0.25, classes=20,
                      beams=np.linspace(2.0, -24.8, 64), per_beam=2010, mount=1.73, intensity=1.0, ring=False),
    "nuscenes_cpu": dict(sensor=dict(NUSCENES_SENSOR, width=256), width=0.25, classes=17,
                         beams=np.linspace(10.67, -30.67, 32)[::-1], per_beam=1140, mount=1.84,
                         intensity=255.0, ring=True),
}


class Stopwatch:
    """Seconds per stage of one run."""

    def __init__(self) -> None:
        self.t: Dict[str, float] = {s: 0.0 for s in STAGES}

    def add(self, stage: str, seconds: float) -> None:
        self.t[stage] += seconds

    def timed(self, stage: str, fn: Callable) -> Callable:
        def wrapper(*args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            self.add(stage, time.perf_counter() - t0)
            return out
        return wrapper


# -- the published-style pipeline --------------------------------------------------------

def reference_projection(points: np.ndarray, sensor: Dict[str, Any]) -> Dict[str, Any]:
    """Spherical projection in numpy as SalsaNext's laserscan does it: every
    point's pixel, then the points written in order of decreasing range
    (``argsort``), so the nearest is written last and wins; the normalised,
    masked 5-channel image."""
    h, w = sensor["height"], sensor["width"]
    xyz, remission = points[:, :3], points[:, 3]
    depth = np.linalg.norm(xyz, 2, axis=1)
    yaw = -np.arctan2(xyz[:, 1], xyz[:, 0])
    px = np.clip(np.floor(0.5 * (yaw / np.pi + 1.0) * w), 0, w - 1).astype(np.int32)
    if sensor["use_ring"]:
        py = (h - 1 - points[:, 4]).astype(np.int32) if sensor["ring_flip"] else points[:, 4].astype(np.int32)
    else:
        up, down = np.radians(sensor["fov_up"]), np.radians(sensor["fov_down"])
        pitch = np.arcsin(xyz[:, 2] / depth)
        py = np.clip(np.floor((1.0 - (pitch + abs(down)) / (abs(down) + abs(up))) * h), 0, h - 1).astype(np.int32)
    unproj_x, unproj_y = px.copy(), py.copy()
    if sensor.get("ego_radius", 0) > 0:  # cdcl keeps the ego vehicle out of the image; so does this
        r = sensor["ego_radius"]
        keep = ~((np.abs(xyz[:, 0]) < r) & (np.abs(xyz[:, 1]) < r))
    else:
        keep = np.ones(len(points), bool)
    order = np.argsort(depth[keep], kind="stable")[::-1]
    sel = np.flatnonzero(keep)[order]
    proj_range = np.full((h, w), -1, dtype=np.float32)
    proj_xyz = np.full((h, w, 3), -1, dtype=np.float32)
    proj_rem = np.full((h, w), -1, dtype=np.float32)
    proj_idx = np.full((h, w), -1, dtype=np.int32)
    proj_range[py[sel], px[sel]] = depth[sel]
    proj_xyz[py[sel], px[sel]] = xyz[sel]
    proj_rem[py[sel], px[sel]] = remission[sel]
    proj_idx[py[sel], px[sel]] = sel
    mask = proj_idx >= 0
    means = np.asarray(sensor["means"], np.float32)[:, None, None]
    stds = np.asarray(sensor["stds"], np.float32)[:, None, None]
    image = np.concatenate([proj_range[None], proj_xyz.transpose(2, 0, 1), proj_rem[None]])
    image = (image - means) / stds * mask
    return {"image": torch.from_numpy(image.astype(np.float32))[None], "proj_range": torch.from_numpy(proj_range),
            "unproj_range": torch.from_numpy(depth.astype(np.float32)),
            "px": torch.from_numpy(unproj_x.astype(np.int64)), "py": torch.from_numpy(unproj_y.astype(np.int64))}


def reference_pipeline(path: str, setting: Dict[str, Any], model, lut: np.ndarray, out: str,
                       sw: Stopwatch) -> np.ndarray:
    t0 = time.perf_counter()
    ncol = 5 if setting["ring"] else 4
    points = np.fromfile(path, dtype=np.float32).reshape(-1, ncol)
    t1 = time.perf_counter()
    p = reference_projection(points, setting["sensor"])
    t2 = time.perf_counter()
    with torch.no_grad():
        prob = F.softmax(model(p["image"]), dim=1)  # the published forward ends in a softmax
    t3 = time.perf_counter()
    argmax = prob[0].argmax(0)
    t4 = time.perf_counter()
    labels = knn_reference_unfold(p["proj_range"], p["unproj_range"], argmax, p["px"], p["py"],
                                  setting["classes"], search=5, k=5, sigma=1.0, cutoff=1.0).numpy()
    t5 = time.perf_counter()
    lut[labels].astype(np.uint32).tofile(out)
    t6 = time.perf_counter()
    for s, a, b in zip(STAGES, (t0, t1, t2, t3, t4, t5), (t1, t2, t3, t4, t5, t6)):
        sw.add(s, b - a)
    return labels


# -- cdcl's path -------------------------------------------------------------------------

def cdcl_pipeline(path: str, setting: Dict[str, Any], network, projection: RangeProjection,
                  knn: KNNPostProcess, tta, lut: np.ndarray, out: str, sw: Stopwatch) -> np.ndarray:
    """``cdcl predict``'s steps for one scan (batch 1), each stage timed."""
    t0 = time.perf_counter()
    points = (nus_io.read_points if setting["ring"] else kitti_io.read_points)(path)
    t1 = time.perf_counter()
    o = projection.project(points)
    batch = {"inputs": torch.from_numpy(o["inputs"])[None], "proj_row": [torch.from_numpy(o["proj_row"])],
             "proj_col": [torch.from_numpy(o["proj_col"])], "range": [torch.from_numpy(o["range"])],
             "proj_range": torch.from_numpy(o["proj_range"])[None], "proj_idx": torch.from_numpy(o["proj_idx"])[None],
             "points": [torch.from_numpy(points)], "representation": "range"}
    t2 = time.perf_counter()
    sw.add("read", t1 - t0)
    sw.add("projection", t2 - t1)
    if tta is not None:  # the other views' projections count as projection
        tta = TTA(tta.views, sw.timed("projection", tta.rebuild))
    with torch.no_grad():
        plain, voted, _ = REPRESENTATIONS["range"].predict(sw.timed("network", network), batch,
                                                           sw.timed("knn", knn), tta)
    t3 = time.perf_counter()
    # what predict spent outside the network, the views' projections and KNN
    sw.add("back-projection", (t3 - t2) - sw.t["network"] - sw.t["knn"]
           - (sw.t["projection"] - (t2 - t1)))
    labels = voted[0].numpy()
    t4 = time.perf_counter()
    lut[labels].astype(np.uint32).tofile(out)
    sw.add("write", time.perf_counter() - t4)
    return labels


class ChannelsLast(torch.nn.Module):
    def __init__(self, net: torch.nn.Module) -> None:
        super().__init__()
        self.net = net.to(memory_format=torch.channels_last)

    def forward(self, x):
        return self.net(x.contiguous(memory_format=torch.channels_last))


def build_networks(setting: Dict[str, Any], folder: str, seed: int = 0) -> Dict[str, Any]:
    """The same weights as the published-style eager network, cdcl's collapsed
    + folded branch (eager, channels_last) and its ONNX export (onnxruntime)."""
    torch.manual_seed(seed)
    plain = build_salsanext(setting["classes"], width=setting["width"], dropout=0.0).eval()
    g = torch.Generator().manual_seed(seed)
    for m in plain.modules():  # trained-looking BN statistics, so layers are no identity
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(0.1 * torch.randn(m.num_features, generator=g))
            m.running_var.copy_(0.5 + torch.rand(m.num_features, generator=g))
    cdcl = convert_dataset_specific(copy.deepcopy(plain), ["a", "b"]).eval()
    branch = fold_bn(collapse(cdcl, "a")).eval()
    shape = (1, 5, setting["sensor"]["height"], setting["sensor"]["width"])
    path = os.path.join(folder, "branch.onnx")
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(branch, (torch.zeros(shape),), path, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}}, opset_version=17,
                          dynamo=False)
    ort = OnnxNetwork(path, shape[1:], setting["classes"], threads=torch.get_num_threads())
    x = torch.randn(shape, generator=g)
    with torch.no_grad():
        diff = float((ort(x) - branch(x)).abs().max())
        diff_plain = float((branch(x) - plain(x)).abs().max())
    return {"reference": plain, "eager": branch, "channels_last": ChannelsLast(copy.deepcopy(branch)),
            "onnxruntime": ort, "max_abs_logits_diff": max(diff, diff_plain)}


def med(xs: List[float]) -> float:
    return statistics.median(xs)


def run_setting(name: str, setting: Dict[str, Any], repeats: int, folder: str) -> Dict[str, float]:
    rng = np.random.default_rng(0)
    sensor = setting["sensor"]
    scan = make_scan(rng, setting["beams"], setting["per_beam"], setting["mount"], setting["intensity"],
                     setting["ring"])
    path = os.path.join(folder, f"{name}.bin")
    scan.tofile(path)
    nets = build_networks(setting, folder)
    projection = RangeProjection.from_sensor(sensor)
    knn = KNNPostProcess(setting["classes"], search=5, k=5, sigma=1.0, cutoff=1.0)
    views = build_views(TTA_OPTION)
    tta = TTA(views, REPRESENTATIONS["range"].rebuild({}, sensor))
    lut = np.arange(256, dtype=np.uint32)  # train id -> raw id (identity here; the cost is the same)
    out = os.path.join(folder, f"{name}.label")

    variants: Dict[str, Callable[[Stopwatch], np.ndarray]] = {
        "reference": lambda sw: reference_pipeline(path, setting, nets["reference"], lut, out, sw),
        "eager": lambda sw: cdcl_pipeline(path, setting, nets["eager"], projection, knn, None, lut, out, sw),
        "channels_last": lambda sw: cdcl_pipeline(path, setting, nets["channels_last"], projection, knn, None,
                                                  lut, out, sw),
        "onnxruntime": lambda sw: cdcl_pipeline(path, setting, nets["onnxruntime"], projection, knn, None,
                                                lut, out, sw),
        f"onnxruntime+tta{len(views)}": lambda sw: cdcl_pipeline(path, setting, nets["onnxruntime"], projection,
                                                                 knn, tta, lut, out, sw),
    }
    labels = {k: f(Stopwatch()) for k, f in variants.items()}  # warm-up (numba compile, allocator)
    runs: Dict[str, List[Dict[str, float]]] = {k: [] for k in variants}
    names = list(variants)
    for r in range(repeats):
        k = r % len(names)
        for v in names[k:] + names[:k]:  # alternately, the order rotated every round
            sw = Stopwatch()
            variants[v](sw)
            runs[v].append(sw.t)
    h, w = sensor["height"], sensor["width"]
    print(f"\n[{name}] {h}x{w}, {len(scan):,} points, SalsaNext width {setting['width']}, {setting['classes']} "
          f"classes; {repeats} alternated runs; max |logits| diff of the engines vs the eager network "
          f"{nets['max_abs_logits_diff']:.1e}")
    print(f"  {'variant':<18}" + "".join(f"{s:>16}" for s in STAGES) + f"{'total median':>14}{'min':>9}  (ms)")
    totals = {}
    for v, rs in runs.items():
        tot = [sum(r.values()) for r in rs]
        totals[v] = (med(tot), min(tot))
        stage_med = {s: med([r[s] for r in rs]) for s in STAGES}
        print(f"  {v:<18}" + "".join(f"{1000 * stage_med[s]:16.1f}" for s in STAGES)
              + f"{1000 * totals[v][0]:14.1f}{1000 * totals[v][1]:9.1f}")
        totals[v + ":network"] = med([r["network"] for r in rs])
    agree = {v: float((labels[v] == labels["reference"]).mean()) for v in ("eager", "channels_last", "onnxruntime")}
    tta_name = f"onnxruntime+tta{len(views)}"
    per_view = (totals[tta_name][0] - totals["onnxruntime"][0]) / (len(views) - 1)
    res = {
        "ort_net_speedup": totals["eager:network"] / totals["onnxruntime:network"],
        "cl_net_speedup": totals["eager:network"] / totals["channels_last:network"],
        "e2e_speedup": totals["reference"][0] / totals["onnxruntime"][0],
        "e2e_speedup_eager": totals["reference"][0] / totals["eager"][0],
        "agree": min(agree.values()),
        "tta_ms_per_view": 1000 * per_view,
        "ms": 1000 * totals["onnxruntime"][0],
        "ref_ms": 1000 * totals["reference"][0],
    }
    print(f"  network: onnxruntime {res['ort_net_speedup']:.2f}x, channels_last {res['cl_net_speedup']:.2f}x the "
          f"eager network (medians)")
    print(f"  end to end vs the published-style pipeline (medians): cdcl+onnxruntime {res['e2e_speedup']:.2f}x, "
          f"cdcl+eager {res['e2e_speedup_eager']:.2f}x")
    print("  point labels equal to the published-style pipeline: "
          + ", ".join(f"{k} {100 * a:.3f}%" for k, a in agree.items()))
    print(f"  TTA ({len(views)} views: {', '.join(str(v) for v in views)}): "
          f"{1000 * totals[tta_name][0]:.0f} ms/scan, {res['tta_ms_per_view']:.0f} ms per extra view "
          f"({res['tta_ms_per_view'] / (1000 * totals['onnxruntime'][0]):.2f}x a scan without TTA)")
    return res


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--repeats", type=int, default=5, help="alternated runs per variant (default %(default)s)")
    ap.add_argument("--threads", type=int, default=2, help="torch and onnxruntime threads (default %(default)s)")
    ap.add_argument("--only", default=",".join(SETTINGS), help="comma-separated settings (default: all)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    print(machine_line())
    results = {}
    with tempfile.TemporaryDirectory() as folder:
        for name in args.only.split(","):
            results[name] = run_setting(name, SETTINGS[name], args.repeats, folder)
    print("\nRESULT " + " ".join(f"{n}_{k}={v:.4g}" for n, r in results.items() for k, v in r.items()))


if __name__ == "__main__":
    main()
