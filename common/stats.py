"""Seed statistics for ``cdcl study``: Student-t intervals over seeds.

With a handful of seeds the normal approximation is far too narrow (for 3
seeds the 95% t quantile is 4.30, not 1.96), so every interval here uses the
t distribution with n - 1 degrees of freedom::

    >>> ci = mean_ci([0.50, 0.52, 0.54])
    >>> round(ci["mean"], 3), round(ci["half"], 4)     # 0.02 * 4.303 / sqrt(3)
    (0.52, 0.0497)

A difference between two methods trained with the same seeds is estimated
from the per-seed differences (:func:`paired_diff`): what the seed does to
both methods alike (data order, initialisation) cancels, which is why it is
usually much narrower than the unpaired (Welch) interval
(:func:`unpaired_diff`) of the same numbers. A difference counts as a gain
or a loss only when its interval excludes zero (:func:`verdict`).

Values that are ``None`` (a class absent from a split) are left out pairwise.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Sequence

from scipy import stats as _st

LEVEL = 0.95


def _clean(values: Sequence[Optional[float]]) -> list:
    return [float(v) for v in values if v is not None and not math.isnan(float(v))]


def mean_ci(values: Sequence[Optional[float]], level: float = LEVEL) -> Dict[str, float]:
    """``{n, mean, std, half, lo, hi}`` of ``values``: sample std (ddof 1) and
    the Student-t confidence interval of the mean; ``std``/``half``/``lo``/
    ``hi`` are NaN with fewer than two values."""
    x = _clean(values)
    n = len(x)
    nan = float("nan")
    if n == 0:
        return {"n": 0, "mean": nan, "std": nan, "half": nan, "lo": nan, "hi": nan}
    mean = sum(x) / n
    if n < 2:
        return {"n": 1, "mean": mean, "std": nan, "half": nan, "lo": nan, "hi": nan}
    std = math.sqrt(sum((v - mean) ** 2 for v in x) / (n - 1))
    half = float(_st.t.ppf(0.5 + level / 2, n - 1)) * std / math.sqrt(n)
    return {"n": n, "mean": mean, "std": std, "half": half, "lo": mean - half, "hi": mean + half}


def paired_diff(a: Sequence[Optional[float]], b: Sequence[Optional[float]],
                level: float = LEVEL) -> Dict[str, float]:
    """``a - b`` seed by seed (the lists are aligned by seed): :func:`mean_ci`
    of the differences plus ``improved`` (seeds where ``a > b``). Pairs with a
    ``None`` on either side are dropped."""
    if len(a) != len(b):
        raise ValueError(f"paired_diff: {len(a)} values against {len(b)} (aligned by seed)")
    d = [float(x) - float(y) for x, y in zip(a, b) if x is not None and y is not None]
    out = mean_ci(d, level)
    out["improved"] = sum(v > 0 for v in d)
    return out


def unpaired_diff(a: Sequence[Optional[float]], b: Sequence[Optional[float]],
                  level: float = LEVEL) -> Dict[str, float]:
    """``mean(a) - mean(b)`` with Welch's interval (no pairing): what the
    difference would look like if the seeds were unrelated."""
    x, y = _clean(a), _clean(b)
    nan = float("nan")
    if len(x) < 2 or len(y) < 2:
        diff = (sum(x) / len(x) - sum(y) / len(y)) if x and y else nan
        return {"n": min(len(x), len(y)), "mean": diff, "half": nan, "lo": nan, "hi": nan}
    ma, mb = sum(x) / len(x), sum(y) / len(y)
    va = sum((v - ma) ** 2 for v in x) / (len(x) - 1) / len(x)
    vb = sum((v - mb) ** 2 for v in y) / (len(y) - 1) / len(y)
    se = math.sqrt(va + vb)
    if se == 0:
        half = 0.0
    else:
        dof = (va + vb) ** 2 / (va ** 2 / (len(x) - 1) + vb ** 2 / (len(y) - 1))
        half = float(_st.t.ppf(0.5 + level / 2, dof)) * se
    diff = ma - mb
    return {"n": min(len(x), len(y)), "mean": diff, "half": half, "lo": diff - half, "hi": diff + half}


def verdict(ci: Dict[str, float]) -> str:
    """``gain`` / ``loss`` when the interval lies entirely above / below zero,
    ``n.s.`` (not significant) when it contains zero, ``n/a`` without one."""
    lo, hi = ci.get("lo", float("nan")), ci.get("hi", float("nan"))
    if math.isnan(lo) or math.isnan(hi):
        return "n/a"
    if lo > 0:
        return "gain"
    if hi < 0:
        return "loss"
    return "n.s."
