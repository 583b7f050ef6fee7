"""What both offline deployments share: a loopback HTTP server for the stand-ins of the
cloud's front ends, the ``obque`` CLI run as a user runs it, and the user's journey."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

__all__ = ["Cli", "FrontHandler", "LoopbackServer", "push_work_and_check"]


class FrontHandler(BaseHTTPRequestHandler):
    """A keep-alive request handler that answers with an exact ``content-length``."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def answer(self, status: int, headers: Mapping[str, str], body: bytes) -> None:
        self.send_response(status)
        for name, value in headers.items():
            if name.lower() not in ("content-length", "connection", "transfer-encoding"):
                self.send_header(name, value)
        self.send_header("content-length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def body(self) -> bytes:
        return self.rfile.read(int(self.headers.get("content-length") or 0))


class LoopbackServer:
    """A threaded HTTP server on a free loopback port, serving one handler class."""

    def __init__(self, handler: type[BaseHTTPRequestHandler]) -> None:
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host}:{port}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@dataclass
class Cli:
    """The ``obque`` command in the environment of a user's machine."""

    env: dict[str, str]

    def __call__(self, *args: str, stdin: str | None = None, timeout: float = 120) -> str:
        """Run ``obque ARGS``; fail the test with its output unless it exits 0."""
        done = subprocess.run(
            [str(Path(sys.executable).parent / "obque"), *args],
            input=stdin,
            capture_output=True,
            text=True,
            env=self.env,
            timeout=timeout,
        )
        assert done.returncode == 0, f"obque {' '.join(args)}: {done.stdout}\n{done.stderr}"
        return done.stdout


def push_work_and_check(
    obque: Cli, target: str, workdir: Path, jobs: int, concurrency: int = 1
) -> None:
    """Push ``jobs`` jobs and one that fails, work them with a command, and check the
    outcome: each job handled exactly once, the failing one dead-lettered (the queue
    must allow 2 attempts), nothing left ready or claimed."""
    lines = "".join(json.dumps({"n": n}) + "\n" for n in range(jobs))
    obque("push", target, "-", stdin=lines)
    obque("push", target, '{"fail": true}')
    done = workdir / "done.jsonl"
    command = (
        f'{sys.executable} -c "import json, sys; p = json.load(sys.stdin); '
        f"sys.exit('refused') if p.get('fail') else "
        f"open({str(done)!r}, 'a').write(json.dumps(p) + chr(10))\""
    )
    obque("work", target, "--command", command, "--max-jobs", str(jobs + 2), "-n", str(concurrency))
    seen = [json.loads(line)["n"] for line in done.read_text().splitlines()]
    assert sorted(seen) == list(range(jobs))  # each job exactly once, none lost
    stats = json.loads(obque("stats", target, "--json"))
    assert (stats["ready"], stats["claimed"], stats["dead"]) == (0, 0, 1), stats
    assert stats["acked"] >= jobs, stats
    dead = obque("dead", "list", target)
    assert "refused" in dead, dead
