"""The broker's HTTP API v1 (SPEC §7) as a FastAPI app factory.

The same app serves ``obque broker`` (uvicorn), AWS Lambda (mangum) and Google Cloud
Functions (functions-framework). Handlers are thin: decode the body (msgspec), build
validated operations, hand them to the queue's engine, encode the answer.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any, Literal

import msgspec
from fastapi import FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.types import ASGIApp, Receive, Scope, Send

from obque.broker import views
from obque.broker.auth import BearerAuth, CrossSiteGuard
from obque.broker.dashboard import DASHBOARD_HTML
from obque.broker.errors import (
    error_response,
    http_error_response,
    unexpected_error_response,
)
from obque.broker.hot import HOT_VERBS, Handler, HotRoutes
from obque.broker.metrics import BrokerMetrics
from obque.broker.openapi import publish_schemas, route_doc
from obque.broker.queues import QueueRegistry
from obque.broker.settings import BrokerSettings
from obque.broker.wire import (
    MAX_BODY_BYTES,
    REQUEST_TYPES,
    AckIn,
    ClaimIn,
    ConfigIn,
    HeartbeatIn,
    IdsIn,
    NackIn,
    PushIn,
    QueueRef,
    QueuesOut,
)
from obque.core import (
    Ack,
    Claim,
    Heartbeat,
    InvalidRequest,
    LeaseRef,
    Nack,
    NackItem,
    NewJob,
    ObqueError,
    OpError,
    PayloadTooLarge,
    Purge,
    Push,
    Redrive,
    Result,
    StoreUnavailable,
)

__all__ = ["create_app"]

_DECODERS: dict[type, msgspec.json.Decoder[Any]] = {
    t: msgspec.json.Decoder(t) for t in REQUEST_TYPES
}


async def _read(request: Request) -> bytes:
    """The request body; refuses bodies over ``MAX_BODY_BYTES`` without reading them."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > MAX_BODY_BYTES:
        raise PayloadTooLarge(f"request body of {declared} bytes exceeds {MAX_BODY_BYTES}")
    chunks: list[bytes] = []
    size = 0
    try:
        async for chunk in request.stream():
            size += len(chunk)
            if size > MAX_BODY_BYTES:
                raise PayloadTooLarge(f"request body exceeds {MAX_BODY_BYTES} bytes")
            chunks.append(chunk)
    except ClientDisconnect:
        # The client left mid-body (or sent a chunk the HTTP parser refused): nobody reads
        # this answer, and it is the client's doing, not a server error with a traceback.
        raise InvalidRequest("the client disconnected before sending the whole body") from None
    return b"".join(chunks)


def _parse(body: bytes, kind: type[Any]) -> Any:
    try:
        # msgspec checks the strings it decodes but not a payload it keeps as raw JSON;
        # invalid UTF-8 there would make the queue file unreadable to any JSON parser.
        body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidRequest(f"the request body is not valid UTF-8: {exc}") from None
    try:
        return _DECODERS[kind].decode(body)
    except msgspec.ValidationError as exc:
        raise InvalidRequest(f"invalid request body: {exc}") from None
    except (msgspec.DecodeError, RecursionError) as exc:
        raise InvalidRequest(f"the request body is not valid JSON: {exc}") from None


async def _decode(request: Request, kind: type[Any]) -> Any:
    body = await _read(request)
    if not body.strip():
        raise InvalidRequest("the request body is empty; expected a JSON object")
    return _parse(body, kind)


async def _decode_optional(request: Request, kind: type[Any]) -> Any | None:
    body = await _read(request)
    return _parse(body, kind) if body.strip() else None


def _json(value: Any, status: int = 200) -> Response:
    return Response(msgspec.json.encode(value), status_code=status, media_type="application/json")


def _raise_op_error(result: Result) -> None:
    if isinstance(result, OpError):
        raise result.exception()


class _BrokerApp(FastAPI):
    """FastAPI, entered through ``entry`` for HTTP: the authentication guard, then
    :class:`HotRoutes` for the job routes, then the framework's own stack for the rest.

    The guard runs outside the framework so that the job routes skip its per-request
    middleware too (each wraps the response's ``send``; see ``obque.broker.hot``)."""

    entry: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.entry is not None and scope["type"] == "http":
            await self.entry(scope, receive, send)
        else:
            await super().__call__(scope, receive, send)


# FastAPI builds each route's pydantic adapters inside ``warnings.catch_warnings()``, which
# swaps the process-wide warning filters and is not thread-safe: two apps built at once in
# one process can restore each other's filters mid-build (under ``-W error`` that raises).
# One process builds one app in production, so serialising the build costs nothing.
_BUILD_LOCK = threading.Lock()

#: How often a process broker deletes orphaned spilled payloads of the queues it leads.
SWEEP_EVERY_S = 600.0


def create_app(
    settings: BrokerSettings | None = None, *, registry: QueueRegistry | None = None
) -> FastAPI:
    settings = settings or BrokerSettings.from_env()
    queues = registry or QueueRegistry(settings)
    with _BUILD_LOCK:
        return _build_app(settings, queues)


def _build_app(settings: BrokerSettings, queues: QueueRegistry) -> FastAPI:

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        scan = sweep = None
        if settings.mode == "process":
            try:
                await asyncio.to_thread(queues.adopt_existing)
            except StoreUnavailable as exc:  # transient: the scan below tries again
                logging.getLogger("obque.broker").warning("scanning the root failed: %s", exc)
            scan = asyncio.create_task(_adopt_new_queues(queues, settings.broker_timeout / 3))
            sweep = asyncio.create_task(_sweep_payloads(queues, SWEEP_EVERY_S))
        yield
        for task in (scan, sweep):
            if task is not None:
                task.cancel()
        await asyncio.to_thread(queues.close)

    app = _BrokerApp(
        title="obque broker",
        version="1",
        summary="A job queue whose whole state is one JSON object in object storage.",
        lifespan=lifespan,
        redoc_url=None,
    )
    app.state.queues = queues
    app.state.settings = settings
    # Before any engine exists, so every commit is observed.
    broker_metrics = BrokerMetrics(queues)
    hot: dict[str, Handler] = {}  # filled below, once the handlers exist
    # Every HTTP request meets the guard first, then the job routes' fast path, then the
    # framework (see ``_BrokerApp``).
    entry: ASGIApp = HotRoutes(functools.partial(FastAPI.__call__, app), hot)
    if settings.token:
        entry = BearerAuth(entry, token=settings.token)
    elif settings.mode == "process":
        entry = CrossSiteGuard(entry, hosts=_own_hosts(settings))
    app.entry = entry

    @app.exception_handler(ObqueError)
    async def on_obque_error(request: Request, exc: ObqueError) -> Response:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def on_validation_error(request: Request, exc: RequestValidationError) -> Response:
        parts = [f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}" for e in exc.errors()]
        return error_response(InvalidRequest("invalid request: " + "; ".join(parts)))

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        return http_error_response(exc.status_code, str(exc.detail))

    @app.exception_handler(Exception)
    async def on_unexpected(request: Request, exc: Exception) -> Response:
        return unexpected_error_response(exc)

    # -- queues --------------------------------------------------------------------------

    @app.put(
        "/v1/queues/{name}", **route_doc(ConfigIn, views.QueueOut, (200, 201), body_optional=True)
    )
    async def put_queue(name: str, request: Request) -> Response:
        config: ConfigIn = await _decode_optional(request, ConfigIn) or ConfigIn()
        created, state = await queues.create(name, config.changes())
        return _json(views.queue_out(state), 201 if created else 200)

    @app.get("/v1/queues", **route_doc(None, QueuesOut))
    async def list_queues() -> Response:
        names = await queues.names()
        return _json(QueuesOut([QueueRef(n, queues.root.queue(n).uri) for n in names]))

    # -- jobs --------------------------------------------------------------------------------

    @app.post("/v1/queues/{name}/push", **route_doc(PushIn, views.PushOut))
    async def push(name: str, request: Request) -> Response:
        engine = await queues.get(name)
        body: PushIn = await _decode(request, PushIn)
        op = Push.of(
            NewJob.of(j.payload, j.key, j.delay_seconds, j.max_attempts) for j in body.jobs
        )
        result = await engine.arun(op)
        _raise_op_error(result)
        return _json(views.push_out(result))

    @app.post("/v1/queues/{name}/claim", **route_doc(ClaimIn, views.ClaimOut))
    async def claim(name: str, request: Request) -> Response:
        engine = await queues.get(name)
        body: ClaimIn = await _decode(request, ClaimIn)
        op = Claim.of(body.worker, body.max, body.lease_seconds)
        result = await engine.aclaim(op, body.wait_seconds, abandoned=request.is_disconnected)
        return _json(views.claim_out(result))

    @app.post("/v1/queues/{name}/heartbeat", **route_doc(HeartbeatIn, views.ResultsOut))
    async def heartbeat(name: str, request: Request) -> Response:
        engine = await queues.get(name)
        body: HeartbeatIn = await _decode(request, HeartbeatIn)
        refs = [LeaseRef.of(item.id, item.lease) for item in body.leases]
        result = await engine.arun(Heartbeat.of(refs, body.lease_seconds))
        return _json(views.results_out(result))

    @app.post("/v1/queues/{name}/ack", **route_doc(AckIn, views.ResultsOut))
    async def ack(name: str, request: Request) -> Response:
        engine = await queues.get(name)
        body: AckIn = await _decode(request, AckIn)
        result = await engine.arun(Ack.of(LeaseRef.of(i.id, i.lease) for i in body.leases))
        return _json(views.results_out(result))

    @app.post("/v1/queues/{name}/nack", **route_doc(NackIn, views.ResultsOut))
    async def nack(name: str, request: Request) -> Response:
        engine = await queues.get(name)
        body: NackIn = await _decode(request, NackIn)
        items = [NackItem.of(i.id, i.lease, i.delay_seconds, i.error, i.dead) for i in body.leases]
        result = await engine.arun(Nack.of(items))
        return _json(views.results_out(result))

    hot.update(push=push, claim=claim, heartbeat=heartbeat, ack=ack, nack=nack)
    assert set(hot) == set(HOT_VERBS)

    # -- inspection and dead letters -------------------------------------------------------

    @app.get("/v1/queues/{name}/stats", **route_doc(None, views.StatsOut))
    async def stats(name: str) -> Response:
        engine = await queues.get(name)
        state = await asyncio.to_thread(engine.read_state)
        return _json(views.stats_out(state, int(time.time() * 1000)))

    @app.get("/v1/queues/{name}/jobs", **route_doc(None, views.JobsOut))
    async def jobs(
        name: str,
        state: Literal["ready", "delayed", "claimed", "dead"] = "ready",
        limit: int = Query(100, ge=1, le=1000),
    ) -> Response:
        engine = await queues.get(name)
        current = await asyncio.to_thread(engine.read_state)
        now_ms = int(time.time() * 1000)
        fetch = engine.payloads.fetch  # spilled payloads: a GET each, so off the loop
        listing = await asyncio.to_thread(views.jobs_out, current, state, limit, now_ms, fetch)
        return _json(listing)

    @app.post(
        "/v1/queues/{name}/dead/redrive", **route_doc(IdsIn, views.RedriveOut, body_optional=True)
    )
    async def redrive(name: str, request: Request) -> Response:
        engine = await queues.get(name)
        ids = await _optional_ids(request)
        result = await engine.arun(Redrive(ids))
        return _json(views.RedriveOut(views.count(result)))

    @app.post(
        "/v1/queues/{name}/dead/purge", **route_doc(IdsIn, views.PurgeOut, body_optional=True)
    )
    async def purge(name: str, request: Request) -> Response:
        engine = await queues.get(name)
        ids = await _optional_ids(request)
        result = await engine.arun(Purge(ids))
        return _json(views.PurgeOut(views.count(result)))

    # -- operations ------------------------------------------------------------------------------

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return Response(b'{"ok":true}', media_type="application/json")

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        text = await asyncio.to_thread(broker_metrics.render)
        return Response(text, media_type=broker_metrics.content_type)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def dashboard() -> HTMLResponse:
        return HTMLResponse(DASHBOARD_HTML)

    publish_schemas(app)
    return app


def _own_hosts(settings: BrokerSettings) -> frozenset[str] | None:
    """The names a token-less broker answers to: loopback, and its advertised host --
    unless it was started on a public address (``--insecure``), where any name may reach it."""
    from urllib.parse import urlsplit

    advertised = urlsplit(settings.advertise or "").hostname
    if settings.bind_host is None or settings.bind_host in ("0.0.0.0", "::", ""):
        return None  # embedded (tests, demos) or public: any name may reach it
    names = {"localhost", "127.0.0.1", "::1"}
    if advertised:
        names.add(advertised.lower())
    if settings.bind_host:
        names.add(settings.bind_host.strip("[]").lower())
    return frozenset(names)


async def _sweep_payloads(queues: QueueRegistry, every_s: float) -> None:
    """Now and then delete spilled payloads no job names (see ``Payloads.sweep``)."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await asyncio.to_thread(queues.sweep_payloads)
        except Exception:  # a sweep is housekeeping: it must not end the loop
            logging.getLogger("obque.broker").exception("sweeping spilled payloads failed")


async def _adopt_new_queues(queues: QueueRegistry, every_s: float) -> None:
    """Serve queue files created beside the broker (``obque init`` writes the file
    directly): one LIST of the root every ``broker_timeout / 3``."""
    while True:
        await asyncio.sleep(every_s)
        try:
            await asyncio.to_thread(queues.adopt_existing)
        except ObqueError as exc:  # the store is down: try again next round
            logging.getLogger("obque.broker").warning("scanning the root failed: %s", exc)


async def _optional_ids(request: Request) -> tuple[str, ...] | None:
    body: IdsIn | None = await _decode_optional(request, IdsIn)
    return None if body is None or body.ids is None else tuple(body.ids)
