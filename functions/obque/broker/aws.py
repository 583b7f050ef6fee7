"""AWS Lambda entry point: ``obque.broker.aws.handler`` behind a Function URL.

The FastAPI app runs through mangum (payload format 2.0, lifespan off). Lambda gives each
execution environment one request at a time, so concurrent requests meet through the
intent protocol (``obque.commit.intents``) instead of a shared buffer; a warm environment
keeps the last state and token it saw, so an uncontended request costs one CAS write.

Configuration (environment): ``OBQUE_ROOT`` (``s3://BUCKET/`` -- required: without it
the cold start fails), ``OBQUE_QUEUES`` (the deployment's queue names, comma-separated:
the broker's role may touch only those objects, so ``GET /v1/queues`` answers from it
instead of listing the bucket), optional ``OBQUE_TOKEN`` (bearer mode, for Function URLs
with auth type NONE), and ``OBQUE_INTENT_WINDOW_MS`` (how long an intent waits for others
to join, default 50).
"""

from __future__ import annotations

import os
import time
from typing import Any

from obque.broker.app import create_app
from obque.broker.queues import QueueRegistry
from obque.broker.settings import BrokerSettings
from obque.commit import Engine, IntentEngine, IntentSettings
from obque.store import Store

__all__ = ["build_handler"]  # and `handler`, built on first use

#: Answer this long before Lambda's own timeout, so errors reach the caller as JSON.
SAFETY_MARGIN_S = 1.5


class _Budget:
    """The current invocation's deadline, read by the engines while it runs."""

    def __init__(self) -> None:
        self.until: float | None = None

    def __call__(self) -> float | None:
        return self.until


def build_handler(settings: BrokerSettings | None = None) -> Any:
    """A Lambda handler serving ``settings`` (from the environment by default)."""
    from mangum import Mangum

    settings = settings or BrokerSettings.serverless_from_env()
    budget = _Budget()
    window = float(os.environ.get("OBQUE_INTENT_WINDOW_MS", "50")) / 1000
    intent_settings = IntentSettings(window_s=window)

    def engine(store: Store, name: str) -> Engine:
        return IntentEngine(store, name=name, settings=intent_settings, deadline=budget)

    registry = QueueRegistry(settings, engine_factory=engine)
    app = create_app(settings, registry=registry)
    asgi = Mangum(app, lifespan="off", api_gateway_base_path="/")

    def handle(event: dict[str, Any], context: Any) -> dict[str, Any]:
        remaining = getattr(context, "get_remaining_time_in_millis", None)
        budget.until = (
            time.monotonic() + remaining() / 1000 - SAFETY_MARGIN_S if remaining else None
        )
        try:
            result: dict[str, Any] = asgi(event, context)
            return result
        finally:
            budget.until = None

    return handle


def __getattr__(name: str) -> Any:
    # Built on first use (the cold start), not at import, so tests and tools can import
    # this module without OBQUE_ROOT set.
    if name == "handler":
        value = build_handler()
        globals()["handler"] = value
        return value
    raise AttributeError(name)
