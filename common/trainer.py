"""The training loop: a plain function that reads top to bottom, in pieces
that each read alone: :func:`setup` (data, model, loss, optimiser into a
:class:`Run`), :func:`resume_run`, :func:`train_one_step`, :func:`evaluate`
(and :func:`evaluate_and_keep_best`), :func:`save`.

``train(cfg, work_dir)`` writes::

    work_dir/cdcl.lock                   pid and host of the run that owns the folder, while it runs
    work_dir/config.yaml                 the resolved config
    work_dir/env.json                    python, package versions, CUDA, git commit (also in the log)
    work_dir/log.jsonl                   one JSON object per logged step / evaluation, each with the
                                         ``attempt`` that wrote it (1 for the first start, 2 for
                                         the next resume, ...; a ``start`` record opens each)
    work_dir/tb/                         TensorBoard scalars (and task images)
    work_dir/checkpoints/latest.pth      every ``train.checkpoint_every`` steps and at the end
    work_dir/checkpoints/iter_NNNNNN.pth the last ``train.keep_checkpoints`` periodic ones
    work_dir/checkpoints/best.pth        best mean mIoU over datasets (``best_metric``, ``best_iter``)
    work_dir/results.json                the final evaluation

and logs (logger ``cdcl``) the work dir, the environment and the config at
start, where every checkpoint went, and every ``train.log_every`` steps one
line whose numbers are averages over the steps since the previous line::

    iter 120/2000, epoch 1.52, loss/a 0.4321, loss/b 0.5012, lr 9.4702e-03, time 0.212,
    data_time 0.004, eta 0:06:43, max_mem 812M                                (one line)

(the same record goes to ``log.jsonl``). A tqdm bar comes on top only where
stdout is a terminal (and ``train.progress``): redirected output has no carriage
returns.

A work dir that holds a run (a log or a checkpoint) is trained into again only
with ``resume`` (continue it) or ``overwrite`` (remove its outputs, start at
step 0): a second run is never appended to the first one's log by accident.
Nothing written is lost. The work dir is checked (writable, no folder where a
file goes) and locked before any work; a second run into it is refused while
the owner lives. A checkpoint is written before the evaluation of its step:
an evaluation that fails is logged (``eval_failed``) and raised with the
weights saved. ``--resume`` continues the same run (bit-identical weights);
a run whose checkpoint is final but whose ``results.json`` is missing or
older (killed, or its evaluation failed) is resumed by evaluating only. A
resume with a longer ``train.iterations`` continues on the poly schedule of
the new length. ``train.epochs`` (instead of ``train.iterations``) counts
passes over the reference dataset and is converted to iterations once, at start.
"""
from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import logging
import math
import os
import socket
import sys
import time
from typing import Any, Callable, Dict, List, Optional, Tuple

import torch
from torch import nn

from . import dist
from .build import (active_datasets, begin_stage, build_criteria, build_dataset, build_model, build_optimizer,
                    get_task, num_classes_of, strategy_of)
from .checkpoint import (CheckpointError, check_resumable, load_checkpoint, load_model_weights,
                         model_state, rng_state, save_checkpoint, set_rng_state)
from .config import Config, ConfigError, TrainConfig, dump_config
from .data import InfiniteLoader, MultiLoader, loader_seed
from .engine import train_step
from .environment import collect_env, format_env
from .errors import PathError
from .evaluation import evaluate_model, results_json, summary_table
from .report import save_eval_artifacts
from .progress import interactive
from .task import Task
from .utils import atomic_write_bytes, path_error, seed_everything, to_device
from .workdir import WorkDirLock, claim_work_dir, refuse_previous_run, remove_previous_run

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


def _claim_work_dir(work_dir: str, new_run: bool = False) -> Optional[WorkDirLock]:
    """Rank 0 checks and locks the work dir (and, for a ``new_run``, refuses one
    that holds a run); when it refuses, every rank stops with its
    message (none is left waiting for rank 0)."""
    lock, error, refusal = None, None, None
    if dist.is_main():
        try:
            lock = claim_work_dir(work_dir)
            if new_run:
                refuse_previous_run(work_dir)
        except Exception as exc:
            if lock is not None:
                lock.release()
                lock = None
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


def iterations_for(cfg: Config, loaders: MultiLoader) -> int:
    """``train.iterations``, or ``train.epochs`` converted once: epochs of the
    reference dataset (``train.reference``, default the first) times its
    batches per epoch (what its loader draws: samples // (batch size x
    processes), the tail dropped as SalsaNext's loader does), rounded up."""
    t = cfg.train
    if t.epochs is None:
        return int(t.iterations)
    ref = loaders.loaders[loaders.reference]
    per_epoch = ref.batches_per_epoch()
    iterations = max(1, math.ceil(round(t.epochs * per_epoch, 6)))
    if dist.is_main():
        logger.info("train.epochs %g of %s: %d samples / (batch %d x %d process%s) = %d iterations an epoch "
                    "-> %d iterations", t.epochs, loaders.reference, len(ref.dataset), ref.batch_size,
                    ref.world_size, "es" if ref.world_size > 1 else "", per_epoch, iterations)
    return iterations


def continue_schedule(optimizer: torch.optim.Optimizer, scheduler, step: int,
                      saved_iterations: Optional[int], iterations: int) -> None:
    """After a resume at ``step``: put the lr of this config's schedule at
    ``step`` into the optimizer. The restored optimizer holds the lr that
    the checkpoint's schedule set (0.0 at the end of a finished run); a
    resume with a longer ``train.iterations`` continues on the poly schedule
    of the new length (a line says so). Unchanged schedules are left as they are."""
    lrs = [base * f(step) for base, f in zip(scheduler.base_lrs, scheduler.lr_lambdas)]
    before = [g["lr"] for g in optimizer.param_groups]
    if lrs == before:
        return
    for group, lr in zip(optimizer.param_groups, lrs):
        group["lr"] = lr
    scheduler._last_lr = list(lrs)
    if not dist.is_main():
        return
    if saved_iterations is not None and saved_iterations != iterations:
        logger.info("resumed at step %d of a %d-iteration run; train.iterations is now %d: the lr follows the "
                    "poly schedule of %d iterations (lr %.4e at step %d, was %.4e)", step, saved_iterations,
                    iterations, iterations, lrs[0], step, before[0])
    else:
        logger.info("resumed at step %d: this config's lr schedule gives lr %.4e there (the checkpoint's "
                    "gave %.4e); continuing with it", step, lrs[0], before[0])


def _saved_iterations(state: Dict[str, Any]) -> Optional[int]:
    """The length of the run a checkpoint was written by (older checkpoints: from its config)."""
    if isinstance(state.get("iterations"), int):
        return state["iterations"]
    try:
        import yaml
        value = yaml.safe_load(state.get("config") or "")["train"]["iterations"]
        return int(value) if value is not None else None
    except Exception:  # an odd checkpoint: no number to report
        return None


def memory_mb(device: torch.device) -> Dict[str, float]:
    """``max_rss_mb`` (this process's peak resident memory; not its loader
    workers) and, on CUDA, ``max_cuda_mb`` (peak memory allocated by tensors)."""
    out: Dict[str, float] = {}
    try:
        import resource
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        out["max_rss_mb"] = round(rss / (2 ** 20 if sys.platform == "darwin" else 2 ** 10), 1)
    except (ImportError, OSError):  # no resource module (Windows)
        pass
    if device.type == "cuda":
        out["max_cuda_mb"] = round(torch.cuda.max_memory_allocated(device) / 2 ** 20, 1)
    return out


class LossWindow:
    """The steps since the last log line: per-dataset losses, seconds per
    iteration and seconds waiting for data, averaged when the line is written.
    Non-finite losses (steps skipped under ``on_nonfinite: skip``) are left out
    of the mean; a dataset with none finite reads NaN."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.losses: Dict[str, List[float]] = {}
        self.steps, self.iter_time, self.data_time, self.skipped = 0, 0.0, 0.0, 0

    def add(self, losses: Dict[str, float], iter_time: float, data_time: float, skipped: bool) -> None:
        for n, v in losses.items():
            self.losses.setdefault(n, []).append(v)
        self.steps += 1
        self.iter_time += iter_time
        self.data_time += data_time
        self.skipped += int(skipped)

    def summary(self) -> Dict[str, Any]:
        """``{"loss/<dataset>": mean, "iter_time", "data_time": mean seconds,
        "window": steps, "skipped_steps": steps skipped}``."""
        out: Dict[str, Any] = {}
        for n, values in self.losses.items():
            finite = [v for v in values if math.isfinite(v)]
            out[f"loss/{n}"] = sum(finite) / len(finite) if finite else math.nan
        steps = max(1, self.steps)
        out.update({"iter_time": round(self.iter_time / steps, 4), "data_time": round(self.data_time / steps, 4),
                    "window": self.steps, "skipped_steps": self.skipped})
        return out


def format_train_line(record: Dict[str, Any], iterations: int) -> str:
    """The text log line of a ``train`` record: ``iter 120/2000, epoch 1.52,
    loss/a 0.4321, ..., lr 9.4702e-03, time 0.212, data_time 0.004, eta 0:06:43,
    max_mem 812M`` (``key value`` pairs after ``iter``, joined by ``, ``)."""
    from .progress import format_seconds

    parts = [f"iter {record['step']}/{iterations}", f"epoch {record['epoch']:.2f}"]
    parts += [f"{k} {v:.4f}" for k, v in record.items() if k.startswith("loss/")]
    parts += [f"lr {record['lr']:.4e}", f"time {record['iter_time']:.3f}",
              f"data_time {record['data_time']:.3f}", f"eta {format_seconds(record['eta_s'])}"]
    if "max_rss_mb" in record:
        parts.append(f"max_mem {record['max_rss_mb']:.0f}M")
    if "max_cuda_mb" in record:
        parts.append(f"cuda_mem {record['max_cuda_mb']:.0f}M")
    if record.get("skipped_steps"):
        parts.append(f"skipped {record['skipped_steps']}")
    return ", ".join(parts)


def train(cfg: Config, work_dir: str, resume: Optional[str] = None, overwrite: bool = False) -> Dict[str, Any]:
    """Train ``cfg`` into ``work_dir``; returns the final evaluation per dataset.

    ``resume``: a checkpoint, or ``"auto"`` (the work dir's latest); ``overwrite``:
    remove a previous run's outputs from ``work_dir`` and start at step 0. A work
    dir that holds a run needs one of the two (:class:`PathError` otherwise)."""
    if resume and overwrite:
        raise ValueError("train: resume and overwrite exclude each other")
    device = dist.select_device(cfg.train.device)
    autocast = _autocast(cfg.train.amp, device, cfg.source)
    owns_group = not dist.is_distributed()  # a process group made here is destroyed here
    distributed = dist.init_from_env(device)
    ok = False
    try:
        results = _train(cfg, work_dir, resume, overwrite, device, autocast, distributed)
        ok = True
        return results
    finally:  # left to the interpreter's exit, gloo's threads can abort it ("terminate called ...")
        if owns_group:
            dist.cleanup(wait=ok)


def _train(cfg: Config, work_dir: str, resume: Optional[str], overwrite: bool, device: torch.device,
           autocast, distributed: bool) -> Dict[str, Any]:
    if device.type == "cuda":
        torch.cuda.set_device(device)
    # before any work: a refused run has changed nothing
    lock = _claim_work_dir(work_dir, new_run=not resume and not overwrite)
    try:
        run = setup(cfg, work_dir, device, autocast)
        resume_run(run, resume)  # every check before anything in the work dir changes
        finished = run.start >= run.t.iterations
        if finished:  # nothing left to train: evaluate unless results.json came after the checkpoint
            previous = _current_results(run)
            if previous is not None:
                return previous
        model = run.model
        if distributed:  # datasets that sit out a step (a switching strategy, sequential mode): no gradient
            model = nn.parallel.DistributedDataParallel(
                model, device_ids=[device.index] if device.type == "cuda" else None,
                find_unused_parameters=strategy_of(cfg).find_unused or run.t.mode == "sequential")
        if dist.is_main():
            if overwrite:
                remove_previous_run(work_dir)
            _start_log(run, finished)
        return _train_loop(run, model, finished)
    finally:
        if lock is not None:
            lock.release()


@dataclasses.dataclass
class Run:
    """One training run: what :func:`setup` builds, :func:`resume_run`
    restores and every step, checkpoint and evaluation then reads or moves on."""

    cfg: Config
    t: TrainConfig  # cfg.train with the run's length in iterations (train.epochs converted)
    work_dir: str
    device: torch.device
    autocast: Callable[[], Any]
    task: Task
    loaders: MultiLoader
    model: nn.Module  # the plain module (DDP wraps it for the steps only)
    criteria: Dict[str, Callable]
    optimizer: torch.optim.Optimizer
    scheduler: Any
    scaler: Optional[torch.amp.GradScaler]
    num_classes: Dict[str, int]
    start: int = 0
    best: float = -1.0
    best_iter: Optional[int] = None
    resume_path: Optional[str] = None
    jlog: _JsonLog = dataclasses.field(default_factory=lambda: _JsonLog(None))
    writer: Any = None  # TensorBoard, rank 0
    val_sets: Dict[str, Any] = dataclasses.field(default_factory=dict)  # built at the first evaluation

    @property
    def latest(self) -> str:
        return os.path.join(self.work_dir, "checkpoints", "latest.pth")


def setup(cfg: Config, work_dir: str, device: torch.device, autocast: Callable[[], Any]) -> Run:
    """Data, model, loss and optimiser for ``cfg`` (the same seed on every rank
    for the weights; the data order is sharded by rank)."""
    if cfg.train.threads:
        torch.set_num_threads(cfg.train.threads)
    seed_everything(cfg.train.seed)
    task = get_task(cfg)
    names = cfg.names
    train_sets = {n: build_dataset(cfg, n, cfg.data[n].train_split, True, task) for n in names}
    num_classes = {n: num_classes_of(ds) for n, ds in train_sets.items()}
    loaders = MultiLoader({
        n: InfiniteLoader(train_sets[n], cfg.data[n].batch_size, seed=loader_seed(cfg.train.seed, n),
                          collate_fn=task.collate_fn(n, cfg.data[n].as_dict()),
                          num_workers=cfg.data[n].num_workers, rank=dist.rank(),
                          world_size=dist.world_size(), pin_memory=device.type == "cuda")
        for n in names}, reference=cfg.train.reference)
    # the run's length in iterations (train.epochs converted once); cfg keeps what was written
    t = dataclasses.replace(cfg.train, iterations=iterations_for(cfg, loaders))
    model = build_model(cfg, num_classes, task).to(device)
    if cfg.strategy.sync_bn and dist.is_distributed():
        from .sync_bn import convert_sync_batchnorm
        model = convert_sync_batchnorm(model)
    optimizer, scheduler = build_optimizer(dataclasses.replace(cfg, train=t), model)
    if dist.is_distributed():  # identical weights everywhere, different dropout per rank
        seed_everything(t.seed + 1000 * dist.rank())
    return Run(cfg=cfg, t=t, work_dir=work_dir, device=device, autocast=autocast, task=task, loaders=loaders,
               model=model, criteria=build_criteria(cfg, train_sets, task), optimizer=optimizer,
               scheduler=scheduler, scaler=torch.amp.GradScaler("cuda") if t.amp == "fp16" else None,
               num_classes=num_classes)


def resume_run(run: Run, path: Optional[str]) -> None:
    """Weights, optimiser, schedule, data order, scaler, step, best and RNG
    from the checkpoint ``path`` (``"auto"``: the work dir's latest, if any;
    None: start at step 0)."""
    if path == "auto":
        path = run.latest if os.path.isfile(run.latest) else None
        if path is None:
            logger.info("--resume auto: no checkpoint in %s yet, starting at step 0", run.work_dir)
    if not path:
        return
    state = load_checkpoint(path, map_location=run.device)
    check_resumable(state, path)
    load_model_weights(run.model, state, path, run.num_classes, run.cfg.to_dict())
    try:
        run.optimizer.load_state_dict(state["optimizer"])
        run.scheduler.load_state_dict(state["scheduler"])
    except (ValueError, KeyError, RuntimeError) as exc:
        raise CheckpointError(f"cannot resume from {path}: its optimizer state does not fit "
                              f"this config's optimizer ({exc})") from None
    run.loaders.load_state_dict(state["loaders"])
    restore_scaler(run.scaler, state, path)
    run.start, run.best = int(state["step"]), float(state.get("best_miou", -1.0))
    run.best_iter, run.resume_path = state.get("best_iter"), path
    if "rng" in state and not dist.is_distributed():
        set_rng_state(state["rng"])
    if dist.is_main():
        logger.info("resumed from %s at step %d", path, run.start)
    if run.start < run.t.iterations:
        continue_schedule(run.optimizer, run.scheduler, run.start, _saved_iterations(state), run.t.iterations)


def _current_results(run: Run) -> Optional[Dict[str, Any]]:
    """A finished run's ``results.json`` when it came after its final checkpoint
    (None: the evaluation is missing); every rank gets rank 0's answer."""
    previous, path = None, os.path.join(run.work_dir, "results.json")
    if dist.is_main() and os.path.isfile(path) and os.path.getmtime(path) >= os.path.getmtime(run.resume_path):
        with open(path, encoding="utf-8") as f:
            previous = json.load(f)
        logger.info("run finished at step %d; its results are in %s", run.start, path)
    return dist.broadcast_object(previous)


def _start_log(run: Run, finished: bool) -> None:
    """Rank 0: save the config and the environment, open ``log.jsonl`` with a
    ``start`` record, log the work dir, the environment, the config and what
    the steps will be; TensorBoard."""
    cfg, t, work_dir = run.cfg, run.t, run.work_dir
    env = collect_env(run.device)
    config_path = os.path.join(work_dir, "config.yaml")
    dump_config(cfg, config_path)
    atomic_write_bytes(os.path.join(work_dir, "env.json"), json.dumps(env, indent=2).encode("utf-8"))
    run.jlog = _JsonLog(os.path.join(work_dir, "log.jsonl"))
    logger.info("work dir %s (attempt %d)", os.path.abspath(work_dir), run.jlog.attempt)
    logger.info("environment: %s", format_env(env))
    logger.info("config (saved to %s):\n%s", config_path, _config_text(cfg).rstrip())
    run.jlog.write({"step": run.start, "type": "start", "resumed_from": run.resume_path,
                    "iterations": t.iterations, "epochs": cfg.train.epochs, "world_size": dist.world_size(),
                    "pid": os.getpid(), "host": socket.gethostname(), "time": time.strftime("%Y-%m-%d %H:%M:%S"),
                    "work_dir": os.path.abspath(work_dir), "env": env})
    if not finished:
        batches = ", ".join(f"{n} (batch {cfg.data[n].batch_size})" for n in cfg.names)
        logger.info("training steps %d-%d of %d: %s; a log line every %d steps, losses averaged over them",
                    run.start + 1, t.iterations, t.iterations, batches, t.log_every)
    try:
        from torch.utils.tensorboard import SummaryWriter
        run.writer = SummaryWriter(os.path.join(work_dir, "tb"))
    except ImportError:  # tensorboard is an install requirement; keep training without it
        logger.warning("tensorboard not installed: no TensorBoard logs")


def _train_loop(run: Run, model: nn.Module, finished: bool) -> Dict[str, Any]:
    """Steps ``run.start`` .. ``iterations``: each one trained, logged, then
    checkpointed and evaluated when due; then the final results."""
    t, main = run.t, dist.is_main()
    results: Dict[str, Any] = {}
    window = LossWindow()  # the steps since the last log line
    spent, steps_run = 0.0, 0  # seconds in training steps this attempt (for the eta)
    t0 = time.time()
    with contextlib.ExitStack() as stack:
        bar = None
        if main and t.progress and not finished and interactive():
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm
            bar = tqdm(total=t.iterations, initial=run.start, dynamic_ncols=True, desc="train")
            stack.enter_context(logging_redirect_tqdm())  # log lines go above the bar, not through it
            stack.callback(bar.close)
        stack.callback(run.jlog.close)
        if run.writer:
            stack.callback(run.writer.close)

        for step in range(run.start, t.iterations):
            lr = run.optimizer.param_groups[0]["lr"]  # the lr of this step
            losses, iter_time, data_time = train_one_step(run, model, step)
            done = step + 1
            skipped = any(math.isnan(v) for v in losses.values())
            window.add(losses, iter_time, data_time, skipped)
            spent, steps_run = spent + iter_time, steps_run + 1
            if skipped and main:
                logger.warning("step %d skipped: non-finite loss %s", step, losses)
            if done % t.log_every == 0 or done == t.iterations or skipped:
                if main:
                    _log_train(run, {"step": done, "type": "train", "lr": lr,
                                     "epoch": round(run.loaders.epoch, 4), "time": round(time.time() - t0, 3),
                                     "skipped": skipped, **window.summary(),
                                     "eta_s": round(spent / steps_run * (t.iterations - done), 1),
                                     **memory_mb(run.device)})
                window.reset()  # on every rank: the others only count
            if bar is not None:
                bar.update(1)
                bar.set_postfix({n: f"{v:.3f}" for n, v in losses.items()})
            results = _checkpoint_and_evaluate(run, done) or results

        if finished:  # resumed from the final checkpoint: its evaluation is missing
            if main and os.path.abspath(run.resume_path) != os.path.abspath(run.latest):
                save(run, run.start, run.latest)
            results = evaluate_and_keep_best(run, run.start, latest_saved=True)
        if bar is not None:
            bar.close()  # before the summary table
        _finish(run, results)
    return results_json(results) if results else {}


def train_one_step(run: Run, model: nn.Module, step: int) -> Tuple[Dict[str, float], float, float]:
    """One optimisation step of the active datasets; returns the losses (NaN:
    skipped), the step's seconds and the seconds spent waiting for data."""
    t = run.t
    if step in (run.start, run.cfg.strategy.switch_at):  # a switching strategy's stage 2: B's BN, frozen convs
        begin_stage(run.model, run.cfg, step)
    tic = time.perf_counter()
    batches = to_device(run.loaders.next(active_datasets(run.cfg, step)), run.device)
    data_time = time.perf_counter() - tic
    losses = train_step(model, batches, run.criteria, run.optimizer, t.mode,
                        {n: run.cfg.data[n].loss_weight for n in run.cfg.names}, forward=run.task.forward,
                        autocast=run.autocast, scaler=run.scaler, clip_grad=t.clip_grad,
                        on_nonfinite=t.on_nonfinite, step=step)
    run.scheduler.step()
    return losses, time.perf_counter() - tic, data_time


def _log_train(run: Run, record: Dict[str, Any]) -> None:
    """A ``train`` record: log.jsonl, the text log line, TensorBoard."""
    run.jlog.write(record)
    logger.info("%s", format_train_line(record, run.t.iterations))
    if run.writer:
        for key in ("lr", "iter_time", "data_time") + tuple(k for k in record if k.startswith("loss/")):
            run.writer.add_scalar(f"train/{key.replace('/', '_')}", record[key], record["step"])


def _checkpoint_and_evaluate(run: Run, done: int) -> Optional[Dict[str, Any]]:
    """After step ``done``: the checkpoints that are due (latest.pth before any
    evaluation, so that the weights are safe), the evaluation when due (its
    results, else None) and the rotation of ``iter_*.pth``."""
    t, main = run.t, dist.is_main()
    last = done == t.iterations
    periodic = done % t.checkpoint_every == 0
    if main and (periodic or last):
        save(run, done, run.latest)
    results = None
    if (t.eval_every and done % t.eval_every == 0) or last:
        results = evaluate_and_keep_best(run, done, latest_saved=periodic or last)
    if main and periodic and not last and t.keep_checkpoints > 0:
        ckpt_dir = os.path.dirname(run.latest)
        save(run, done, os.path.join(ckpt_dir, f"iter_{done:06d}.pth"))
        for old in sorted(glob.glob(os.path.join(ckpt_dir, "iter_*.pth")))[:-t.keep_checkpoints]:
            os.remove(old)
    if dist.is_distributed() and (last or periodic):
        dist.barrier()  # no rank runs ahead of a checkpoint being written
    return results


def save(run: Run, step: int, *paths: str, quiet: bool = False) -> None:
    """A checkpoint of ``step`` to each of ``paths`` (atomically)."""
    save_checkpoint({
        "model": model_state(run.model), "optimizer": run.optimizer.state_dict(),
        "scheduler": run.scheduler.state_dict(), "step": step, "iterations": run.t.iterations,
        "best_miou": run.best, "best_metric": run.best, "best_iter": run.best_iter,
        "loaders": run.loaders.state_dict(), "rng": rng_state(),
        "scaler": run.scaler.state_dict() if run.scaler is not None else {},
        "num_classes": run.num_classes, "config": _config_text(run.cfg),
    }, *paths)
    if not quiet:
        logger.info("checkpoint of iter %d saved to %s", step, ", ".join(paths))


def evaluate(run: Run, step: int) -> Dict[str, Any]:
    """Every dataset of the config (trained, then unseen ones through their
    branch) at ``step``: logged, TensorBoard scalars and images; training's
    random streams are left where they were."""
    cfg, main = run.cfg, dist.is_main()
    rng = rng_state()
    try:
        for n in cfg.eval_names:
            if n not in run.val_sets:
                run.val_sets[n] = build_dataset(cfg, n, cfg.data[n].val_split, False, run.task)
        results = evaluate_model(cfg, run.model, run.device, run.val_sets, run.task)
        record = {"step": step, "type": "eval"}
        for n, r in results.items():
            record[f"{n}/miou"] = r["miou"]
            record[f"{n}/acc"] = r["acc"]
            if run.writer:
                for var, s in r["variants"].items():
                    run.writer.add_scalar(f"val/{n}/miou_{var}", s["miou"], step)
                    run.writer.add_scalar(f"val/{n}/acc_{var}", s["acc"], step)
        if run.writer and run.t.tb_images:
            try:
                run.task.log_images(run.writer, run.model, run.val_sets, cfg, run.device, step)
            except Exception as exc:  # pictures must never stop a run
                logger.warning("TensorBoard images failed: %s", exc)
        run.jlog.write(record)
        if main:
            logger.info("eval at iter %d: %s", step,
                        ", ".join(f"{n} mIoU {r['miou']:.4f}" for n, r in results.items()))
        return results
    finally:
        set_rng_state(rng)


def evaluate_and_keep_best(run: Run, step: int, latest_saved: bool) -> Dict[str, Any]:
    """Evaluate; a failure is logged and raised with the weights of ``step``
    saved in latest.pth; a new best goes to best.pth (and to latest.pth
    when that holds this step, so that a resume knows the best)."""
    names, main = run.cfg.names, dist.is_main()
    try:
        results = evaluate(run, step)
    except Exception as exc:
        if main:
            if not latest_saved:
                save(run, step, run.latest)
            run.jlog.write({"step": step, "type": "eval_failed", "error": f"{type(exc).__name__}: {exc}"})
            logger.error("evaluation at step %d failed; the weights of step %d are saved in %s: "
                         "once the cause is fixed, `cdcl train %s --work-dir %s --resume auto` "
                         "continues from them", step, step, run.latest, run.cfg.source or "CONFIG", run.work_dir)
        raise
    mean_miou = sum(results[n]["miou"] for n in names) / len(names)  # trained datasets
    if main and mean_miou > run.best:
        run.best, run.best_iter = mean_miou, step
        path = os.path.join(os.path.dirname(run.latest), "best.pth")
        save(run, step, path, *([run.latest] if latest_saved else []), quiet=True)
        logger.info("best mIoU %.4f at iter %d saved to %s%s", run.best, step, path,
                    f" (mean over {', '.join(names)})" if len(names) > 1 else "")
    return results


def _finish(run: Run, results: Dict[str, Any]) -> None:
    """Under DDP, check that the replicas agree; rank 0 prints the summary and
    writes ``results.json`` and the confusion matrices."""
    main = dist.is_main()
    if dist.is_distributed():
        same = dist.replicas_identical(run.model)
        if main:
            run.jlog.write({"step": run.t.iterations, "type": "ddp", "world_size": dist.world_size(),
                            "replicas_identical": same})
            if not same:
                logger.error("DDP replicas hold different weights at the end of training")
    if main and results:
        print(summary_table(results))
        atomic_write_bytes(os.path.join(run.work_dir, "results.json"),
                           json.dumps(results_json(results), indent=2).encode("utf-8"))
        save_eval_artifacts(results, run.work_dir)  # confusion matrices (.npy, .png) and IoU charts


def _config_text(cfg: Config) -> str:
    import yaml
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
