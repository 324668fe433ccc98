"""The ``cdcl`` command.

Core sub-commands live here (train, eval, info, predict, export, adapt, precise-bn,
demo, synth); task packages add theirs (``show`` ...) and their synth targets
through :mod:`common.registry` when their plugin loads.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from typing import List, Optional

from .registry import COMMANDS, SYNTH, TASKS, load_plugins


def _setup_logging(verbose: bool = False) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", datefmt="%H:%M:%S")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("config", help="YAML experiment file")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="dotted overrides, e.g. train.iterations=200 data.semantickitti.root=/data/kitti")


def _load(args):
    from .config import load_config
    return load_config(args.config, args.overrides)


# -- train / eval ----------------------------------------------------------------

def cmd_train(args) -> int:
    from .trainer import train

    cfg = _load(args)
    work_dir = args.work_dir or os.path.join(
        "work_dirs", os.path.splitext(os.path.basename(args.config))[0])
    train(cfg, work_dir, resume=args.resume, overwrite=args.overwrite)
    return 0


def cmd_eval(args) -> int:
    from .evaluation import evaluate_checkpoint

    cfg = _load(args)
    evaluate_checkpoint(cfg, args.checkpoint, out=args.out, split=args.split, only=args.dataset,
                        verbose=args.verbose)
    if args.out:
        print(f"wrote {args.out}")
    return 0


# -- info ------------------------------------------------------------------------

def cmd_info(args) -> int:
    import torch

    from .build import build_dataset, build_model, get_task, num_classes_of
    from .dataset_specific import collapse, dataset_specific_modules
    from .flops import count_macs, count_parameters

    cfg = _load(args)
    task = get_task(cfg)
    num_classes = {}
    for n in cfg.names:  # from the dataset type when known: no dataset files needed
        k = cfg.data[n].num_classes or task.num_classes(n, cfg.data[n].as_dict())
        if not k and args.no_data:
            print(f"--no-data needs data.{n}.num_classes in the config", file=sys.stderr)
            return 2
        num_classes[n] = int(k) if k else num_classes_of(
            build_dataset(cfg, n, cfg.data[n].val_split, False, task))
    model = build_model(cfg, num_classes, task).eval()
    total = count_parameters(model)
    print(f"task {cfg.task}, model {cfg.model.get('name')}, strategy {cfg.strategy.name}, "
          f"datasets {cfg.names}")
    print(f"training model (all branches): {total:,} parameters")
    specific = [(p, m) for p, m in dataset_specific_modules(model)]
    kinds = {}
    for p, m in specific:
        kind = type(next(iter(m.branches.values()))).__name__
        kinds.setdefault(kind, []).append(p)
    print(f"dataset-specific modules: {len(specific)}")
    for kind, paths in kinds.items():
        shown = ", ".join(paths[:6]) + (" ..." if len(paths) > 6 else "")
        print(f"  {kind} x{len(paths)}: {shown}")
    print(f"\n{'dataset':<16} {'classes':>7} {'params':>12} {'GMACs':>9} {'GFLOPs':>9}  input")
    for n in cfg.names:
        plain = collapse(model, n)
        shape = tuple(task.input_shape(n, cfg.data[n].as_dict()))
        macs = count_macs(plain, torch.zeros((1,) + shape))
        print(f"{n:<16} {num_classes[n]:>7} {count_parameters(plain):>12,} {macs / 1e9:>9.3f} "
              f"{2 * macs / 1e9:>9.3f}  {shape}")
    return 0


# -- predict / export / adapt -------------------------------------------------------

def _config_for_checkpoint(args):
    """The config given on the command line, else the one stored in the checkpoint."""
    from .checkpoint import load_checkpoint
    from .config import config_from_text, load_config

    if getattr(args, "config", None):
        return load_config(args.config, getattr(args, "overrides", []) or [])
    from .checkpoint import CheckpointError

    state = load_checkpoint(args.checkpoint)
    if not isinstance(state.get("config"), str):
        raise CheckpointError(f"checkpoint {args.checkpoint} holds no config: pass the one it was trained "
                              "with (--config)")
    return config_from_text(state["config"], source=f"{args.checkpoint}:config")


def _check_dataset(cfg, name: str) -> None:
    from .config import ConfigError

    if name not in cfg.data:
        raise ConfigError(f"--dataset {name!r}: the config {cfg.source} has {cfg.eval_names}")


def _model_from_checkpoint(args, cfg):
    from .dist import select_device
    from .evaluation import load_model_for_eval

    device = select_device(getattr(args, "device", None) or cfg.train.device)
    return load_model_for_eval(cfg, args.checkpoint, device), device


def cmd_predict(args) -> int:
    import torch
    from torch.utils.data import DataLoader

    from .build import build_dataset, get_task
    from .config import ConfigError
    from .data import bad_sample_action
    from .dataset_specific import route
    from .progress import track
    from .utils import check_writable

    cfg = _config_for_checkpoint(args)
    _check_dataset(cfg, args.dataset)
    check_writable(args.out, "--out", folder=True)  # before the work, not after it
    if args.onnx is not None and args.engine != "onnxruntime":
        raise ConfigError(f"--onnx {args.onnx} is run by --engine onnxruntime (given: --engine {args.engine})")
    model, device = _model_from_checkpoint(args, cfg)
    task = get_task(cfg)
    ds = build_dataset(cfg, args.dataset, args.split, False, task)
    network = model
    if args.engine == "onnxruntime":  # the collapsed, exported branch; the task's pre/post-processing
        from .build import num_classes_of
        from .onnx_engine import onnx_network
        network, report = onnx_network(cfg, model, args.dataset, args.onnx, num_classes_of(ds))
        device = torch.device("cpu")
        how = args.onnx or f"exported on the fly (BatchNorm {report.get('batchnorm_folding')})"
        logging.getLogger(__name__).info("onnxruntime engine: %s", how)
    loader = DataLoader(ds, batch_size=1, shuffle=False, num_workers=cfg.eval.num_workers,
                        collate_fn=task.collate_fn(args.dataset, cfg.data[args.dataset].as_dict()))
    from .evaluation import eval_options
    # a submission needs a file for every sample: an unreadable one is an
    # error naming it even under on_bad_sample: skip (an empty scan is read)
    with route(model, args.dataset), bad_sample_action(ds, "raise"):
        written = task.predict(network, track(loader, desc=f"predict {args.dataset}/{args.split}"),
                               args.dataset, ds, device, args.out,
                               dict(eval_options(cfg, args.dataset), split=args.split))
    print(f"wrote predictions for {args.dataset}/{args.split} under {args.out}"
          + (f" ({written} files)" if isinstance(written, int) else ""))
    return 0


def cmd_export(args) -> int:
    from .export import export_onnx
    from .utils import check_writable

    cfg = _config_for_checkpoint(args)
    _check_dataset(cfg, args.dataset)
    check_writable(args.out, "--out")
    model, device = _model_from_checkpoint(args, cfg)
    report = export_onnx(cfg, model.cpu(), args.dataset, args.out, fold=not args.no_fold)
    print(json.dumps(report, indent=2))
    return 0


def cmd_adapt(args) -> int:
    from .adapt import adapt_from_args
    return adapt_from_args(args)


# -- demo / synth ----------------------------------------------------------------

def cmd_demo(args) -> int:
    from .errors import UserError

    if args.task not in TASKS:
        raise UserError(f"--task {args.task!r}: no such task; tasks: {', '.join(TASKS.names())}")
    if args.jobs < 1:  # before any data is generated
        raise UserError(f"--jobs must be >= 1, got {args.jobs}")
    return int(TASKS.get(args.task).demo(args) or 0)


def cmd_synth(args) -> int:
    return int(SYNTH.get(args.target).run(args) or 0)


def version() -> str:
    """The installed package's version (setup.py), or 'unknown' when cdcl runs
    from a source tree that was never installed."""
    from importlib.metadata import PackageNotFoundError
    from importlib.metadata import version as _version

    try:
        return _version("cdcl")
    except PackageNotFoundError:
        return "unknown"


_CKPT = "work_dirs/synth_cdcl/checkpoints/latest.pth"


def add_command(sub, name: str, help: str, example: str) -> argparse.ArgumentParser:
    """A sub-command parser whose ``--help`` ends with ``example`` (one real
    command line, kept as written)."""
    return sub.add_parser(name, help=help, description=help[:1].upper() + help[1:] + ".",
                          epilog=f"example:\n  {example}",
                          formatter_class=argparse.RawDescriptionHelpFormatter)


def build_parser() -> argparse.ArgumentParser:
    load_plugins()
    parser = argparse.ArgumentParser(
        prog="cdcl", description="Cross-Dataset Collaborative Learning: one segmentation network, "
                                 "several datasets, dataset-specific BatchNorm and heads.",
        epilog="example:\n  cdcl demo --quick", formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging; tracebacks for every error")
    parser.add_argument("--version", action="version", version=f"cdcl {version()}",
                        help="print the installed version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub.required = True

    p = add_command(sub, "train", "train a config (single, CDCL or an ablation)",
                    "cdcl train configs/3d/synth_cdcl.yaml train.iterations=300 --work-dir work_dirs/synth_cdcl")
    _add_config(p)
    p.add_argument("--work-dir", help="output folder: checkpoints, log.jsonl, tb/, results.json "
                   "(default: work_dirs/<config name>)")
    again = p.add_mutually_exclusive_group()  # a work dir that holds a run needs one of the two
    again.add_argument("--resume", metavar="PATH|auto", help="continue from a checkpoint; 'auto': latest in work dir")
    again.add_argument("--overwrite", action="store_true",
                       help="the work dir holds a run: remove its outputs (log, checkpoints, results, tb) "
                            "and start again at step 0")
    p.set_defaults(func=cmd_train)

    p = add_command(sub, "eval", "evaluate a checkpoint on every dataset of a config",
                    f"cdcl eval configs/3d/synth_cdcl.yaml --checkpoint {_CKPT} --out val.json")
    _add_config(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint (.pth) written by cdcl train")
    p.add_argument("--out", help="write the numbers as JSON here")
    p.add_argument("--split", help="split to evaluate (default each dataset's val_split)")
    p.add_argument("--dataset", action="append", help="evaluate only this dataset (repeatable)")
    p.add_argument("-v", "--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="also every other evaluation variant's table (points without KNN, range image); "
                        "debug logging")
    p.set_defaults(func=cmd_eval)

    p = add_command(sub, "info", "parameters, FLOPs and dataset-specific modules per dataset",
                    "cdcl info configs/3d/cdcl_salsanext_semantickitti_nuscenes.yaml --no-data")
    _add_config(p)
    p.add_argument("--no-data", action="store_true", help="take class counts from data.<name>.num_classes")
    p.set_defaults(func=cmd_info)

    p = add_command(sub, "predict", "write predictions in the benchmark's submission format",
                    f"cdcl predict configs/3d/synth_cdcl.yaml --checkpoint {_CKPT} --dataset nuscenes "
                    "--split test --out submission_nusc data.nuscenes.version=v1.0-test")
    _add_config(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint (.pth) written by cdcl train")
    p.add_argument("--dataset", required=True, help="the dataset (a name under data: in the config) to predict")
    p.add_argument("--split", default="test", help="split to predict (default: %(default)s)")
    p.add_argument("--out", required=True, help="output folder, laid out as the benchmark's submission")
    p.add_argument("--engine", choices=("torch", "onnxruntime"), default="torch",
                   help="what runs the network: torch (the checkpoint's model) or onnxruntime (the dataset's "
                        "branch collapsed, BatchNorm folded, exported to ONNX; range images only); "
                        "projection, TTA and KNN are the same (default: %(default)s)")
    p.add_argument("--onnx", metavar="FILE",
                   help="with --engine onnxruntime: run this file (from cdcl export) instead of exporting "
                        "the checkpoint now; checked against the dataset's input shape and classes")
    p.set_defaults(func=cmd_predict)

    p = add_command(sub, "export", "collapse to one dataset, fold BN, export ONNX",
                    f"cdcl export {_CKPT} --dataset nuscenes --out nuscenes.onnx")
    p.add_argument("checkpoint", help="checkpoint (.pth) written by cdcl train")
    p.add_argument("--dataset", required=True, help="the dataset whose branch and head are exported")
    p.add_argument("--out", required=True, help="the ONNX file to write")
    p.add_argument("--config", help="config file (default: the one stored in the checkpoint)")
    p.add_argument("--no-fold", action="store_true", help="keep BatchNorm layers")
    p.set_defaults(func=cmd_export, overrides=[])

    p = add_command(sub, "precise-bn", "recompute a branch's BN statistics on a dataset: for an unseen "
                    "dataset, cdcl adapt --method precise-bn (a new branch); for a trained one, its own "
                    "branch in place",
                    f"cdcl precise-bn configs/2d/synth_zeroshot_kitti.yaml --dataset kitti --checkpoint {_CKPT} "
                    "--out kitti_pbn.pth")
    _add_config(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint (.pth) written by cdcl train")
    p.add_argument("--dataset", required=True, help="the dataset (from the config) to take statistics on")
    p.add_argument("--branch", help="the branch to start from: a trained dataset or 'auto' (default: the one "
                                    "that serves the dataset, data.<dataset>.branch, else the dataset)")
    p.add_argument("--batches", type=int, default=200,
                   help="batches of the dataset's training split to average over (default: %(default)s)")
    p.add_argument("--out", required=True, help="where to write the checkpoint")
    p.set_defaults(func=cmd_adapt, method="precise-bn", steps=0, lr=0.0, trained_in_place=True)

    p = add_command(sub, "adapt", "make an unseen dataset a branch of its own without labels "
                    "(choose a branch, precise BN, optionally TENT)",
                    f"cdcl adapt configs/2d/synth_zeroshot_kitti.yaml --checkpoint {_CKPT} "
                    "--dataset kitti --branch auto --method tent --out kitti_adapted.pth")
    _add_config(p)
    p.add_argument("--checkpoint", required=True, help="checkpoint (.pth) written by cdcl train")
    p.add_argument("--dataset", required=True,
                   help="the unseen dataset (declared with data.<name>.branch) that becomes a branch")
    p.add_argument("--branch", default="auto",
                   help="the trained branch to start from, or 'auto': the one whose BN statistics are "
                        "closest to the dataset's (default: %(default)s)")
    p.add_argument("--method", choices=["precise-bn", "tent"], default="precise-bn",
                   help="precise-bn: recompute the BN statistics; tent: then minimise the prediction "
                        "entropy over the BN affine parameters (default: %(default)s)")
    p.add_argument("--batches", type=int, default=200,
                   help="batches of the dataset's training split (labels unused) for scoring and "
                        "statistics (default: %(default)s)")
    p.add_argument("--steps", type=int, default=200,
                   help="TENT steps, cycling over those batches (default: %(default)s)")
    p.add_argument("--lr", type=float, default=1e-3,
                   help="TENT learning rate, SGD momentum 0.9 as in the TENT paper (default: %(default)s)")
    p.add_argument("--out", required=True, help="where to write the checkpoint with the new branch")
    p.set_defaults(func=cmd_adapt)

    p = add_command(sub, "demo", "generate data, run the demo study (baselines and CDCL), print the table",
                    "cdcl demo --task 2d --out demo_2d --quick")
    p.add_argument("--task", default="3d", help="3d (LiDAR, default) or 2d (images)")
    p.add_argument("--out", default="demo_out", help="folder for the study (runs, report, renders) under "
                                                    "<out>/lidar or <out>/images (default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", default=None,
                   help="training seeds, one run per method and seed (default: the task's)")
    p.add_argument("--quick", action="store_true", help="a much shorter run (smoke test)")
    p.add_argument("--jobs", type=int, default=1, help="trainings at once, the cores divided between them "
                                                        "(default: %(default)s)")
    p.set_defaults(func=cmd_demo)

    from . import study
    p = add_command(sub, "study", study.HELP, study.EXAMPLE)
    study.add_arguments(p)
    p.set_defaults(func=study.run_from_args)

    p = add_command(sub, "synth", "write generated datasets in the real on-disk formats",
                    "cdcl synth lidar --out data/synth/lidar --scans 60")
    tsub = p.add_subparsers(dest="target", metavar="TARGET")
    tsub.required = True
    for name in SYNTH.names():
        c = SYNTH.get(name)
        tp = add_command(tsub, name, c.help, c.example or f"cdcl synth {name}")
        _safe_add_arguments(c, tp, f"synth {name}")
    p.set_defaults(func=cmd_synth)

    for name in COMMANDS.names():
        c = COMMANDS.get(name)
        cp = add_command(sub, name, c.help, c.example or f"cdcl {name} --help")
        if _safe_add_arguments(c, cp, name):
            cp.set_defaults(func=c.run)
    return parser


def _safe_add_arguments(c, parser: argparse.ArgumentParser, label: str) -> bool:
    """A command whose module fails to import stays listed and says why when run."""
    try:
        c.add_arguments(parser)
        return True
    except Exception as exc:  # keep the rest of the CLI usable
        err = f"{type(exc).__name__}: {exc}"

        def unavailable(args, _err=err):
            print(f"cdcl {label}: unavailable ({_err})", file=sys.stderr)
            return 2
        parser.set_defaults(func=unavailable)
        parser.add_argument("rest", nargs=argparse.REMAINDER, help="(not read: the command is unavailable)")
        return False


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    # overrides may come after options (`cdcl train C --work-dir D a.b=1`)
    args, extra = parser.parse_known_args(argv)
    if extra:
        if hasattr(args, "overrides") and all("=" in e and not e.startswith("-") for e in extra):
            args.overrides = list(args.overrides or []) + extra
        else:
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
    _setup_logging(args.verbose)
    from .errors import UserError
    try:
        return int(args.func(args) or 0)
    except (UserError, FileNotFoundError) as exc:  # anything else is a bug: keep its traceback
        if args.verbose:
            raise
        print(f"cdcl {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
