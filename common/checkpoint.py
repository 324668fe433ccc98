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
from typing import Any, Dict

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


def save_checkpoint(state: Dict[str, Any], path: str) -> None:
    """Serialise to memory, then write a temp file and rename it over ``path``:
    a crash mid-write leaves the previous checkpoint intact."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    buf = io.BytesIO()
    torch.save(state, buf)
    atomic_write_bytes(path, buf.getvalue())


def load_checkpoint(path: str, map_location: Any = "cpu") -> Dict[str, Any]:
    if not os.path.isfile(path):
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # truncated zip, wrong format, disallowed pickle
        raise CheckpointError(f"cannot read checkpoint {path} (truncated or not a cdcl checkpoint): "
                              f"{type(exc).__name__}: {exc}") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CheckpointError(f"{path} is not a cdcl checkpoint (no 'model' entry)")
    return state


def model_state(model: torch.nn.Module) -> Dict[str, torch.Tensor]:
    """State dict of the bare model (unwrapping DDP)."""
    return unwrap(model).state_dict()


def unwrap(model: torch.nn.Module) -> torch.nn.Module:
    return model.module if hasattr(model, "module") and isinstance(
        model, torch.nn.parallel.DistributedDataParallel) else model
