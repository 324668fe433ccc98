"""``cdcl sensor-stats``: measure a sensor's range-image statistics on a dataset.

The per-channel means and standard deviations that normalise the five input
channels (range, x, y, z, intensity), defined as SalsaNext's published ones:
over the valid pixels of the projected range images (each pixel's nearest
point) of the training split. Prints the ``sensor:`` block to paste under
``data.<name>``.
"""
from __future__ import annotations

import argparse
from typing import Any, Dict, Optional, Tuple

import numpy as np

CHANNELS = ("range", "x", "y", "z", "intensity")


def measure(reader: Any, projection: Any, max_scans: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray, int]:
    """``(means (5,), stds (5,), pixels)`` over the valid pixels of ``reader``'s
    scans (the first ``max_scans``) projected by ``projection``."""
    total = np.zeros(5)
    squares = np.zeros(5)
    pixels = 0
    n = len(reader) if max_scans is None else min(len(reader), max_scans)
    for i in range(n):
        item = reader[i]
        if "skipped" in item:  # on_bad_sample: skip leaves a bad scan out
            continue
        out = projection.project(item["points"])
        mask = out["mask"]
        winners = item["points"][out["proj_idx"][mask]]  # (P, C) the pixels' points
        values = np.concatenate([out["proj_range"][mask][:, None], winners[:, :4]], 1).astype(np.float64)
        total += values.sum(0)
        squares += (values * values).sum(0)
        pixels += len(values)
    if pixels == 0:
        from common.errors import DataError
        raise DataError(f"no valid range-image pixel in the first {n} scan(s) of {reader.name}: nothing to measure")
    means = total / pixels
    stds = np.sqrt(np.maximum(squares / pixels - means * means, 0.0))
    return means, stds, pixels


def sensor_block(spec: Any, means: np.ndarray, stds: np.ndarray) -> str:
    """The ``sensor:`` YAML block with the measured ``means``/``stds`` on top of
    what ``spec`` (``data.<name>.sensor``: a preset name, a mapping, None) gave."""
    import yaml

    fields: Dict[str, Any] = {"preset": spec} if isinstance(spec, str) else dict(spec or {})
    fields["means"] = [float(f"{v:.4g}") for v in means]
    fields["stds"] = [float(f"{v:.4g}") for v in stds]
    text = yaml.safe_dump({"sensor": fields}, default_flow_style=None, sort_keys=False)
    return "\n".join("    " + line for line in text.splitlines())


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="experiment config (YAML) declaring the dataset")
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="dotted overrides, e.g. data.mylidar.root=/data/mylidar")
    parser.add_argument("--dataset", required=True, metavar="NAME", help="the dataset's name under data:")
    parser.add_argument("--split", default=None, help="split to measure (default: the dataset's train_split)")
    parser.add_argument("--max-scans", type=int, default=None, metavar="N",
                        help="measure the first N scans only (default: every scan of the split)")


def run(args: argparse.Namespace) -> int:
    from common.config import ConfigError, load_config

    from .projection import RangeProjection
    from .task import build_reader, resolve_data

    cfg = load_config(args.config, args.overrides or [])
    if args.dataset not in cfg.data:
        raise ConfigError(f"--dataset {args.dataset!r}: the config {args.config} declares {', '.join(cfg.data)}")
    if args.max_scans is not None and args.max_scans < 1:
        raise ConfigError(f"--max-scans must be at least 1, got {args.max_scans}")
    entry = cfg.data[args.dataset]
    data = entry.as_dict()
    _, sensor, _ = resolve_data(args.dataset, data, cfg.source)
    split = args.split or entry.train_split
    reader = build_reader(args.dataset, data, split)
    means, stds, pixels = measure(reader, RangeProjection.from_sensor(sensor), args.max_scans)
    scans = len(reader) if args.max_scans is None else min(len(reader), args.max_scans)
    print(f"# {args.dataset} ({entry.type}), split {split}: {scans} scan(s), {pixels} valid pixels of "
          f"{sensor['height']}x{sensor['width']} range images; channels {', '.join(CHANNELS)}")
    print(f"# paste under data.{args.dataset}:")
    print(sensor_block(data.get("sensor"), means, stds))
    return 0
