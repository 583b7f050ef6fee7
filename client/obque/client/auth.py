"""Credentials for a broker URL, chosen automatically from the URL.

* an explicit token, or ``OBQUE_TOKEN``: ``Authorization: Bearer …`` (self-hosted brokers,
  and Function URLs deployed in bearer mode);
* ``https://ID.lambda-url.REGION.on.aws/``: SigV4 for service ``lambda`` with boto3's
  credential chain (environment, profiles, SSO, instance and container roles);
* ``*.run.app`` / ``*.cloudfunctions.net``: a Google ID token whose audience is the
  service's URL (or the function's, name included) from google-auth's chain (service
  account keys, metadata server, gcloud user credentials);
* anything else: no credentials.
"""

from __future__ import annotations

import os
import re
import threading
import time
from typing import Protocol
from urllib.parse import urlsplit

from obque.core import MissingDependency

__all__ = ["Auth", "BearerAuth", "GoogleIdTokenAuth", "NoAuth", "SigV4Auth", "auth_for"]

_LAMBDA_URL = re.compile(r"^[a-z0-9]+\.lambda-url\.([a-z0-9-]+)\.on\.aws$")


class Auth(Protocol):
    def headers(self, method: str, url: str, body: bytes) -> dict[str, str]: ...


class NoAuth:
    def headers(self, method: str, url: str, body: bytes) -> dict[str, str]:
        return {}


class BearerAuth:
    def __init__(self, token: str) -> None:
        self._header = {"Authorization": f"Bearer {token}"}

    def headers(self, method: str, url: str, body: bytes) -> dict[str, str]:
        return self._header


class SigV4Auth:
    """Signs each request for a Lambda Function URL with ``AWS_IAM`` auth."""

    def __init__(self, region: str) -> None:
        try:
            import boto3
            from botocore.auth import SigV4Auth as _Signer
            from botocore.awsrequest import AWSRequest
        except ImportError as exc:
            raise MissingDependency(
                "signing requests for a Lambda Function URL needs boto3: pip install 'obque[s3]'"
            ) from exc
        self._session = boto3.Session()
        self._signer = _Signer
        self._request = AWSRequest
        self.region = region

    def headers(self, method: str, url: str, body: bytes) -> dict[str, str]:
        credentials = self._session.get_credentials()
        if credentials is None:
            raise MissingDependency(
                f"no AWS credentials to sign requests to {url}: configure a profile, SSO, "
                "environment variables or a role"
            )
        request = self._request(
            method, url, data=body, headers={"Content-Type": "application/json"}
        )
        self._signer(credentials.get_frozen_credentials(), "lambda", self.region).add_auth(request)
        return dict(request.headers.items())


class GoogleIdTokenAuth:
    """A Google-signed ID token for the URL's audience, refreshed before it expires."""

    def __init__(self, audience: str) -> None:
        try:
            import google.auth.transport.requests
            import google.oauth2.id_token
        except ImportError as exc:
            raise MissingDependency(
                "calling a Cloud Functions / Cloud Run URL needs google-auth: "
                "pip install 'obque[gcs]'"
            ) from exc
        self._fetch = google.oauth2.id_token.fetch_id_token
        self._transport = google.auth.transport.requests.Request
        self.audience = audience
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def headers(self, method: str, url: str, body: bytes) -> dict[str, str]:
        with self._lock:
            if self._token is None or time.monotonic() > self._expires:
                self._token = str(self._fetch(self._transport(), self.audience))  # type: ignore[no-untyped-call]
                self._expires = time.monotonic() + 45 * 60  # tokens live one hour
            return {"Authorization": f"Bearer {self._token}"}


def auth_for(url: str, token: str | None = None) -> Auth:
    token = token or os.environ.get("OBQUE_TOKEN")
    if token:
        return BearerAuth(token)
    parts = urlsplit(url)
    host = (parts.hostname or "").lower()
    if match := _LAMBDA_URL.match(host):
        return SigV4Auth(match.group(1))
    if host.endswith(".run.app"):
        return GoogleIdTokenAuth(f"{parts.scheme}://{parts.netloc}")
    if host.endswith(".cloudfunctions.net"):
        # A function's audience is its URL, function name included: the host is shared
        # by every function of the project and region.
        return GoogleIdTokenAuth(f"{parts.scheme}://{parts.netloc}{parts.path.rstrip('/')}")
    return NoAuth()
