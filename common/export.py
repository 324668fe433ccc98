"""Export one dataset's network: collapse → fold BatchNorm → ONNX, checked against PyTorch."""
from __future__ import annotations

import os
from typing import Any, Dict

import numpy as np
import torch
from torch import nn

from .build import get_task
from .config import Config
from .dataset_specific import collapse, fold_bn, route
from .flops import count_parameters


class _Logits(nn.Module):
    """Exports only the main logits when a model returns a dict."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x):
        out = self.model(x)
        return out["out"] if isinstance(out, dict) else out


def export_onnx(cfg: Config, model: nn.Module, name: str, path: str, fold: bool = True,
                opset: int = 17) -> Dict[str, Any]:
    """Write ``path`` and return a report (parameters, folded BNs, max abs diff).

    ``name`` is any dataset of ``cfg``: an unseen one (``data.<name>.branch``)
    exports the branch that serves it, with its own input shape."""
    from .config import ConfigError

    task = get_task(cfg)
    if name not in cfg.data:
        raise ConfigError(f"no dataset {name!r} to export; the config {cfg.source} has {cfg.eval_names}")
    branch = cfg.branch_of(name)
    model = model.eval()
    shape = (1,) + tuple(task.input_shape(name, cfg.data[name].as_dict()))
    x = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    with torch.no_grad(), route(model, branch):
        ref = model(x)
    ref = ref["out"] if isinstance(ref, dict) else ref
    plain = collapse(model, branch)
    folded = 0
    if fold:
        try:
            plain = fold_bn(plain)
            folded = int(getattr(plain, "folded_bn", 0))
        except Exception as exc:  # untraceable model: export unfolded
            print(f"BatchNorm folding skipped ({type(exc).__name__}: {exc})")
    wrapped = _Logits(plain).eval()
    with torch.no_grad():
        torch_out = wrapped(x)
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    torch.onnx.export(wrapped, (x,), path, input_names=["input"], output_names=["logits"],
                      opset_version=opset, dynamo=False)
    report: Dict[str, Any] = {
        "onnx": path, "dataset": name, "branch": branch, "input_shape": list(shape),
        "parameters": count_parameters(plain), "folded_batchnorms": folded,
        "max_abs_diff_collapsed_vs_routed": float((torch_out - ref).abs().max()),
    }
    try:
        import onnxruntime as ort
    except ImportError:
        report["onnxruntime"] = "not installed: ONNX output not checked (pip install onnxruntime)"
        return report
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    onnx_out = sess.run(None, {"input": x.numpy()})[0]
    report["max_abs_diff_onnx_vs_torch"] = float(np.abs(onnx_out - ref.numpy()).max())
    return report
