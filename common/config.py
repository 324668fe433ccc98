"""Experiment configuration: YAML → ``_base_`` inheritance → overrides → dataclasses.

* YAML through a ``yaml.SafeLoader`` (:func:`safe_load`) that also reads
  ``1e-3`` as a float (YAML 1.2; 1.1 reads it as a string) and refuses
  aliases that expand beyond :data:`MAX_YAML_NODES` nodes (an alias bomb).
* ``_base_: path`` or a list of paths (relative to the file); the file's own
  keys are merged over its bases: dicts merge recursively, lists and scalars
  are replaced.
* Command-line overrides ``train.iterations=200`` (values parsed as YAML).
* Typed validation into dataclasses; an unknown or mistyped key raises
  :class:`ConfigError` naming the key, the file and the valid keys.

Free-form sections that belong to a task are ``model`` (the builder's keyword
arguments; the task checks them against the builder's signature), the extra
keys of each ``data.<name>`` entry and ``eval.options``; the task checks them
(:meth:`common.task.Task.check_config`) when the config is built, before any
work starts.
"""
from __future__ import annotations

import collections.abc
import copy
import dataclasses
import math
import os
import re
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

import yaml

from .errors import UserError


class ConfigError(UserError, ValueError):
    """A configuration file or override is invalid."""


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
    # an unseen dataset of other classes: {trained dataset: {its class id: this dataset's id}}
    # (cdcl adapt builds this dataset's head from it; common/adapt.py)
    label_map_from: Optional[Dict[str, Dict[int, int]]] = None
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
    # finetune, two_stage: iterations on the first dataset before switching to the second
    switch_at: Optional[int] = None
    # finetune, two_stage: after the switch the parameters shared by the datasets get no updates
    # (two_stage: the convolutions; finetune: also the shared BN's affine, its statistics still move)
    freeze_conv: bool = False
    # label_remap: {dataset: {source_id: target_id}} into the first dataset's ids
    label_map: Dict[str, Dict[int, int]] = field(default_factory=dict)
    # under DDP every BatchNorm (and BatchNorm branch) a SyncBatchNorm
    sync_bn: bool = False


@dataclass
class TrainConfig:
    # the length: iterations, or epochs of the reference dataset (converted once by
    # the trainer); at most one of the two, 1000 iterations when neither is set
    iterations: Optional[int] = None
    epochs: Optional[float] = None
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

    def __post_init__(self) -> None:
        if self.iterations is None and self.epochs is None:
            self.iterations = 1000


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

    def to_dict(self) -> Dict[str, Any]:
        d = dataclasses.asdict(self)
        d.pop("source")
        for name, entry in d["data"].items():
            params = entry.pop("params")
            entry.update(params)
        return d


# -- loading ------------------------------------------------------------------------

#: most nodes a YAML document may expand to, aliases counted in full (a config
#: has hundreds; "a billion laughs" has 10^9)
MAX_YAML_NODES = 100_000
#: deepest nesting of a YAML document (configs use a handful of levels)
MAX_YAML_DEPTH = 64


class _Loader(yaml.SafeLoader):
    """``yaml.SafeLoader`` + YAML 1.2 floats without a dot (``1e-3``) + a bound on
    what aliases expand to."""

    def get_single_node(self):
        node = super().get_single_node()
        if node is not None:
            _check_expanded_size(node)
        return node


_Loader.add_implicit_resolver(  # appended after 1.1's float rule, which needs a dot
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*[eE][-+]?[0-9]+$"), list("-+0123456789"))


def _check_expanded_size(root: yaml.Node) -> None:
    sizes: Dict[int, int] = {}
    open_: set = set()

    def size(node: yaml.Node, depth: int = 0) -> int:
        key = id(node)
        if key in sizes:
            return sizes[key]
        if key in open_:
            raise yaml.YAMLError(f"recursive alias at {node.start_mark}".strip())
        if depth > MAX_YAML_DEPTH:
            raise yaml.YAMLError(f"nested too deeply (more than {MAX_YAML_DEPTH} levels) at "
                                 f"{node.start_mark}".strip())
        open_.add(key)
        n = 1
        if isinstance(node, yaml.MappingNode):
            n += sum(size(k, depth + 1) + size(v, depth + 1) for k, v in node.value)
        elif isinstance(node, yaml.SequenceNode):
            n += sum(size(v, depth + 1) for v in node.value)
        open_.discard(key)
        if n > MAX_YAML_NODES:
            raise yaml.YAMLError(f"aliases expand to more than {MAX_YAML_NODES:,} nodes "
                                 f"(an alias bomb?) at {node.start_mark}".strip())
        sizes[key] = n
        return n

    size(root)


def safe_load(stream: Any) -> Any:
    """``yaml.safe_load`` with the loader above (a ``SafeLoader``: plain data only)."""
    return yaml.load(stream, Loader=_Loader)  # noqa: S506 -- _Loader is a SafeLoader


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
    try:
        with open(path, encoding="utf-8") as f:
            raw = safe_load(f) or {}
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text file (a YAML config is UTF-8 text)") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    except RecursionError:
        raise ConfigError(f"{path}: not valid YAML: nested too deeply") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: top level must be a mapping, got {type(raw).__name__}")
    bases = raw.pop("_base_", [])
    if isinstance(bases, str):
        bases = [bases]
    if not isinstance(bases, list) or not all(isinstance(b, str) and b for b in bases):
        raise ConfigError(f"{path}: '_base_' must be a path or a list of paths "
                          f"(relative to this file), got {bases!r}")
    merged: Dict[str, Any] = {}
    for b in bases:
        merged = _merge(merged, load_yaml(os.path.join(os.path.dirname(path), b), (*_seen, path)))
    return _merge(merged, raw)


def apply_overrides(d: Dict[str, Any], overrides: Sequence[str], source: str = "") -> Dict[str, Any]:
    """Apply ``a.b.c=value`` overrides (values parsed as YAML).

    ``data.<name>.<key>=...`` must name a declared dataset (a typo would
    otherwise declare a new one and fail later on its missing ``type``); a
    new dataset is declared by overriding its ``type`` too."""
    d = copy.deepcopy(d)
    keys = [item.split("=", 1)[0].strip() for item in overrides]
    declared = list(d.get("data") or {}) if isinstance(d.get("data"), dict) else []
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key.path=value")
        key, value = item.split("=", 1)
        parts = key.strip().split(".")
        if (len(parts) >= 3 and parts[0] == "data" and parts[1] not in declared
                and f"data.{parts[1]}.type" not in keys):
            raise ConfigError(f"{_prefix(source)}override {key.strip()!r}: unknown dataset {parts[1]!r}; "
                              f"the config declares {', '.join(declared) or 'none'} (to add a dataset, "
                              f"also set data.{parts[1]}.type)")
        try:
            parsed = safe_load(value) if value != "" else ""
        except yaml.YAMLError:
            parsed = value
        except RecursionError:
            raise ConfigError(f"override {key!r}: value nested too deeply") from None
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
    args = typing.get_args(tp)
    if tp is Any:
        return True
    if origin is typing.Union:
        return any(_type_ok(value, a) for a in args)
    if tp is type(None):
        return value is None
    if origin in (dict, Dict):
        return isinstance(value, dict)
    if origin in (list, List, tuple, collections.abc.Sequence) or tp in (list, tuple):
        # YAML has lists only: a list stands for a tuple or a sequence
        if not isinstance(value, (list, tuple)):
            return False
        if origin is tuple and args and args[-1] is not Ellipsis:
            return len(value) == len(args) and all(_type_ok(v, a) for v, a in zip(value, args))
        return not args or all(_type_ok(v, args[0]) for v in value)
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if isinstance(tp, type):
        return isinstance(value, tp)
    return True


def _type_name(tp: Any) -> str:
    if typing.get_origin(tp) is typing.Union:
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if tp is type(None):
        return "null"
    if typing.get_origin(tp) in (list, List, tuple, collections.abc.Sequence):
        args = [a for a in typing.get_args(tp) if a is not Ellipsis]
        inner = f" of {_type_name(args[0])}" if args and len(set(args)) == 1 else ""
        return f"a list{inner}" + (f" ({len(args)} values)" if typing.get_origin(tp) is tuple
                                   and Ellipsis not in typing.get_args(tp) and len(args) > 1 else "")
    return getattr(tp, "__name__", str(tp))


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
            raise ConfigError(f"{source}: '{where}.{k}' must be {_type_name(hints[k])}, got {v!r}")
        if hints[k] is float or (v is not None and typing.get_origin(hints[k]) is typing.Union
                                 and float in typing.get_args(hints[k])):
            v = float(v)
            if not math.isfinite(v):
                raise ConfigError(f"{source}: '{where}.{k}' must be a finite number, got {v!r}")
        kwargs[k] = v
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
    _check_with_task(cfg)
    return cfg


def _check_with_task(cfg: Config) -> None:
    """The task's own sections, checked by the task (an unknown task is
    reported where the task is looked up)."""
    from .registry import TASKS, load_plugins

    load_plugins()
    if cfg.task in TASKS.names():
        TASKS.get(cfg.task).check_config(cfg)


#: numeric limits, one row per key: (key, lowest, lowest allowed itself, highest);
#: ``data.*`` applies to every dataset, None values (unset options) pass
LIMITS = (
    ("train.iterations", 1, True, None), ("train.epochs", 0, False, None), ("train.lr", 0, False, None),
    ("train.momentum", 0, True, 1), ("train.weight_decay", 0, True, None),
    ("train.poly_power", 0, True, None), ("train.warmup_iters", 0, True, None),
    ("train.warmup_ratio", 0, True, 1), ("train.clip_grad", 0, False, None),
    ("train.eval_every", 0, True, None), ("train.checkpoint_every", 1, True, None),
    ("train.keep_checkpoints", 0, True, None), ("train.log_every", 1, True, None),
    ("train.threads", 1, True, None), ("strategy.switch_at", 1, True, None),
    ("data.*.batch_size", 1, True, None), ("data.*.num_workers", 0, True, None),
    ("data.*.loss_weight", 0, True, None), ("data.*.num_classes", 1, True, None),
    ("eval.batch_size", 1, True, None), ("eval.num_workers", 0, True, None),
    ("eval.max_samples", 1, True, None),
)


def _check_limits(cfg: Config) -> None:
    for key, lo, lo_ok, hi in LIMITS:
        section, *rest = key.split(".")
        if section == "data":
            owners = [(f"data.{n}.{rest[-1]}", d) for n, d in cfg.data.items()]
        else:
            owners = [(key, getattr(cfg, section))]
        for where, owner in owners:
            v = getattr(owner, rest[-1])
            if v is None:
                continue
            ok = (v >= lo if lo_ok else v > lo) and (hi is None or v <= hi)
            if not ok:
                want = f"{'>=' if lo_ok else '>'} {lo}" + (f" and <= {hi}" if hi is not None else "")
                raise ConfigError(f"{cfg.source}: '{where}' must be {want}, got {v!r}")


def _check_label_map_from(cfg: "Config", name: str, maps: Any) -> None:
    """``data.<name>.label_map_from``: on an unseen dataset, ``{trained dataset:
    {int: int}}`` (class ids are checked against the heads by ``cdcl adapt``)."""
    key = f"{cfg.source}: 'data.{name}.label_map_from'"
    if cfg.data[name].branch is None:
        raise ConfigError(f"{key}: only an unseen dataset (one with 'data.{name}.branch') maps a trained "
                          "branch's classes onto its own")
    if not isinstance(maps, dict) or not maps:
        raise ConfigError(f"{key} must map trained datasets to tables {{their id: id of {name}}}, got {maps!r}")
    for source, table in maps.items():
        if source not in cfg.names:
            raise ConfigError(f"{key}: {source!r} is no trained dataset; trained: {cfg.names}")
        if not isinstance(table, dict) or not table or not all(
                isinstance(k, int) and isinstance(v, int) and not isinstance(k, bool) and not isinstance(v, bool)
                for k, v in table.items()):
            raise ConfigError(f"{key}.{source} must map class ids of {source} to class ids of {name} "
                              f"(integers), got {table!r}")


def validate(cfg: Config) -> None:
    """Cross-field checks that name the offending key."""
    from .build import check_strategy

    src = cfg.source
    if cfg.train.mode not in MODES:
        raise ConfigError(f"{src}: 'train.mode' is {cfg.train.mode!r}; valid: {', '.join(MODES)}")
    if cfg.train.amp not in ("none", "bf16", "fp16"):
        raise ConfigError(f"{src}: 'train.amp' must be none, bf16 or fp16")
    if cfg.train.on_nonfinite not in ("stop", "skip"):
        raise ConfigError(f"{src}: 'train.on_nonfinite' must be stop or skip")
    if cfg.train.iterations is not None and cfg.train.epochs is not None:
        raise ConfigError(f"{src}: 'train.iterations' ({cfg.train.iterations}) and 'train.epochs' "
                          f"({cfg.train.epochs:g}) are both set: set one (train.iterations=null drops "
                          "iterations set in a _base_ file)")
    _check_limits(cfg)
    for name, dc in cfg.data.items():
        if dc.branch is not None and dc.branch not in cfg.names:
            raise ConfigError(f"{src}: 'data.{name}.branch' is {dc.branch!r}; trained datasets: {cfg.names}")
        if dc.label_map_from is not None:
            _check_label_map_from(cfg, name, dc.label_map_from)
    if not cfg.names:
        raise ConfigError(f"{src}: every dataset under 'data' has a 'branch': nothing to train")
    check_strategy(cfg)  # the strategy table's rules: dataset count, its own keys
    if cfg.train.reference is not None and cfg.train.reference not in cfg.names:
        raise ConfigError(f"{src}: 'train.reference' is {cfg.train.reference!r}; datasets: {cfg.names}")


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
    try:
        d = safe_load(text)
    except (yaml.YAMLError, RecursionError) as exc:
        raise ConfigError(f"{source}: not valid YAML: {exc}") from None
    if not isinstance(d, dict):
        raise ConfigError(f"{source}: top level must be a mapping, got {type(d).__name__}")
    return build_config(d, source=source)


def _param_types(fn) -> Dict[str, Any]:
    """Type of each parameter of ``fn``: its annotation, else its default's type
    (numbers as float), else Any."""
    import inspect

    try:
        hints = typing.get_type_hints(fn)
    except Exception:  # an annotation that does not resolve here: per parameter below
        hints = {}
    out: Dict[str, Any] = {}
    for name, p in inspect.signature(fn).parameters.items():
        tp = hints.get(name)
        if tp is None and isinstance(p.annotation, str):
            try:
                tp = eval(p.annotation, getattr(fn, "__globals__", {}))  # noqa: S307 -- the code's own annotation
            except Exception:
                tp = None
        if tp is None and p.default is not inspect.Parameter.empty and p.default is not None:
            d = p.default
            tp = bool if isinstance(d, bool) else float if isinstance(d, (int, float)) else \
                (list if isinstance(d, (list, tuple)) else type(d) if isinstance(d, str) else Any)
        out[name] = tp if tp is not None else Any
    return out


def _prefix(source: str) -> str:
    return f"{source}: " if source else ""


def check_kwargs(fn, kwargs: Dict[str, Any], where: str, source: str = "",
                 reserved: Sequence[str] = ()) -> None:
    """Raise ConfigError if ``kwargs`` has a key ``fn`` does not accept, or a value
    of another type than the parameter's annotation (or default) says."""
    import inspect

    sig = inspect.signature(fn)
    valid = [p for p in sig.parameters if p not in reserved and p != "self"
             and sig.parameters[p].kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)]
    if not any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values()):
        for k in kwargs:
            if k not in valid:
                raise ConfigError(f"{_prefix(source)}unknown key '{where}.{k}'; valid keys: {', '.join(valid)}")
    types = _param_types(fn)
    check_options({k: v for k, v in kwargs.items() if k in valid}, {k: types[k] for k in valid}, where, source)


def check_options(options: Any, types: Dict[str, Any], where: str, source: str = "") -> None:
    """Raise ConfigError unless ``options`` is a mapping whose keys are in ``types``
    and whose values have those types (``Any``: not checked)."""
    if not isinstance(options, dict):
        raise ConfigError(f"{_prefix(source)}'{where}' must be a mapping, got {options!r}")
    for k, v in options.items():
        if k not in types:
            raise ConfigError(f"{_prefix(source)}unknown key '{where}.{k}'; valid keys: {', '.join(types)}")
        if not _type_ok(v, types[k]):
            raise ConfigError(f"{_prefix(source)}'{where}.{k}' must be {_type_name(types[k])}, got {v!r}")
