"""Google Cloud Functions (2nd gen) / Cloud Run entry point: ``obque.broker.gcp.handler``.

functions-framework 3.10+ serves it natively as ASGI (``--asgi --target handler``).
An instance handles many requests at once (concurrency > 1), so they share the in-process
group-commit engine; GCS allows about one write per second per object, which the
``gs://`` store advertises and the engine's pacing respects (``min_write_interval``).
Credentials are the function's service account, through google-cloud-storage's default
chain. Configuration: ``OBQUE_ROOT`` (``gs://BUCKET/``), optional ``OBQUE_TOKEN``.

Instances do not elect a leader (``mode: serverless``): when several run, their commits
meet as ordinary compare-and-set conflicts, retried on a fresh read.
"""

from __future__ import annotations

from typing import Any

from obque.broker.app import create_app
from obque.broker.settings import BrokerSettings

__all__ = ["build_app"]  # and `handler`, built on first use


def build_app(settings: BrokerSettings | None = None) -> Any:
    return create_app(settings or BrokerSettings.from_env(mode="serverless"))


def __getattr__(name: str) -> Any:
    # Built when functions-framework first loads the target, not at import.
    if name == "handler":
        value = build_app()
        globals()["handler"] = value
        return value
    raise AttributeError(name)
