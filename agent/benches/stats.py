"""The one stats helper of every benchmark: percentiles, a figure's summary, the machine it ran on.

Percentiles are numpy's default (linear interpolation between the closest ranks: the q-th of n
sorted values sits at rank (n - 1) * q / 100). Values that were not measured (None) are left out,
and `n` counts only the measured ones. Figures are rounded to `digits` (0.1 ms by default; the TTS
bench keeps 3 digits for its real-time factors).
"""

from __future__ import annotations

import os
import platform
from collections.abc import Iterable
from pathlib import Path

import numpy as np

FIELDS = ("n", "p50", "p95", "max")  # what `summary` reports by default, in this order


def _measured(values: Iterable[float | None]) -> list[float]:
    return [float(x) for x in values if x is not None]


def percentile(values: Iterable[float | None], q: float, digits: int = 1) -> float | None:
    """The `q`-th percentile (0–100) of the measured values, rounded; None when nothing was measured."""
    v = _measured(values)
    return round(float(np.percentile(v, q)), digits) if v else None


def median(values: Iterable[float | None], digits: int = 1) -> float | None:
    return percentile(values, 50, digits)


def p95(values: Iterable[float | None], digits: int = 1) -> float | None:
    return percentile(values, 95, digits)


def summary(values: Iterable[float | None], fields: Iterable[str] = FIELDS, digits: int = 1) -> dict:
    """`{"n", "p50", "p95", "max"}` of the measured values (or the `fields` asked for, in that order);
    with nothing measured, `n` is 0 and the rest None."""
    v = _measured(values)
    known = {"n": lambda: len(v), "p50": lambda: percentile(v, 50, digits), "p95": lambda: percentile(v, 95, digits),
             "max": lambda: round(max(v), digits) if v else None}
    return {f: known[f]() for f in fields}


def machine() -> dict:
    """What the figures were measured on: cores, CPU model, memory (GiB), Python, system."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem = None
    try:
        mem = round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30, 1)
    except (ValueError, OSError):
        pass
    return {"cores": os.cpu_count(), "cpu_model": model, "memory_gib": mem, "python": platform.python_version(),
            "system": platform.platform()}
