"""The training loop: a plain function that reads top to bottom.

``train(cfg, work_dir)`` writes::

    work_dir/cdcl.lock                   pid and host of the run that owns the folder, while it runs
    work_dir/config.yaml                 the resolved config
    work_dir/log.jsonl                   one JSON object per logged step / evaluation, each with the
                                         ``attempt`` that wrote it (1 for the first start, 2 for
                                         the next start or resume, ...; a ``start`` record opens each)
    work_dir/tb/                         TensorBoard scalars (and task images)
    work_dir/checkpoints/latest.pth      every ``train.checkpoint_every`` steps and at the end
    work_dir/checkpoints/iter_NNNNNN.pth the last ``train.keep_checkpoints`` periodic ones
    work_dir/checkpoints/best.pth        best mean mIoU over datasets
    work_dir/results.json                the final evaluation

Nothing written is lost. The work dir is checked (writable, no folder where a
file goes) and locked before any work; a second run into it is refused while
the owner lives. A checkpoint is written before the evaluation of its step:
an evaluation that fails is logged (``eval_failed``) and raised with the
weights saved. ``--resume`` continues the same run (bit-identical weights);
a run whose checkpoint is final but whose ``results.json`` is missing or
older (killed, or its evaluation failed) is resumed by evaluating only.
"""
from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
import socket
import time
from typing import Any, Dict, Optional

import torch
from torch import nn

from . import dist
from .build import (active_datasets, build_criteria, build_dataset, build_model, build_optimizer,
                    get_task, num_classes_of)
from .checkpoint import (CheckpointError, check_resumable, load_checkpoint, load_model_weights,
                         model_state, rng_state, save_checkpoint, set_rng_state)
from .config import Config, ConfigError, dump_config
from .data import InfiniteLoader, MultiLoader
from .engine import train_step
from .errors import PathError
from .evaluation import evaluate_model, results_json, summary_table
from .utils import atomic_write_bytes, path_error, seed_everything, to_device
from .workdir import WorkDirLock, claim_work_dir

logger = logging.getLogger("cdcl")


def _autocast(amp: str, device: torch.device, source: str = ""):
    if amp == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    if amp == "fp16":
        if device.type != "cuda":
            raise ConfigError(f"{source}: train.amp=fp16 needs a CUDA device; use bf16 on the CPU")
        return lambda: torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext


class _JsonLog:
    """``log.jsonl``: one JSON object a line, each marked with the attempt
    (start or resume) that wrote it, so that steps repeated after a resume
    can be told apart: the records of the highest attempt are the run's."""

    def __init__(self, path: Optional[str]) -> None:
        self.f, self.path, self.attempt = None, path, 0
        if path:
            self.attempt = _last_attempt(path) + 1
            try:
                self.f = open(path, "a", encoding="utf-8")
            except OSError as exc:
                raise path_error(exc, path, "open") from exc

    def write(self, record: Dict[str, Any]) -> None:
        if self.f:
            try:
                self.f.write(json.dumps(dict(record, attempt=self.attempt)) + "\n")
                self.f.flush()
            except OSError as exc:
                raise path_error(exc, self.path, "append to") from exc

    def close(self) -> None:
        if self.f:
            self.f.close()
            self.f = None


def _last_attempt(path: str) -> int:
    """The highest attempt in an existing log (0: none). A torn last line (a
    kill in the middle of a write) is cut off so that every line parses."""
    try:
        f = open(path, "rb+")
    except FileNotFoundError:
        return 0
    except OSError as exc:
        raise path_error(exc, path, "open") from exc
    with f:
        data = f.read()
        if data and not data.endswith(b"\n"):
            data = data[:data.rfind(b"\n") + 1]
            f.truncate(len(data))
    for line in reversed(data.splitlines()):
        if b'"attempt"' in line:
            try:
                return int(json.loads(line)["attempt"])
            except (ValueError, KeyError, TypeError):
                continue
    return 0


def _resolve_resume(resume: Optional[str], work_dir: str) -> Optional[str]:
    if resume is None:
        return None
    if resume == "auto":
        path = os.path.join(work_dir, "checkpoints", "latest.pth")
        if os.path.isfile(path):
            return path
        logger.info("--resume auto: no checkpoint in %s yet, starting at step 0", work_dir)
        return None
    return resume


def restore_scaler(scaler: Optional[torch.amp.GradScaler], state: Dict[str, Any], path: str) -> None:
    """The fp16 gradient scaler from a checkpoint. One written without
    ``train.amp=fp16`` has none: a fresh scaler then calibrates itself within
    a few steps (those whose gradients overflow are skipped), a warning says so."""
    if scaler is None:
        return
    saved = state.get("scaler")
    if saved:
        scaler.load_state_dict(saved)
    else:
        logger.warning("%s holds no fp16 gradient-scaler state (written without train.amp=fp16): "
                       "starting a fresh scaler (scale %g)", path, scaler.get_scale())


def _claim_work_dir(work_dir: str) -> Optional[WorkDirLock]:
    """Rank 0 checks and locks the work dir; when it refuses, every rank stops
    with its message (none is left waiting for rank 0)."""
    lock, error, refusal = None, None, None
    if dist.is_main():
        try:
            lock = claim_work_dir(work_dir)
        except Exception as exc:
            error, refusal = exc, (type(exc).__name__, str(exc))
    refusal = dist.broadcast_object(refusal)
    if refusal is None:
        return lock
    if error is not None:
        raise error
    kind, message = refusal
    if kind in ("PathError", "CheckpointError"):
        raise (PathError if kind == "PathError" else CheckpointError)(message)
    raise RuntimeError(f"rank 0 could not claim {work_dir}: {kind}: {message}")


def _results_current(work_dir: str, checkpoint: str) -> bool:
    """``results.json`` exists and was written after ``checkpoint``."""
    try:
        return os.path.getmtime(os.path.join(work_dir, "results.json")) >= os.path.getmtime(checkpoint)
    except OSError:
        return False


def train(cfg: Config, work_dir: str, resume: Optional[str] = None) -> Dict[str, Any]:
    """Train ``cfg`` into ``work_dir``; returns the final evaluation per dataset."""
    device = dist.select_device(cfg.train.device)
    autocast = _autocast(cfg.train.amp, device, cfg.source)
    distributed = dist.init_from_env(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    lock = _claim_work_dir(work_dir)  # before any work: a refused run has changed nothing
    try:
        return _train(cfg, work_dir, resume, device, distributed, autocast)
    finally:
        if lock is not None:
            lock.release()


def _train(cfg: Config, work_dir: str, resume: Optional[str], device: torch.device,
           distributed: bool, autocast) -> Dict[str, Any]:
    t = cfg.train
    main = dist.is_main()
    if t.threads:
        torch.set_num_threads(t.threads)
    # Same seed on every rank for the weights; data order is sharded by rank.
    seed_everything(t.seed)
    task = get_task(cfg)
    names = cfg.names

    # -- data, model, loss, optimiser --------------------------------------------
    train_sets = {n: build_dataset(cfg, n, cfg.data[n].train_split, True, task) for n in names}
    num_classes = {n: num_classes_of(ds) for n, ds in train_sets.items()}
    model = build_model(cfg, num_classes, task).to(device)
    if cfg.strategy.sync_bn and distributed:
        from .sync_bn import convert_sync_batchnorm
        model = convert_sync_batchnorm(model)
    criteria = build_criteria(cfg, train_sets, task)
    optimizer, scheduler = build_optimizer(cfg, model)
    if distributed:  # identical weights everywhere, different dropout per rank
        seed_everything(t.seed + 1000 * dist.rank())
    loaders = MultiLoader({
        n: InfiniteLoader(train_sets[n], cfg.data[n].batch_size, seed=t.seed * 1000 + i,
                          collate_fn=task.collate_fn(n, cfg.data[n].as_dict()),
                          num_workers=cfg.data[n].num_workers, rank=dist.rank(),
                          world_size=dist.world_size(), pin_memory=device.type == "cuda")
        for i, n in enumerate(names)}, reference=t.reference)
    weights = {n: cfg.data[n].loss_weight for n in names}
    scaler = torch.amp.GradScaler("cuda") if t.amp == "fp16" else None

    # -- resume: every check before anything in the work dir changes --------------
    start, best = 0, -1.0
    ckpt_dir = os.path.join(work_dir, "checkpoints")
    latest = os.path.join(ckpt_dir, "latest.pth")
    resume_path = _resolve_resume(resume, work_dir)
    if resume_path:
        state = load_checkpoint(resume_path, map_location=device)
        check_resumable(state, resume_path)
        load_model_weights(model, state, resume_path, num_classes, cfg.to_dict())
        try:
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
        except (ValueError, KeyError, RuntimeError) as exc:
            raise CheckpointError(f"cannot resume from {resume_path}: its optimizer state does not fit "
                                  f"this config's optimizer ({exc})") from None
        loaders.load_state_dict(state["loaders"])
        restore_scaler(scaler, state, resume_path)
        start, best = int(state["step"]), float(state.get("best_miou", -1.0))
        if "rng" in state and not distributed:
            set_rng_state(state["rng"])
        if main:
            logger.info("resumed from %s at step %d", resume_path, start)
    finished = start >= t.iterations
    if finished:  # nothing left to train: evaluate unless results.json came after the checkpoint
        previous = None
        if main and _results_current(work_dir, resume_path):
            with open(os.path.join(work_dir, "results.json"), encoding="utf-8") as f:
                previous = json.load(f)
            logger.info("run finished at step %d; its results are in %s", start,
                        os.path.join(work_dir, "results.json"))
        previous = dist.broadcast_object(previous)
        if previous is not None:
            return previous
    elif main and os.path.isfile(latest) and not resume_path:
        logger.warning("%s holds a checkpoint; this run starts again at step 0 and replaces it "
                       "(--resume auto continues it instead)", work_dir)

    ddp_model: nn.Module = model
    if distributed:
        # DAT runs several forwards before one backward; branches of datasets
        # that sit out a step (finetune, sequential) get no gradient.
        find_unused = cfg.strategy.name == "finetune" or t.mode == "sequential"
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused)

    # -- logging (rank 0 only) -----------------------------------------------------
    writer, jlog, bar = None, _JsonLog(None), None
    if main:
        dump_config(cfg, os.path.join(work_dir, "config.yaml"))
        jlog = _JsonLog(os.path.join(work_dir, "log.jsonl"))
        jlog.write({"step": start, "type": "start", "resumed_from": resume_path,
                    "iterations": t.iterations, "world_size": dist.world_size(), "pid": os.getpid(),
                    "host": socket.gethostname(), "time": time.strftime("%Y-%m-%d %H:%M:%S")})
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(os.path.join(work_dir, "tb"))
        except ImportError:  # tensorboard is an install requirement; keep training without it
            logger.warning("tensorboard not installed: no TensorBoard logs")
        if t.progress and not finished:
            from tqdm import tqdm
            bar = tqdm(total=t.iterations, initial=start, dynamic_ncols=True, desc="train")
    val_sets: Dict[str, Any] = {}

    def checkpoint(step: int, *paths: str) -> None:
        save_checkpoint({
            "model": model_state(model), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "step": step, "best_miou": best,
            "loaders": loaders.state_dict(), "rng": rng_state(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "num_classes": num_classes, "config": _config_text(cfg),
        }, *paths)

    def evaluate(step: int) -> Dict[str, Any]:
        rng = rng_state()  # evaluating never moves training's random streams
        try:
            for n in cfg.eval_names:  # trained datasets, then unseen ones (through their branch)
                if n not in val_sets:
                    val_sets[n] = build_dataset(cfg, n, cfg.data[n].val_split, False, task)
            results = evaluate_model(cfg, model, device, val_sets, task)
            record = {"step": step, "type": "eval"}
            for n, r in results.items():
                record[f"{n}/miou"] = r["miou"]
                record[f"{n}/acc"] = r["acc"]
                if writer:
                    for var, s in r["variants"].items():
                        writer.add_scalar(f"val/{n}/miou_{var}", s["miou"], step)
                        writer.add_scalar(f"val/{n}/acc_{var}", s["acc"], step)
            if writer and t.tb_images and hasattr(task, "log_images"):
                try:
                    task.log_images(writer, model, val_sets, cfg, device, step)
                except Exception as exc:  # pictures must never stop a run
                    logger.warning("TensorBoard images failed: %s", exc)
            jlog.write(record)
            return results
        finally:
            set_rng_state(rng)

    def evaluate_and_keep_best(step: int, latest_saved: bool) -> Dict[str, Any]:
        """Evaluate; a failure is logged and raised with the weights of ``step``
        saved in latest.pth; a new best goes to best.pth (and to latest.pth
        when that holds this step, so that a resume knows the best)."""
        nonlocal best
        try:
            results = evaluate(step)
        except Exception as exc:
            if main:
                if not latest_saved:
                    checkpoint(step, latest)
                jlog.write({"step": step, "type": "eval_failed", "error": f"{type(exc).__name__}: {exc}"})
                logger.error("evaluation at step %d failed; the weights of step %d are saved in %s: "
                             "once the cause is fixed, `cdcl train %s --work-dir %s --resume auto` "
                             "continues from them", step, step, latest, cfg.source or "CONFIG", work_dir)
            raise
        mean_miou = sum(results[n]["miou"] for n in names) / len(names)  # trained datasets
        if main and mean_miou > best:
            best = mean_miou
            checkpoint(step, os.path.join(ckpt_dir, "best.pth"), *([latest] if latest_saved else []))
        return results

    # -- the loop ------------------------------------------------------------------
    results: Dict[str, Any] = {}
    t0 = time.time()
    try:
        for step in range(start, t.iterations):
            batches = to_device(loaders.next(active_datasets(cfg, step)), device)
            losses = train_step(ddp_model, batches, criteria, optimizer, t.mode, weights,
                                forward=task.forward, autocast=autocast, scaler=scaler,
                                clip_grad=t.clip_grad, on_nonfinite=t.on_nonfinite, step=step)
            scheduler.step()
            done = step + 1
            skipped = any(math.isnan(v) for v in losses.values())
            if skipped and main:
                logger.warning("step %d skipped: non-finite loss %s", step, losses)

            if main and (done % t.log_every == 0 or done == t.iterations or skipped):
                lr = optimizer.param_groups[0]["lr"]
                record = {"step": done, "type": "train", "lr": lr, "epoch": round(loaders.epoch, 4),
                          "time": round(time.time() - t0, 3), "skipped": skipped}
                record.update({f"loss/{n}": v for n, v in losses.items()})
                jlog.write(record)
                if writer:
                    writer.add_scalar("train/lr", lr, done)
                    for n, v in losses.items():
                        writer.add_scalar(f"train/loss_{n}", v, done)
            if bar is not None:
                bar.update(1)
                bar.set_postfix({n: f"{v:.3f}" for n, v in losses.items()})

            last = done == t.iterations
            periodic = done % t.checkpoint_every == 0
            if main and (periodic or last):
                checkpoint(done, latest)  # the weights are safe before any evaluation
            if (t.eval_every and done % t.eval_every == 0) or last:
                results = evaluate_and_keep_best(done, latest_saved=periodic or last)
            if main and periodic and not last and t.keep_checkpoints > 0:
                checkpoint(done, os.path.join(ckpt_dir, f"iter_{done:06d}.pth"))
                for old in sorted(glob.glob(os.path.join(ckpt_dir, "iter_*.pth")))[:-t.keep_checkpoints]:
                    os.remove(old)
            if distributed and (last or periodic):
                dist.barrier()  # no rank runs ahead of a checkpoint being written

        if finished:  # resumed from the final checkpoint: its evaluation is missing
            if main and os.path.abspath(resume_path) != os.path.abspath(latest):
                checkpoint(start, latest)
            results = evaluate_and_keep_best(start, latest_saved=True)

        if distributed:
            same = dist.replicas_identical(model)
            if main:
                jlog.write({"step": t.iterations, "type": "ddp", "world_size": dist.world_size(),
                            "replicas_identical": same})
                if not same:
                    logger.error("DDP replicas hold different weights at the end of training")
        if bar is not None:
            bar.close()
            bar = None
        if main and results:
            print(summary_table(results))
            atomic_write_bytes(os.path.join(work_dir, "results.json"),
                               json.dumps(results_json(results), indent=2).encode("utf-8"))
    finally:
        if bar is not None:
            bar.close()
        jlog.close()
        if writer:
            writer.close()
    return results_json(results) if results else {}


def _config_text(cfg: Config) -> str:
    import yaml
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
