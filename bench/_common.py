"""What every benchmark under ``bench/`` reports alongside its figures.

- ``machine()``: the machine and interpreter the numbers were measured on;
- the SPEC §11 limit of a latency-model store: a caller that waits for its own commit
  finishes at most one operation per commit, so C callers over a store whose commits take
  at least W seconds reach at most C / W operations per second;
- ``burst_rate``: throughput measured between commit boundaries rather than over a fixed
  window, because group-commit answers arrive in bursts (one per commit) and a fixed
  window would count one burst more or less at random;
- percentiles and Markdown tables.
"""

from __future__ import annotations

import math
import os
import platform
import sys
from collections.abc import Sequence
from typing import Any

import msgspec

from obque.store.shaping import LATENCY_PROFILES

__all__ = [
    "burst_rate",
    "commit_period",
    "machine",
    "markdown_table",
    "percentile",
]


def machine() -> dict[str, Any]:
    model = "unknown"
    try:
        with open("/proc/cpuinfo") as cpuinfo:
            names = (line.split(":", 1)[1] for line in cpuinfo if line.startswith("model name"))
            model = next(names, model).strip()
    except OSError:
        pass
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "cpu_count": os.cpu_count(),
        "cpu_model": model,
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "msgspec": msgspec.__version__,
        # Other work on a shared machine skews every timing: say how busy it was.
        "loadavg_1m": round(os.getloadavg()[0], 2),
    }


def commit_period(profile: str) -> float:
    """Seconds a commit occupies the queue file at least: the write latency, or the
    store's minimum interval between two writes of one object when that is longer."""
    _, write_ms, interval_ms = LATENCY_PROFILES[profile]
    return max(write_ms, interval_ms) / 1000


def burst_rate(
    done: Sequence[tuple[float, int]], start: float, end: float, gap: float
) -> tuple[float, int]:
    """Units per second from ``(time, units)`` completions within ``[start, end]``.

    Completions closer than ``gap`` form one burst (one commit's answers). The rate is the
    units of every burst after the first, over the time from the end of the first burst
    to the end of the last, so whole commit periods are measured. Completions spread
    evenly (a baseline without group commit) degrade gracefully to units over time.
    Returns ``(rate, bursts)``.
    """
    inside = sorted((t, n) for t, n in done if start <= t <= end)
    if len(inside) < 2:
        return (sum(n for _, n in inside) / (end - start) if end > start else 0.0), len(inside)
    ends: list[float] = []
    units: list[int] = []
    last = None
    for t, n in inside:
        if last is None or t - last > gap:
            ends.append(t)
            units.append(n)
        else:
            ends[-1] = t
            units[-1] += n
        last = t
    if len(ends) < 2:
        return sum(units) / (end - start), len(ends)
    return sum(units[1:]) / (ends[-1] - ends[0]), len(ends)


def percentile(values: Sequence[float], q: float) -> float:
    """The ``q``-quantile (0..1) by the nearest-rank method; NaN when empty."""
    if not values:
        return float("nan")
    ordered = sorted(values)
    rank = max(1, min(len(ordered), math.ceil(q * len(ordered))))
    return ordered[rank - 1]


def markdown_table(header: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    align = ["---" if i == 0 else "---:" for i in range(len(header))]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(align) + "|"]
    lines += ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)
