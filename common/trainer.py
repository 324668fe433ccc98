"""The training loop: a plain function that reads top to bottom.

``train(cfg, work_dir)`` writes::

    work_dir/config.yaml                 the resolved config
    work_dir/log.jsonl                   one JSON object per logged step / evaluation
    work_dir/tb/                         TensorBoard scalars (and task images)
    work_dir/checkpoints/latest.pth      every ``train.checkpoint_every`` steps and at the end
    work_dir/checkpoints/iter_NNNNNN.pth the last ``train.keep_checkpoints`` periodic ones
    work_dir/checkpoints/best.pth        best mean mIoU over datasets
"""
from __future__ import annotations

import contextlib
import glob
import json
import logging
import math
import os
import time
from typing import Any, Dict, Optional

import torch
from torch import nn

from . import dist
from .build import (active_datasets, build_criteria, build_dataset, build_model, build_optimizer,
                    get_task, num_classes_of)
from .checkpoint import load_checkpoint, model_state, rng_state, save_checkpoint, set_rng_state, unwrap
from .config import Config, dump_config
from .data import InfiniteLoader, MultiLoader
from .engine import train_step
from .evaluation import evaluate_model, results_json, summary_table
from .utils import seed_everything, to_device

logger = logging.getLogger("cdcl")


def _autocast(amp: str, device: torch.device):
    if amp == "bf16":
        return lambda: torch.autocast(device.type, dtype=torch.bfloat16)
    if amp == "fp16":
        if device.type != "cuda":
            raise ValueError("train.amp=fp16 needs a CUDA device; use bf16 on the CPU")
        return lambda: torch.autocast("cuda", dtype=torch.float16)
    return contextlib.nullcontext


class _JsonLog:
    def __init__(self, path: Optional[str]) -> None:
        self.f = open(path, "a", encoding="utf-8") if path else None

    def write(self, record: Dict[str, Any]) -> None:
        if self.f:
            self.f.write(json.dumps(record) + "\n")
            self.f.flush()

    def close(self) -> None:
        if self.f:
            self.f.close()


def _resolve_resume(resume: Optional[str], work_dir: str) -> Optional[str]:
    if resume is None:
        return None
    if resume == "auto":
        path = os.path.join(work_dir, "checkpoints", "latest.pth")
        return path if os.path.isfile(path) else None
    return resume


def train(cfg: Config, work_dir: str, resume: Optional[str] = None) -> Dict[str, Any]:
    """Train ``cfg`` into ``work_dir``; returns the final evaluation per dataset."""
    t = cfg.train
    device = dist.select_device(t.device)
    distributed = dist.init_from_env(device)
    if device.type == "cuda":
        torch.cuda.set_device(device)
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
    autocast = _autocast(t.amp, device)

    # -- resume --------------------------------------------------------------------
    start, best = 0, -1.0
    resume_path = _resolve_resume(resume, work_dir)
    if resume_path:
        state = load_checkpoint(resume_path, map_location=device)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        loaders.load_state_dict(state["loaders"])
        if scaler is not None and "scaler" in state:
            scaler.load_state_dict(state["scaler"])
        start, best = int(state["step"]), float(state.get("best_miou", -1.0))
        if "rng" in state and not distributed:
            set_rng_state(state["rng"])
        if main:
            logger.info("resumed from %s at step %d", resume_path, start)

    ddp_model: nn.Module = model
    if distributed:
        # DAT runs several forwards before one backward; branches of datasets
        # that sit out a step (finetune, sequential) get no gradient.
        find_unused = cfg.strategy.name == "finetune" or t.mode == "sequential"
        ddp_model = nn.parallel.DistributedDataParallel(
            model, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=find_unused)

    # -- logging (rank 0 only) -----------------------------------------------------
    ckpt_dir = os.path.join(work_dir, "checkpoints")
    writer, jlog, bar = None, _JsonLog(None), None
    if main:
        os.makedirs(ckpt_dir, exist_ok=True)
        dump_config(cfg, os.path.join(work_dir, "config.yaml"))
        jlog = _JsonLog(os.path.join(work_dir, "log.jsonl"))
        try:
            from torch.utils.tensorboard import SummaryWriter
            writer = SummaryWriter(os.path.join(work_dir, "tb"))
        except ImportError:  # tensorboard is an install requirement; keep training without it
            logger.warning("tensorboard not installed: no TensorBoard logs")
        if t.progress:
            from tqdm import tqdm
            bar = tqdm(total=t.iterations, initial=start, dynamic_ncols=True, desc="train")
    val_sets: Dict[str, Any] = {}

    def checkpoint(step: int, path: str) -> None:
        save_checkpoint({
            "model": model_state(model), "optimizer": optimizer.state_dict(),
            "scheduler": scheduler.state_dict(), "step": step, "best_miou": best,
            "loaders": loaders.state_dict(), "rng": rng_state(),
            "scaler": scaler.state_dict() if scaler is not None else {},
            "num_classes": num_classes, "config": _config_text(cfg),
        }, path)

    def evaluate(step: int) -> Dict[str, Any]:
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

    # -- the loop ------------------------------------------------------------------
    results: Dict[str, Any] = {}
    t0 = time.time()
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
        if (t.eval_every and done % t.eval_every == 0) or last:
            results = evaluate(done)
            mean_miou = sum(results[n]["miou"] for n in names) / len(names)  # trained datasets
            if main and mean_miou > best:
                best = mean_miou
                checkpoint(done, os.path.join(ckpt_dir, "best.pth"))
        if main and (done % t.checkpoint_every == 0 or last):
            checkpoint(done, os.path.join(ckpt_dir, "latest.pth"))
            if not last and t.keep_checkpoints > 0:
                checkpoint(done, os.path.join(ckpt_dir, f"iter_{done:06d}.pth"))
                for old in sorted(glob.glob(os.path.join(ckpt_dir, "iter_*.pth")))[:-t.keep_checkpoints]:
                    os.remove(old)
        if distributed and (last or done % t.checkpoint_every == 0):
            dist.barrier()  # no rank runs ahead of a checkpoint being written

    if distributed:
        same = dist.replicas_identical(model)
        if main:
            jlog.write({"step": t.iterations, "type": "ddp", "world_size": dist.world_size(),
                        "replicas_identical": same})
            if not same:
                logger.error("DDP replicas hold different weights at the end of training")
    if bar is not None:
        bar.close()
    if main and results:
        print(summary_table(results))
        with open(os.path.join(work_dir, "results.json"), "w", encoding="utf-8") as f:
            json.dump(results_json(results), f, indent=2)
    jlog.close()
    if writer:
        writer.close()
    return results_json(results) if results else {}


def _config_text(cfg: Config) -> str:
    import yaml
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
