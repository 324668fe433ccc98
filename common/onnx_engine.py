"""Run one dataset's exported network with onnxruntime inside the task's own
prediction (projection, test-time augmentation, KNN stay the task's).

``cdcl predict ... --engine onnxruntime [--onnx FILE]``: without ``--onnx``
the model is collapsed to the dataset's branch, its BatchNorms folded and
exported on the fly (:func:`common.export.export_onnx`, into a temporary
folder); with it, the file is checked against the config first (input
``(batch, C, ...)`` of the dataset's input shape, as many classes as the
dataset's head) and a mismatch is an :class:`OnnxFileError` naming the file.

:class:`OnnxNetwork` is an ``nn.Module`` whose forward takes and returns
torch tensors, so the task calls it where it calls the PyTorch network.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Dict, Optional, Sequence, Tuple

import numpy as np
import torch
from torch import nn

from .errors import MissingDependencyError, UserError

#: the engines of ``cdcl predict --engine``
ENGINES = ("torch", "onnxruntime")


class OnnxFileError(UserError, ValueError):
    """An ONNX file that is missing, unreadable or does not fit the config
    (input shape, class count); the message names the file."""


def _ort():
    try:
        import onnxruntime as ort
    except ImportError:
        raise MissingDependencyError("--engine onnxruntime needs onnxruntime: pip install onnxruntime") from None
    return ort


def _dims(shape: Sequence[Any]) -> str:
    return "(" + ", ".join(str(d) if isinstance(d, int) else "batch" if d in (None, "batch") else str(d)
                           for d in shape) + ")"


class OnnxNetwork(nn.Module):
    """An onnxruntime session as a network: ``forward(x (B, C, ...)) -> logits
    (B, K, ...)`` (torch tensors on ``x``'s device; runs on the CPU).

    ``input_shape``: one input ``(C, ...)`` the file must take; ``num_classes``:
    the logits' channel count it must give; either None: not checked."""

    def __init__(self, path: str, input_shape: Optional[Tuple[int, ...]] = None,
                 num_classes: Optional[int] = None, threads: Optional[int] = None) -> None:
        super().__init__()
        ort = _ort()
        if not os.path.isfile(path):
            raise OnnxFileError(f"ONNX file {path}: no such file")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = int(threads or torch.get_num_threads())
        opts.inter_op_num_threads = 1
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        # onnxruntime's idle threads spin-wait for the next run by default, taking the
        # cores from the torch stages around the network (back-projection, KNN)
        opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/... types
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise OnnxFileError(f"ONNX file {path}: onnxruntime cannot load it ({first})") from None
        self.path = path
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1:
            raise OnnxFileError(f"ONNX file {path} has {len(inputs)} inputs; an exported network has one "
                                "(cdcl export)")
        self.input_name, self.output_name = inputs[0].name, outputs[0].name
        self.num_classes = num_classes
        got = list(inputs[0].shape)
        if input_shape is not None:
            want = [None] + list(input_shape)
            fixed = all(isinstance(g, int) for g in got[1:])
            if len(got) != len(want) or (fixed and got[1:] != want[1:]):
                raise OnnxFileError(f"ONNX file {path} takes input {_dims(got)}; this dataset's network takes "
                                    f"{_dims(want)}: export it from this config and dataset (cdcl export)")
        out = list(outputs[0].shape)
        if num_classes is not None and len(out) > 1 and isinstance(out[1], int) and out[1] != num_classes:
            raise OnnxFileError(f"ONNX file {path} gives {out[1]} classes (logits {_dims(out)}); this dataset's "
                                f"head has {num_classes}: export it from this config and dataset (cdcl export)")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x_np = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        logits = self.session.run([self.output_name], {self.input_name: x_np})[0]
        if self.num_classes is not None and logits.shape[1] != self.num_classes:
            raise OnnxFileError(f"ONNX file {self.path} gave {logits.shape[1]} classes; this dataset's head has "
                                f"{self.num_classes}")
        return torch.from_numpy(logits).to(x.device)


def onnx_network(cfg, model: nn.Module, name: str, onnx: Optional[str] = None,
                 num_classes: Optional[int] = None) -> Tuple[OnnxNetwork, Dict[str, Any]]:
    """The onnxruntime network of dataset ``name``'s branch: ``onnx`` checked
    against the config, or ``model`` exported now. Returns it and a report
    (the file; for an export, :func:`common.export.export_onnx`'s report)."""
    from .build import get_task
    from .export import export_onnx

    task = get_task(cfg)
    try:
        shape = tuple(task.input_shape(name, cfg.data[name].as_dict()))
    except NotImplementedError as exc:
        raise UserError(f"--engine onnxruntime runs a network with one dense input; dataset {name!r} has "
                        f"none ({exc}): use --engine torch") from None
    if onnx is not None:
        return OnnxNetwork(onnx, shape, num_classes), {"onnx": onnx}
    _ort()  # before the export, not after it
    folder = tempfile.mkdtemp(prefix="cdcl_onnx_")
    path = os.path.join(folder, f"{name}.onnx")
    report = export_onnx(cfg, model.cpu(), name, path)
    net = OnnxNetwork(path, shape, num_classes)
    # the session holds the model in memory: the file can go
    os.remove(path)
    os.rmdir(folder)
    return net, report


__all__ = ["ENGINES", "OnnxFileError", "OnnxNetwork", "onnx_network"]
