"""Export one dataset's network: collapse → fold BatchNorm → ONNX, checked against PyTorch."""
from __future__ import annotations

import os
import warnings
from typing import Any, Dict

import numpy as np
import torch
from torch import nn

from .build import get_task
from .config import Config
from .dataset_specific import branch_name, collapse, route
from .fold import fold_bn
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
    """Write ``path`` and return a report (parameters, BatchNorm folding, max abs diff).

    ``name`` is any dataset of ``cfg``: an unseen one (``data.<name>.branch``)
    exports the branch that serves it, with its own input shape. The batch
    axis of ``input`` and ``logits`` is dynamic (``batch``); onnxruntime, when
    installed, runs batches of 1 and 2 against PyTorch."""
    from .config import ConfigError

    task = get_task(cfg)
    if name not in cfg.data:
        raise ConfigError(f"no dataset {name!r} to export; the config {cfg.source} has {cfg.eval_names}")
    model = model.eval()
    shape = (1,) + tuple(task.input_shape(name, cfg.data[name].as_dict()))
    x = torch.randn((2,) + shape[1:], generator=torch.Generator().manual_seed(0))  # (2, C, ...)
    with torch.no_grad(), route(model, name):
        ref = model(x)
    ref = ref["out"] if isinstance(ref, dict) else ref
    plain = collapse(model, name)
    folding = "off (--no-fold): every BatchNorm kept"
    if fold:
        try:
            model_name = type(plain).__name__
            plain = fold_bn(plain)
            folding = folding_summary(plain, model_name)
        except Exception as exc:  # untraceable model: export unfolded
            folding = f"skipped ({type(exc).__name__}: {exc})"
    wrapped = _Logits(plain).eval()
    with torch.no_grad():
        torch_out = wrapped(x)
    os.makedirs(os.path.dirname(os.path.abspath(path)) or ".", exist_ok=True)
    with warnings.catch_warnings():
        # the tracer warns at every Python-level shape check of the model
        # (input validation); they are constants for the exported input size
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        torch.onnx.export(wrapped, (x[:1],), path, input_names=["input"], output_names=["logits"],
                          dynamic_axes={"input": {0: "batch"}, "logits": {0: "batch"}},
                          opset_version=opset, dynamo=False)
    report: Dict[str, Any] = {
        "onnx": path, "dataset": name, "branch": branch_name(model, name), "input_shape": ["batch"] + list(shape[1:]),
        "parameters": count_parameters(plain), "batchnorm_folding": folding,
        "max_abs_diff_collapsed_vs_routed": float((torch_out - ref).abs().max()),
    }
    try:
        import onnxruntime as ort
    except ImportError:
        report["onnxruntime"] = "not installed: ONNX output not checked (pip install onnxruntime)"
        return report
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    diffs = []
    for batch in (1, 2):
        onnx_out = sess.run(None, {"input": x[:batch].numpy()})[0]
        diffs.append(float(np.abs(onnx_out - ref[:batch].numpy()).max()))
    report["max_abs_diff_onnx_vs_torch"] = max(diffs)
    report["onnx_batch_sizes_checked"] = [1, 2]
    return report


def folding_summary(folded: nn.Module, model_name: str) -> str:
    """One sentence on what :func:`common.fold.fold_bn` did: how
    many BatchNorms it folded and, for the others, what they follow (a
    BatchNorm folds only into a convolution right before it)."""
    n = int(getattr(folded, "folded_bn", 0))
    left = getattr(folded, "unfolded_bn", None)
    if left is None:
        return (f"nothing folded: {model_name} cannot be traced with torch.fx, so no BatchNorm is known "
                "to follow a convolution directly")
    if not left:
        return f"folded all {n} BatchNorms, each into the convolution before it" if n else \
            f"nothing to fold: {model_name} has no BatchNorm"
    kinds: Dict[str, int] = {}
    for what in left.values():
        kinds[what] = kinds.get(what, 0) + 1
    if len(kinds) == 1:
        what = next(iter(kinds))
        follows = f"{'every' if n == 0 else 'each of those'} BatchNorm follows {_a(what)}"
    else:
        follows = ", ".join(f"{k} follow {_a(what)}" for what, k in sorted(kinds.items(), key=lambda kv: -kv[1]))
    if not n:
        return (f"nothing folded: no BatchNorm follows a convolution directly (in {model_name} {follows}); "
                "a BatchNorm folds only into the convolution right before it")
    return (f"folded {n} of {n + len(left)} BatchNorms, each into the convolution before it; the other "
            f"{len(left)} follow no convolution directly ({follows})")


def _a(word: str) -> str:
    return f"{'an' if word[:1].lower() in 'aeiou' else 'a'} {word}"
