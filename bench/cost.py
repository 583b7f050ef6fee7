"""What 1M jobs (push + claim + ack) cost in store requests, invocations and dollars.

Request counts come from a benchmark's store counters (``RequestCounts``); prices are
public list prices (us-east-1, checked when this file was written; they change):

- S3 Standard: PUT, COPY, POST, LIST $0.005 per 1,000; GET $0.0004 per 1,000; DELETE free;
- Lambda arm64: $0.0000133334 per GB-second + $0.20 per 1M requests;
- SQS standard: $0.40 per 1M requests after the free tier; a job is send + receive +
  delete = 3 requests (batching up to 10 a request divides that, at the caller's cost).
"""

from __future__ import annotations

from dataclasses import dataclass

from bench._common import markdown_table

__all__ = ["CostRow", "cost_rows", "markdown"]

S3_PUT_LIST = 0.005 / 1000
S3_GET = 0.0004 / 1000
LAMBDA_GB_S = 0.0000133334
LAMBDA_REQUEST = 0.20 / 1e6
SQS_REQUEST = 0.40 / 1e6
JOBS = 1_000_000
OPS_PER_JOB = 3  # push, claim, ack


@dataclass
class CostRow:
    setup: str
    puts: float  # PUT + LIST (same price tier)
    gets: float
    deletes: float
    invocations: float
    gb_seconds: float
    dollars: float
    note: str


def _dollars(puts: float, gets: float, invocations: float = 0, gb_s: float = 0) -> float:
    return puts * S3_PUT_LIST + gets * S3_GET + invocations * LAMBDA_REQUEST + gb_s * LAMBDA_GB_S


def cost_rows(
    broker_writes_per_m: float,
    broker_reads_per_m: float,
    baseline_writes_per_m: float | None,
    lambda_runs: list[tuple[str, dict[str, float], float]],
    lambda_memory_gb: float = 0.5,
) -> list[CostRow]:
    """Rows per 1M jobs. ``lambda_runs``: (label, requests per operation by kind, seconds
    per invocation); Lambda figures are per operation, so they are scaled by 3."""
    rows = [
        CostRow(
            "obque broker process (group commit), S3",
            broker_writes_per_m,
            broker_reads_per_m,
            0,
            0,
            0,
            _dollars(broker_writes_per_m, broker_reads_per_m),
            "measured writes/reads per 1M jobs; the broker's own compute not included",
        ),
    ]
    if baseline_writes_per_m is not None:
        rows.append(
            CostRow(
                "one CAS per operation, no broker (baseline), S3",
                baseline_writes_per_m,
                baseline_writes_per_m,
                0,
                0,
                0,
                _dollars(baseline_writes_per_m, baseline_writes_per_m),
                "every lost CAS is a paid PUT followed by a GET; reads assumed = writes",
            )
        )
    ops = JOBS * OPS_PER_JOB
    for label, per_op, seconds in lambda_runs:
        puts = ops * (per_op["intent PUT"] + per_op["CAS"] + per_op["LIST"])
        gets = ops * per_op["GET"]
        deletes = ops * per_op["DELETE"]
        gb_s = ops * seconds * lambda_memory_gb
        rows.append(
            CostRow(
                label,
                puts,
                gets,
                deletes,
                ops,
                gb_s,
                _dollars(puts, gets, ops, gb_s),
                f"measured requests per op x 3M ops; {lambda_memory_gb:g} GB x median "
                f"{seconds * 1000:.0f} ms per invocation; DELETE is free",
            )
        )
    rows.append(
        CostRow(
            "SQS standard (unbatched)",
            0,
            0,
            0,
            0,
            0,
            ops * SQS_REQUEST,
            "3 requests per job at $0.40 per 1M",
        )
    )
    return rows


def markdown(rows: list[CostRow]) -> str:
    head = [
        "per 1M jobs (push+claim+ack)",
        "PUT+LIST",
        "GET",
        "DELETE",
        "invocations",
        "GB-s",
        "USD",
        "how",
    ]
    return markdown_table(
        head,
        [
            [
                r.setup,
                f"{r.puts:,.0f}",
                f"{r.gets:,.0f}",
                f"{r.deletes:,.0f}",
                f"{r.invocations:,.0f}",
                f"{r.gb_seconds:,.0f}",
                f"${r.dollars:,.2f}",
                r.note,
            ]
            for r in rows
        ],
    )
