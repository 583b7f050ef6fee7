"""HTTP end-to-end throughput of one real broker process (SPEC §11).

One ``obque broker`` subprocess (uvicorn, uvloop and httptools when installed) serves a
``mem://`` root shaped like S3 (``?latency=s3``: 20 ms reads, 60 ms writes), the store
model of every engine figure: the broker holds the bucket in its own memory, and the
load generator only speaks HTTP. (Until 2026-11-29 22:00 this used a ``file://`` root,
whose real write and fsync add a few ms to every 60 ms commit; ``OBQUE_BENCH_ROOT=
'file://{tmp}/?latency={profile}'`` still runs that.) The load comes from ``wrk``, a
separate process written in C, with keep-alive connections; each connection has one
request outstanding, so C connections are C closed-loop callers and the SPEC §11 limit is
C / W (claim+ack: C / 2W).

- **pushes**: 64 connections, each ``POST /push`` of one job;
- **claim+ack**: 64 connections; a Lua script sends a claim of one job, parses the lease
  from the answer and sends its ack next (on whichever connection asks first: each
  connection still has one request outstanding);
- **saturation**: 256 connections of single-job pushes against 256 connections of the
  broker's own ``GET /healthz`` in the same run, both CPU-bound on 2 cores that the broker
  shares with wrk.

Run: ``.venv/bin/python -m bench.http_load`` (about 40 s; ``--quick`` halves the windows).
Needs ``wrk`` on PATH (``apt-get install wrk``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

from bench._common import commit_period, machine, markdown_table

__all__ = ["HttpRun", "broker", "main", "run_all"]

QUEUE = "bench"
#: The broker's root; overridable (OBQUE_BENCH_ROOT) to compare stores.
ROOT = os.environ.get("OBQUE_BENCH_ROOT", "mem://http-bench/?latency={profile}")

# One script for every run: wrk calls ``request`` whenever a connection is free and
# ``response`` with each answer. Counts go through thread globals that ``done`` reads.
LUA = r"""
local mode = os.getenv("OBQUE_MODE")
local path = "/v1/queues/__QUEUE__/"
local push_body = '{"jobs":[{"payload":{"video":"a.mp4"}}]}'
local headers = {["Content-Type"] = "application/json"}
local acks = {}
local threads = {}
ok_push, ok_claim, ok_ack, empty, bad = 0, 0, 0, 0, 0

function setup(thread) table.insert(threads, thread) end

function request()
  if mode == "healthz" then return wrk.format("GET", "/healthz") end
  if mode == "push" then return wrk.format("POST", path .. "push", headers, push_body) end
  local ack = table.remove(acks)
  if ack then
    return wrk.format("POST", path .. "ack", headers, ack)
  end
  return wrk.format("POST", path .. "claim", headers, '{"worker":"w","max":1}')
end

function response(status, hdrs, body)
  if status ~= 200 then bad = bad + 1 return end
  if mode == "healthz" then return end
  if mode == "push" then ok_push = ok_push + 1 return end
  local id = string.match(body, '"id":"([^"]+)"')
  local lease = string.match(body, '"lease":"([^"]+)"')
  if id and lease then
    ok_claim = ok_claim + 1
    table.insert(acks, '{"leases":[{"id":"' .. id .. '","lease":"' .. lease .. '"}]}')
  elseif string.find(body, '"results"') then
    if string.find(body, '"ok":true') then ok_ack = ok_ack + 1 else bad = bad + 1 end
  else
    empty = empty + 1
  end
end

function done(summary, latency, requests)
  local t = {push = 0, claim = 0, ack = 0, empty = 0, bad = 0}
  for _, th in ipairs(threads) do
    t.push = t.push + th:get("ok_push")
    t.claim = t.claim + th:get("ok_claim")
    t.ack = t.ack + th:get("ok_ack")
    t.empty = t.empty + th:get("empty")
    t.bad = t.bad + th:get("bad")
  end
  local p = {}
  for _, q in ipairs({50, 90, 99}) do p[#p + 1] = latency:percentile(q) / 1000 end
  io.write(string.format(
    'OBQUE {"requests":%d,"seconds":%f,"push":%d,"claim":%d,"ack":%d,"empty":%d,' ..
    '"bad":%d,"errors":%d,"p50_ms":%f,"p90_ms":%f,"p99_ms":%f}\n',
    summary.requests, summary.duration / 1e6, t.push, t.claim, t.ack, t.empty, t.bad,
    summary.errors.connect + summary.errors.read + summary.errors.write +
    summary.errors.status + summary.errors.timeout, p[1], p[2], p[3]))
end
""".replace("__QUEUE__", QUEUE)


@dataclass
class HttpRun:
    label: str
    connections: int
    seconds: float
    units: int  # pushes, or complete claim+ack cycles, or healthz answers
    rate: float
    requests: int
    bad: int
    errors: int
    p50_ms: float
    p99_ms: float
    limit: float | None
    target: str
    met: bool | None = None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _call(url: str, method: str = "GET", body: object | None = None) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=30) as resp:
        return bytes(resp.read())


@contextmanager
def broker(profile: str = "s3") -> Iterator[tuple[str, int]]:
    """A broker subprocess on a fresh root with one queue; yields its base URL and
    process id."""
    tmp = tempfile.mkdtemp(prefix="obque-http-")
    port = _free_port()
    exe = Path(sys.executable).with_name("obque")
    cmd = [
        str(exe),
        "broker",
        "--root",
        ROOT.format(tmp=tmp, profile=profile),
        "--port",
        str(port),
        "--log-level",
        "warning",
    ]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}"
    try:
        for _ in range(200):
            try:
                _call(url + "/healthz")
                break
            except OSError:
                if proc.poll() is not None:
                    err = proc.stderr.read().decode() if proc.stderr else ""
                    raise RuntimeError(f"broker exited: {err}") from None
                time.sleep(0.05)
        _call(f"{url}/v1/queues/{QUEUE}", "PUT", {"lease_seconds": 300})
        yield url, proc.pid
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=40)
        except subprocess.TimeoutExpired:
            proc.kill()
        shutil.rmtree(tmp, ignore_errors=True)


def wrk(url: str, mode: str, connections: int, seconds: float, threads: int = 1) -> dict:
    """Run wrk with the Lua script above; returns its summary (see ``done``)."""
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as f:
        f.write(LUA)
        script = f.name
    try:
        out = subprocess.run(
            [
                "wrk",
                f"-t{threads}",
                f"-c{connections}",
                f"-d{max(1, round(seconds))}s",
                "--timeout",
                "10s",
                "--latency",
                "-s",
                script,
                url,
            ],
            env={**os.environ, "OBQUE_MODE": mode},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    finally:
        os.unlink(script)
    match = re.search(r"^OBQUE (\{.*\})$", out, re.M)
    if match is None:
        raise RuntimeError(f"no summary from wrk:\n{out}")
    result: dict = json.loads(match.group(1))
    return result


def prefill(url: str, jobs: int) -> None:
    body = {"jobs": [{"payload": {"video": "a.mp4"}}] * 1000}
    for _ in range(jobs // 1000):
        _call(f"{url}/v1/queues/{QUEUE}/push", "POST", body)


def run_all(quick: bool = False, log=print) -> list[HttpRun]:
    secs = 4.0 if quick else 8.0
    w = commit_period("s3")
    runs: list[HttpRun] = []
    with broker("s3") as (url, _):
        log(f"http: warm-up + pushes, 64 connections, {secs:.0f} s")
        wrk(url, "push", 64, 1)
        r = wrk(url, "push", 64, secs)
        limit = 64 / w
        rate = r["push"] / r["seconds"]
        runs.append(
            HttpRun(
                "single-job pushes",
                64,
                r["seconds"],
                r["push"],
                rate,
                r["requests"],
                r["bad"],
                r["errors"],
                r["p50_ms"],
                r["p99_ms"],
                limit,
                "≥ 0.9 x C/W",
                rate >= 0.9 * limit,
            )
        )

        log("http: claim+ack cycles, 64 connections")
        prefill(url, 12_000 if quick else 20_000)
        r = wrk(url, "claim", 64, secs)
        limit = 64 / (2 * w)
        rate = r["ack"] / r["seconds"]
        runs.append(
            HttpRun(
                "claim+ack cycles",
                64,
                r["seconds"],
                r["ack"],
                rate,
                r["requests"],
                r["bad"],
                r["errors"],
                r["p50_ms"],
                r["p99_ms"],
                limit,
                "≥ 0.85 x C/2W",
                rate >= 0.85 * limit,
            )
        )
        if r["empty"]:
            log(f"http: {r['empty']} claims found the queue empty")

        log("http: saturation, 256 connections: healthz then pushes")
        sat = secs / 2 if quick else secs
        h = wrk(url, "healthz", 256, sat)
        hz = h["requests"] / h["seconds"]
        runs.append(
            HttpRun(
                "GET /healthz (CPU ceiling)",
                256,
                h["seconds"],
                h["requests"],
                hz,
                h["requests"],
                h["bad"],
                h["errors"],
                h["p50_ms"],
                h["p99_ms"],
                None,
                "-",
            )
        )
        r = wrk(url, "push", 256, sat)
        rate = r["push"] / r["seconds"]
        runs.append(
            HttpRun(
                "single-job pushes at saturation",
                256,
                r["seconds"],
                r["push"],
                rate,
                r["requests"],
                r["bad"],
                r["errors"],
                r["p50_ms"],
                r["p99_ms"],
                256 / w,
                "≥ 0.7 x healthz req/s",
                rate >= 0.7 * hz,
            )
        )
    return runs


def markdown(runs: list[HttpRun]) -> str:
    head = [
        "run",
        "connections",
        "rate /s",
        "limit",
        "rate / limit",
        "target",
        "met",
        "units",
        "non-200",
        "socket errors",
        "p50 ms",
        "p99 ms",
    ]
    hz = next((r.rate for r in runs if r.label.startswith("GET /healthz")), None)
    rows = []
    for r in runs:
        frac = "-" if r.limit is None else f"{r.rate / r.limit:.3f}"
        if r.target.startswith("≥ 0.7") and hz:
            frac += f" (x healthz: {r.rate / hz:.3f})"
        rows.append(
            [
                r.label,
                r.connections,
                f"{r.rate:,.0f}",
                "-" if r.limit is None else f"{r.limit:,.0f}",
                frac,
                r.target,
                "-" if r.met is None else ("yes" if r.met else "**no**"),
                f"{r.units:,}",
                r.bad,
                r.errors,
                f"{r.p50_ms:.1f}",
                f"{r.p99_ms:.1f}",
            ]
        )
    return markdown_table(head, rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    runs = run_all(args.quick, log=lambda m: print(m, file=sys.stderr, flush=True))
    if args.json:
        print(json.dumps({"machine": machine(), "runs": [asdict(r) for r in runs]}, indent=2))
    else:
        print(markdown(runs))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
