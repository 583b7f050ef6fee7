"""Running a long-lived broker process with uvicorn (``obque broker``)."""

from __future__ import annotations

import contextlib
import errno
import ipaddress
import logging
import signal
import socket
from collections.abc import Callable
from types import FrameType

from obque.broker.app import create_app
from obque.broker.logs import configure_logging
from obque.broker.queues import QueueRegistry
from obque.broker.settings import BrokerSettings
from obque.core import InvalidRequest, MissingDependency, StoreError, StoreUnavailable

__all__ = ["bind_socket", "check_bind", "check_root", "default_advertise", "is_loopback", "serve"]


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def default_advertise(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = socket.getfqdn()
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    return f"http://{host}:{port}"


def check_bind(settings: BrokerSettings, host: str, *, insecure: bool = False) -> None:
    """Refuse to listen beyond loopback without a token, unless told ``insecure``."""
    if not is_loopback(host) and not settings.token and not insecure:
        raise InvalidRequest(
            f"refusing to listen on {host} without a token: anyone who can reach it could "
            "push, claim and purge jobs. Set --token (or OBQUE_TOKEN), or pass --insecure."
        )


def serve(
    settings: BrokerSettings,
    host: str = "127.0.0.1",
    port: int = 8080,
    *,
    insecure: bool = False,
    log_level: str = "info",
    access_log: bool = False,
    on_ready: Callable[[], None] | None = None,
) -> None:
    """Serve until SIGINT/SIGTERM; shutdown commits what is in flight before exiting.

    ``on_ready`` is called once the port is bound and the root readable, before any
    queue is led: the moment to say that the broker is starting."""
    check_bind(settings, host, insecure=insecure)
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingDependency(
            "running a broker process needs uvicorn: pip install 'obque[server]'"
        ) from exc

    configure_logging(log_level)  # JSON lines on stderr (``obque.broker.logs``)
    # uvicorn drains on SIGTERM (no new connections, in-flight requests answered, then
    # the lifespan shutdown commits what is pending and withdraws the URL), and then
    # re-raises the signal so that the process dies of it: exit status -15 / 143, which
    # a supervisor cannot tell from a broker killed mid-commit. uvicorn re-raises into
    # the handler that was in place before it started, so this one turns a drained
    # shutdown into exit 0. A SIGTERM that comes before uvicorn listens ends the
    # process at once, as cleanly: nothing has been served yet (the bound port is
    # closed on the way out).
    signal.signal(signal.SIGTERM, _exit_cleanly)
    # The port first: uvicorn runs the app's lifespan (which takes the lead of every queue
    # under the root) before it binds, so a broker started on a port already in use would
    # fence the live broker there, fail to bind, and withdraw. Bound here, a clash is one
    # line and no queue is touched.
    sock = bind_socket(host, port)
    try:
        queues = QueueRegistry(settings)
        if settings.mode == "process":
            check_root(queues)
        if on_ready is not None:
            on_ready()
        config = uvicorn.Config(
            create_app(settings, registry=queues),
            host=host,
            port=port,
            loop="auto",  # uvloop when installed
            http="auto",  # httptools when installed
            access_log=access_log,
            log_level=log_level,
            log_config=None,  # uvicorn's loggers propagate to the JSON handler set up above
            timeout_graceful_shutdown=30,
        )
        server = uvicorn.Server(config)
        # Ctrl-C: uvicorn drains as for SIGTERM, then re-raises SIGINT; as ``uvicorn.run``
        # does, a drained stop is a clean exit.
        with contextlib.suppress(KeyboardInterrupt):
            server.run(sockets=[sock])
        if not server.started:
            raise SystemExit(3)  # uvicorn's own startup failure, already logged
    finally:
        sock.close()


def bind_socket(host: str, port: int) -> socket.socket:
    """A TCP socket bound to ``host:port`` (not yet listening), or one clear error."""
    bare = host.strip("[]")
    family = socket.AF_INET6 if ":" in bare else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        # As uvicorn does: a restarted broker may rebind while old connections linger in
        # TIME_WAIT. It does not let two sockets listen on one port.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((bare, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise InvalidRequest(
                f"port {port} is in use on {host} ({exc.strerror}): another process "
                "(perhaps another broker) listens there; stop it or choose another --port"
            ) from None
        if isinstance(exc, socket.gaierror):
            raise InvalidRequest(f"cannot listen on {host}: unknown host ({exc})") from None
        raise InvalidRequest(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    sock.set_inheritable(True)
    return sock


def check_root(queues: QueueRegistry) -> None:
    """List the root once before serving, so that a root the broker cannot use (no
    credentials, no such bucket, access denied) stops it with one line instead of a
    traceback from inside the app's startup. A store that is only unavailable (a 5xx, a
    timeout) does not stop it: the broker starts and adopts the queues when it can."""
    try:
        queues.root.queue_names()
    except StoreUnavailable as exc:
        logging.getLogger("obque.broker").warning("scanning the root failed: %s", exc)
    except StoreError as exc:
        raise StoreError(f"cannot serve the root: {exc.message}") from None


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
