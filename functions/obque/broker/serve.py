"""Running a long-lived broker process with uvicorn (``obque broker``)."""

from __future__ import annotations

import ipaddress
import signal
import socket
from types import FrameType

from obque.broker.app import create_app
from obque.broker.logs import configure_logging
from obque.broker.settings import BrokerSettings
from obque.core import InvalidRequest, MissingDependency

__all__ = ["check_bind", "default_advertise", "is_loopback", "serve"]


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
) -> None:
    """Serve until SIGINT/SIGTERM; shutdown commits what is in flight before exiting."""
    check_bind(settings, host, insecure=insecure)
    try:
        import uvicorn
    except ImportError as exc:
        raise MissingDependency(
            "running a broker process needs uvicorn: pip install 'obque[server]'"
        ) from exc

    configure_logging(log_level)  # JSON lines on stderr (``obque.broker.logs``)
    # uvicorn drains on SIGTERM (no new connections, in-flight requests answered, then the
    # lifespan shutdown commits what is pending and withdraws the URL), and then re-raises
    # the signal so that the process dies of it: exit status -15 / 143, which a supervisor
    # cannot tell from a broker killed mid-commit. uvicorn re-raises into the handler that
    # was in place before it started, so this one turns a drained shutdown into exit 0. A
    # SIGTERM that comes before uvicorn listens ends the process at once, as cleanly:
    # nothing has been served yet.
    signal.signal(signal.SIGTERM, _exit_cleanly)
    uvicorn.run(
        create_app(settings),
        host=host,
        port=port,
        loop="auto",  # uvloop when installed
        http="auto",  # httptools when installed
        access_log=access_log,
        log_level=log_level,
        log_config=None,  # uvicorn's loggers propagate to the JSON handler set up above
        timeout_graceful_shutdown=30,
    )


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)
