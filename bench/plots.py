"""PNG figures for ``bench/RESULTS.md`` (matplotlib, Agg backend)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

__all__ = ["commit_cost_vs_depth", "latency_cdf", "throughput_vs_concurrency"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def throughput_vs_concurrency(
    path: Path,
    w_s: float,
    engine: Sequence[tuple[int, float]],
    baseline: Sequence[tuple[int, float]],
    http: Sequence[tuple[int, float]],
) -> None:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    cs = sorted({c for c, _ in [*engine, *baseline, *http]})
    ax.plot(cs, [c / w_s for c in cs], "k--", label=f"limit C/W (W = {w_s * 1000:.0f} ms)")
    ax.plot(*zip(*engine, strict=True), "o-", label="engine API (asyncio tasks)")
    if http:
        ax.plot(*zip(*http, strict=True), "s-", label="HTTP, one broker process (wrk)")
    if baseline:
        ax.plot(*zip(*baseline, strict=True), "x-", label="baseline: one CAS per op")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("concurrent callers C")
    ax.set_ylabel("single-job pushes / s")
    ax.set_title("Throughput vs concurrency, S3-like store")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def commit_cost_vs_depth(path: Path, points: Sequence[tuple[int, float, float, float]]) -> None:
    """``points``: (jobs, commit ms, cold decode ms, encode ms)."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    jobs = [p[0] for p in points]
    ax.plot(jobs, [p[1] for p in points], "o-", label="commit (apply 1,000 ops + encode)")
    ax.plot(jobs, [p[2] for p in points], "s-", label="cold decode")
    ax.plot(jobs, [p[3] for p in points], "^-", label="encode")
    ax.axhline(30, color="C0", ls=":", label="commit target 30 ms")
    ax.axhline(80, color="C1", ls=":", label="decode target 80 ms")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("jobs queued")
    ax.set_ylabel("ms (median)")
    ax.set_title("Commit cost vs queue depth (small payloads)")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def latency_cdf(path: Path, w_s: float, series: dict[str, Sequence[float]]) -> None:
    """``series``: label -> latencies in seconds."""
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label, values in series.items():
        if not values:
            continue
        xs = sorted(v / w_s for v in values)
        ys = [(i + 1) / len(xs) for i in range(len(xs))]
        ax.step(xs, ys, where="post", label=f"{label} (n={len(xs):,})")
    for x, name in ((1.5, "p50 target 1.5 W"), (3.0, "p99 target 3 W")):
        ax.axvline(x, color="grey", ls=":")
        ax.text(x, 0.02, name, rotation=90, va="bottom", ha="right", fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel(f"latency / W (W = {w_s * 1000:.0f} ms)")
    ax.set_ylabel("fraction of operations")
    ax.set_title("Latency CDF")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
