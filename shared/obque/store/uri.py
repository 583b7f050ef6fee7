"""Opening stores from URIs.

    mem://BUCKET/KEY.json           in-process memory (``mem://NAME`` = ``mem://NAME/queue.json``)
    file:///abs/path/NAME.json      local disk (``file://./rel/path/NAME.json`` is relative)
    s3://BUCKET/prefix/NAME.json    Amazon S3 or any S3-compatible service (boto3)
    gs://BUCKET/prefix/NAME.json    Google Cloud Storage (google-cloud-storage)

A URI whose path does not end in ``.json`` names a *root*: ``open_store`` opens its
default queue ``queue.json``, ``open_root`` serves every queue in it. Any URI takes a
query that shapes the store: ``latency=s3|gcs|none``, ``read_ms``, ``write_ms``,
``min_write_interval_ms``, ``faults`` (a rate in [0, 1]) and ``seed``.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable
from urllib.parse import parse_qsl, urlsplit

from obque.core.errors import InvalidStoreURI
from obque.store.port import Backend, Root, Store
from obque.store.shaping import LATENCY_PROFILES, CountingBackend, FaultBackend, LatencyBackend

__all__ = ["DEFAULT_QUEUE", "open_root", "open_store", "split_uri"]

DEFAULT_QUEUE = "queue"
FORMS = (
    "mem://BUCKET/NAME.json, file:///path/NAME.json, s3://BUCKET/prefix/NAME.json "
    "or gs://BUCKET/prefix/NAME.json"
)
QUERY_KEYS = ("latency", "read_ms", "write_ms", "min_write_interval_ms", "faults", "seed")


def _memory(location: str) -> Backend:
    from obque.store.memory import MemoryBackend

    return MemoryBackend(location)


def _file(location: str) -> Backend:
    from obque.store.file import FileBackend

    return FileBackend(location)


def _lazy(module: str, cls: str) -> Callable[[str], Backend]:
    def make(location: str) -> Backend:
        factory: Callable[[str], Backend] = getattr(importlib.import_module(module), cls)
        return factory(location)

    return make


_ADAPTERS: dict[str, Callable[[str], Backend]] = {
    "mem": _memory,
    "file": _file,
    "s3": _lazy("obque.store.s3", "S3Backend"),
    "gs": _lazy("obque.store.gcs", "GCSBackend"),
}


def split_uri(uri: str) -> tuple[str, str, str, dict[str, str]]:
    """``(scheme, location, key, query)``: location is the bucket (or, for ``file``, the
    directory the keys are relative to); key is the object or root prefix."""
    if not isinstance(uri, str) or "://" not in uri:
        raise InvalidStoreURI(f"not a store URI: {uri!r}; expected {FORMS}")
    parts = urlsplit(uri)
    scheme = parts.scheme.lower()
    if scheme not in _ADAPTERS:
        raise InvalidStoreURI(f"unknown store scheme {scheme!r} in {uri!r}; expected {FORMS}")
    if parts.fragment:
        raise InvalidStoreURI(f"store URI {uri!r} must not have a #fragment")
    query: dict[str, str] = {}
    for name, value in parse_qsl(parts.query, keep_blank_values=True, strict_parsing=False):
        if name not in QUERY_KEYS:
            raise InvalidStoreURI(
                f"unknown store option {name!r} in {uri!r}; accepted: {', '.join(QUERY_KEYS)}"
            )
        query[name] = value
    if scheme == "file":
        # file:///abs/dir/q.json (netloc empty) or file://./rel/dir/q.json (netloc ".").
        if parts.netloc not in ("", ".", "localhost"):
            raise InvalidStoreURI(
                f"file URI {uri!r} names host {parts.netloc!r}; use file:///absolute/path "
                "or file://./relative/path"
            )
        path = parts.path if parts.netloc != "." else "." + parts.path
        if not path or path in ("/", "."):
            raise InvalidStoreURI(f"file URI {uri!r} names no path")
        directory, _, key = (
            path.rstrip("/").rpartition("/")
            if path.endswith(".json")
            else (path.rstrip("/"), "", "")
        )
        return scheme, directory or "/", key, query
    bucket = parts.netloc
    if not bucket:
        raise InvalidStoreURI(f"store URI {uri!r} names no bucket; expected {FORMS}")
    key = parts.path.lstrip("/")
    if key and not key.endswith(".json") and not key.endswith("/"):
        key += "/"
    return scheme, bucket, key, query


def _number(uri: str, query: dict[str, str], name: str, default: float) -> float:
    if name not in query:
        return default
    try:
        value = float(query[name])
    except ValueError:
        raise InvalidStoreURI(f"{name}={query[name]!r} in {uri!r} is not a number") from None
    if not value >= 0:  # also rejects NaN
        raise InvalidStoreURI(f"{name}={query[name]!r} in {uri!r} must be >= 0")
    return value


def _backend(uri: str, scheme: str, location: str, query: dict[str, str]) -> Backend:
    backend = _ADAPTERS[scheme](location)
    profile = query.get("latency")
    if profile is not None and profile not in LATENCY_PROFILES:
        raise InvalidStoreURI(
            f"latency={profile!r} in {uri!r}; accepted: {', '.join(LATENCY_PROFILES)}"
        )
    base = LATENCY_PROFILES[profile or "none"]
    read_ms = _number(uri, query, "read_ms", base[0])
    write_ms = _number(uri, query, "write_ms", base[1])
    interval_ms = _number(uri, query, "min_write_interval_ms", base[2])
    if read_ms or write_ms or interval_ms:
        backend = LatencyBackend(backend, read_ms, write_ms, interval_ms)
    rate = _number(uri, query, "faults", 0.0)
    if rate > 1:
        raise InvalidStoreURI(f"faults={query['faults']!r} in {uri!r} must be in [0, 1]")
    if rate:
        seed = int(_number(uri, query, "seed", 0)) if "seed" in query else None
        backend = FaultBackend(backend, rate, seed)
    return CountingBackend(backend)


def open_store(uri: str) -> Store:
    """Open the object a URI names (a root URI opens its default queue ``queue.json``)."""
    scheme, location, key, query = split_uri(uri)
    if not key.endswith(".json"):
        key = f"{key}{DEFAULT_QUEUE}.json"
    return Store(_backend(uri, scheme, location, query), key)


def open_root(uri: str) -> Root:
    """Open the folder a URI names; a URI of a queue file opens the folder holding it."""
    scheme, location, key, query = split_uri(uri)
    if key.endswith(".json"):
        key = key.rpartition("/")[0]
        key = f"{key}/" if key else ""
    return Root(_backend(uri, scheme, location, query), key)
