"""The storage port: ``open_store(uri)`` and the compare-and-set ``Store``.

from obque.store import open_store, Conflict
store = open_store("s3://bucket/queue.json")
snap = store.read()                          # None, or Snapshot(data, token)
token = store.write(data, expected=snap.token)   # expected=None: create only
"""

from obque.core.errors import AmbiguousWrite, Conflict, StoreError, StoreUnavailable
from obque.store.port import Backend, RequestCounts, Root, Snapshot, Store
from obque.store.shaping import WrappedBackend
from obque.store.uri import DEFAULT_QUEUE, open_root, open_store, split_uri

__all__ = [
    "DEFAULT_QUEUE",
    "AmbiguousWrite",
    "Backend",
    "Conflict",
    "RequestCounts",
    "Root",
    "Snapshot",
    "Store",
    "StoreError",
    "StoreUnavailable",
    "WrappedBackend",
    "open_root",
    "open_store",
    "split_uri",
]
