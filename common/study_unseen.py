"""A study's ``unseen:`` section: the trained runs measured on domains they never saw.

The paper's Table 7 (transfer to an unseen dataset, without labels), as a
study section::

    unseen:
      title: "Table 7: unseen domains"          # optional
      methods: [single, finetune, cdcl]          # the rows: method names (default: every method)
      baseline: single                           # paired differences to it (default: the first row)
      adapt: [none, precise-bn, tent]            # the columns of each domain (default: these three)
      scans: 40                                  # unlabelled scans scored and adapted on (default: all
                                                 #   of the split, up to cdcl adapt's 200 batches)
      tent_steps: 200                            # TENT (default: cdcl adapt's: 200 steps, lr 1e-3)
      tent_lr: 0.001
      domains:                                   # name -> a data entry added to each run's config
        semanticposs: {config: ../3d/synth_unseen_semanticposs.yaml}   # that config's data.semanticposs
        kitti_fog: {like: semantickitti, root: data/synth/lidar/semantickitti_fog_3, train_split: valid}
        kitti_snow: null                         # drops a domain of the study's _base_ file

A domain is a ``data:`` entry: ``like: D`` starts from the run's own entry of
its trained dataset D (its sensor, batch size, type), ``config: FILE`` (path
relative to the study file; ``dataset:`` names the entry, default the
domain's name) from another config's entry; the other keys are data keys set
on top. Its ``branch`` is the one it declares when the run trains it, else the
run's first trained dataset (only the config needs one: every branch is
measured), and its ``label_map_from`` keeps the tables of the run's trained
datasets.

The section never enters a training config: adding or changing it retrains
nothing. After training, every finished run of a listed method is measured on
every domain by :func:`common.transfer.evaluate_transfer` (a subprocess,
``--jobs`` at a time): the config ``DIR/runs/<method>/seed<k>/unseen/<domain>.yaml``
(the run's resolved config plus the domain), the numbers beside it in
``<domain>.json``, skipped next time while the config, the checkpoint and the
settings are the ones it was computed from. The report's section is built
from those files (``--report-only`` too).
"""
from __future__ import annotations

import copy
import json
import math
import os
import sys
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence, Tuple

from . import stats
from .adapt import TENT_LR, TENT_STEPS
from .config import Config, ConfigError, build_config, load_yaml
from .transfer import ADAPTATIONS

SECTION_KEYS = ("title", "methods", "baseline", "adapt", "scans", "tent_steps", "tent_lr", "domains", "note")
#: the keys of a domain that are not data keys
DOMAIN_KEYS = ("like", "config", "dataset")
#: column titles of the adaptations
COLUMN = {"none": "direct", "precise-bn": "precise BN", "tent": "TENT"}
#: ``cdcl adapt --batches``' default: the adaptation batches when ``scans`` is not set
DEFAULT_BATCHES = 200


@dataclass
class Domain:
    name: str
    entry: Dict[str, Any]  # data keys set on top of the base
    like: Optional[str] = None  # the run's trained dataset whose entry is the base
    base: Dict[str, Any] = field(default_factory=dict)  # from config: FILE
    origin: str = ""  # how it was declared, for the report


@dataclass
class Unseen:
    methods: List[str]
    baseline: str
    domains: Dict[str, Domain]
    adapt: List[str] = field(default_factory=lambda: list(ADAPTATIONS))
    scans: Optional[int] = None
    tent_steps: int = TENT_STEPS
    tent_lr: float = TENT_LR
    title: str = "Table 7: unseen domains (no labels)"
    note: str = ""


def _fail(source: str, msg: str) -> ConfigError:
    return ConfigError(f"{source}: {msg}")


def load_unseen(raw: Any, source: str, methods: Sequence[str]) -> Unseen:
    """The ``unseen:`` section of the study file ``source`` (``methods``: the
    study's method names); every problem is a ConfigError naming the file."""
    if not isinstance(raw, dict):
        raise _fail(source, f"'unseen' must be a mapping with 'domains', got {raw!r}")
    for k in raw:
        if k not in SECTION_KEYS:
            raise _fail(source, f"unknown key 'unseen.{k}'; valid keys: {', '.join(SECTION_KEYS)}")
    rows = raw.get("methods", list(methods))
    if isinstance(rows, str):
        rows = [rows]
    if not isinstance(rows, list) or not rows or not all(isinstance(m, str) for m in rows):
        raise _fail(source, f"'unseen.methods' must be a non-empty list of method names, got {rows!r}")
    for m in rows:
        if m not in methods:
            raise _fail(source, f"'unseen.methods' names {m!r}; methods: {', '.join(methods)}")
    baseline = raw.get("baseline", rows[0])
    if baseline not in rows:
        raise _fail(source, f"'unseen.baseline' is {baseline!r}; it must be one of 'unseen.methods': {', '.join(rows)}")
    adapt = raw.get("adapt", list(ADAPTATIONS))
    if isinstance(adapt, str):
        adapt = [adapt]
    if not isinstance(adapt, list) or not adapt:
        raise _fail(source, f"'unseen.adapt' must be a list of {', '.join(ADAPTATIONS)}, got {adapt!r}")
    for a in adapt:
        if a not in ADAPTATIONS:
            raise _fail(source, f"'unseen.adapt' names {a!r}; adaptations: {', '.join(ADAPTATIONS)}")
    scans = raw.get("scans")
    if scans is not None and (not isinstance(scans, int) or isinstance(scans, bool) or scans < 1):
        raise _fail(source, f"'unseen.scans' must be an integer >= 1 (or left out: all), got {scans!r}")
    steps = raw.get("tent_steps", TENT_STEPS)
    if not isinstance(steps, int) or isinstance(steps, bool) or steps < 1:
        raise _fail(source, f"'unseen.tent_steps' must be an integer >= 1, got {steps!r}")
    lr = raw.get("tent_lr", TENT_LR)
    if not isinstance(lr, (int, float)) or isinstance(lr, bool) or not lr > 0:
        raise _fail(source, f"'unseen.tent_lr' must be a number > 0, got {lr!r}")
    raw_domains = raw.get("domains")
    if isinstance(raw_domains, dict):  # null drops a domain the study's _base_ file declares
        raw_domains = {k: v for k, v in raw_domains.items() if v is not None}
    if not isinstance(raw_domains, dict) or not raw_domains:
        raise _fail(source, "'unseen.domains' must map domain names to data entries "
                            "({like: DATASET, ...} or {config: FILE, ...})")
    folder = os.path.dirname(source)
    domains = {}
    for name, spec in raw_domains.items():
        name = str(name)
        where = f"unseen.domains.{name}"
        if "/" in name or name.startswith(".") or not name:
            raise _fail(source, f"domain name {name!r} must be a plain file name")
        if not isinstance(spec, dict):
            raise _fail(source, f"'{where}' must be a data entry (a mapping), got {spec!r}")
        like, cfg_path = spec.get("like"), spec.get("config")
        if like is not None and cfg_path is not None:
            raise _fail(source, f"'{where}': 'like' and 'config' both give the entry to start from; keep one")
        if like is not None and not isinstance(like, str):
            raise _fail(source, f"'{where}.like' must name a trained dataset, got {like!r}")
        if "dataset" in spec and cfg_path is None:
            raise _fail(source, f"'{where}.dataset' names an entry of 'config' (a config file), which is not set")
        if like is None and cfg_path is None and "type" not in spec:
            raise _fail(source, f"'{where}' needs 'type' (or 'like: <trained dataset>', or 'config: <file>')")
        base, origin = {}, "" if like is None else f"like the run's {like}"
        if cfg_path is not None:
            if not isinstance(cfg_path, str) or not cfg_path:
                raise _fail(source, f"'{where}.config' must be a config path (relative to {folder})")
            path = os.path.normpath(os.path.join(folder, os.path.expanduser(cfg_path)))
            if not os.path.isfile(path):
                raise _fail(source, f"'{where}.config': config file not found: {path}")
            entry_name = str(spec.get("dataset", name))
            try:
                data = load_yaml(path).get("data") or {}
            except ConfigError as exc:
                raise _fail(source, f"'{where}.config': {exc}") from None
            if entry_name not in data or not isinstance(data[entry_name], dict):
                raise _fail(source, f"'{where}': {path} has no data.{entry_name}; it has {list(data)}")
            base, origin = copy.deepcopy(data[entry_name]), f"data.{entry_name} of {cfg_path}"
        entry = {k: copy.deepcopy(v) for k, v in spec.items() if k not in DOMAIN_KEYS}
        domains[name] = Domain(name, entry, like, base, origin)
    return Unseen(rows, baseline, domains, list(adapt), scans, steps, float(lr),
                  str(raw.get("title") or Unseen.title), str(raw.get("note") or ""))


def domain_config(run: Config, domain: Domain, source: str) -> Config:
    """``run`` (a resolved run config) with ``domain`` added as an unseen
    dataset: the config its unseen evaluation reads."""
    from .study import _merge

    if domain.name in run.data:
        raise ConfigError(f"{source}: the run already has a dataset {domain.name!r}: name the domain otherwise")
    d = run.to_dict()
    if domain.like is not None:
        if domain.like not in run.names:
            raise ConfigError(f"{source}: 'like: {domain.like}' is not a trained dataset of the run "
                              f"(it trains {run.names})")
        base = d["data"][domain.like]
    else:
        base = domain.base
    entry = _merge(base, domain.entry)
    if entry.get("branch") not in run.names:
        entry["branch"] = domain.like if domain.like in run.names else run.names[0]
    maps = entry.get("label_map_from")
    if isinstance(maps, dict):
        entry["label_map_from"] = {k: v for k, v in maps.items() if k in run.names} or None
    d["data"][domain.name] = entry
    return build_config(d, source=source)


def config_path(out: str, method: str, seed: int, domain: str) -> str:
    """``DIR/runs/<method>/seed<k>/unseen/<domain>.yaml``; its numbers go beside it (``.json``)."""
    return os.path.join(out, "runs", method, f"seed{seed}", "unseen", f"{domain}.yaml")


def resolve_unseen(study, cfgs: Dict[Tuple[str, int], Config], out: str) -> None:
    """Check and write every unseen evaluation's config (:func:`config_path`)
    before any training; a bad domain is a ConfigError naming the study file."""
    from .study import _write_config

    u = study.unseen
    for s in study.seeds:
        for m in u.methods:
            for name, domain in u.domains.items():
                where = f"{study.source} (unseen.domains.{name}, method {m})"
                try:
                    cfg = domain_config(cfgs[(m, s)], domain, where)
                except ConfigError as exc:
                    msg = str(exc)
                    raise ConfigError(msg if msg.startswith(where) else f"{where}: {msg}") from None
                _write_config(cfg, config_path(out, m, s, name),
                              f"run {m}/seed{s} + unseen domain {name} ({study.source})")


def batches_of(unseen: Unseen, cfg: Config, domain: str) -> int:
    """The adaptation batches: ``scans`` in the domain's batch size, else cdcl adapt's default."""
    if unseen.scans is None:
        return DEFAULT_BATCHES
    return max(1, math.ceil(unseen.scans / cfg.data[domain].batch_size))


@dataclass
class UnseenJob:
    """One run measured on one domain: ``python -m common.transfer`` (what
    :func:`common.study.execute` runs, like a training)."""
    method: str
    seed: int
    domain: str
    config_path: str
    checkpoint: str
    out: str
    log_path: str
    threads: int
    adapt: List[str]
    batches: int
    steps: int
    lr: float
    state: str = "new"
    verb: str = "measuring"

    @property
    def tag(self) -> str:
        return f"{self.method}/seed{self.seed} on {self.domain}"

    def key(self) -> Dict[str, Any]:
        from .transfer import transfer_key
        return transfer_key(self.config_path, self.checkpoint, self.adapt, self.batches, self.steps, self.lr)

    def command(self) -> List[str]:
        return [sys.executable, "-m", "common.transfer", self.config_path, f"train.threads={self.threads}",
                "--checkpoint", self.checkpoint, "--dataset", self.domain, "--adapt", *self.adapt,
                "--batches", str(self.batches), "--steps", str(self.steps), "--lr", repr(self.lr),
                "--out", self.out]

    def headline(self) -> str:
        try:
            with open(self.out, encoding="utf-8") as f:
                res = json.load(f)
            return f"auto picks {res['pick']['bn_distance']}: " + ", ".join(
                f"{COLUMN[a]} {100 * r['miou']:.1f}" for a, r in res["adapted"].items())
        except (OSError, ValueError, KeyError, TypeError):
            return f"no {os.path.basename(self.out)}"


def unseen_jobs(study, out: str, runs) -> List[UnseenJob]:
    """The unseen evaluations of the finished runs of ``study``; ``done``
    where the JSON is there and was computed from the same config,
    checkpoint and settings."""
    from .config import load_config

    u = study.unseen
    todo = []
    for r in runs:
        if r.method not in u.methods or r.state != "done":
            continue
        checkpoint = os.path.join(r.run_dir, "checkpoints", "latest.pth")
        if not os.path.isfile(checkpoint):
            continue
        for name in u.domains:
            path = config_path(out, r.method, r.seed, name)
            cfg = load_config(path)
            job = UnseenJob(r.method, r.seed, name, path, checkpoint,
                            os.path.join(os.path.dirname(path), f"{name}.json"),
                            os.path.join(out, "logs", r.method, f"seed{r.seed}_unseen_{name}.log"),
                            r.threads, list(u.adapt), batches_of(u, cfg, name), u.tent_steps, u.tent_lr)
            job.state = "done" if _computed_from(job.out, job.key()) else "new"
            todo.append(job)
    return todo


def _computed_from(path: str, key: Dict[str, Any]) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f).get("key") == json.loads(json.dumps(key))
    except (OSError, ValueError, AttributeError):
        return False


def section_meta(u: Unseen, labels: Dict[str, str]) -> Dict[str, Any]:
    """What ``study.json`` keeps of the section (the report reads it)."""
    return {"title": u.title, "methods": u.methods, "baseline": u.baseline, "adapt": u.adapt, "scans": u.scans,
            "tent_steps": u.tent_steps, "tent_lr": u.tent_lr, "note": u.note,
            "rows": {m: labels[m] for m in u.methods},
            "domains": {n: {"origin": d.origin, "like": d.like, "entry": d.entry} for n, d in u.domains.items()}}


# -- the report ---------------------------------------------------------------------------

def _load(out: str, meta: Dict[str, Any]) -> Tuple[Dict[str, Dict[int, Dict[str, Any]]], List[str]]:
    u = meta["unseen"]
    res: Dict[str, Dict[int, Dict[str, Any]]] = {}
    missing = []
    for m in u["methods"]:
        res[m] = {}
        for s in meta["seeds"]:
            res[m][s] = {}
            for d in u["domains"]:
                path = os.path.join(out, "runs", m, f"seed{s}", "unseen", f"{d}.json")
                try:
                    with open(path, encoding="utf-8") as f:
                        res[m][s][d] = json.load(f)
                except (OSError, ValueError):
                    missing.append(f"{m}/seed{s} on {d}")
    return res, missing


def analyse_unseen(meta: Dict[str, Any], out: str) -> Dict[str, Any]:
    """The numbers of the section (fractions): per domain, adaptation and
    method the mean and 95% CI over seeds and the paired difference to the
    baseline; per domain and method every branch's direct mIoU and the
    branch choices per seed."""
    u, seeds = meta["unseen"], meta["seeds"]
    res, missing = _load(out, meta)
    table: Dict[str, Any] = {}
    vs: Dict[str, Any] = {}
    branches: Dict[str, Any] = {}
    choice: Dict[str, Any] = {}
    used: Dict[str, Any] = {}
    for d in u["domains"]:
        table[d], vs[d], branches[d], choice[d] = {}, {}, {}, {}
        for a in u["adapt"]:
            table[d][a], vs[d][a] = {}, {}
            for m in u["methods"]:
                vals = [((res[m][s].get(d) or {}).get("adapted", {}).get(a) or {}).get("miou") for s in seeds]
                table[d][a][m] = dict(stats.mean_ci(vals), values=vals)
            base = table[d][a][u["baseline"]]["values"]
            for m in u["methods"]:
                if m != u["baseline"]:
                    diff = stats.paired_diff(table[d][a][m]["values"], base)
                    vs[d][a][m] = dict(diff, verdict=stats.verdict(diff))
        for m in u["methods"]:
            runs = {s: res[m][s][d] for s in seeds if res[m][s].get(d)}
            names = []
            for r in runs.values():
                names += [b for b in r["candidates"] if b not in names]
            branches[d][m] = {}
            for b in names:
                vals = [runs[s]["direct"][b]["miou"] if s in runs and b in runs[s]["direct"] else None for s in seeds]
                scored = sorted({len(r["direct"][b]["scored_classes"]) for r in runs.values() if b in r["direct"]})
                branches[d][m][b] = dict(stats.mean_ci(vals), values=vals, classes_scored=scored)
            picks = {s: {"auto": r["pick"]["bn_distance"], "entropy": r["pick"]["entropy"], "best": r["best"],
                         "tie": len(r["candidates"]) > 1
                         and len({round(x["bn_distance"], 9) for x in r["scores"].values()}) == 1}
                     for s, r in runs.items()}
            choice[d][m] = {
                "seeds": picks, "n": len(picks), "candidates": names,
                "others": sorted({f"{b} ({why})" for r in runs.values() for b, why in r["other_branches"].items()}),
                "auto_is_best": sum(p["auto"] in p["best"] for p in picks.values()),
                "entropy_is_best": sum(p["entropy"] in p["best"] for p in picks.values()),
                "agree": sum(p["auto"] == p["entropy"] for p in picks.values()),
                "ties": sum(p["tie"] for p in picks.values())}
            for r in runs.values():
                for a, x in r["adapted"].items():
                    if "scans" in x:
                        used.setdefault(d, set()).add((x["scans"], r.get("unlabelled_split"),
                                                       r.get("unlabelled_scans")))
    return {"table": table, "vs_baseline": vs, "branches": branches, "choice": choice, "missing": missing,
            "adapted_on": {d: [{"scans": s, "split": sp, "of": n} for s, sp, n in sorted(v, key=str)]
                           for d, v in used.items()}}


def format_unseen(meta: Dict[str, Any], an: Dict[str, Any]) -> List[str]:
    """The section's lines of ``report.md``."""
    from .study import _ci_text, _delta_cell, _fmt

    u = meta["unseen"]
    rows, doms, adapt = u["rows"], list(u["domains"]), u["adapt"]
    L = ["", f"## {u['title']}", ""]
    steps = f"{u['tent_steps']} steps, SGD lr {u['tent_lr']:g} momentum 0.9"
    L.append("Each finished run measured on domains it was never trained on. Columns per domain: "
             + "; ".join({"none": "**direct**: the branch `auto` picks, as trained",
                          "precise-bn": "**precise BN**: its BN statistics recomputed on the domain's "
                                        "unlabelled scans (true averages)",
                          "tent": f"**TENT**: after precise BN, entropy minimisation over the BN affine "
                                  f"parameters ({steps})"}[a] for a in adapt)
             + ". `auto` picks, among the branches that can serve the domain, the one whose BN statistics "
               "are closest to the domain's (`cdcl adapt --branch auto`). mIoU in % on the domain's labelled "
               "validation split, mean ± 95% CI over seeds; a strategy with shared BatchNorm adapts its one "
               "BatchNorm, in a copy.")
    for d, spec in u["domains"].items():
        on = an["adapted_on"].get(d) or []
        how = ", ".join(f"{x['scans']} of the {x['of']} scans of split `{x['split']}`" for x in on) or "–"
        parts = [spec["origin"], ", ".join(f"{k}: {v}" for k, v in spec["entry"].items() if k != "label_map_from")]
        L.append(f"- `{d}`: {'; '.join(p for p in parts if p)}; adapted on {how}.")
    if u.get("scans") is None:
        L.append(f"  (`scans` unset: all of the split, up to {DEFAULT_BATCHES} batches)")
    if an["missing"]:
        L += ["", f"**Missing** (not in the numbers below): {', '.join(an['missing'])}"]
    L.append("")
    head = ["method"] + [f"{d} {COLUMN[a]}" for d in doms for a in adapt]
    L.append("| " + " | ".join(head) + " |")
    L.append("|" + "---|" * len(head))
    for m, label in rows.items():
        cells = []
        for d in doms:
            for a in adapt:
                s = an["table"][d][a][m]
                cells.append("–" if s["n"] == 0 else f"{_fmt(s['mean'])} ± {_fmt(s['half'])}" if s["n"] > 1
                             else _fmt(s["mean"]))
        L.append(f"| {label} | " + " | ".join(cells) + " |")
    base = u["baseline"]
    L += ["", f"Paired differences to **{rows[base]}** (same column, seed by seed; 95% CI, seeds improved):", ""]
    L.append("| method − " + rows[base] + " | " + " | ".join(head[1:]) + " |")
    L.append("|" + "---|" * len(head))
    for m, label in rows.items():
        if m == base:
            continue
        L.append(f"| {label} | " + " | ".join(_delta_cell(an["vs_baseline"][d][a][m]) if an["vs_baseline"][d][a][m]["n"]
                                             else "–" for d in doms for a in adapt) + " |")
    if u.get("note"):
        L += ["", u["note"].strip()]
    L += ["", f"### {u['title'].split(':')[0]}: the branch `auto` picks", "",
          "Per seed: the branch of the smallest BN-statistics distance (`auto`), of the lowest prediction "
          "entropy, and the best branch by direct labelled mIoU (over the classes every candidate reaches, "
          "when their label maps reach different ones). A tie: every candidate has the same distance "
          "(one shared BatchNorm), so `auto` takes the first.", "",
          "| domain | method | candidates | auto (BN distance) | entropy | best by mIoU | auto = best | "
          "entropy = best | auto = entropy |", "|---|---|---|---|---|---|---|---|---|"]
    for d in doms:
        for m, label in rows.items():
            c = an["choice"][d][m]
            if not c["n"]:
                L.append(f"| {d} | {label} | – | – | – | – | – | – | – |")
                continue
            cands = ", ".join(c["candidates"]) + (f" (not: {'; '.join(c['others'])})" if c["others"] else "")
            L.append(f"| {d} | {label} | {cands} | {_per_seed(c, 'auto')} | {_per_seed(c, 'entropy')} | "
                     f"{_per_seed(c, 'best')} | "
                     f"{c['auto_is_best']}/{c['n']} | {c['entropy_is_best']}/{c['n']} | {c['agree']}/{c['n']} |")
    L += ["", "\\* a tie of the BN distance; best: ties of the mIoU are all listed (a/b)."]
    L += ["", "Every candidate branch on its own, no adaptation (mIoU in %, mean ± 95% CI; classes: those its "
              "label map reaches, of the domain's):", "",
          "| domain | method | branch | classes scored | mIoU | 95% CI | seeds |", "|---|---|---|---|---|---|---|"]
    for d in doms:
        for m, label in rows.items():
            for b, s in an["branches"][d][m].items():
                L.append(f"| {d} | {label} | {b} | {', '.join(map(str, s['classes_scored']))} | "
                         f"{_fmt(s['mean'], 2)} | {_ci_text(s)} | "
                         + ", ".join(_fmt(v) if v is not None else "–" for v in s["values"]) + " |")
    return L


def _per_seed(c: Dict[str, Any], k: str) -> str:
    """``a, a*, b/c``: one entry per seed (``*`` a tie of the BN distance; ``/`` tied best)."""
    out = []
    for s in sorted(c["seeds"], key=int):
        p = c["seeds"][s]
        v = p[k]
        out.append("/".join(v) if isinstance(v, list) else v + ("*" if k == "auto" and p["tie"] else ""))
    return ", ".join(out)
