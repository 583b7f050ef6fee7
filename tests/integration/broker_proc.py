"""Real ``obque broker`` processes for integration tests.

A test asks the ``brokers`` fixture for a :class:`BrokerFactory`, starts brokers on free
loopback ports in its tmp dir, and talks HTTP to them. Every process is killed at
teardown; its combined stdout/stderr goes to a log file that is attached to the report
of a failing test (section "broker logs"), so a failure shows what the broker said.

Test modules load this file as a plugin, which registers the fixtures (``brokers`` per
test, ``module_brokers`` per module; a test using the latter calls :func:`attach_logs`)
and the report hook, and import its helpers::

    pytest.register_assert_rewrite("broker_proc")   # before the import, as for plugins
    from broker_proc import BrokerFactory, assert_error
    pytest_plugins = ["broker_proc"]

Readiness is polled (``GET /healthz``) and so is every other condition the tests wait
for (:func:`wait_until`): nothing sleeps a fixed time hoping something has happened.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest

__all__ = [
    "OBQUE",
    "BrokerFactory",
    "BrokerProcess",
    "BrokerStartError",
    "assert_error",
    "attach_logs",
    "free_port",
    "read_queue_file",
    "wait_until",
]

T = TypeVar("T")


def _obque_executable() -> str:
    beside = Path(sys.executable).with_name("obque")
    if beside.exists():
        return str(beside)
    found = shutil.which("obque")
    if found is None:  # pragma: no cover - the package is installed in the venv
        raise RuntimeError("the `obque` entry point is not installed in this environment")
    return found


#: The ``obque`` console script of the environment running the tests.
OBQUE = _obque_executable()

#: How long a broker may take to answer /healthz after it was started.
START_TIMEOUT = 45.0


def free_port() -> int:
    """A port nothing listens on right now (the broker binds it moments later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(
    probe: Callable[[], T | None],
    *,
    timeout: float,
    what: str,
    interval: float = 0.05,
) -> T:
    """Call ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while True:
        last = probe()
        if last:
            return last
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what} (last: {last!r})")
        time.sleep(interval)


def assert_error(
    response: httpx.Response,
    status: int,
    code: str,
    *mentions: str,
    broker: bool = False,
) -> str:
    """Assert the API's one error shape; return the message.

    The body must be exactly ``{"error": {"code", "message"}}`` (plus ``"broker"`` when
    ``broker`` is set, as for ``not_leader``), and the message must name each of
    ``mentions``. Returns the message for further checks.
    """
    assert response.status_code == status, (response.status_code, response.text)
    assert response.headers["content-type"].startswith("application/json"), response.headers
    body = response.json()
    assert set(body) == ({"error", "broker"} if broker else {"error"}), body
    error = body["error"]
    assert set(error) == {"code", "message"}, body
    assert error["code"] == code, body
    message = error["message"]
    assert isinstance(message, str) and message.strip(), body
    assert "Traceback" not in message, body
    for needle in mentions:
        assert needle in message, (needle, message)
    return message


def read_queue_file(root_dir: Path, name: str) -> dict[str, Any]:
    """The queue file ``NAME.json`` under a root directory, parsed."""
    data: dict[str, Any] = json.loads((root_dir / f"{name}.json").read_bytes())
    return data


class BrokerStartError(RuntimeError):
    """A broker process exited or never answered /healthz."""


@dataclass(repr=False)
class BrokerProcess:
    """One running ``obque broker``; ``url`` is where it listens."""

    args: list[str]
    host: str
    port: int
    advertise: str | None
    token: str | None
    log_path: Path
    proc: subprocess.Popen[bytes]

    def __repr__(self) -> str:
        return f"<broker {self.url} pid {self.pid}>"

    @property
    def url(self) -> str:
        """Where to reach it (a wildcard bind is reached on loopback)."""
        host = "127.0.0.1" if self.host in ("0.0.0.0", "") else self.host
        return f"http://{host}:{self.port}"

    @property
    def advertised(self) -> str:
        """The URL this broker writes into queue files."""
        return self.advertise or self.url

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"} if self.token else {}

    def client(self, timeout: float = 30.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, headers=self.headers(), timeout=timeout)

    def async_client(self, timeout: float = 30.0, connections: int = 100) -> httpx.AsyncClient:
        limits = httpx.Limits(max_connections=connections, max_keepalive_connections=connections)
        return httpx.AsyncClient(
            base_url=self.url, headers=self.headers(), timeout=timeout, limits=limits
        )

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except FileNotFoundError:
            return ""

    def kill(self) -> None:
        """SIGKILL: the broker gets no chance to commit or clean up (a crash)."""
        if self.alive():
            self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self, timeout: float = 15.0) -> int:
        """SIGTERM and wait for a clean shutdown (SIGKILL if it takes too long)."""
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                return self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.send_signal(signal.SIGKILL)
        return self.proc.wait(timeout=10)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        deadline = time.monotonic() + timeout
        with httpx.Client(timeout=2.0) as probe:
            while True:
                if not self.alive():
                    raise BrokerStartError(
                        f"broker {self.url} exited with {self.proc.returncode} before it was "
                        f"ready; its log:\n{self.log()}"
                    )
                try:
                    if probe.get(f"{self.url}/healthz").status_code == 200:
                        return
                except httpx.TransportError:
                    pass
                if time.monotonic() > deadline:
                    raise BrokerStartError(
                        f"broker {self.url} did not answer /healthz within {timeout:g}s; "
                        f"its log:\n{self.log()}"
                    )
                time.sleep(0.05)


def _clean_env() -> dict[str, str]:
    """The environment for a broker: no OBQUE_* settings leak in from the caller."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBQUE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return env


@dataclass(repr=False)
class BrokerFactory:
    """Starts brokers (and one-shot ``obque`` commands) under ``workdir``; kills them all
    on :meth:`close`."""

    workdir: Path
    started: list[BrokerProcess] = field(default_factory=list)
    _serial: Iterator[int] = field(default_factory=itertools.count)

    def __repr__(self) -> str:
        return f"<brokers in {self.workdir}: {self.started!r}>"

    def root_dir(self, name: str = "root") -> Path:
        path = self.workdir / name
        path.mkdir(parents=True, exist_ok=True)
        return path

    def root(self, name: str = "root", query: str = "") -> str:
        """A ``file:///…/NAME/`` root URI (created), with an optional ``?query``."""
        uri = self.root_dir(name).resolve().as_uri() + "/"
        return f"{uri}?{query}" if query else uri

    def start(
        self,
        root: str,
        *,
        host: str = "127.0.0.1",
        port: int | None = None,
        advertise: str | None = None,
        token: str | None = None,
        broker_timeout: float | None = None,
        extra: Sequence[str] = (),
        ready: bool = True,
    ) -> BrokerProcess:
        """Start ``obque broker`` and (by default) wait until it answers /healthz.

        With ``port=None`` a free port is chosen; if another process grabs it between the
        probe and the bind, the start is retried on a fresh port.
        """
        for attempt in range(3):
            chosen = port if port is not None else free_port()
            broker = self._spawn(root, host, chosen, advertise, token, broker_timeout, extra)
            if not ready:
                return broker
            try:
                broker.wait_ready()
                return broker
            except BrokerStartError:
                in_use = "address already in use" in broker.log().lower()
                if port is None and in_use and attempt < 2:
                    continue
                raise
        raise AssertionError("unreachable")  # pragma: no cover

    def _spawn(
        self,
        root: str,
        host: str,
        port: int,
        advertise: str | None,
        token: str | None,
        broker_timeout: float | None,
        extra: Sequence[str],
    ) -> BrokerProcess:
        args = [OBQUE, "broker", "--root", root, "--host", host, "--port", str(port)]
        if advertise is not None:
            args += ["--advertise", advertise]
        if token is not None:
            args += ["--token", token]
        if broker_timeout is not None:
            args += ["--broker-timeout", str(broker_timeout)]
        args += list(extra)
        log_path = self.workdir / f"broker-{next(self._serial)}-{port}.log"
        with open(log_path, "wb") as log:
            proc = subprocess.Popen(
                args,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=self.workdir,
                env=_clean_env(),
            )
        broker = BrokerProcess(args, host, port, advertise, token, log_path, proc)
        self.started.append(broker)
        return broker

    def run(self, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
        """Run ``obque ARGS`` to completion (for commands that should exit)."""
        return subprocess.run(
            [OBQUE, *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.workdir,
            env=_clean_env(),
            stdin=subprocess.DEVNULL,
        )

    def logs(self) -> str:
        parts = []
        for broker in self.started:
            state = "running" if broker.alive() else f"exited {broker.proc.returncode}"
            parts.append(f"----- {' '.join(broker.args[1:])} (pid {broker.pid}, {state})")
            parts.append(broker.log().rstrip())
        return "\n".join(parts)

    def close(self) -> None:
        for broker in self.started:
            with contextlib.suppress(Exception):
                broker.kill()


# -- pytest plumbing ---------------------------------------------------------------------

_FACTORIES = pytest.StashKey[list[BrokerFactory]]()


def attach_logs(request: pytest.FixtureRequest, factory: BrokerFactory) -> None:
    """Attach ``factory``'s logs to the current test's report should it fail."""
    request.node.stash.setdefault(_FACTORIES, []).append(factory)


@pytest.fixture
def brokers(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[BrokerFactory]:
    """A factory of broker processes private to one test."""
    factory = BrokerFactory(tmp_path)
    attach_logs(request, factory)
    try:
        yield factory
    finally:
        factory.close()


@pytest.fixture(scope="module")
def module_brokers(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerFactory]:
    """A factory shared by one module's tests (for a broker they all talk to)."""
    factory = BrokerFactory(tmp_path_factory.mktemp("brokers"))
    try:
        yield factory
    finally:
        factory.close()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed:
        for factory in item.stash.get(_FACTORIES, []):
            if factory.started:
                report.sections.append(("broker logs", factory.logs()))
