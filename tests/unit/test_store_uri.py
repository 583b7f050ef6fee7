"""Store URIs: parsing, the errors for malformed ones, and the wrappers a query selects."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid

import pytest

from obque.core.errors import InvalidStoreURI, StoreError, StoreUnavailable
from obque.store import Store, open_root, open_store, split_uri
from obque.store.memory import MemoryBackend
from obque.store.shaping import CountingBackend, FaultBackend, LatencyBackend

FORMS = "s3://BUCKET/prefix/NAME.json"  # every "which URI?" message lists all the forms
KEYS = "latency, read_ms, write_ms, min_write_interval_ms, faults, seed"


@pytest.mark.parametrize(
    ("uri", "parts"),
    [
        ("s3://b/p/q.json", ("s3", "b", "p/q.json", {})),
        ("s3://b/p", ("s3", "b", "p/", {})),
        ("s3://b", ("s3", "b", "", {})),
        ("gs://b/a/b/", ("gs", "b", "a/b/", {})),
        ("mem://x", ("mem", "x", "", {})),
        (
            "mem://x/q.json?faults=0.1&seed=3",
            ("mem", "x", "q.json", {"faults": "0.1", "seed": "3"}),
        ),
        ("file:///tmp/a/q.json", ("file", "/tmp/a", "q.json", {})),
        ("file:///tmp/a/", ("file", "/tmp/a", "", {})),
        ("file://./rel/q.json", ("file", "./rel", "q.json", {})),
        ("file://localhost/tmp/q.json", ("file", "/tmp", "q.json", {})),
        ("file:///q.json", ("file", "/", "q.json", {})),
    ],
)
def test_split_uri(uri: str, parts: tuple[str, str, str, dict[str, str]]) -> None:
    assert split_uri(uri) == parts


@pytest.mark.parametrize(
    ("uri", "named"),
    [
        ("bucket/queue.json", FORMS),
        ("", FORMS),
        ("ftp://host/queue.json", FORMS),
        ("s3:///queue.json", FORMS),
        ("gs://", FORMS),
        ("mem://x?colour=red", KEYS),
        ("mem://x?faults=lots", "faults"),
        ("mem://x?seed=abc&faults=0.1", "seed"),
        ("mem://x?read_ms=-1", "read_ms"),
        ("mem://x?faults=nan", "faults"),
        ("mem://x?faults=1.5", "[0, 1]"),
        ("mem://x?latency=moon", "s3, gcs, none"),
        ("file://host/queue.json", "file:///absolute/path or file://./relative/path"),
        ("file:///", "names no path"),
        ("mem://x#part", "#fragment"),
    ],
)
def test_malformed_uris_say_what_is_accepted(uri: str, named: str) -> None:
    with pytest.raises(InvalidStoreURI) as raised:
        open_store(uri)
    assert named in str(raised.value)


def test_a_root_uri_opens_its_default_queue_and_an_object_uri_its_folder() -> None:
    bucket = f"uri-{uuid.uuid4().hex}"
    assert open_store(f"mem://{bucket}").key == "queue.json"
    assert open_store(f"mem://{bucket}/jobs/").key == "jobs/queue.json"
    assert open_store(f"mem://{bucket}/jobs/emails.json").key == "jobs/emails.json"
    assert open_root(f"mem://{bucket}/jobs/emails.json").prefix == "jobs/"
    assert open_root(f"mem://{bucket}/emails.json").prefix == ""
    assert open_root(f"mem://{bucket}/jobs").prefix == "jobs/"
    assert open_root(f"mem://{bucket}/jobs").queue("emails").key == "jobs/emails.json"
    MemoryBackend.forget(bucket)


def _layers(store: Store) -> list[type]:
    """The wrapper classes of an opened store, outermost first."""
    layers: list[type] = []
    backend = store.backend
    while True:
        layers.append(type(backend))
        inner = getattr(backend, "inner", None)
        if inner is None:
            return layers
        backend = inner


@pytest.mark.parametrize(
    ("query", "layers"),
    [
        ("", [CountingBackend, MemoryBackend]),
        ("?latency=none&faults=0", [CountingBackend, MemoryBackend]),
        ("?latency=s3", [CountingBackend, LatencyBackend, MemoryBackend]),
        ("?read_ms=5", [CountingBackend, LatencyBackend, MemoryBackend]),
        ("?faults=0.1", [CountingBackend, FaultBackend, MemoryBackend]),
        ("?latency=gcs&faults=0.1", [CountingBackend, FaultBackend, LatencyBackend, MemoryBackend]),
    ],
)
def test_the_query_selects_the_wrappers(query: str, layers: list[type]) -> None:
    assert _layers(open_store(f"mem://uri-{uuid.uuid4().hex}{query}")) == layers


@pytest.mark.parametrize(
    ("query", "read_s", "write_s", "interval_s"),
    [
        ("latency=s3", 0.02, 0.06, 0.0),
        ("latency=gcs", 0.06, 0.2, 1.0),
        ("latency=s3&write_ms=10&min_write_interval_ms=250", 0.02, 0.01, 0.25),
    ],
)
def test_latency_profiles_and_their_overrides(
    query: str, read_s: float, write_s: float, interval_s: float
) -> None:
    store = open_store(f"mem://uri-{uuid.uuid4().hex}?{query}")
    latency = getattr(store.backend, "inner", None)
    assert isinstance(latency, LatencyBackend)
    assert (latency.read_s, latency.write_s) == pytest.approx((read_s, write_s))
    assert store.min_write_interval == pytest.approx(interval_s)


def test_latency_keeps_the_stricter_interval_of_the_store_below() -> None:
    slow = MemoryBackend(f"uri-{uuid.uuid4().hex}")
    slow.min_write_interval = 1.0  # as GCS declares
    assert LatencyBackend(slow, 0, 0, 250).min_write_interval == 1.0
    assert LatencyBackend(slow, 0, 0, 2500).min_write_interval == 2.5


def _fault_trace(uri: str, calls: int = 60) -> list[str]:
    """Outcomes of a fixed sequence of reads and writes, as class names."""
    store = open_store(uri)
    trace = []
    for i in range(calls):
        try:
            snap = store.read()
            store.write(b"%d" % i, None if snap is None else snap.token)
            trace.append("ok")
        except StoreError as exc:
            trace.append(type(exc).__name__)
    return trace


def test_faults_are_reproducible_with_the_same_seed() -> None:
    first = _fault_trace(f"mem://uri-{uuid.uuid4().hex}?faults=0.3&seed=7")
    again = _fault_trace(f"mem://uri-{uuid.uuid4().hex}?faults=0.3&seed=7")
    other = _fault_trace(f"mem://uri-{uuid.uuid4().hex}?faults=0.3&seed=8")
    assert first == again
    assert first != other
    assert {"ok", "StoreUnavailable"} <= set(first)


def test_faults_at_rate_one_fail_every_read() -> None:
    store = open_store(f"mem://uri-{uuid.uuid4().hex}?faults=1&seed=1")
    for _ in range(20):
        with pytest.raises(StoreUnavailable):
            store.read()


def _import_with_hidden(hidden: str, uri: str) -> str:
    """Run a fresh interpreter where module ``hidden`` cannot be imported, open ``uri``."""
    script = textwrap.dedent(
        f"""
        import sys
        sys.modules[{hidden!r}] = None  # as if not installed
        from obque.store import open_store
        from obque.core.errors import MissingDependency
        open_store("mem://still-works").read()
        try:
            open_store({uri!r})
        except MissingDependency as exc:
            print(exc)
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    return done.stdout


@pytest.mark.parametrize(
    ("hidden", "uri", "extra"),
    [("boto3", "s3://b/q.json", "obque[s3]"), ("google.api_core", "gs://b/q.json", "obque[gcs]")],
)
def test_a_missing_sdk_names_the_extra_to_install(hidden: str, uri: str, extra: str) -> None:
    assert f"pip install '{extra}'" in _import_with_hidden(hidden, uri)
