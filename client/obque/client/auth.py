"""Credentials for a broker URL, chosen automatically from the URL.

* an explicit token, or ``OBQUE_TOKEN``: ``Authorization: Bearer …`` (self-hosted brokers,
  and Function URLs deployed in bearer mode);
* ``https://ID.lambda-url.REGION.on.aws/``: SigV4 for service ``lambda`` with boto3's
  credential chain (environment, profiles, SSO, instance and container roles);
* ``*.run.app`` / ``*.cloudfunctions.net``: a Google ID token whose audience is the
  service's URL (or the function's, name included), from google-auth's chain: a
  service-account key file, the metadata server, gcloud application-default credentials
  that impersonate a service account, or gcloud user credentials (see
  ``GoogleIdTokenAuth`` for what each gives);
* anything else: no credentials.
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
from collections.abc import Callable
from typing import Any, Protocol
from urllib.parse import urlsplit

from obque.core import MissingDependency, StoreUnavailable, Unauthorized

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


#: What to do when no Google credential can mint an ID token.
GOOGLE_HINT = (
    "run `gcloud auth application-default login --impersonate-service-account=SA_EMAIL` "
    "(SA_EMAIL: a service account you may impersonate, holding roles/run.invoker), or set "
    "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file"
)


class GoogleIdTokenAuth:
    """A Google-signed ID token for the URL's audience, refreshed before it expires.

    google-auth's ``fetch_id_token`` mints one only from a service-account key named by
    ``GOOGLE_APPLICATION_CREDENTIALS`` or from the metadata server; it ignores gcloud's
    application-default credentials. So the credentials are first found the way every
    Google library finds them (``google.auth.default()``), then:

    * impersonated service account (``application-default login
      --impersonate-service-account``): an ID token for the audience from the IAM
      credentials API;
    * gcloud user credentials (``application-default login``): the ID token Google
      issues with their refresh -- its audience is gcloud's OAuth client, not the URL,
      which Cloud Run accepts from users granted ``roles/run.invoker`` (as it accepts
      ``gcloud auth print-identity-token``); a URL that insists on its own audience
      needs impersonation;
    * anything else (a key file, the metadata server): ``fetch_id_token``.

    google-auth's failures become one-line ``Unauthorized`` errors naming the fix, or
    ``StoreUnavailable`` (retried) when Google could not be reached.
    """

    def __init__(self, audience: str, transport: Callable[[], Any] | None = None) -> None:
        try:
            import google.auth
            import google.auth.exceptions
            import google.auth.transport.requests
            import google.oauth2.id_token
        except ImportError as exc:
            raise MissingDependency(
                "calling a Cloud Functions / Cloud Run URL needs google-auth: "
                "pip install 'obque[gcs]'"
            ) from exc
        self._fetch = google.oauth2.id_token.fetch_id_token
        #: Makes the ``google.auth.transport.Request`` every token request goes through.
        self._transport = transport or google.auth.transport.requests.Request
        quiet = logging.getLogger("google.auth._default")
        if not any(isinstance(f, _NoProjectNeeded) for f in quiet.filters):
            quiet.addFilter(_NoProjectNeeded())
        self.audience = audience
        self._token: str | None = None
        self._expires = 0.0
        self._lock = threading.Lock()

    def headers(self, method: str, url: str, body: bytes) -> dict[str, str]:
        with self._lock:
            if self._token is None or time.monotonic() > self._expires:
                self._token = self._new_token()
                self._expires = time.monotonic() + 45 * 60  # tokens live one hour
            return {"Authorization": f"Bearer {self._token}"}

    def _new_token(self) -> str:
        from google.auth import exceptions

        try:
            return self._mint()
        except exceptions.DefaultCredentialsError as exc:
            raise Unauthorized(
                f"no Google credentials to call {self.audience} ({_first_line(exc)}): "
                + GOOGLE_HINT
            ) from exc
        except exceptions.TransportError as exc:
            raise StoreUnavailable(
                f"could not reach Google for an ID token for {self.audience}: {_first_line(exc)}"
            ) from exc
        except exceptions.GoogleAuthError as exc:
            raise Unauthorized(
                f"Google would not issue an ID token for {self.audience} "
                f"({_first_line(exc)}): " + GOOGLE_HINT
            ) from exc

    def _mint(self) -> str:
        import google.auth
        import google.auth.impersonated_credentials as impersonated
        import google.oauth2.credentials as user

        request = self._transport()
        credentials, _ = google.auth.default()
        if isinstance(credentials, impersonated.Credentials):
            minted = impersonated.IDTokenCredentials(  # type: ignore[no-untyped-call]
                credentials, target_audience=self.audience, include_email=True
            )
            minted.refresh(request)
            return str(minted.token)
        if isinstance(credentials, user.Credentials):
            credentials.refresh(request)  # type: ignore[no-untyped-call]
            if not credentials.id_token:
                raise Unauthorized(
                    f"the gcloud user credentials carry no ID token (no openid scope) to "
                    f"call {self.audience}: " + GOOGLE_HINT
                )
            return str(credentials.id_token)
        return str(self._fetch(request, self.audience))  # type: ignore[no-untyped-call]


class _NoProjectNeeded(logging.Filter):
    """An ID token needs no Google Cloud project: google-auth's warning that it found
    none would be printed under every CLI command run with user credentials."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No project ID could be determined" not in record.getMessage()


def _first_line(exc: BaseException) -> str:
    text = str(exc.args[0] if exc.args else exc) or type(exc).__name__
    return text.strip().splitlines()[0] if text.strip() else type(exc).__name__


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
