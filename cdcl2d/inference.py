"""Dense inference over whole images or sliding windows, optionally multi-scale
with horizontal flips.

``logits_fn(images) -> (B, K, h, w)`` is any callable giving logits at the
resolution of its input (e.g. ``lambda x: model(x)["out"]``). Whole-image and
sliding-window inference return logits; multi-scale inference returns the mean
of softmax probabilities (scores of different scales are not comparable as
logits). Either way ``argmax(1)`` is the prediction.
"""
from __future__ import annotations

import math
from typing import Any, Callable, Dict, List, Optional, Sequence

import torch
from torch.nn import functional as F

from .transforms import to_pair

LogitsFn = Callable[[torch.Tensor], torch.Tensor]


def whole_inference(logits_fn: LogitsFn, images: torch.Tensor) -> torch.Tensor:
    """Logits of the whole image ``images (B, 3, H, W) -> (B, K, H, W)``."""
    return logits_fn(images)


def window_starts(length: int, crop: int, stride: int) -> List[int]:
    """Start offsets of windows of size ``crop`` covering ``length`` with
    ``stride``; the last window is aligned to the end (no window runs past)."""
    if length <= crop:
        return [0]
    n = int(math.ceil((length - crop) / stride)) + 1
    return sorted({min(i * stride, length - crop) for i in range(n)})


def slide_inference(logits_fn: LogitsFn, images: torch.Tensor, crop, stride=None,
                    pad: bool = True) -> torch.Tensor:
    """Average the logits of overlapping ``crop = (h, w)`` windows.

    ``stride`` defaults to 2/3 of the crop. An image smaller than the crop is
    padded with zeros (the normalised ImageNet mean, like the training crops)
    when ``pad`` is true, otherwise its windows shrink to the image. When one
    window covers the image exactly, the result equals whole-image inference.
    """
    ch, cw = to_pair(crop, "crop")
    if stride is None:
        sh, sw = max(1, int(math.ceil(ch * 2 / 3))), max(1, int(math.ceil(cw * 2 / 3)))
    else:
        sh, sw = to_pair(stride, "stride")
    if sh < 1 or sw < 1 or ch < 1 or cw < 1:
        raise ValueError(f"crop {crop!r} and stride {stride!r} must be positive")
    b, _, h, w = images.shape
    if pad:
        ph, pw = max(ch - h, 0), max(cw - w, 0)
        if ph or pw:
            images = F.pad(images, (0, pw, 0, ph))
    else:
        ch, cw = min(ch, h), min(cw, w)
    hp, wp = images.shape[-2:]
    total: Optional[torch.Tensor] = None
    count = torch.zeros(1, 1, hp, wp, dtype=images.dtype, device=images.device)
    for y in window_starts(hp, ch, sh):
        for x in window_starts(wp, cw, sw):
            logits = logits_fn(images[:, :, y:y + ch, x:x + cw])  # (B, K, ch, cw)
            if total is None:
                total = images.new_zeros(b, logits.shape[1], hp, wp)
            total[:, :, y:y + ch, x:x + cw] += logits
            count[:, :, y:y + ch, x:x + cw] += 1
    assert total is not None
    return (total / count)[:, :, :h, :w]


def multiscale_inference(logits_fn: LogitsFn, images: torch.Tensor,
                         scales: Sequence[float] = (0.5, 0.75, 1.0, 1.25, 1.5, 1.75),
                         flip: bool = True, mode: str = "whole", crop=None, stride=None) -> torch.Tensor:
    """Mean softmax probabilities over ``scales`` (and horizontal flips),
    each scale run whole or by sliding window, resized back to (H, W)."""
    h, w = images.shape[-2:]
    probs: Optional[torch.Tensor] = None
    n = 0
    for s in scales:
        size = (max(1, int(round(h * s))), max(1, int(round(w * s))))
        scaled = images if size == (h, w) else F.interpolate(images, size, mode="bilinear",
                                                            align_corners=False)
        for flipped in ([False, True] if flip else [False]):
            x = scaled.flip(-1) if flipped else scaled
            logits = infer(logits_fn, x, mode=mode, crop=crop, stride=stride)
            if flipped:
                logits = logits.flip(-1)
            if logits.shape[-2:] != (h, w):
                logits = F.interpolate(logits, (h, w), mode="bilinear", align_corners=False)
            p = logits.softmax(1)
            probs = p if probs is None else probs + p
            n += 1
    assert probs is not None
    return probs / n


def infer(logits_fn: LogitsFn, images: torch.Tensor, mode: str = "whole", crop=None,
          stride=None, scales: Optional[Sequence[float]] = None, flip: bool = False) -> torch.Tensor:
    """Dispatch: ``mode`` ``whole``/``slide``; ``scales`` or ``flip`` turn on
    multi-scale (+ flip) averaging."""
    if scales or flip:
        return multiscale_inference(logits_fn, images, scales or (1.0,), flip, mode, crop, stride)
    if mode == "whole":
        return whole_inference(logits_fn, images)
    if mode == "slide":
        if crop is None:
            raise ValueError("sliding-window inference needs a crop size (eval option 'crop')")
        return slide_inference(logits_fn, images, crop, stride)
    raise ValueError(f"inference mode must be 'whole' or 'slide', not {mode!r}")


INFERENCE_KEYS = ("mode", "crop", "stride", "scales", "flip")


def inference_options(options: Optional[Dict[str, Any]], allowed: Sequence[str] = ("split",)) -> Dict[str, Any]:
    """Validated ``{mode, crop, stride, scales, flip}`` from ``eval.options``
    (merged with ``data.<name>.eval``); keys outside those and ``allowed`` raise."""
    options = {k: v for k, v in dict(options or {}).items() if k not in allowed}
    unknown = sorted(set(options) - set(INFERENCE_KEYS))
    if unknown:
        raise ValueError(f"unknown inference option(s) {unknown}; valid: {', '.join(INFERENCE_KEYS)}")
    opts = {"mode": options.get("mode", "whole"), "crop": options.get("crop"),
            "stride": options.get("stride"), "scales": options.get("scales"),
            "flip": bool(options.get("flip", False))}
    if opts["mode"] not in ("whole", "slide"):
        raise ValueError(f"inference mode must be 'whole' or 'slide', not {opts['mode']!r}")
    if opts["mode"] == "slide" and opts["crop"] is None:
        raise ValueError("inference mode 'slide' needs 'crop' ([height, width])")
    return opts
