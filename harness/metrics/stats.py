"""Aggregation helpers: means with confidence intervals, mean/std over seeds."""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np


def mean_with_ci(values: Sequence[float], scale: float = 100.0, z: float = 1.96) -> dict[str, float]:
    """Mean of per-sample scores and a normal-approximation 95% confidence interval, both times ``scale``."""
    arr = np.asarray(values, dtype=float)
    n = len(arr)
    if n == 0:
        return {"mean": float("nan"), "ci95_low": float("nan"), "ci95_high": float("nan"), "n": 0}
    mean = float(arr.mean())
    se = float(arr.std(ddof=1) / math.sqrt(n)) if n > 1 else 0.0
    return {
        "mean": mean * scale,
        "ci95_low": (mean - z * se) * scale,
        "ci95_high": (mean + z * se) * scale,
        "n": n,
    }


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and standard deviation over seeds.

    The std is the population std (ddof=0), as OpenFlamingo's evaluate.py
    reports it (``np.nanstd``), so numbers compare with its tables.
    """
    arr = np.asarray([v for v in values if v is not None and not math.isnan(v)], dtype=float)
    if len(arr) == 0:
        return float("nan"), float("nan")
    return float(arr.mean()), float(arr.std())
