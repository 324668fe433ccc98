"""Experiment configuration: YAML → ``_base_`` inheritance → overrides → dataclasses.

* ``yaml.safe_load`` only.
* ``_base_: path`` or a list of paths (relative to the file); the file's own
  keys are merged over its bases: dicts merge recursively, lists and scalars
  are replaced.
* Command-line overrides ``train.iterations=200`` (values parsed as YAML).
* Typed validation into dataclasses; an unknown or mistyped key raises
  :class:`ConfigError` naming the key, the file and the valid keys.

Free-form sections that belong to a task are ``model`` (the builder's keyword
arguments; the task checks them against the builder's signature), the extra
keys of each ``data.<name>`` entry and ``eval.options``.
"""
from __future__ import annotations

import copy
import dataclasses
import os
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import yaml

from .errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration file or override is invalid."""


STRATEGIES = ("single", "cdcl", "shared_bn", "conv_not_shared", "finetune", "label_remap")
MODES = ("dat", "fused", "sequential")


@dataclass
class DataConfig:
    """One dataset. Keys beyond these are task-specific and kept in ``params``."""

    type: str
    root: str = ""
    batch_size: int = 2
    loss_weight: float = 1.0
    train_split: str = "train"
    val_split: str = "val"
    num_workers: int = 0
    on_bad_sample: str = "raise"  # raise | skip
    num_classes: Optional[int] = None  # known class count (`cdcl info` without data; checked by readers)
    # an unseen dataset: not trained, evaluated (and precise-BN'd) through this trained dataset's branch
    branch: Optional[str] = None
    eval: Dict[str, Any] = field(default_factory=dict)  # this dataset's overrides of eval.options
    params: Dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> Dict[str, Any]:
        """Flat dict (generic keys + task keys) handed to the task's builders."""
        d = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "params"}
        d.update(self.params)
        return d


#: keys every ``data.<name>`` entry may hold; the rest are the task's own
DATA_KEYS = tuple(f.name for f in dataclasses.fields(DataConfig) if f.name != "params")


@dataclass
class StrategyConfig:
    """How the datasets share the network (the paper's methods and ablations)."""

    name: str = "cdcl"
    # finetune: iterations on the first dataset before switching to the second
    switch_at: Optional[int] = None
    # label_remap: {dataset: {source_id: target_id}} into the first dataset's ids
    label_map: Dict[str, Dict[int, int]] = field(default_factory=dict)
    # extra layer types made dataset-specific on top of the strategy's own
    sync_bn: bool = False


@dataclass
class TrainConfig:
    iterations: int = 1000
    seed: int = 0
    mode: str = "dat"  # dat | fused | sequential
    lr: float = 0.01
    momentum: float = 0.9
    weight_decay: float = 1e-4
    nesterov: bool = False
    poly_power: float = 0.9
    warmup_iters: int = 0
    warmup_ratio: float = 0.1
    amp: str = "none"  # none | bf16 | fp16
    clip_grad: Optional[float] = None
    eval_every: int = 0  # 0: evaluate only at the end
    checkpoint_every: int = 500
    keep_checkpoints: int = 2
    log_every: int = 10
    reference: Optional[str] = None  # dataset whose passes count epochs
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    on_nonfinite: str = "stop"  # stop | skip
    progress: bool = True
    threads: Optional[int] = None
    tb_images: bool = True


@dataclass
class EvalConfig:
    batch_size: int = 1
    num_workers: int = 0
    max_samples: Optional[int] = None
    options: Dict[str, Any] = field(default_factory=dict)


@dataclass
class Config:
    task: str
    model: Dict[str, Any]
    data: Dict[str, DataConfig]
    strategy: StrategyConfig = field(default_factory=StrategyConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    source: str = ""  # the file it came from (not a YAML key)

    @property
    def names(self) -> List[str]:
        """The trained datasets (branches, heads, loaders), declared once, in config order."""
        return [n for n, d in self.data.items() if d.branch is None]

    @property
    def eval_names(self) -> List[str]:
        """Every dataset that is evaluated: the trained ones, then the unseen ones."""
        return self.names + [n for n, d in self.data.items() if d.branch is not None]

    def branch_of(self, name: str) -> str:
        """The model branch that serves dataset ``name``."""
        return self.data[name].branch or name

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        for name, entry in d["data"].items():
            params = entry.pop("params")
            entry.update(params)
        return d


# -- loading ------------------------------------------------------------------------

def _merge(base: Dict[str, Any], over: Dict[str, Any]) -> Dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def load_yaml(path: str, _seen: Sequence[str] = ()) -> Dict[str, Any]:
    """Read ``path`` with its ``_base_`` chain merged in."""
    path = os.path.abspath(path)
    if path in _seen:
        raise ConfigError(f"{path}: circular _base_ chain: {' -> '.join(_seen)}")
    if not os.path.isfile(path):
        raise ConfigError(f"config file not found: {path}")
    with open(path, encoding="utf-8") as f:
        try:
            raw = yaml.safe_load(f) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    bases = raw.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    merged: Dict[str, Any] = {}
    for b in bases:
        merged = _merge(merged, load_yaml(os.path.join(os.path.dirname(path), b), (*_seen, path)))
    return _merge(merged, raw)


def apply_overrides(d: Dict[str, Any], overrides: Sequence[str], source: str = "") -> Dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML)."""
    d = copy.deepcopy(d)
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        try:
            parsed = yaml.safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        node = d
        for p in parts[:-1]:
            if p not in node:
                node[p] = {}
            if not isinstance(node[p], dict):
                raise ConfigError(f"override {key!r}: {p!r} is not a section in {source or 'the config'}")
            node = node[p]
        node[parts[-1]] = parsed
    return d


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if tp is Any:
        return True
    if origin is typing.Union:
        return any(_type_ok(value, a) for a in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if origin in (dict, Dict):
        return isinstance(value, dict)
    if origin in (list, List):
        return isinstance(value, list)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _build(cls, d: Any, where: str, source: str, extra_to: Optional[str] = None):
    if d is None:
        d = {}
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: '{where}' must be a mapping, got {type(d).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs: Dict[str, Any] = {}
    extra: Dict[str, Any] = {}
    for k, v in d.items():
        if k not in fields or k == extra_to:
            if extra_to is not None:
                extra[k] = v
                continue
            valid = ", ".join(sorted(fields))
            raise ConfigError(f"{source}: unknown key '{where}.{k}'; valid keys in '{where}': {valid}")
        if not _type_ok(v, hints[k]):
            raise ConfigError(f"{source}: '{where}.{k}' must be {getattr(hints[k], '__name__', hints[k])}, "
                              f"got {v!r}")
        kwargs[k] = float(v) if hints[k] is float else v
    for name, f in fields.items():
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING \
                and name not in kwargs and name != extra_to:
            raise ConfigError(f"{source}: missing required key '{where}.{name}'")
    if extra_to is not None:
        kwargs[extra_to] = extra
    return cls(**kwargs)


def build_config(d: Dict[str, Any], source: str = "<dict>") -> Config:
    """Validate a merged dict into a :class:`Config`."""
    d = dict(d)
    top = {f.name for f in dataclasses.fields(Config) if f.name != "source"}
    for k in d:
        if k not in top:
            raise ConfigError(f"{source}: unknown top-level key '{k}'; valid keys: {', '.join(sorted(top))}")
    if "task" not in d:
        raise ConfigError(f"{source}: missing required key 'task'")
    if not isinstance(d.get("model"), dict) or "name" not in d["model"]:
        raise ConfigError(f"{source}: 'model' must be a mapping with at least 'name'")
    data = d.get("data")
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{source}: 'data' must map at least one dataset name to its settings")
    datasets = {}
    for name, entry in data.items():
        if not isinstance(entry, dict):
            raise ConfigError(f"{source}: 'data.{name}' must be a mapping")
        datasets[str(name)] = _build(DataConfig, entry, f"data.{name}", source, extra_to="params")
        if datasets[str(name)].on_bad_sample not in ("raise", "skip"):
            raise ConfigError(f"{source}: 'data.{name}.on_bad_sample' must be raise or skip")
    strategy = _build(StrategyConfig, d.get("strategy"), "strategy", source)
    train = _build(TrainConfig, d.get("train"), "train", source)
    ev = _build(EvalConfig, d.get("eval"), "eval", source)
    cfg = Config(task=str(d["task"]), model=dict(d["model"]), data=datasets, strategy=strategy,
                 train=train, eval=ev, source=source)
    validate(cfg)
    return cfg


def validate(cfg: Config) -> None:
    """Cross-field checks that name the offending key."""
    src = cfg.source
    if cfg.strategy.name not in STRATEGIES:
        raise ConfigError(f"{src}: 'strategy.name' is {cfg.strategy.name!r}; valid: {', '.join(STRATEGIES)}")
    if cfg.train.mode not in MODES:
        raise ConfigError(f"{src}: 'train.mode' is {cfg.train.mode!r}; valid: {', '.join(MODES)}")
    if cfg.train.amp not in ("none", "bf16", "fp16"):
        raise ConfigError(f"{src}: 'train.amp' must be none, bf16 or fp16")
    if cfg.train.on_nonfinite not in ("stop", "skip"):
        raise ConfigError(f"{src}: 'train.on_nonfinite' must be stop or skip")
    if cfg.train.iterations < 1:
        raise ConfigError(f"{src}: 'train.iterations' must be >= 1")
    n = len(cfg.data)
    if cfg.strategy.name == "single" and n != 1:
        raise ConfigError(f"{src}: strategy 'single' needs exactly one dataset under 'data', got {cfg.names}")
    if cfg.strategy.name in ("finetune", "label_remap") and n != 2:
        raise ConfigError(f"{src}: strategy '{cfg.strategy.name}' needs two datasets (A then B), got {cfg.names}")
    if cfg.strategy.name == "finetune" and not cfg.strategy.switch_at:
        raise ConfigError(f"{src}: strategy 'finetune' needs 'strategy.switch_at' (iterations on the first dataset)")
    if cfg.strategy.name == "label_remap":
        for name in cfg.strategy.label_map:
            if name not in cfg.data:
                raise ConfigError(f"{src}: 'strategy.label_map.{name}' names no dataset; datasets: {cfg.names}")
    for name, dc in cfg.data.items():
        if dc.branch is not None and dc.branch not in cfg.names:
            raise ConfigError(f"{src}: 'data.{name}.branch' is {dc.branch!r}; trained datasets: {cfg.names}")
    if not cfg.names:
        raise ConfigError(f"{src}: every dataset under 'data' has a 'branch': nothing to train")
    if cfg.train.reference is not None and cfg.train.reference not in cfg.names:
        raise ConfigError(f"{src}: 'train.reference' is {cfg.train.reference!r}; datasets: {cfg.names}")
    for name, dc in cfg.data.items():
        if dc.batch_size < 1:
            raise ConfigError(f"{src}: 'data.{name}.batch_size' must be >= 1")


def load_config(path: str, overrides: Sequence[str] = ()) -> Config:
    """Load ``path`` (with bases), apply overrides, validate."""
    d = load_yaml(path)
    d = apply_overrides(d, overrides, path)
    return build_config(d, source=os.path.abspath(path))


def dump_config(cfg: Config, path: str) -> None:
    """Write the resolved config as YAML (it reloads to the same Config)."""
    from .utils import atomic_write_bytes

    text = yaml.safe_dump(cfg.to_dict(), sort_keys=False)
    atomic_write_bytes(path, text.encode("utf-8"))


def config_from_text(text: str, source: str = "<checkpoint>") -> Config:
    d = yaml.safe_load(text)
    return build_config(d, source=source)


def check_kwargs(fn, kwargs: Dict[str, Any], where: str, source: str = "",
                 reserved: Sequence[str] = ()) -> None:
    """Raise ConfigError if ``kwargs`` has a key ``fn`` does not accept."""
    import inspect

    sig = inspect.signature(fn)
    if any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        return
    valid = [p for p in sig.parameters if p not in reserved and p != "self"]
    for k in kwargs:
        if k not in valid:
            raise ConfigError(f"{source}: unknown key '{where}.{k}'; valid keys: {', '.join(valid)}")
