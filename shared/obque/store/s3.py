"""``s3://BUCKET/prefix/NAME.json``: Amazon S3 and S3-compatible services, over boto3.

The compare-and-set is S3's conditional write: ``PutObject`` with ``IfMatch=ETAG`` (or
``IfNoneMatch='*'`` to create only), and the token is the ETag. Endpoint, credentials and
region come from boto3's standard chain, so ``AWS_ENDPOINT_URL_S3`` (or
``AWS_ENDPOINT_URL``) points it at SeaweedFS, MinIO or R2 with no obque setting.

Writes are never retried by botocore, because a retried conditional write can report our
own success as a conflict::

    PUT If-Match: E1  ───────▶  lands, the object is now E2
    (answer lost: timeout, reset)
    PUT If-Match: E1  ───────▶  412 PreconditionFailed    <- the SDK's retry

So the write client makes exactly one attempt, and a write whose answer was lost raises
:class:`AmbiguousWrite`, which :class:`~obque.store.port.Store` settles by re-reading.
Reads, lists and deletes are idempotent and keep the SDK's retries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

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
    import boto3
    from botocore.config import Config
    from botocore.exceptions import (
        ClientError,
        ConnectionError,
        CredentialRetrievalError,
        FlexibleChecksumError,
        HTTPClientError,
        IncompleteReadError,
        NoCredentialsError,
        PartialCredentialsError,
    )
except ImportError as exc:  # pragma: no cover - exercised with the SDK hidden
    raise MissingDependency(
        "s3:// stores need boto3, which is not installed: pip install 'obque[s3]'"
    ) from exc

if TYPE_CHECKING:
    from mypy_boto3_s3 import S3Client

__all__ = ["S3Backend"]

_CONNECT_TIMEOUT_S = 5
_READ_TIMEOUT_S = 30
_POOL = 32
_CREDENTIAL_ERRORS = (NoCredentialsError, PartialCredentialsError, CredentialRetrievalError)
# A read or delete that failed in transport (or whose body arrived cut or corrupt) can
# simply be tried again.
_TRANSIENT_ERRORS = (ConnectionError, HTTPClientError, IncompleteReadError, FlexibleChecksumError)


def _client(session: boto3.session.Session, retries: int) -> S3Client:
    config = Config(
        connect_timeout=_CONNECT_TIMEOUT_S,
        read_timeout=_READ_TIMEOUT_S,
        max_pool_connections=_POOL,
        retries={"mode": "standard", "total_max_attempts": retries},
    )
    return session.client("s3", config=config)


class S3Backend(Backend):
    def __init__(self, bucket: str) -> None:
        self.bucket = bucket
        # One session per backend: boto3's default session is a global and not thread-safe.
        session = boto3.session.Session()
        self._reader = _client(session, retries=3)
        self._writer = _client(session, retries=1)

    def uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def get(self, key: str) -> Snapshot | None:
        try:
            answer = self._reader.get_object(Bucket=self.bucket, Key=key)
            return Snapshot(answer["Body"].read(), answer["ETag"])
        except ClientError as exc:
            if _code(exc) == "NoSuchKey":
                return None
            raise _refused(self.uri(key), exc, writing=False) from exc
        except _TRANSIENT_ERRORS as exc:
            raise StoreUnavailable(f"{self.uri(key)}: read failed: {exc}") from exc
        except _CREDENTIAL_ERRORS as exc:
            raise _no_credentials(self.uri(key), exc) from exc

    def put(self, key: str, data: bytes, expected: str | None) -> str:
        uri = self.uri(key)
        try:
            if expected is None:
                answer = self._writer.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=data,
                    ContentType="application/json",
                    IfNoneMatch="*",
                )
            else:
                answer = self._writer.put_object(
                    Bucket=self.bucket,
                    Key=key,
                    Body=data,
                    ContentType="application/json",
                    IfMatch=expected,
                )
            return answer["ETag"]
        except ClientError as exc:
            code = _code(exc)
            if _status(exc) == 412 or code == "ConditionalRequestConflict":
                raise Conflict(
                    f"{uri} already exists" if expected is None else f"{uri} changed since read"
                ) from exc
            if code == "NoSuchKey" and expected is not None:
                raise Conflict(f"{uri} was deleted since it was read") from exc
            raise _refused(uri, exc, writing=True) from exc
        except ConnectionError as exc:
            # botocore's ConnectionError family: no connection was made, nothing was sent.
            raise StoreUnavailable(f"{uri}: could not reach S3: {exc}") from exc
        except HTTPClientError as exc:
            raise AmbiguousWrite(f"{uri}: write sent, answer lost: {exc}") from exc
        except _CREDENTIAL_ERRORS as exc:
            raise _no_credentials(uri, exc) from exc

    def delete(self, key: str) -> None:
        try:
            self._reader.delete_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _code(exc) != "NoSuchKey":
                raise _refused(self.uri(key), exc, writing=False) from exc
        except _TRANSIENT_ERRORS as exc:
            raise StoreUnavailable(f"{self.uri(key)}: delete failed: {exc}") from exc
        except _CREDENTIAL_ERRORS as exc:
            raise _no_credentials(self.uri(key), exc) from exc

    def list(self, prefix: str) -> list[str]:
        keys: list[str] = []
        try:
            pages = self._reader.get_paginator("list_objects_v2")
            for page in pages.paginate(Bucket=self.bucket, Prefix=prefix):
                keys.extend(item["Key"] for item in page.get("Contents", []))
        except ClientError as exc:
            raise _refused(self.uri(prefix), exc, writing=False) from exc
        except _TRANSIENT_ERRORS as exc:
            raise StoreUnavailable(f"{self.uri(prefix)}: list failed: {exc}") from exc
        except _CREDENTIAL_ERRORS as exc:
            raise _no_credentials(self.uri(prefix), exc) from exc
        return sorted(keys)

    def close(self) -> None:
        self._reader.close()
        self._writer.close()


def _code(exc: ClientError) -> str:
    return exc.response.get("Error", {}).get("Code", "")


def _status(exc: ClientError) -> int:
    return exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)


def _refused(uri: str, exc: ClientError, *, writing: bool) -> StoreError:
    """The error for an answer that is not the precondition's: S3 said no, or failed."""
    status, code = _status(exc), _code(exc)
    message = exc.response.get("Error", {}).get("Message", "")
    said = f"S3 answered {status} {code}: {message}".rstrip(": ")
    if status >= 500:
        # A 5xx can come after the object was stored (a proxy's 502/504, S3's own 500):
        # for a write only a re-read can tell.
        return (AmbiguousWrite if writing else StoreUnavailable)(f"{uri}: {said}")
    if status == 429 or code in ("SlowDown", "RequestTimeout", "Throttling"):
        return StoreUnavailable(f"{uri}: {said}; retry later")
    if code == "NoSuchBucket":
        return StoreError(f"{uri}: the bucket does not exist; create it first")
    if status == 403:
        # Not transient: retrying cannot grant a permission. S3 also answers 403 (not 404)
        # for a missing object when the caller may not list where it would be.
        return StoreForbidden(
            f"{uri}: {said}; the credentials in use (a deployed broker's: its IAM role) may "
            "not access this object, or it does not exist and they may not list its prefix"
        )
    return StoreError(f"{uri}: {said}")


def _no_credentials(uri: str, exc: Exception) -> StoreError:
    return StoreError(
        f"{uri}: no usable AWS credentials ({exc}); configure them as for any boto3 "
        "program (AWS_PROFILE, AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, an IAM role)"
    )
