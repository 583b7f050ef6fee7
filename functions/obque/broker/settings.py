"""How a broker is configured: where its queues live, who it is, who may call it."""

from __future__ import annotations

import os
from dataclasses import dataclass

from obque.core import InvalidRequest, ObqueError
from obque.core.limits import check_queue_name

__all__ = ["BrokerSettings", "ConfigurationError"]


class ConfigurationError(ObqueError):
    """The broker's configuration is incomplete or invalid; see the message for the setting."""

    code = "configuration_error"


@dataclass(frozen=True)
class BrokerSettings:
    #: The root URI whose ``NAME.json`` files this broker serves.
    root: str = "file://./.obque/"
    #: The URL written into each queue's ``broker`` record (clients send requests there).
    advertise: str | None = None
    #: ``process``: one long-running leader per queue, fenced by epoch.
    #: ``serverless``: every function instance serves; no leadership.
    mode: str = "process"
    #: Bearer token every request but ``/healthz`` must present (None: no auth).
    token: str | None = None
    #: A leader whose heartbeat is older than this may be replaced.
    broker_timeout: float = 10.0
    #: Take over queues whose record names a serverless deployment.
    take_serverless: bool = False
    #: The address a long-running broker listens on (for its Host check without a token).
    bind_host: str | None = None
    #: The queues this broker may serve (a deployment's, from ``OBQUE_QUEUES``); None:
    #: every ``NAME.json`` under the root, found by listing it.
    queues: tuple[str, ...] | None = None

    @classmethod
    def from_env(cls, **overrides: object) -> BrokerSettings:
        """Settings from ``OBQUE_ROOT``, ``OBQUE_TOKEN``, ``OBQUE_ADVERTISE``; explicit
        (non-None) overrides win, as CLI flags do."""
        values: dict[str, object] = {}
        if root := os.environ.get("OBQUE_ROOT"):
            values["root"] = root
        if token := os.environ.get("OBQUE_TOKEN"):
            values["token"] = token
        if advertise := os.environ.get("OBQUE_ADVERTISE"):
            values["advertise"] = advertise
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)  # type: ignore[arg-type]

    @classmethod
    def serverless_from_env(cls) -> BrokerSettings:
        """Settings of a function broker (Lambda, Cloud Functions), from its environment.

        ``OBQUE_ROOT`` is required: a function has no sensible local default, and one
        silently serving ``file://./.obque/`` would lose every job with its instance.
        ``OBQUE_QUEUES`` (comma-separated) names the deployment's queues: the broker's
        cloud role may touch only those objects, so it lists them from here instead of
        listing the bucket, and refuses other names before asking the store.
        """
        if not os.environ.get("OBQUE_ROOT", "").strip():
            raise ConfigurationError(
                "OBQUE_ROOT is not set: a function broker needs the root of its queues "
                "(s3://BUCKET/ or gs://BUCKET/) in its environment; the deployment sets it"
            )
        raw = os.environ.get("OBQUE_QUEUES")
        queues = None if raw is None else _queue_names(raw)
        return cls.from_env(mode="serverless", queues=queues)


def _queue_names(raw: str) -> tuple[str, ...]:
    names = tuple(dict.fromkeys(n.strip() for n in raw.split(",") if n.strip()))
    if not names:
        raise ConfigurationError("OBQUE_QUEUES is empty: name the deployment's queues, a,b,c")
    for name in names:
        try:
            check_queue_name(name)
        except InvalidRequest as exc:
            raise ConfigurationError(f"OBQUE_QUEUES: {exc.message}") from None
    return names
