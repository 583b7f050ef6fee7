"""A local AWS Lambda Runtime API, and execution environments that poll it.

Real Lambda runs a function's runtime interface client (``awslambdaric`` for Python) in
each execution environment; the client long-polls the Runtime API for the next
invocation, runs the handler, and posts the answer back. This module is that API, small
enough for tests, and a pool of real ``python -m awslambdaric HANDLER`` processes:

    test                 RuntimeApi                        environment (awslambdaric)
                                                    <───── GET  /runtime/invocation/next
    POST /functions/function/invocations ─▶ queue ──────▶ 200 event + Lambda-Runtime-* headers
                                                           handler(event, context)
                                                    <───── POST /runtime/invocation/ID/response
    200 answer   <───────────────────────── done                          (or .../ID/error)

An environment runs one invocation at a time and asks for the next only when it has
answered, so N environments serve at most N invocations at once, exactly as N Lambda
execution environments do. A handler that fails to load posts ``/runtime/init/error``
and exits; the API keeps those reports in :attr:`RuntimeApi.init_errors`.

Routes (as the Runtime API and the runtime interface emulator define them):

    GET  /2018-06-01/runtime/invocation/next          long-polls until an invocation is queued
    POST /2018-06-01/runtime/invocation/{id}/response 202: the handler's answer
    POST /2018-06-01/runtime/invocation/{id}/error    202: an unhandled error (and its type)
    POST /2018-06-01/runtime/init/error               202: the handler could not be loaded
    POST /2015-03-31/functions/function/invocations   invoke: queue an event, answer its result
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import secrets
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import IO, Any

__all__ = ["Invocation", "LambdaEnvironments", "RuntimeApi"]

FUNCTION_NAME = "obque-broker"
FUNCTION_ARN = f"arn:aws:lambda:us-east-1:123456789012:function:{FUNCTION_NAME}"
RUNTIME = "/2018-06-01/runtime"
INVOKE_PATH = "/2015-03-31/functions/function/invocations"
_RESULT_PATH = re.compile(rf"{RUNTIME}/invocation/([^/]+)/(response|error)")


@dataclass
class Invocation:
    """One event on its way through an environment, and what came back."""

    event: bytes
    timeout_s: float
    request_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    deadline_ms: int = 0
    #: The handler's answer (``error`` is false) or its error document (``error`` is true).
    answer: bytes | None = None
    error: bool = False
    error_type: str | None = None
    done: threading.Event = field(default_factory=threading.Event)

    def payload(self) -> Any:
        """The answer as JSON (the function's return value, or the error document)."""
        assert self.answer is not None, f"invocation {self.request_id} has not been answered"
        return json.loads(self.answer)


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    # Every environment connects at once when a pool starts; the default backlog of 5
    # would drop connections, and the runtime client gives up on a slow connect.
    request_queue_size = 1024

    def __init__(self, api: RuntimeApi) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.api = api

    def handle_error(self, request: Any, client_address: Any) -> None:
        if isinstance(sys.exc_info()[1], ConnectionError):
            return  # an environment stopped while its long-poll was open
        super().handle_error(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the runtime client's curl handle expects
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        pass  # the tests report what matters; a line per long-poll is noise

    def _body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length else b""

    def _answer(
        self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None
    ) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        self.wfile.flush()

    def _refuse(self, status: int, error_type: str, message: str) -> None:
        body = json.dumps({"errorType": error_type, "errorMessage": message}).encode()
        self._answer(status, body)

    def do_GET(self) -> None:
        if self.path != f"{RUNTIME}/invocation/next":
            self._refuse(404, "NotFound", f"no route GET {self.path}")
            return
        invocation = self.server.api._next()
        if invocation is None:  # the API is stopping
            self._refuse(503, "ServiceUnavailable", "the runtime API is shutting down")
            return
        headers = {
            "Lambda-Runtime-Aws-Request-Id": invocation.request_id,
            "Lambda-Runtime-Deadline-Ms": str(invocation.deadline_ms),
            "Lambda-Runtime-Invoked-Function-Arn": FUNCTION_ARN,
            "Lambda-Runtime-Trace-Id": (
                f"Root=1-{int(time.time()):08x}-{secrets.token_hex(12)};"
                f"Parent={secrets.token_hex(8)};Sampled=0"
            ),
        }
        try:
            self._answer(200, invocation.event, headers)
        except OSError:
            self.server.api._requeue(invocation)  # the environment went away meanwhile
            raise

    def do_POST(self) -> None:
        body = self._body()
        api = self.server.api
        if self.path == INVOKE_PATH:
            invocation = api.submit(body)
            if not invocation.done.wait(invocation.timeout_s + 5):
                self._refuse(504, "TaskTimedOut", f"invocation {invocation.request_id} timed out")
                return
            assert invocation.answer is not None
            extra = {"X-Amz-Function-Error": "Unhandled"} if invocation.error else {}
            self._answer(200, invocation.answer, extra)
            return
        if self.path == f"{RUNTIME}/init/error":
            api._init_error(body, self.headers.get("Lambda-Runtime-Function-Error-Type"))
            self._answer(202, b'{"status":"OK"}')
            return
        if match := _RESULT_PATH.fullmatch(self.path):
            request_id, kind = match.groups()
            error_type = self.headers.get("Lambda-Runtime-Function-Error-Type")
            if api._finish(request_id, body, kind == "error", error_type):
                self._answer(202, b'{"status":"OK"}')
            else:
                self._refuse(400, "InvalidRequestID", f"no invocation {request_id} is running")
            return
        self._refuse(404, "NotFound", f"no route POST {self.path}")


class RuntimeApi:
    """The Runtime API of a pool of environments, on a free loopback port."""

    def __init__(self, *, timeout_s: float = 30.0) -> None:
        #: What ``Lambda-Runtime-Deadline-Ms`` grants each invocation (the function timeout).
        self.timeout_s = timeout_s
        self.init_errors: list[dict[str, Any]] = []
        self._queue: queue.Queue[Invocation | None] = queue.Queue()
        self._running: dict[str, Invocation] = {}
        self._lock = threading.Lock()
        self._pollers = 0
        self._stopping = False
        self._server = _Server(self)
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="lambda-runtime-api", daemon=True
        )

    @property
    def address(self) -> str:
        """``HOST:PORT``, the value of ``AWS_LAMBDA_RUNTIME_API``."""
        host, port = self._server.server_address[:2]
        return f"{host!s}:{port}"

    @property
    def url(self) -> str:
        return f"http://{self.address}"

    @property
    def invoke_url(self) -> str:
        return f"{self.url}{INVOKE_PATH}"

    @property
    def pollers(self) -> int:
        """Environments waiting for an invocation right now (idle, initialised)."""
        with self._lock:
            return self._pollers

    def start(self) -> RuntimeApi:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stopping = True
        for _ in range(self.pollers + 1):
            self._queue.put(None)  # wake every long-poll so its thread can end
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(10)

    def __enter__(self) -> RuntimeApi:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- invoking ------------------------------------------------------------------------

    def submit(
        self, event: bytes | Mapping[str, Any], timeout_s: float | None = None
    ) -> Invocation:
        """Queue an event for the next free environment (``timeout_s`` overrides the
        function timeout for this invocation)."""
        data = event if isinstance(event, bytes) else json.dumps(event).encode()
        invocation = Invocation(data, self.timeout_s if timeout_s is None else timeout_s)
        self._queue.put(invocation)
        return invocation

    def invoke(
        self, event: bytes | Mapping[str, Any], timeout_s: float | None = None
    ) -> Invocation:
        """Run one event and wait for its answer (what the invoke route does)."""
        invocation = self.submit(event, timeout_s)
        if not invocation.done.wait(invocation.timeout_s + 5):
            raise TimeoutError(f"invocation {invocation.request_id} was not answered")
        return invocation

    # -- what the routes do ----------------------------------------------------------------

    def _next(self) -> Invocation | None:
        with self._lock:
            self._pollers += 1
        try:
            invocation = self._queue.get()
        finally:
            with self._lock:
                self._pollers -= 1
        if invocation is None or self._stopping:
            return None
        # The deadline starts when an environment takes the invocation, as in Lambda.
        invocation.deadline_ms = int((time.time() + invocation.timeout_s) * 1000)
        with self._lock:
            self._running[invocation.request_id] = invocation
        return invocation

    def _requeue(self, invocation: Invocation) -> None:
        with self._lock:
            self._running.pop(invocation.request_id, None)
        self._queue.put(invocation)

    def _finish(self, request_id: str, body: bytes, error: bool, error_type: str | None) -> bool:
        with self._lock:
            invocation = self._running.pop(request_id, None)
        if invocation is None:
            return False
        invocation.answer = body
        invocation.error = error
        invocation.error_type = error_type
        invocation.done.set()
        return True

    def _init_error(self, body: bytes, error_type: str | None) -> None:
        try:
            report = json.loads(body)
        except ValueError:
            report = {"raw": body.decode(errors="replace")}
        report.setdefault("errorType", error_type)
        with self._lock:
            self.init_errors.append(report)


class _Environment:
    """One execution environment: a runtime interface client process and its log."""

    def __init__(self, index: int, argv: list[str], env: Mapping[str, str], log_dir: Path) -> None:
        self.index = index
        self.log_path = log_dir / f"environment-{index:03d}.log"
        self._log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv,
            cwd=log_dir,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail(self, lines: int = 40) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def signal(self, signum: int) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signum)

    def close_log(self) -> None:
        self._log.close()


class LambdaEnvironments:
    """``python -m awslambdaric HANDLER`` processes polling one :class:`RuntimeApi`.

    ``env`` is the function's configuration (``OBQUE_ROOT``, credentials, endpoints);
    the pool adds what Lambda sets in every environment.
    """

    def __init__(
        self, api: RuntimeApi, handler: str, env: Mapping[str, str], log_dir: Path
    ) -> None:
        self.api = api
        self.handler = handler
        self.log_dir = log_dir
        self.env = {
            **env,
            "AWS_LAMBDA_RUNTIME_API": api.address,
            "AWS_LAMBDA_FUNCTION_NAME": FUNCTION_NAME,
            "AWS_LAMBDA_FUNCTION_VERSION": "$LATEST",
            "AWS_LAMBDA_FUNCTION_MEMORY_SIZE": "1024",
            "AWS_LAMBDA_LOG_GROUP_NAME": f"/aws/lambda/{FUNCTION_NAME}",
            "LAMBDA_TASK_ROOT": str(log_dir),
            "PYTHONUNBUFFERED": "1",
        }
        self.environments: list[_Environment] = []

    def start(self, count: int) -> list[_Environment]:
        """Start ``count`` more environments (not waiting for them: see ``wait_ready``)."""
        argv = [sys.executable, "-m", "awslambdaric", self.handler]
        started = []
        for _ in range(count):
            index = len(self.environments)
            env = {**self.env, "AWS_LAMBDA_LOG_STREAM_NAME": f"environment-{index:03d}"}
            started.append(_Environment(index, argv, env, self.log_dir))
            self.environments.append(started[-1])
        return started

    def exited(self) -> list[_Environment]:
        return [e for e in self.environments if e.popen.poll() is not None]

    def failure_report(self, environments: list[_Environment] | None = None) -> str:
        shown = environments if environments is not None else self.exited()[:3]
        parts = [
            f"--- environment {e.index} (exit {e.popen.poll()}) {e.log_path} ---\n{e.log_tail()}"
            for e in shown
        ]
        return "\n".join(parts)

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Poll until every environment waits for work; fail if one exits or time runs out."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if exited := self.exited():
                raise AssertionError(
                    f"{len(exited)} environment(s) exited during init; init errors: "
                    f"{self.api.init_errors}\n{self.failure_report(exited[:3])}"
                )
            if self.api.pollers >= len(self.environments):
                return
            time.sleep(0.05)
        raise AssertionError(
            f"only {self.api.pollers} of {len(self.environments)} environments became ready "
            f"within {timeout:.0f}s\n{self.failure_report(self.environments[:2])}"
        )

    def wait_idle(self, timeout: float = 30.0) -> None:
        """Poll until every live environment is back waiting for work."""
        self.wait_until(lambda: self.api.pollers >= len(self.environments), timeout)

    def wait_until(self, condition: Callable[[], bool], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            if time.monotonic() >= deadline:
                raise AssertionError(f"timed out after {timeout:.0f}s\n{self.failure_report()}")
            time.sleep(0.02)

    def stop(self, grace_s: float = 5.0) -> None:
        """SIGTERM every environment (its own process group), then SIGKILL stragglers."""
        for environment in self.environments:
            environment.signal(signal.SIGTERM)
        deadline = time.monotonic() + grace_s
        for environment in self.environments:
            try:
                environment.popen.wait(max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                environment.signal(signal.SIGKILL)
                environment.popen.wait()
            environment.close_log()

    @contextlib.contextmanager
    def running(self, count: int, timeout: float = 120.0) -> Iterator[LambdaEnvironments]:
        """Start ``count`` environments, wait until they are ready, stop them after."""
        try:
            self.start(count)
            self.wait_ready(timeout)
            yield self
        finally:
            self.stop()
