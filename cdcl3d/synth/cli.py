"""``cdcl synth lidar``: write the generated SemanticKITTI, nuScenes and
SemanticPOSS trees (nuScenes: ``v1.0-mini`` with labels and an unlabelled
``v1.0-test``)."""
from __future__ import annotations

import argparse
import time

from common.errors import OptionError

DEFAULT_OUT = "data/synth/lidar"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Declare the options of ``cdcl synth lidar``."""
    parser.add_argument("--out", default=DEFAULT_OUT,
                        help="output folder; gets semantickitti/, nuscenes/ and semanticposs/ (default: %(default)s)")
    parser.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    parser.add_argument("--scans", type=int, default=60,
                        help="scans per dataset (nuScenes: at least one per scene, so >= 10) "
                             "(default: %(default)s)")
    parser.add_argument("--points", type=float, default=1.0,
                        help="points per scan: a value <= 10 scales the azimuth steps of every "
                             "sensor (1.0: ~120k KITTI / ~34k nuScenes / ~65k SemanticPOSS points); a "
                             "larger value is a target for a KITTI scan (the others scaled alike) "
                             "(default: %(default)s)")
    parser.add_argument("--nuscenes-test-scans", type=int, default=None, metavar="N",
                        help="keyframes of the unlabelled nuScenes v1.0-test version, dealt over the "
                             "devkit's 150 test scenes, at least one each; 0: no test version "
                             "(default: one per scene)")
    parser.add_argument("--only", choices=["semantickitti", "nuscenes", "semanticposs"], default=None,
                        help="write one dataset only")
    parser.add_argument("--corrupt", nargs="+", metavar="CORRUPTION",
                        choices=["fog", "snow", "beam-drop", "crosstalk", "motion-blur"],
                        help="instead of generating: write corrupted copies of <out>/semantickitti's "
                             "validation sequence 08 (after SemanticKITTI-C: fog, snow, beam-drop, "
                             "crosstalk, motion-blur) to <out>/semantickitti_<corruption>_<severity>, in "
                             "SemanticKITTI's layout; SemanticKITTI is generated first when missing")
    parser.add_argument("--severity", nargs="+", type=int, default=[3], metavar="1..5",
                        help="severities of --corrupt, 1 (mild) to 5 (severe) (default: 3)")
    parser.add_argument("--stats", action="store_true",
                        help="print the class histograms (generated vs. real SemanticKITTI) and "
                             "their total variation distance after writing (or of an existing "
                             "--out with --scans 0)")


def points_to_scale(points: float) -> float:
    """``--points`` as a scale: values <= 10 are scales, larger ones targets."""
    from .lidar import KITTI_POINTS_PER_SCAN

    if not points > 0:
        raise OptionError(f"--points must be > 0, got {points}")
    return points if points <= 10 else points / KITTI_POINTS_PER_SCAN


def run(args: argparse.Namespace) -> int:
    """Execute ``cdcl synth lidar``; returns the exit code."""
    from .lidar import DATASETS, class_histogram, format_histogram, generate_lidar

    if getattr(args, "corrupt", None):
        return run_corrupt(args)
    datasets = (args.only,) if args.only else DATASETS
    if args.scans > 0:
        start = time.perf_counter()
        res = generate_lidar(args.out, seed=args.seed, scans=args.scans,
                             points_scale=points_to_scale(args.points), datasets=datasets,
                             nuscenes_test_scans=getattr(args, "nuscenes_test_scans", None))
        took = time.perf_counter() - start
        for name in datasets:
            print(f"{name}: {res[name]['scans']} scans -> {res[name]['root']}")
            if "test" in res[name]:
                test = res[name]["test"]
                print(f"{name}: {test['scans']} unlabelled scans in {test['scenes']} scenes -> "
                      f"{res[name]['root']}/{test['version']} (data.{name}.version={test['version']} "
                      f"--split test)")
        print(f"done in {took:.1f} s")
    elif args.scans < 0 or not args.stats:
        raise OptionError(f"--scans must be >= 1 (or 0 with --stats), got {args.scans}")
    if args.stats:
        print(format_histogram(class_histogram(args.out)))
    return 0


def run_corrupt(args: argparse.Namespace) -> int:
    """``cdcl synth lidar --corrupt C.. --severity S..``: one corrupted copy per pair."""
    import glob
    import os

    from common.errors import OptionError

    from .corrupt import corrupt_semantickitti
    from .lidar import generate_lidar

    bad = [s for s in args.severity if not 1 <= s <= 5]
    if bad:
        raise OptionError(f"--severity must be 1..5, got {bad}")
    src = os.path.join(args.out, "semantickitti")
    if not glob.glob(os.path.join(src, "sequences", "08", "velodyne", "*.bin")):
        if args.scans < 1:
            raise OptionError(f"{src} holds no validation scans to corrupt and --scans is {args.scans}")
        res = generate_lidar(args.out, seed=args.seed, scans=args.scans, points_scale=points_to_scale(args.points),
                             datasets=("semantickitti",))
        print(f"semantickitti: {res['semantickitti']['scans']} scans -> {src}")
    for corruption in args.corrupt:
        for severity in args.severity:
            out = os.path.join(args.out, f"semantickitti_{corruption.replace('-', '_')}_{severity}")
            res = corrupt_semantickitti(src, out, corruption, severity, seed=args.seed)
            print(f"{corruption} severity {severity}: {res['scans']} scans of sequence 08 -> {out}")
    return 0
