"""Checkpoints: written atomically, loaded with ``weights_only=True``.

A checkpoint is a plain dict of tensors and builtin types (numpy RNG state is
stored as a tensor) so that it loads with ``torch.load(weights_only=True)``:
model, optimizer, scheduler, step, loader positions, RNG states and the
resolved config as YAML text.
"""
from __future__ import annotations

import io
import os
import random
import re
from typing import Any, Dict, Optional

import numpy as np
import torch

from .errors import UserError
from .utils import atomic_write_bytes


class CheckpointError(UserError, RuntimeError):
    """A checkpoint file is missing, truncated or not a cdcl checkpoint."""


def rng_state() -> Dict[str, Any]:
    np_state = np.random.get_state()
    state = {
        "python": random.getstate(),
        "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                  "has_gauss": int(np_state[3]), "cached_gaussian": float(np_state[4])},
        "torch": torch.get_rng_state(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: Dict[str, Any]) -> None:
    py = state["python"]
    random.setstate((py[0], tuple(py[1]), py[2]))
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"],
                         n["cached_gaussian"]))
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(state: Dict[str, Any], path: str, *more_paths: str) -> None:
    """Serialise to memory once, then for each path write a temp file and
    rename it over the path: a crash mid-write leaves the previous checkpoint
    intact, a failure (a full disk: :class:`PathError`) leaves no temp file."""
    buf = io.BytesIO()
    torch.save(state, buf)
    for p in (path,) + more_paths:
        os.makedirs(os.path.dirname(os.path.abspath(p)), exist_ok=True)
        atomic_write_bytes(p, buf.getvalue())


def load_checkpoint(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path} is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, wrong format, disallowed pickle
        raise CheckpointError(f"cannot read checkpoint {path}: {_load_failure(exc)}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a cdcl checkpoint (no 'model' entry)")
    return state


def _load_failure(exc: Exception) -> str:
    """What went wrong, in one line, without torch's advice to load the file as
    a pickle (which runs whatever code the file holds)."""
    text = re.sub(r"\x1b\[[0-9;]*m", "", str(exc))
    found = re.search(r"Unsupported global: GLOBAL (\S+)", text)
    if found or "Weights only load failed" in text:
        what = f" ({found.group(1)})" if found else ""
        return (f"it holds Python objects{what} beyond tensors and plain data; cdcl reads checkpoints "
                "as data only and never runs code from a file (not a cdcl checkpoint?)")
    first = text.strip().splitlines()[0] if text.strip() else ""
    first = first.split(". ")[0].rstrip(".")  # torch appends paragraphs of advice
    return f"truncated or not a cdcl checkpoint ({type(exc).__name__}: {first})"


def check_state_dict(model: torch.nn.Module, state: Dict[str, torch.Tensor], path: str,
                     hint: str = "") -> None:
    """Raise :class:`CheckpointError` unless ``state`` has exactly ``model``'s
    keys and shapes; the message counts and names the first of each (missing,
    unexpected, other shape), then ``hint``."""
    expected = unwrap(model).state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} {tuple(state[k].shape)} in the checkpoint, {tuple(v.shape)} here"
              for k, v in expected.items() if k in state and hasattr(state[k], "shape")
              and tuple(state[k].shape) != tuple(v.shape)]
    if not (missing or unexpected or shapes):
        return

    def some(items, n=3):
        return ", ".join(items[:n]) + (", ..." if len(items) > n else "")
    parts = [f"{len(missing)} missing keys ({some(missing)})" if missing else "",
             f"{len(unexpected)} unexpected keys ({some(unexpected)})" if unexpected else "",
             f"{len(shapes)} with another shape ({some(shapes, 2)})" if shapes else ""]
    raise CheckpointError(f"checkpoint {path} does not fit the model: "
                          + "; ".join(p for p in parts if p) + (f"; {hint}" if hint else ""))


RESUME_KEYS = ("optimizer", "scheduler", "step", "loaders")


def check_resumable(state: Dict[str, Any], path: str) -> None:
    """A checkpoint given to ``--resume`` must hold a training run's state."""
    missing = [k for k in RESUME_KEYS if k not in state or (k != "step" and not state[k])]
    if missing:
        raise CheckpointError(
            f"cannot resume from {path}: it holds no {', '.join(missing)} state (weights only); "
            f"--resume continues a run from a checkpoint that cdcl train wrote "
            f"(WORK_DIR/checkpoints/latest.pth or iter_NNNNNN.pth)")


def load_model_weights(model: torch.nn.Module, state: Dict[str, Any], path: str,
                       num_classes: Optional[Dict[str, int]] = None,
                       config: Optional[Dict[str, Any]] = None) -> None:
    """Load ``state["model"]`` into ``model``, or raise :class:`CheckpointError`
    naming what differs: keys and shapes (:func:`check_state_dict`), then the
    datasets and head sizes (``num_classes``: the model's ``{dataset:
    classes}``) and the model config (``config``: the resolved config as a dict)."""
    hint = ""
    if _state_differs(unwrap(model).state_dict(), state["model"]):
        hint = "; ".join(_head_differences(state.get("num_classes"), num_classes)
                         + _config_differences(state.get("config"), config))
    check_state_dict(model, state["model"], path, hint)
    unwrap(model).load_state_dict(state["model"])


def _state_differs(own: Dict[str, Any], saved: Dict[str, Any]) -> bool:
    return own.keys() != saved.keys() or any(
        hasattr(saved[k], "shape") and tuple(saved[k].shape) != tuple(v.shape) for k, v in own.items())


def _head_differences(theirs: Any, mine: Optional[Dict[str, int]]) -> list:
    """Datasets and head sizes where a checkpoint's ``num_classes`` and ``mine`` differ."""
    if not isinstance(theirs, dict) or mine is None:
        return []
    out = []
    if list(theirs) != list(mine):
        out.append(f"datasets {list(theirs)} in the checkpoint, {list(mine)} in the config")
    heads = [f"{n}: {theirs[n]} → {mine[n]}" for n in mine if n in theirs and int(theirs[n]) != int(mine[n])]
    if heads:
        out.append("head sizes (classes, checkpoint → config) " + ", ".join(heads))
    return out


def _config_differences(text: Any, config: Optional[Dict[str, Any]]) -> list:
    """``model.*`` and ``strategy.name`` where the checkpoint's config and ``config`` differ."""
    if not isinstance(text, str) or not config:
        return []
    import yaml
    try:
        saved = yaml.safe_load(text)
    except yaml.YAMLError:
        return []
    if not isinstance(saved, dict):
        return []
    out = []
    mine, theirs = config.get("model") or {}, saved.get("model") or {}
    if isinstance(mine, dict) and isinstance(theirs, dict):
        for k in sorted(set(mine) | set(theirs), key=str):
            if mine.get(k) != theirs.get(k):
                out.append(f"model.{k} {theirs.get(k)!r} in the checkpoint, {mine.get(k)!r} in the config")
    a, b = (saved.get("strategy") or {}), (config.get("strategy") or {})
    if isinstance(a, dict) and isinstance(b, dict) and a.get("name") != b.get("name"):
        out.append(f"strategy {a.get('name')!r} in the checkpoint, {b.get('name')!r} in the config")
    return out


def model_state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """State dict of the bare model (unwrapping DDP)."""
    return unwrap(model).state_dict()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and isinstance(
        model, torch.nn.parallel.DistributedDataParallel) else model
