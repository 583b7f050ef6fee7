"""How a broker is configured: where its queues live, who it is, who may call it."""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["BrokerSettings"]


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
