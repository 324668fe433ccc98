"""``cdcl study``: a grid of configs x seeds as ordinary trainings, and a report.

A study file is YAML with the same ``_base_`` and override rules as a config
(read with :func:`common.config.load_yaml`)::

    title: LiDAR, generated data
    seeds: [0, 1, 2]
    datasets: [semantickitti, nuscenes]      # the datasets reported
    baseline: single                          # a method label (per dataset: the method that trains it)
    iterations: 150                           # steps each dataset is trained (the fairness rule, below)
    overrides: [train.progress=false]         # dotted overrides for every run
    methods:                                  # name -> config (relative to this file) + overrides
      single_kitti: {config: ../3d/synth_single_semantickitti.yaml, label: single}
      single_nusc:  {config: ../3d/synth_single_nuscenes.yaml, label: single}
      cdcl:         {config: ../3d/synth_cdcl.yaml, label: CDCL, flags: {Conv: shared, BN: specific, DAT: "yes"}}
      no_dat:       {config: ../3d/synth_cdcl.yaml, overrides: [train.mode=sequential]}
    tables:                                   # rows: method labels; columns: datasets
      - {title: "Table 3", rows: [single, no_dat, CDCL], columns: [semantickitti, nuscenes], flags: [Conv, BN, DAT]}

``overrides`` of a method is a list of ``key=value`` strings or a mapping
merged over the config (for values with integer keys, e.g. a label map).
Methods sharing a ``label`` form one table row (the single-dataset runs).

Every run is an ordinary ``cdcl train`` (a subprocess) of the resolved config
``DIR/configs/<method>/seed<k>.yaml`` into ``DIR/runs/<method>/seed<k>/``,
always with ``--resume auto``: a run whose ``results.json`` is present and
newer than its last checkpoint, and whose saved config is the one the study
resolves now, is skipped; an interrupted one continues from its checkpoint; a
run trained with another config is an error (remove the folder or use
another ``--out``). ``--jobs N`` runs N trainings at once, each with
``cores // N`` compute threads (``train.threads`` and OMP/MKL variables)
unless the config sets ``train.threads``.

Fairness: every method must train each dataset on the same number of samples
(steps the dataset is active x its batch size x processes). The study's
``iterations: N`` sets ``train.iterations = N`` for every method, and for a
method of a switching strategy (``finetune``, ``two_stage``: one dataset
after the other) ``2N`` with ``switch_at = N``. The table is printed before
training; unequal samples are refused (``fairness: warn`` in the study trains
anyway, with a warning in the report).

Pairing: run ``k`` of every method gets ``train.seed = k``; the trainer seeds
a dataset's loader from the seed and the dataset's name
(:func:`common.data.loader_seed`), so a dataset draws the same batches in
every method of one seed, alone or beside others (checked and printed: only
another batch size or training split unpairs them).

``cdcl demo`` is a study too (:func:`run_demo`).

The report (``DIR/report.md``, ``report.json``, ``miou.png``,
``class_delta.png``) is built from the runs' ``results.json`` files by
:func:`build_report` (also ``cdcl study --report-only DIR``).

An ``unseen:`` section (:mod:`common.study_unseen`) measures the finished
runs of the methods it lists on domains they never saw (directly, after
precise BN, after TENT; the branch ``cdcl adapt --branch auto`` picks) and
adds the paper's Table 7 to the report; it is no part of any training config,
so adding it to a finished study retrains nothing.
"""
from __future__ import annotations

import copy
import json
import math
import os
import shlex
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

import yaml

from . import stats
from .config import Config, ConfigError, apply_overrides, build_config, load_yaml, safe_load

STUDY_KEYS = ("title", "seeds", "datasets", "baseline", "iterations", "overrides", "methods", "tables",
              "fairness", "notes", "unseen")
METHOD_KEYS = ("config", "overrides", "label", "flags")
TABLE_KEYS = ("title", "rows", "columns", "flags", "note")
#: keys that change how a run executes, not what it computes: ignored when a
#: finished run's config is compared with the study's (``*``: every dataset)
RUNTIME_KEYS = ("train.threads", "train.progress", "train.device", "train.tb_images", "train.log_every",
                "data.*.num_workers", "eval.num_workers")
#: keys the study's ``iterations`` sets; overriding them as well is refused
SCHEDULE_KEYS = ("train.iterations", "train.epochs", "strategy.switch_at")


@dataclass
class Method:
    name: str
    config: str  # absolute path
    overrides: List[str] = field(default_factory=list)
    patch: Dict[str, Any] = field(default_factory=dict)
    label: str = ""
    flags: Dict[str, str] = field(default_factory=dict)


@dataclass
class Table:
    title: str
    rows: List[str]
    columns: List[str]
    flags: List[str] = field(default_factory=list)
    note: str = ""


@dataclass
class Study:
    source: str
    title: str
    seeds: List[int]
    datasets: List[str]
    baseline: str
    methods: Dict[str, Method]
    tables: List[Table]
    overrides: List[str] = field(default_factory=list)
    iterations: Optional[int] = None
    fairness: str = "refuse"  # refuse | warn
    notes: str = ""
    unseen: Optional[Any] = None  # common.study_unseen.Unseen: the runs measured on unseen domains


# -- loading ------------------------------------------------------------------------

def split_overrides(overrides: Sequence[str]) -> Tuple[List[str], List[str]]:
    """Command-line ``key=value``: a study key (``iterations=20``, ``seeds=[0,1]``)
    sets the study, a dotted key goes to every run."""
    study, runs = [], []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        (study if item.split("=", 1)[0].strip() in STUDY_KEYS else runs).append(item)
    return study, runs


def _fail(source: str, msg: str) -> ConfigError:
    return ConfigError(f"{source}: {msg}")


def _str_list(v: Any, where: str, source: str) -> List[str]:
    if v is None:
        return []
    if isinstance(v, str):
        v = [v]
    if not isinstance(v, list) or not all(isinstance(x, str) for x in v):
        raise _fail(source, f"'{where}' must be a list of strings, got {v!r}")
    return list(v)


def load_study(path: str, overrides: Sequence[str] = (), seeds: Optional[Sequence[int]] = None) -> Study:
    """Read a study file (with ``_base_``), apply command-line overrides, check it.

    Config paths of methods are relative to the study file's folder. Every
    problem is a :class:`ConfigError` naming the study file."""
    source = os.path.abspath(path)
    d = load_yaml(path)
    study_over, run_over = split_overrides(overrides)
    d = apply_overrides(d, study_over, source)
    for k in d:
        if k not in STUDY_KEYS:
            raise _fail(source, f"unknown key '{k}'; valid keys: {', '.join(STUDY_KEYS)}")
    for k in ("methods", "seeds", "datasets", "baseline"):
        if k not in d:
            raise _fail(source, f"missing required key '{k}'")
    if seeds is not None:
        d["seeds"] = list(seeds)
    if not isinstance(d["seeds"], list) or not d["seeds"] or not all(
            isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in d["seeds"]):
        raise _fail(source, f"'seeds' must be a non-empty list of integers >= 0, got {d['seeds']!r}")
    if len(set(d["seeds"])) != len(d["seeds"]):
        raise _fail(source, f"'seeds' repeats a seed: {d['seeds']}")
    datasets = _str_list(d["datasets"], "datasets", source)
    if not datasets:
        raise _fail(source, "'datasets' must name at least one dataset to report")
    iterations = d.get("iterations")
    if iterations is not None and (not isinstance(iterations, int) or isinstance(iterations, bool)
                                   or iterations < 1):
        raise _fail(source, f"'iterations' must be an integer >= 1, got {iterations!r}")
    fairness = d.get("fairness", "refuse")
    if fairness not in ("refuse", "warn"):
        raise _fail(source, f"'fairness' must be refuse or warn, got {fairness!r}")
    run_overrides = _str_list(d.get("overrides"), "overrides", source) + list(run_over)
    if iterations is not None:
        clash = [o for o in run_overrides if o.split("=", 1)[0].strip() in SCHEDULE_KEYS]
        if clash:
            raise _fail(source, f"override {clash[0]!r}: the study sets the schedule from 'iterations' "
                                f"({iterations} steps per dataset); override iterations=N instead")

    methods_raw = d["methods"]
    if not isinstance(methods_raw, dict) or not methods_raw:
        raise _fail(source, "'methods' must map method names to {config: ..., overrides: ...}")
    folder = os.path.dirname(source)
    methods: Dict[str, Method] = {}
    for name, m in methods_raw.items():
        name = str(name)
        if "/" in name or name.startswith(".") or not name:
            raise _fail(source, f"method name {name!r} must be a plain folder name")
        if isinstance(m, str):
            m = {"config": m}
        if not isinstance(m, dict):
            raise _fail(source, f"'methods.{name}' must be a mapping with at least 'config'")
        for k in m:
            if k not in METHOD_KEYS:
                raise _fail(source, f"unknown key 'methods.{name}.{k}'; valid keys: {', '.join(METHOD_KEYS)}")
        if not isinstance(m.get("config"), str) or not m["config"]:
            raise _fail(source, f"'methods.{name}.config' must be a config path (relative to {folder})")
        cfg_path = os.path.normpath(os.path.join(folder, os.path.expanduser(m["config"])))
        if not os.path.isfile(cfg_path):
            raise _fail(source, f"'methods.{name}.config': config file not found: {cfg_path}")
        over = m.get("overrides")
        patch = over if isinstance(over, dict) else {}
        flags = m.get("flags") or {}
        if not isinstance(flags, dict):
            raise _fail(source, f"'methods.{name}.flags' must map a column to a value, got {flags!r}")
        methods[name] = Method(name, cfg_path, [] if isinstance(over, dict) else
                               _str_list(over, f"methods.{name}.overrides", source), copy.deepcopy(patch),
                               str(m.get("label") or name), {str(k): str(v) for k, v in flags.items()})
    labels = sorted({m.label for m in methods.values()})
    baseline = str(d["baseline"])
    if baseline not in labels:
        raise _fail(source, f"'baseline' is {baseline!r}; method labels: {', '.join(labels)}")
    tables = []
    for i, t in enumerate(d.get("tables") or []):
        if not isinstance(t, dict):
            raise _fail(source, f"'tables[{i}]' must be a mapping")
        for k in t:
            if k not in TABLE_KEYS:
                raise _fail(source, f"unknown key 'tables[{i}].{k}'; valid keys: {', '.join(TABLE_KEYS)}")
        rows = _str_list(t.get("rows"), f"tables[{i}].rows", source) or labels
        for r in rows:
            if r not in labels:
                raise _fail(source, f"'tables[{i}].rows' names {r!r}; method labels: {', '.join(labels)}")
        cols = _str_list(t.get("columns"), f"tables[{i}].columns", source) or datasets
        for c in cols:
            if c not in datasets:
                raise _fail(source, f"'tables[{i}].columns' names {c!r}; datasets: {', '.join(datasets)}")
        tables.append(Table(str(t.get("title") or f"Table {i + 1}"), rows, cols,
                            _str_list(t.get("flags"), f"tables[{i}].flags", source), str(t.get("note") or "")))
    unseen = None
    if d.get("unseen") is not None:
        from .study_unseen import load_unseen
        unseen = load_unseen(d["unseen"], source, list(methods))
    return Study(source, str(d.get("title") or os.path.splitext(os.path.basename(source))[0]),
                 list(d["seeds"]), datasets, baseline, methods, tables, run_overrides, iterations, fairness,
                 str(d.get("notes") or ""), unseen)


def _merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else copy.deepcopy(v)
    return out


def resolve_run(study: Study, method: Method, seed: int) -> Config:
    """The config of ``method``'s run with ``seed``: its file, its overrides, the
    study's overrides, the study's schedule, ``train.seed``."""
    try:
        d = _merge(load_yaml(method.config), method.patch)
        d = apply_overrides(d, method.overrides + study.overrides, method.config)
        if study.iterations is not None:
            from .build import STRATEGIES

            n = study.iterations
            name = (d.get("strategy") or {}).get("name", "cdcl") if isinstance(d.get("strategy"), dict) else None
            switch = name in STRATEGIES and STRATEGIES[name].switch  # A for n steps, then B for n
            sched = [f"train.iterations={2 * n if switch else n}", "train.epochs=null"]
            if switch:
                sched.append(f"strategy.switch_at={n}")
            d = apply_overrides(d, sched, method.config)
        d = apply_overrides(d, [f"train.seed={seed}"], method.config)
        return build_config(d, source=method.config)
    except ConfigError as exc:
        raise ConfigError(f"{study.source}: method {method.name}: {exc}") from None


# -- the fairness and pairing checks ---------------------------------------------------

def samples_per_dataset(cfg: Config, world_size: int = 1) -> Dict[str, Optional[int]]:
    """Training samples of each trained dataset: steps it is active (finetune:
    before / after the switch) x batch size x processes; None when the length
    is given in epochs (known only once the data is read: see the run's log)."""
    from .build import active_datasets, strategy_of

    t = cfg.train
    if t.iterations is None:
        return {n: None for n in cfg.names}
    steps = {n: 0 for n in cfg.names}
    if strategy_of(cfg).switch:  # two segments: count at the switch, not every step
        k = min(int(cfg.strategy.switch_at), int(t.iterations))
        for start, length in ((0, k), (k, int(t.iterations) - k)):
            if length > 0:
                for n in active_datasets(cfg, start):
                    steps[n] += length
    else:
        for n in active_datasets(cfg, 0):
            steps[n] += int(t.iterations)
    return {n: steps[n] * cfg.data[n].batch_size * world_size for n in cfg.names}


def fairness_table(samples: Dict[str, Dict[str, Optional[int]]], datasets: Sequence[str]) -> Tuple[str, List[str]]:
    """A text table (methods x datasets) and the datasets whose sample counts
    differ between methods."""
    w = max([len("method")] + [len(m) for m in samples])
    lines = [f"{'method':<{w}}  " + "  ".join(f"{d:>14}" for d in datasets)]
    for m, s in samples.items():
        cells = ["-" if d not in s else ("epochs" if s[d] is None else f"{s[d]:,}") for d in datasets]
        lines.append(f"{m:<{w}}  " + "  ".join(f"{c:>14}" for c in cells))
    unequal = []
    for d in datasets:
        values = {s[d] for s in samples.values() if d in s}
        if len(values) > 1:
            unequal.append(f"{d}: " + ", ".join(f"{m} {s[d]}" for m, s in samples.items() if d in s))
    return "\n".join(lines), unequal


def pairing_notes(cfgs: Dict[str, Config], datasets: Sequence[str]) -> List[str]:
    """Datasets whose batches differ between methods of one seed. A loader's
    order comes from ``train.seed`` and the dataset's name
    (:func:`common.data.loader_seed`), so only another batch size or training
    split unpairs them."""
    notes = []
    for d in datasets:
        how = {m: (c.data[d].batch_size, c.data[d].train_split) for m, c in cfgs.items() if d in c.names}
        if len(set(how.values())) > 1:
            notes.append(f"{d}: batch size / training split differ ({', '.join(f'{m} {b}/{s}' for m, (b, s) in how.items())}): "
                         "paired by seed, not by batches")
    return notes


# -- running ---------------------------------------------------------------------------

def _flat(d: Dict[str, Any], prefix: str = "") -> Dict[str, Any]:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and v:
            out.update(_flat(v, key + "."))
        else:
            out[key] = v
    return out


def _comparable(cfg_dict: Dict[str, Any]) -> Dict[str, Any]:
    flat = _flat(cfg_dict)
    drop = set()
    for key in flat:
        parts = key.split(".")
        for r in RUNTIME_KEYS:
            rp = r.split(".")
            if len(parts) == len(rp) and all(a == "*" or a == b for a, b in zip(rp, parts)):
                drop.add(key)
    return {k: v for k, v in flat.items() if k not in drop}


def config_differences(saved: Dict[str, Any], wanted: Dict[str, Any]) -> List[str]:
    """Keys whose values differ between two config dicts (runtime keys aside)."""
    a, b = _comparable(saved), _comparable(wanted)
    return [f"{k}: {a.get(k, '<unset>')!r} in the run, {b.get(k, '<unset>')!r} now"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


def run_state(run_dir: str, cfg: Config) -> str:
    """``done`` (results current, same config), ``resume`` (something there to
    continue) or ``new``. A run of another config raises ConfigError."""
    saved = os.path.join(run_dir, "config.yaml")
    if not os.path.isfile(saved):
        return "new"
    with open(saved, encoding="utf-8") as f:
        theirs = safe_load(f) or {}
    try:  # a key added to cdcl since the run was trained counts at its default (the run's behaviour)
        theirs = build_config(theirs, source=saved).to_dict()
    except ConfigError:  # a key since removed or renamed: compared as written, and named below
        pass
    diffs = config_differences(theirs, cfg.to_dict())
    if diffs:
        raise ConfigError(f"{run_dir} holds a run of another config ({'; '.join(diffs[:4])}"
                          f"{' ...' if len(diffs) > 4 else ''}): remove that folder or use another --out")
    results = os.path.join(run_dir, "results.json")
    latest = os.path.join(run_dir, "checkpoints", "latest.pth")
    if os.path.isfile(results) and (not os.path.isfile(latest)
                                    or os.path.getmtime(results) >= os.path.getmtime(latest)):
        return "done"
    return "resume"


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


@dataclass
class Run:
    method: str
    seed: int
    config_path: str
    run_dir: str
    log_path: str
    threads: int
    state: str

    @property
    def tag(self) -> str:
        return f"{self.method}/seed{self.seed}"

    @property
    def verb(self) -> str:
        return "resuming" if self.state == "resume" else "training"

    def headline(self) -> str:
        return _headline(self.run_dir)

    def command(self) -> List[str]:
        return [sys.executable, "-m", "common.cli", "train", self.config_path, f"train.threads={self.threads}",
                "train.progress=false", "--work-dir", self.run_dir, "--resume", "auto"]


def _write_config(cfg: Config, path: str, origin: str) -> None:
    from .utils import atomic_write_bytes

    text = f"# resolved by cdcl study from {origin}\n" + yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    atomic_write_bytes(path, text.encode("utf-8"))


def _say(msg: str) -> None:
    print(f"[study] {msg}", flush=True)


def plan(study: Study, out: str, jobs: int = 1) -> Tuple[List[Run], Dict[str, Dict[str, Any]]]:
    """Resolve every run (errors before any training), write the resolved
    configs and ``study.json``, print the fairness and pairing checks.
    Returns the runs (seeds outer, methods inner) and ``study.json``'s content."""
    cfgs = {(m, s): resolve_run(study, study.methods[m], s) for s in study.seeds for m in study.methods}
    first = {m: cfgs[(m, study.seeds[0])] for m in study.methods}
    samples = {m: samples_per_dataset(c) for m, c in first.items()}
    table, unequal = fairness_table(samples, _all_trained(first, study.datasets))
    _say("training samples per dataset (steps the dataset trains x batch size x processes):\n" + table)
    if unequal:
        msg = ("methods train a dataset on different numbers of samples (the fairness rule): "
               + "; ".join(unequal))
        if study.fairness == "refuse":
            raise ConfigError(f"{study.source}: {msg}; set 'iterations' in the study (finetune and two_stage "
                              "get 2x with switch_at), or 'fairness: warn' to train anyway")
        _say("WARNING: " + msg)
    pairing = pairing_notes(first, study.datasets)
    for p in pairing:
        _say(f"pairing: {p}")
    for m, c in first.items():
        if not any(d in study.datasets for d in c.eval_names):
            raise ConfigError(f"{study.source}: method {m} evaluates {c.eval_names}, none of the study's "
                              f"datasets {study.datasets}")
    threads_default = max(1, _cores() // max(1, jobs))
    runs = []
    for s in study.seeds:
        for m, method in study.methods.items():
            cfg = cfgs[(m, s)]
            cpath = os.path.join(out, "configs", m, f"seed{s}.yaml")
            origin = " + ".join([_shown_path(method.config)] + method.overrides + study.overrides
                                + (["<mapping overrides>"] if method.patch else []) + [f"train.seed={s}"])
            _write_config(cfg, cpath, origin)
            run_dir = os.path.join(out, "runs", m, f"seed{s}")
            runs.append(Run(m, s, cpath, run_dir, os.path.join(out, "logs", m, f"seed{s}.log"),
                            cfg.train.threads or threads_default, run_state(run_dir, cfg)))
    meta = {
        "source": study.source, "title": study.title, "seeds": study.seeds, "datasets": study.datasets,
        "baseline": study.baseline, "iterations": study.iterations, "overrides": study.overrides,
        "fairness": {"rule": study.fairness, "samples": samples, "unequal": unequal}, "pairing": pairing,
        "notes": study.notes,
        "methods": {m: {"label": x.label, "flags": x.flags, "config": x.config, "overrides": x.overrides,
                        "trains": first[m].names, "evaluates": first[m].eval_names,
                        "strategy": first[m].strategy.name, "mode": first[m].train.mode,
                        "iterations": first[m].train.iterations}
                    for m, x in study.methods.items()},
        "tables": [t.__dict__ for t in study.tables],
    }
    if study.unseen is not None:  # checked and written now; never part of a training config
        from .study_unseen import resolve_unseen, section_meta
        resolve_unseen(study, cfgs, out)
        labels = [x.label for x in study.methods.values()]
        meta["unseen"] = section_meta(study.unseen, {m: x.label if labels.count(x.label) == 1 else m
                                                     for m, x in study.methods.items()})
    return runs, meta


def _all_trained(cfgs: Dict[str, Config], datasets: Sequence[str]) -> List[str]:
    names = list(datasets)
    for c in cfgs.values():
        names += [n for n in c.names if n not in names]
    return names


def execute(runs: Sequence[Run], jobs: int = 1, poll: float = 0.5) -> List[Run]:
    """Run every run that is not done, ``jobs`` at a time, each a ``cdcl train``
    subprocess with its output in its log file. Returns the runs that failed.
    Ctrl-C stops the running trainings (they resume next time)."""
    todo = [r for r in runs if r.state != "done"]
    for r in runs:
        if r.state == "done":
            _say(f"{r.tag}: finished earlier, skipped")
    pending, running, failed = list(todo), {}, []
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    previous = _on_sigterm_interrupt()
    try:
        while pending or running:
            while pending and len(running) < jobs:
                r = pending.pop(0)
                env = dict(os.environ, OMP_NUM_THREADS=str(r.threads), MKL_NUM_THREADS=str(r.threads),
                           PYTHONPATH=os.pathsep.join([root] + [p for p in [os.environ.get("PYTHONPATH")] if p]))
                os.makedirs(os.path.dirname(r.log_path), exist_ok=True)
                log = open(r.log_path, "a", encoding="utf-8")
                log.write(f"$ {shlex.join(r.command())}\n")
                log.flush()
                proc = subprocess.Popen(r.command(), stdout=log, stderr=subprocess.STDOUT, env=env)
                running[proc.pid] = (proc, r, log, time.time())
                _say(f"{r.tag}: {r.verb} "
                     f"({r.threads} thread{'s' if r.threads > 1 else ''}, log {r.log_path})")
            time.sleep(poll)
            for pid, (proc, r, log, t0) in list(running.items()):
                if proc.poll() is None:
                    continue
                log.close()
                del running[pid]
                if proc.returncode == 0:
                    r.state = "done"
                    _say(f"{r.tag}: done in {time.time() - t0:.0f} s: {r.headline()}")
                else:
                    failed.append(r)
                    _say(f"{r.tag}: FAILED (exit {proc.returncode}): {_last_line(r.log_path)} (log {r.log_path})")
    except KeyboardInterrupt:
        for proc, r, log, _ in running.values():
            proc.terminate()
        for proc, r, log, _ in running.values():
            proc.wait()
            log.close()
        _say("interrupted: run the same command again to resume")
        raise
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return failed


def _on_sigterm_interrupt():
    """SIGTERM (a killed study, a cluster's time limit) stops the trainings like
    Ctrl-C does, so that none is left running to hold its work dir's lock."""
    def stop(signum, frame):
        raise KeyboardInterrupt

    try:
        return signal.signal(signal.SIGTERM, stop)
    except ValueError:  # not the main thread
        return None


def _headline(run_dir: str) -> str:
    try:
        with open(os.path.join(run_dir, "results.json"), encoding="utf-8") as f:
            res = json.load(f)
        return ", ".join(f"{n} mIoU {100 * r['miou']:.1f}" for n, r in res.items())
    except (OSError, ValueError, KeyError, TypeError):
        return "no results.json"


def _last_line(path: str) -> str:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [ln.strip() for ln in f if ln.strip()]
        return lines[-1] if lines else ""
    except OSError:
        return ""


def run_study(study: Study, out: str, jobs: int = 1, command: str = "") -> Dict[str, Any]:
    """Plan, train what is missing, write the report; returns ``report.json``'s
    content. Raises UserError naming the failed runs after writing the report
    of the rest."""
    from .errors import UserError

    os.makedirs(out, exist_ok=True)
    runs, meta = plan(study, out, jobs)
    meta_path = os.path.join(out, "study.json")
    meta["command"] = command
    meta["timing"] = _previous_timing(meta_path)  # kept when this invocation trains nothing
    if study.unseen is not None:
        meta["timing_unseen"] = _previous_timing(meta_path, "timing_unseen")
    _write_json(meta_path, meta)
    n_todo = sum(r.state != "done" for r in runs)
    _say(f"{len(runs)} runs ({len(study.methods)} methods x {len(study.seeds)} seeds), {n_todo} to train, "
         f"{jobs} at a time, into {out}")
    t0 = time.time()
    failed = execute(runs, jobs)
    wall = time.time() - t0
    _say(f"training took {wall:.0f} s")
    if n_todo:
        meta["timing"] = {"wall_s": round(wall, 1), "runs": n_todo, "jobs": jobs, "cores": _cores()}
        _write_json(meta_path, meta)
    if study.unseen is not None:  # the finished runs of its methods on its domains
        from .study_unseen import unseen_jobs
        measure = unseen_jobs(study, out, runs)
        n_new = sum(j.state != "done" for j in measure)
        _say(f"unseen domains: {len(measure)} measurements of finished runs, {n_new} to do, {jobs} at a time")
        t0 = time.time()
        failed += execute(measure, jobs)
        if n_new:
            meta["timing_unseen"] = {"wall_s": round(time.time() - t0, 1), "runs": n_new, "jobs": jobs,
                                     "cores": _cores()}
            _write_json(meta_path, meta)
    report = build_report(out)
    if failed:
        raise UserError(f"{len(failed)} run(s) failed: " + ", ".join(f"{r.tag} (log {r.log_path})" for r in failed))
    return report


def run_demo(path: str, out: str, overrides: Sequence[str] = (), seeds: Optional[Sequence[int]] = None,
             jobs: int = 1) -> Dict[str, Any]:
    """``cdcl demo``: the study ``path`` into ``out`` (resumable like any study),
    then its first table on stdout; the full report is ``out/report.md``."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {jobs}")
    study = load_study(path, overrides, seeds)
    command = ["cdcl", "study", _shown_path(path), *overrides, "--out", _shown_path(out), "--jobs", str(jobs)]
    report = run_study(study, out, jobs, command=shlex.join(command + ["--seeds", *map(str, study.seeds)]))
    with open(os.path.join(out, "report.md"), encoding="utf-8") as f:
        sections = f.read().split("\n## ")
    print("\n## " + sections[1].rstrip() + f"\n\nFull report (per seed, per class, figures): "
          f"{os.path.join(out, 'report.md')}", flush=True)
    return report


# -- the report ------------------------------------------------------------------------

def _previous_timing(meta_path: str, key: str = "timing") -> Optional[Dict[str, Any]]:
    try:
        with open(meta_path, encoding="utf-8") as f:
            return json.load(f).get(key)
    except (OSError, ValueError, AttributeError):
        return None


def _write_json(path: str, data: Any) -> None:
    from .utils import atomic_write_bytes

    atomic_write_bytes(path, json.dumps(data, indent=2).encode("utf-8"))


def _load_results(out: str, meta: Dict[str, Any]) -> Tuple[Dict[str, Dict[int, Any]], List[str], Dict[str, Any]]:
    results: Dict[str, Dict[int, Any]] = {}
    missing, iters = [], {}
    for m in meta["methods"]:
        results[m] = {}
        for s in meta["seeds"]:
            path = os.path.join(out, "runs", m, f"seed{s}", "results.json")
            if not os.path.isfile(path):
                missing.append(f"{m}/seed{s}")
                continue
            with open(path, encoding="utf-8") as f:
                results[m][s] = json.load(f)
            iters[f"{m}/seed{s}"] = _logged_iterations(os.path.join(out, "runs", m, f"seed{s}", "log.jsonl"))
    return results, missing, iters


def _logged_iterations(path: str) -> Optional[int]:
    """The run's length from its log's last ``start`` record (epochs converted)."""
    found = None
    try:
        with open(path, encoding="utf-8") as f:
            for line in f:
                if '"start"' in line:
                    rec = json.loads(line)
                    if rec.get("type") == "start":
                        found = rec.get("iterations")
    except (OSError, ValueError):
        return None
    return found


def _fmt(x: float, digits: int = 1, sign: bool = False) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    return f"{100 * x:+.{digits}f}" if sign else f"{100 * x:.{digits}f}"


def _ci_text(ci: Dict[str, float], sign: bool = False) -> str:
    if ci["n"] < 2 or ci["lo"] is None or math.isnan(ci["lo"]):
        return "n/a"
    return f"[{_fmt(ci['lo'], 1, sign)}, {_fmt(ci['hi'], 1, sign)}]"


def analyse(meta: Dict[str, Any], results: Dict[str, Dict[int, Any]]) -> Dict[str, Any]:
    """The numbers of the report: per dataset and method mean/std/CI of mIoU,
    paired differences to the baseline, per-class differences (fractions, not %)."""
    seeds = meta["seeds"]
    methods = meta["methods"]
    summary: Dict[str, Dict[str, Any]] = {}
    vs: Dict[str, Dict[str, Any]] = {}
    per_class: Dict[str, Dict[str, Any]] = {}
    baselines: Dict[str, Optional[str]] = {}
    for d in meta["datasets"]:
        summary[d], vs[d], per_class[d] = {}, {}, {}
        have = [m for m in methods if d in methods[m]["evaluates"]]
        base = [m for m in have if methods[m]["label"] == meta["baseline"]]
        baselines[d] = base[0] if base else None
        for m in have:
            vals = [results[m].get(s, {}).get(d, {}).get("miou") for s in seeds]
            summary[d][m] = dict(stats.mean_ci(vals), values=vals)
        b = baselines[d]
        if b is None:
            continue
        bvals = summary[d][b]["values"]
        bnames = _class_names(results[b], d)
        for m in have:
            if m == b:
                continue
            diff = stats.paired_diff(summary[d][m]["values"], bvals)
            unp = stats.unpaired_diff(summary[d][m]["values"], bvals)
            vs[d][m] = dict(diff, verdict=stats.verdict(diff), unpaired=unp)
            names = _class_names(results[m], d)
            if not names or not bnames:  # no finished run of one side yet
                continue
            if names != bnames:
                vs[d][m]["note"] = "other label space: mIoU over " + (f"{len(names)} classes" if names else "?")
                continue
            pc = {}
            for c in names:
                a = [_iou(results[m].get(s), d, c) for s in seeds]
                z = [_iou(results[b].get(s), d, c) for s in seeds]
                ci = stats.paired_diff(a, z)
                pc[c] = dict(ci, negative_transfer=not math.isnan(ci["hi"]) and ci["hi"] < 0,
                             verdict=stats.verdict(ci))
            per_class[d][m] = pc
    return {"baselines": baselines, "summary": summary, "vs_baseline": vs, "per_class": per_class}


def _class_names(runs: Dict[int, Any], d: str) -> List[str]:
    for r in runs.values():
        if d in r:
            return list(r[d].get("class_names") or list((r[d].get("iou") or {}).keys()))
    return []


def _iou(res: Optional[Dict[str, Any]], d: str, c: str) -> Optional[float]:
    if not res or d not in res:
        return None
    return (res[d].get("iou") or {}).get(c)


def _row_method(meta: Dict[str, Any], label: str, d: str) -> Optional[str]:
    for m, x in meta["methods"].items():
        if x["label"] == label and d in x["evaluates"]:
            return m
    return None


def format_report(meta: Dict[str, Any], an: Dict[str, Any], missing: List[str], iters: Dict[str, Any]) -> str:
    seeds = meta["seeds"]
    L = [f"# {meta['title']}", ""]
    L.append(f"Study `{_shown_path(meta['source'])}`, seeds {seeds}"
             + (f", {meta['iterations']} iterations per dataset" if meta.get("iterations") else "")
             + (f", overrides `{' '.join(meta['overrides'])}`" if meta["overrides"] else "") + ".")
    if meta.get("command"):
        L += ["", f"    {meta['command']}"]
    timing = meta.get("timing")
    if timing:
        L += ["", f"Wall time of the last invocation that trained: {timing['wall_s'] / 60:.1f} min for "
                  f"{timing['runs']} runs, {timing['jobs']} at a time on {timing['cores']} cores."]
    if meta.get("notes"):
        L += ["", meta["notes"].strip()]
    L += ["", "mIoU in %; ± is the half-width of the 95% confidence interval of the mean over seeds "
              "(Student t, n − 1 degrees of freedom). Δ: paired difference to the baseline "
              f"(**{meta['baseline']}**) seed by seed, with its 95% CI (paired t) and the seeds that improved; "
              "it is called a gain (or a loss) only when its CI excludes zero, otherwise n.s."]
    if missing:
        L += ["", f"**Missing runs** (not in the numbers below): {', '.join(missing)}"]
    for t in meta["tables"]:
        L += ["", f"## {t['title']}", ""]
        head = ["method"] + t["flags"]
        for d in t["columns"]:
            head += [f"{d} mIoU", f"{d} Δ"]
        L.append("| " + " | ".join(head) + " |")
        L.append("|" + "---|" * len(head))
        for label in t["rows"]:
            flags = {}
            for m, x in meta["methods"].items():
                if x["label"] == label:
                    flags.update(x["flags"])
            row = [label] + [flags.get(f, "") for f in t["flags"]]
            for d in t["columns"]:
                m = _row_method(meta, label, d)
                s = an["summary"][d].get(m) if m else None
                row.append("–" if not s or s["n"] == 0 else
                           f"{_fmt(s['mean'])} ± {_fmt(s['half'])}" if s["n"] > 1 else _fmt(s["mean"]))
                v = an["vs_baseline"][d].get(m) if m else None
                row.append("" if not v else _delta_cell(v))
            L.append("| " + " | ".join(row) + " |")
        if t.get("note"):
            L += ["", t["note"]]
    if an.get("unseen"):
        from .study_unseen import format_unseen
        L += format_unseen(meta, an["unseen"])
        tu = meta.get("timing_unseen")
        if tu:
            L += ["", f"Wall time of the last invocation that measured unseen domains: {tu['wall_s'] / 60:.1f} min "
                      f"for {tu['runs']} measurements, {tu['jobs']} at a time on {tu['cores']} cores."]
    L += ["", "## Per dataset and method", "",
          "| dataset | method | n | mean | std | 95% CI | seeds |", "|---|---|---|---|---|---|---|"]
    for d, ms in an["summary"].items():
        for m, s in ms.items():
            L.append(f"| {d} | {m} | {s['n']} | {_fmt(s['mean'], 2)} | {_fmt(s['std'], 2)} | {_ci_text(s)} | "
                     + ", ".join(_fmt(v) if v is not None else "–" for v in s["values"]) + " |")
    L += ["", "## Paired differences to the baseline", "",
          "| dataset | method − baseline | Δ mean | 95% CI (paired) | 95% CI (unpaired, Welch) | improved | verdict |",
          "|---|---|---|---|---|---|---|"]
    for d, ms in an["vs_baseline"].items():
        for m, v in ms.items():
            L.append(f"| {d} | {m} − {an['baselines'][d]} | {_fmt(v['mean'], 2, True)} | {_ci_text(v, True)} | "
                     f"{_ci_text(v['unpaired'], True)} | {v['improved']}/{v['n']} | {v['verdict']}"
                     + (f" ({v['note']})" if v.get("note") else "") + " |")
    L += ["", "## Per-class transfer (joint − single)", "",
          "IoU difference per class in points of %, mean over seeds; **bold** marks negative transfer "
          "(the paired 95% CI lies entirely below zero), + a significant gain.", ""]
    for d, ms in an["per_class"].items():
        if not ms:
            continue
        classes = list(next(iter(ms.values())))
        L.append(f"### {d}")
        L.append("")
        L.append("| class | " + " | ".join(ms) + " |")
        L.append("|---|" + "---|" * len(ms))
        for c in classes:
            cells = []
            for m in ms:
                v = ms[m][c]
                txt = _fmt(v["mean"], 1, True)
                cells.append(f"**{txt}**" if v["negative_transfer"] else txt + (" +" if v["verdict"] == "gain" else ""))
            L.append(f"| {c} | " + " | ".join(cells) + " |")
        neg = {m: [c for c, v in pc.items() if v["negative_transfer"]] for m, pc in ms.items()}
        neg = {m: cs for m, cs in neg.items() if cs}
        L += ["", "Negative transfer: " + ("; ".join(f"{m}: {', '.join(cs)}" for m, cs in neg.items())
                                           if neg else "none beyond the seed noise."), ""]
    L += ["## Training samples per dataset (the fairness rule)", "",
          "| method | " + " | ".join(meta["datasets"]) + " | iterations (logged) |",
          "|---|" + "---|" * (len(meta["datasets"]) + 1)]
    for m, s in meta["fairness"]["samples"].items():
        logged = sorted({v for k, v in iters.items() if k.startswith(m + "/") and v is not None})
        L.append(f"| {m} | " + " | ".join("–" if d not in s else ("epochs" if s[d] is None else f"{s[d]:,}")
                                          for d in meta["datasets"])
                 + f" | {', '.join(map(str, logged)) or '–'} |")
    if meta["fairness"]["unequal"]:
        L += ["", "**WARNING: unequal samples** — " + "; ".join(meta["fairness"]["unequal"])]
    if meta["pairing"]:
        L += ["", "Pairing: " + "; ".join(meta["pairing"]) + "."]
    L += ["", "## Figures", "", "![mIoU per dataset and method](miou.png)", "",
          "![per-class IoU difference to the baseline](class_delta.png)", ""]
    return "\n".join(L)


def _shown_path(path: str) -> str:
    """Relative to the working directory when inside it, else absolute."""
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel


def _delta_cell(v: Dict[str, Any]) -> str:
    if v.get("note"):
        return f"({v['note']})"
    if v["n"] < 2:
        return _fmt(v["mean"], 1, True)
    mark = {"gain": " gain", "loss": " loss", "n.s.": " n.s."}.get(v["verdict"], "")
    return f"{_fmt(v['mean'], 1, True)} {_ci_text(v, True)} {v['improved']}/{v['n']}{mark}"


def plot_figures(meta: Dict[str, Any], an: Dict[str, Any], out: str) -> List[str]:
    """``miou.png`` (mean and 95% CI per dataset and method) and
    ``class_delta.png`` (per-class IoU difference to the baseline)."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    written = []
    ds = [d for d in meta["datasets"] if an["summary"].get(d)]
    if ds:
        fig, axes = plt.subplots(1, len(ds), figsize=(max(4.0, 0.6 * max(len(an["summary"][d]) for d in ds) + 2)
                                                      * len(ds), 4), squeeze=False)
        for ax, d in zip(axes[0], ds):
            ms = list(an["summary"][d])
            mean = [100 * an["summary"][d][m]["mean"] for m in ms]
            err = [0 if math.isnan(an["summary"][d][m]["half"]) else 100 * an["summary"][d][m]["half"] for m in ms]
            colors = ["tab:gray" if m == an["baselines"].get(d) else "tab:blue" for m in ms]
            ax.bar(range(len(ms)), mean, yerr=err, capsize=4, color=colors)
            for i, m in enumerate(ms):
                vals = [100 * v for v in an["summary"][d][m]["values"] if v is not None]
                ax.plot([i] * len(vals), vals, "k.", ms=4)
            ax.set_xticks(range(len(ms)))
            ax.set_xticklabels(ms, rotation=35, ha="right", fontsize=8)
            lo, hi = ax.get_ylim()  # mIoU lives in [0, 100]: intervals of few seeds may reach past it
            ax.set_ylim(max(lo, 0.0), min(hi, 100.0))
            ax.set_title(d)
            ax.set_ylabel("mIoU (%), mean and 95% CI")
        fig.tight_layout()
        path = os.path.join(out, "miou.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    pcs = [(d, ms) for d, ms in an["per_class"].items() if ms]
    if pcs:
        fig, axes = plt.subplots(1, len(pcs), figsize=(sum(1.5 + 0.7 * len(ms) for _, ms in pcs) + 1,
                                                       max(3.5, 0.3 * max(len(next(iter(ms.values())))
                                                                          for _, ms in pcs) + 1.5)), squeeze=False)
        for ax, (d, ms) in zip(axes[0], pcs):
            classes = list(next(iter(ms.values())))
            grid = np.array([[100 * ms[m][c]["mean"] if ms[m][c]["n"] else np.nan for m in ms] for c in classes])
            lim = np.nanmax(np.abs(grid)) if np.isfinite(grid).any() else 1.0
            im = ax.imshow(grid, cmap="RdBu", vmin=-lim, vmax=lim, aspect="auto")
            for i, c in enumerate(classes):
                for j, m in enumerate(ms):
                    if ms[m][c]["negative_transfer"]:
                        ax.text(j, i, "−", ha="center", va="center", fontsize=11, fontweight="bold")
                    elif ms[m][c]["verdict"] == "gain":
                        ax.text(j, i, "+", ha="center", va="center", fontsize=10)
            ax.set_xticks(range(len(ms)))
            ax.set_xticklabels(list(ms), rotation=35, ha="right", fontsize=8)
            ax.set_yticks(range(len(classes)))
            ax.set_yticklabels(classes, fontsize=7)
            ax.set_title(f"{d}: IoU − {an['baselines'][d]} (pp)", fontsize=9)
            fig.colorbar(im, ax=ax, fraction=0.05)
        fig.text(0.01, 0.01, "− negative transfer (paired 95% CI below 0), + significant gain", fontsize=7)
        fig.tight_layout(rect=(0, 0.03, 1, 1))
        path = os.path.join(out, "class_delta.png")
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)
    return written


def build_report(out: str) -> Dict[str, Any]:
    """``report.md``, ``report.json`` and the figures from the finished runs in
    ``out`` (the study as resolved by the last ``cdcl study`` into it)."""
    from .errors import PathError

    meta_path = os.path.join(out, "study.json")
    if not os.path.isfile(meta_path):
        raise PathError(f"{out}: no study.json (not a folder written by cdcl study)")
    with open(meta_path, encoding="utf-8") as f:
        meta = json.load(f)
    results, missing, iters = _load_results(out, meta)
    an = analyse(meta, results)
    if meta.get("unseen"):
        from .study_unseen import analyse_unseen
        an["unseen"] = analyse_unseen(meta, out)
    report = _no_nan({"units": "mIoU and IoU as fractions (0..1); null: not available (one seed, absent class)",
                      "study": meta, "missing": missing, "iterations_logged": iters, **an})
    with open(os.path.join(out, "report.json"), "w", encoding="utf-8") as f:
        json.dump(report, f, indent=2, allow_nan=False)
    figures = plot_figures(meta, an, out)
    text = format_report(meta, an, missing, iters)
    with open(os.path.join(out, "report.md"), "w", encoding="utf-8") as f:
        f.write(text)
    _say(f"wrote {os.path.join(out, 'report.md')}, report.json" + "".join(f", {os.path.basename(p)}" for p in figures))
    return report


def _no_nan(x: Any) -> Any:
    """NaN (an interval of one seed) as null: report.json stays strict JSON."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {str(k): _no_nan(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_no_nan(v) for v in x]
    return x


# -- the command -----------------------------------------------------------------------

HELP = "train a grid of configs x seeds; report means, confidence intervals and paired differences"
EXAMPLE = "cdcl study configs/studies/lidar_synth.yaml iterations=30 --seeds 0 1 2 --jobs 2 --out work_dirs/study_lidar"


def add_arguments(p) -> None:
    p.add_argument("study", nargs="?", help="study YAML (methods, seeds, datasets, baseline, tables, unseen)")
    p.add_argument("overrides", nargs="*", metavar="key=value",
                   help="study keys (iterations=20, seeds=[0,1]) or dotted overrides for every run "
                        "(train.lr=0.02)")
    p.add_argument("--out", help="study folder: configs/, runs/, logs/, report.md (default: "
                                 "work_dirs/studies/<study name>)")
    p.add_argument("--jobs", type=int, default=1, help="trainings at once, the cores divided between them "
                                                        "(default: %(default)s)")
    p.add_argument("--seeds", type=int, nargs="+", help="seeds to run (replaces the study's list)")
    p.add_argument("--report-only", metavar="DIR", help="rebuild DIR's report from its finished runs; trains nothing")


def run_from_args(args) -> int:
    if args.report_only:
        build_report(args.report_only)
        return 0
    if not args.study:
        raise ConfigError("cdcl study needs a study file (or --report-only DIR)")
    if args.jobs < 1:
        raise ConfigError(f"--jobs must be >= 1, got {args.jobs}")
    study = load_study(args.study, args.overrides or [], args.seeds)
    out = args.out or os.path.join("work_dirs", "studies", os.path.splitext(os.path.basename(args.study))[0])
    command = ["cdcl", "study", args.study, *(args.overrides or []), "--out", out, "--jobs", str(args.jobs)]
    if args.seeds:
        command += ["--seeds", *map(str, args.seeds)]
    try:
        run_study(study, out, args.jobs, command=shlex.join(command))
    except KeyboardInterrupt:  # the trainings are stopped; the message says how to resume
        return 130
    return 0
