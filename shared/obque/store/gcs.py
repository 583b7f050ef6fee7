"""``gs://BUCKET/prefix/NAME.json``: Google Cloud Storage, over google-cloud-storage.

The compare-and-set is ``if_generation_match`` (0 creates only), and the token is the
object's generation. Credentials come from google-auth's standard chain; with
``STORAGE_EMULATOR_HOST`` set the library talks to that emulator anonymously.

Uploads are sent once (``retry=None``): the library's default retry would resend a
conditional upload whose answer was lost, and the resent one fails the precondition our
own write just changed -- a landed write reported as a conflict. A lost answer raises
:class:`AmbiguousWrite` instead, which :class:`~obque.store.port.Store` settles by
re-reading. Reads, lists and deletes are idempotent and keep a bounded retry.

GCS accepts about one write per second per object, hence ``min_write_interval``.
"""

from __future__ import annotations

import http.client

from obque.core.errors import (
    AmbiguousWrite,
    Conflict,
    MissingDependency,
    StoreError,
    StoreForbidden,
    StoreUnavailable,
)
from obque.store.port import Backend, Snapshot

try:
    import urllib3.exceptions
    from google.api_core import exceptions as api
    from google.auth import exceptions as auth
    from google.cloud import storage
    from google.cloud.storage.exceptions import DataCorruption, InvalidResponse
    from google.cloud.storage.retry import DEFAULT_RETRY
except ImportError as exc:  # pragma: no cover - exercised with the SDK hidden
    raise MissingDependency(
        "gs:// stores need google-cloud-storage, which is not installed: pip install 'obque[gcs]'"
    ) from exc

__all__ = ["GCSBackend"]

_TIMEOUT_S = (5.0, 30.0)  # (connect, read)
_READ_RETRY = DEFAULT_RETRY.with_timeout(15.0)

# What a request can fail with below the HTTP answer: requests' and urllib3's errors,
# http.client's, google-auth's transport wrapper and the media layer's own.
_TRANSPORT_ERRORS = (
    OSError,  # includes requests.RequestException and ConnectionError
    http.client.HTTPException,
    urllib3.exceptions.HTTPError,
    auth.TransportError,
    InvalidResponse,
    DataCorruption,
)


def _never_sent(exc: BaseException) -> bool:
    """Whether a write's transport error certainly struck before the request was sent.

    Two cases qualify: google-auth failed to fetch a token (that happens before the
    request), or the connection could not be made. requests reports the latter as a
    ``ConnectionError`` wrapping urllib3's ``MaxRetryError`` whose ``reason`` is a
    ``ConnectTimeoutError`` (``NewConnectionError`` is one). Only explicit wrapping is
    followed, never ``__context__``: an unrelated earlier error must not make a write
    that may have landed look unsent.
    """
    if isinstance(exc, auth.TransportError):
        return True
    pending: list[object] = [exc]
    for _ in range(16):  # wrappers nest a few levels deep at most
        if not pending:
            return False
        found = pending.pop()
        if isinstance(found, urllib3.exceptions.ConnectTimeoutError):
            return True
        if isinstance(found, urllib3.exceptions.MaxRetryError):
            pending.append(found.reason)
        elif isinstance(found, BaseException):
            pending.extend(found.args)
            pending.append(found.__cause__)
    return False


class GCSBackend(Backend):
    min_write_interval = 1.0

    def __init__(self, bucket: str) -> None:
        self.bucket_name = bucket
        try:
            # project=None: object operations need none, and none is looked up.
            self._client = storage.Client(project=None)
        except auth.DefaultCredentialsError as exc:
            raise StoreError(
                f"gs://{bucket}/: no Google credentials found ({exc}); run "
                "`gcloud auth application-default login` or set GOOGLE_APPLICATION_CREDENTIALS"
            ) from exc
        self._bucket = self._client.bucket(bucket)

    def uri(self, key: str) -> str:
        return f"gs://{self.bucket_name}/{key}"

    def get(self, key: str) -> Snapshot | None:
        blob = self._bucket.blob(key)
        try:
            data = blob.download_as_bytes(retry=_READ_RETRY, timeout=_TIMEOUT_S)
        except api.NotFound:
            return None
        except api.GoogleAPICallError as exc:
            raise _refused(self.uri(key), exc, writing=False) from exc
        except _TRANSPORT_ERRORS as exc:
            raise StoreUnavailable(f"{self.uri(key)}: read failed: {exc}") from exc
        if blob.generation is None:
            raise StoreError(f"{self.uri(key)}: the download carried no x-goog-generation")
        return Snapshot(bytes(data), str(blob.generation))

    def put(self, key: str, data: bytes, expected: str | None) -> str:
        uri = self.uri(key)
        if expected is None:
            generation = 0
        elif expected.isdigit():
            generation = int(expected)
        else:
            raise Conflict(f"{uri}: {expected!r} is not a generation of this object; re-read")
        blob = self._bucket.blob(key)
        try:
            blob.upload_from_string(
                data,
                content_type="application/json",
                if_generation_match=generation,
                retry=None,
                timeout=_TIMEOUT_S,
            )
        except api.PreconditionFailed as exc:
            raise Conflict(
                f"{uri} already exists" if expected is None else f"{uri} changed since read"
            ) from exc
        except api.NotFound as exc:
            # The precondition on a missing object answers 412; a 404 names the bucket
            # (or a deleted object on services that say so).
            if expected is None:
                raise StoreError(f"{uri}: the bucket does not exist; create it first") from exc
            raise Conflict(f"{uri} was deleted since it was read") from exc
        except api.GoogleAPICallError as exc:
            raise _refused(uri, exc, writing=True) from exc
        except _TRANSPORT_ERRORS as exc:
            if _never_sent(exc):
                raise StoreUnavailable(f"{uri}: could not reach GCS: {exc}") from exc
            raise AmbiguousWrite(f"{uri}: write sent, answer lost: {exc}") from exc
        return str(blob.generation)

    def delete(self, key: str) -> None:
        try:
            self._bucket.blob(key).delete(retry=_READ_RETRY, timeout=_TIMEOUT_S)
        except api.NotFound:
            pass
        except api.GoogleAPICallError as exc:
            raise _refused(self.uri(key), exc, writing=False) from exc
        except _TRANSPORT_ERRORS as exc:
            raise StoreUnavailable(f"{self.uri(key)}: delete failed: {exc}") from exc

    def list(self, prefix: str) -> list[str]:
        try:
            blobs = self._client.list_blobs(
                self.bucket_name, prefix=prefix, retry=_READ_RETRY, timeout=_TIMEOUT_S
            )
            return sorted(str(blob.name) for blob in blobs)
        except api.GoogleAPICallError as exc:
            raise _refused(self.uri(prefix), exc, writing=False) from exc
        except _TRANSPORT_ERRORS as exc:
            raise StoreUnavailable(f"{self.uri(prefix)}: list failed: {exc}") from exc

    def close(self) -> None:
        self._client.close()


def _refused(uri: str, exc: api.GoogleAPICallError, *, writing: bool) -> StoreError:
    """The error for an answer that is not the precondition's: GCS said no, or failed."""
    code = int(exc.code or 0)
    said = f"GCS answered {code}: {exc.message}"
    if code >= 500:
        # A 5xx may follow a stored write; only a re-read can tell.
        return (AmbiguousWrite if writing else StoreUnavailable)(f"{uri}: {said}")
    if code in (408, 429):
        return StoreUnavailable(f"{uri}: {said}; retry later")
    if isinstance(exc, api.NotFound):
        return StoreError(f"{uri}: the bucket does not exist; create it first")
    if code == 403:
        # Not transient: retrying cannot grant a permission (IAM, or an IAM condition on
        # the object's name).
        return StoreForbidden(
            f"{uri}: {said}; the credentials in use (a deployed broker's: its service "
            "account) may not access this object"
        )
    return StoreError(f"{uri}: {said}")
