"""Credentials chosen from the broker URL (``obque.client.auth``).

SigV4 signatures are checked twice at a frozen instant: against an independent
implementation of AWS Signature Version 4 written here from the specification, and against
botocore's own signer given the same inputs. The request a ``Client`` actually sends is
verified the same way, from the bytes that reach the transport.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import http.server
import json
import os
import socket
import subprocess
import sys
import threading
import types
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, quote, urlsplit

import httpx
import pytest

from obque.client import Client, RetryPolicy
from obque.client.auth import (
    BearerAuth,
    GoogleIdTokenAuth,
    NoAuth,
    SigV4Auth,
    auth_for,
)
from obque.core import MissingDependency, StoreUnavailable, Unauthorized

pytest.importorskip("botocore")

import botocore.auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

KEY_ID = "AKIDEXAMPLE"
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY"
FROZEN = dt.datetime(2025, 3, 14, 15, 9, 26, tzinfo=dt.UTC)
AMZ_DATE = "20250314T150926Z"
LAMBDA_URL = "https://abcdefghij0123456789klmnopqrstuv.lambda-url.eu-west-3.on.aws"


# -- fixtures ----------------------------------------------------------------------------------


@pytest.fixture(autouse=True)
def no_obque_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("OBQUE_TOKEN", "OBQUE_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture
def aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """boto3's credential chain sees exactly the credentials the test sets, nothing else."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_SECURITY_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-aws-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-aws-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    return monkeypatch


@pytest.fixture
def aws_credentials(aws_env: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    aws_env.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    aws_env.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    return aws_env


@pytest.fixture
def frozen_clock(monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore signs at ``FROZEN`` (its clock is one function, or ``datetime`` in old
    releases)."""
    if hasattr(botocore.auth, "get_current_datetime"):
        monkeypatch.setattr(botocore.auth, "get_current_datetime", lambda: FROZEN)
    else:  # pragma: no cover - botocore before 1.33

        class FrozenDatetime(dt.datetime):
            @classmethod
            def utcnow(cls) -> FrozenDatetime:  # type: ignore[override]
                return cls.fromtimestamp(FROZEN.timestamp(), tz=None)

        fake = types.SimpleNamespace(datetime=FrozenDatetime)
        monkeypatch.setattr(botocore.auth, "datetime", fake)


# -- SigV4 from the specification ----------------------------------------------------------------


def _hmac(key: bytes, text: str) -> bytes:
    return hmac.new(key, text.encode(), hashlib.sha256).digest()


def sigv4_authorization(
    method: str,
    url: str,
    body: bytes,
    headers: dict[str, str],
    *,
    region: str,
    service: str = "lambda",
    key_id: str = KEY_ID,
    secret: str = SECRET,
    amz_date: str = AMZ_DATE,
) -> str:
    """The ``Authorization`` header AWS Signature Version 4 prescribes for a request whose
    signed headers (besides ``host``) are ``headers``."""
    parts = urlsplit(url)
    canonical_uri = quote(parts.path or "/", safe="/-_.~")
    pairs = sorted(
        (quote(k, safe="-_.~"), quote(v, safe="-_.~"))
        for k, _, v in (p.partition("=") for p in parts.query.split("&") if p)
    )
    canonical_query = "&".join(f"{k}={v}" for k, v in pairs)
    signed = {"host": parts.netloc, **{k.lower(): " ".join(v.split()) for k, v in headers.items()}}
    names = sorted(signed)
    canonical_headers = "".join(f"{n}:{signed[n]}\n" for n in names)
    signed_headers = ";".join(names)
    canonical_request = "\n".join(
        [
            method,
            canonical_uri,
            canonical_query,
            canonical_headers,
            signed_headers,
            hashlib.sha256(body).hexdigest(),
        ]
    )
    date = amz_date[:8]
    scope = f"{date}/{region}/{service}/aws4_request"
    string_to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            amz_date,
            scope,
            hashlib.sha256(canonical_request.encode()).hexdigest(),
        ]
    )
    key = _hmac(
        _hmac(_hmac(_hmac(f"AWS4{secret}".encode(), date), region), service), "aws4_request"
    )
    signature = hmac.new(key, string_to_sign.encode(), hashlib.sha256).hexdigest()
    return (
        f"AWS4-HMAC-SHA256 Credential={key_id}/{scope}, "
        f"SignedHeaders={signed_headers}, Signature={signature}"
    )


def botocore_authorization(method: str, url: str, body: bytes, region: str) -> str:
    """What botocore's own signer makes of the same request and credentials."""
    request = AWSRequest(method, url, data=body, headers={"Content-Type": "application/json"})
    botocore.auth.SigV4Auth(Credentials(KEY_ID, SECRET), "lambda", region).add_auth(request)
    return str(request.headers["Authorization"])


REQUESTS = {
    "push": ("POST", f"{LAMBDA_URL}/v1/queues/emails/push", b'{"jobs":[{"payload":{"n":1}}]}'),
    "claim": ("POST", f"{LAMBDA_URL}/v1/queues/emails/claim", b'{"worker":"w1","max":10}'),
    "list": ("GET", f"{LAMBDA_URL}/v1/queues/emails/jobs?state=ready&limit=100", b""),
    "configure": ("PUT", f"{LAMBDA_URL}/v1/queues/emails", b'{"lease_seconds":60}'),
}


@pytest.mark.usefixtures("aws_credentials", "frozen_clock")
@pytest.mark.parametrize("request_", REQUESTS.values(), ids=list(REQUESTS))
def test_sigv4_signature_is_the_specified_one(request_: tuple[str, str, bytes]) -> None:
    method, url, body = request_
    auth = auth_for(LAMBDA_URL)
    assert isinstance(auth, SigV4Auth)
    headers = auth.headers(method, url, body)
    assert headers["X-Amz-Date"] == AMZ_DATE
    assert headers["Content-Type"] == "application/json"
    assert "X-Amz-Security-Token" not in headers
    expected = sigv4_authorization(
        method,
        url,
        body,
        {"Content-Type": "application/json", "X-Amz-Date": AMZ_DATE},
        region="eu-west-3",
    )
    assert headers["Authorization"] == expected
    assert headers["Authorization"] == botocore_authorization(method, url, body, "eu-west-3")
    assert "/20250314/eu-west-3/lambda/aws4_request," in expected


@pytest.mark.usefixtures("aws_credentials", "frozen_clock")
def test_sigv4_signs_the_body() -> None:
    auth = auth_for(LAMBDA_URL)
    url = f"{LAMBDA_URL}/v1/queues/q/push"
    one = auth.headers("POST", url, b'{"jobs":[{"payload":1}]}')["Authorization"]
    two = auth.headers("POST", url, b'{"jobs":[{"payload":2}]}')["Authorization"]
    assert one != two
    assert one == auth.headers("POST", url, b'{"jobs":[{"payload":1}]}')["Authorization"]


@pytest.mark.usefixtures("frozen_clock")
def test_sigv4_signs_the_session_token(aws_credentials: pytest.MonkeyPatch) -> None:
    aws_credentials.setenv("AWS_SESSION_TOKEN", "FQoGZXIvYXdzEXAMPLE//token==")
    url = f"{LAMBDA_URL}/v1/queues/q/stats"
    headers = auth_for(LAMBDA_URL).headers("GET", url, b"")
    assert headers["X-Amz-Security-Token"] == "FQoGZXIvYXdzEXAMPLE//token=="
    assert (
        "SignedHeaders=content-type;host;x-amz-date;x-amz-security-token,"
        in (headers["Authorization"])
    )
    expected = sigv4_authorization(
        "GET",
        url,
        b"",
        {
            "Content-Type": "application/json",
            "X-Amz-Date": AMZ_DATE,
            "X-Amz-Security-Token": "FQoGZXIvYXdzEXAMPLE//token==",
        },
        region="eu-west-3",
    )
    assert headers["Authorization"] == expected


@pytest.mark.parametrize(
    ("host", "region"),
    [
        ("abcdefghij0123456789klmnopqrstuv.lambda-url.us-east-1.on.aws", "us-east-1"),
        ("abc123.lambda-url.eu-central-1.on.aws", "eu-central-1"),
        ("abc123.lambda-url.ap-southeast-2.on.aws", "ap-southeast-2"),
        ("abc123.lambda-url.us-gov-west-1.on.aws", "us-gov-west-1"),
        ("ABC123.LAMBDA-URL.SA-EAST-1.ON.AWS", "sa-east-1"),
    ],
)
@pytest.mark.usefixtures("aws_credentials")
def test_the_region_comes_from_the_function_url(host: str, region: str) -> None:
    for url in (f"https://{host}", f"https://{host}/", f"https://{host}/v1/queues/q/push"):
        auth = auth_for(url)
        assert isinstance(auth, SigV4Auth)
        assert auth.region == region


@pytest.mark.usefixtures("aws_env")
def test_sigv4_without_credentials_says_what_to_configure() -> None:
    auth = auth_for(LAMBDA_URL)
    with pytest.raises(MissingDependency, match="no AWS credentials") as raised:
        auth.headers("GET", f"{LAMBDA_URL}/v1/queues/q/stats", b"")
    assert LAMBDA_URL in raised.value.message


# -- what the client sends ---------------------------------------------------------------------


def scripted_transport(
    monkeypatch: pytest.MonkeyPatch, answer: Callable[[httpx.Request], httpx.Response]
) -> list[httpx.Request]:
    """Route every ``httpx.Client`` the test builds to ``answer``; return the requests."""
    seen: list[httpx.Request] = []

    def handler(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return answer(request)

    transport = httpx.MockTransport(handler)
    real = httpx.Client
    monkeypatch.setattr(httpx, "Client", lambda **kw: real(transport=transport, **kw))
    return seen


PUSHED = httpx.Response(200, json={"ids": ["1"], "duplicates": [], "revision": 2})


@pytest.mark.usefixtures("frozen_clock")
def test_client_requests_to_a_function_url_verify(aws_credentials: pytest.MonkeyPatch) -> None:
    seen = scripted_transport(aws_credentials, lambda request: PUSHED)
    with Client(LAMBDA_URL + "/", queue="emails") as q:
        assert q.push({"to": "a@example.com"}, key="mail-1") == "1"
    (request,) = seen
    url = str(request.url)
    assert url == f"{LAMBDA_URL}/v1/queues/emails/push"
    assert request.headers["host"] == urlsplit(LAMBDA_URL).netloc
    signed_names = request.headers["authorization"].split("SignedHeaders=")[1].split(",")[0]
    signed = {n: request.headers[n] for n in signed_names.split(";") if n != "host"}
    expected = sigv4_authorization(request.method, url, request.content, signed, region="eu-west-3")
    assert request.headers["authorization"] == expected
    assert json.loads(request.content)["jobs"][0]["key"] == "mail-1"


# -- Google ID tokens ------------------------------------------------------------------------


class TokenSource:
    """Stands in for ``google.oauth2.id_token.fetch_id_token``."""

    def __init__(self) -> None:
        self.audiences: list[str] = []

    def __call__(self, request: object, audience: str) -> str:
        self.audiences.append(audience)
        return f"id-token-{len(self.audiences)}"


@pytest.fixture
def google_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """google-auth sees no credentials of the machine: no key file, an empty gcloud
    configuration, and a metadata server on a closed loopback port (refused at once,
    never a hang on 169.254.169.254)."""
    pytest.importorskip("google.auth")
    closed = f"127.0.0.1:{closed_port()}"
    monkeypatch.delenv("GOOGLE_APPLICATION_CREDENTIALS", raising=False)
    monkeypatch.setenv("CLOUDSDK_CONFIG", str(tmp_path / "gcloud"))
    monkeypatch.setenv("GCE_METADATA_IP", closed)
    monkeypatch.setenv("GCE_METADATA_HOST", closed)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1,localhost")
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    return monkeypatch


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then released)."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def write_json(path: Path, data: Mapping[str, object]) -> str:
    path.write_text(json.dumps(data))
    return str(path)


@pytest.fixture
def service_account_key(google_env: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """GOOGLE_APPLICATION_CREDENTIALS names a (freshly generated) service-account key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    info = {
        "type": "service_account",
        "project_id": "obque-test",
        "private_key_id": "k1",
        "private_key": pem,
        "client_email": "invoker@obque-test.iam.gserviceaccount.com",
        "client_id": "1",
        "token_uri": f"http://127.0.0.1:{closed_port()}/token",
    }
    google_env.setenv("GOOGLE_APPLICATION_CREDENTIALS", write_json(tmp_path / "sa.json", info))
    return google_env


@pytest.fixture
def token_source(service_account_key: pytest.MonkeyPatch) -> Iterator[TokenSource]:
    """A key file is found; minting its token is ``TokenSource`` (no Google to ask)."""
    id_token = pytest.importorskip("google.oauth2.id_token")
    source = TokenSource()
    service_account_key.setattr(id_token, "fetch_id_token", source)
    yield source


@pytest.mark.parametrize(
    ("url", "audience"),
    [
        ("https://obque-broker-abc123-uc.a.run.app", "https://obque-broker-abc123-uc.a.run.app"),
        ("https://obque-broker-abc123-uc.a.run.app/", "https://obque-broker-abc123-uc.a.run.app"),
        ("https://obque-7hq2-ew.a.run.app/v1/queues/q/push", "https://obque-7hq2-ew.a.run.app"),
    ],
)
def test_cloud_run_gets_an_id_token_for_its_service_url(
    token_source: TokenSource, url: str, audience: str
) -> None:
    auth = auth_for(url)
    assert isinstance(auth, GoogleIdTokenAuth)
    assert auth.headers("POST", url, b"{}") == {"Authorization": "Bearer id-token-1"}
    assert token_source.audiences == [audience]


@pytest.mark.parametrize(
    ("url", "audience"),
    [
        (
            "https://us-central1-my-project.cloudfunctions.net/obque",
            "https://us-central1-my-project.cloudfunctions.net/obque",
        ),
        (
            "https://europe-west1-my-project.cloudfunctions.net/obque-broker/",
            "https://europe-west1-my-project.cloudfunctions.net/obque-broker",
        ),
    ],
)
def test_cloud_functions_get_an_id_token_for_the_function_url(
    token_source: TokenSource, url: str, audience: str
) -> None:
    # Google's documented audience for a function is its URL, function name included:
    # https://REGION-PROJECT.cloudfunctions.net/FUNCTION (the host alone names no function).
    auth = auth_for(url)
    assert isinstance(auth, GoogleIdTokenAuth)
    auth.headers("POST", f"{url.rstrip('/')}/v1/queues/q/push", b"{}")
    assert token_source.audiences == [audience]


def test_id_tokens_are_cached_until_they_near_expiry(
    token_source: TokenSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    import obque.client.auth as auth_module

    now = [1000.0]
    monkeypatch.setattr(auth_module, "time", types.SimpleNamespace(monotonic=lambda: now[0]))
    auth = auth_for("https://obque-abc-uc.a.run.app")
    for _ in range(5):
        assert auth.headers("GET", "https://obque-abc-uc.a.run.app/", b"") == {
            "Authorization": "Bearer id-token-1"
        }
    now[0] += 44 * 60  # tokens live an hour; still well inside it
    assert auth.headers("GET", "https://obque-abc-uc.a.run.app/", b"")["Authorization"] == (
        "Bearer id-token-1"
    )
    now[0] += 2 * 60  # past the refresh point
    assert auth.headers("GET", "https://obque-abc-uc.a.run.app/", b"")["Authorization"] == (
        "Bearer id-token-2"
    )
    assert token_source.audiences == ["https://obque-abc-uc.a.run.app"] * 2


def test_client_sends_the_id_token(
    token_source: TokenSource, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen = scripted_transport(monkeypatch, lambda request: PUSHED)
    with Client("https://obque-abc-uc.a.run.app", queue="q", retry=RetryPolicy(1)) as q:
        q.push(1)
        q.push(2)
    assert [r.headers["authorization"] for r in seen] == ["Bearer id-token-1"] * 2
    assert token_source.audiences == ["https://obque-abc-uc.a.run.app"]


GOOGLE_FIX = "gcloud auth application-default login --impersonate-service-account="


@pytest.mark.parametrize("key_file", [None, "missing.json"], ids=["nothing", "missing-file"])
def test_no_google_credentials_is_one_clear_error(
    google_env: pytest.MonkeyPatch, tmp_path: Path, key_file: str | None
) -> None:
    if key_file is not None:
        google_env.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / key_file))
    auth = auth_for("https://obque-abc-uc.a.run.app")
    with pytest.raises(Unauthorized) as raised:
        auth.headers("GET", "https://obque-abc-uc.a.run.app/v1/queues/q/stats", b"")
    message = raised.value.message
    assert "\n" not in message
    assert "no Google credentials to call https://obque-abc-uc.a.run.app" in message
    assert GOOGLE_FIX in message and "GOOGLE_APPLICATION_CREDENTIALS" in message
    if key_file is not None:
        assert key_file in message


def test_cli_without_google_credentials_says_what_to_do(
    google_env: pytest.MonkeyPatch,
) -> None:
    """The audit's reproduction: ``obque stats`` on a Cloud Run URL with no credentials
    printed google-auth's traceback; it must print one line and fail."""
    obque = Path(sys.executable).with_name("obque")
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBQUE_")}
    done = subprocess.run(
        [str(obque), "stats", "https://obque-abc-uc.a.run.app"],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert done.returncode != 0
    assert "Traceback" not in done.stderr + done.stdout
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert GOOGLE_FIX in lines[0]


class TokenEndpoint:
    """Google's OAuth token endpoint on loopback, for ``authorized_user`` credentials
    (gcloud's ``application-default login``): records the refresh, answers a script."""

    def __init__(self, answer: tuple[int, dict[str, object]]) -> None:
        self.answer = answer
        self.forms: list[dict[str, list[str]]] = []
        endpoint = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("Content-Length", 0))
                endpoint.forms.append(parse_qs(self.rfile.read(length).decode()))
                status, body = endpoint.answer
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/token"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def routed_to(endpoint: TokenEndpoint) -> Callable[[], object]:
    """google-auth's own requests transport, with Google's token endpoint (which an
    ``authorized_user`` file cannot change: google-auth always overrides its token_uri)
    routed to ``endpoint`` on loopback. Everything else is google-auth's real code."""
    import requests
    from google.auth.transport.requests import Request

    class ToLoopback(requests.adapters.HTTPAdapter):
        def send(  # type: ignore[override]
            self, request: requests.PreparedRequest, **kwargs: Any
        ) -> requests.Response:
            assert request.url == "https://oauth2.googleapis.com/token", request.url
            request.url = endpoint.url
            return super().send(request, **kwargs)

    session = requests.Session()
    session.trust_env = False
    session.mount("https://oauth2.googleapis.com/", ToLoopback())
    return lambda: Request(session)


@pytest.fixture
def user_credentials(
    google_env: pytest.MonkeyPatch, tmp_path: Path
) -> Iterator[Callable[[int, dict[str, object]], TokenEndpoint]]:
    """gcloud user credentials (an ``authorized_user`` file, as ``gcloud auth
    application-default login`` writes) and a token endpoint answering their refresh."""
    started: list[TokenEndpoint] = []
    info = {
        "type": "authorized_user",
        "client_id": "764086051850-adc.apps.googleusercontent.com",
        "client_secret": "adc-secret",
        "refresh_token": "1//refresh-me",
    }
    google_env.setenv("GOOGLE_APPLICATION_CREDENTIALS", write_json(tmp_path / "adc.json", info))

    def make(status: int, body: dict[str, object]) -> TokenEndpoint:
        endpoint = TokenEndpoint((status, body))
        started.append(endpoint)
        return endpoint

    yield make
    for endpoint in started:
        endpoint.close()


GRANTED = {"access_token": "ya29.access", "expires_in": 3599, "token_type": "Bearer"}
RUN_URL = "https://obque-abc-uc.a.run.app"


def test_gcloud_user_credentials_send_their_id_token(
    user_credentials: Callable[[int, dict[str, object]], TokenEndpoint],
) -> None:
    endpoint = user_credentials(200, {**GRANTED, "id_token": "user-id-token"})
    auth = GoogleIdTokenAuth(RUN_URL, transport=routed_to(endpoint))
    for _ in range(3):
        assert auth.headers("POST", f"{RUN_URL}/v1/queues/q/push", b"{}") == {
            "Authorization": "Bearer user-id-token"
        }
    (form,) = endpoint.forms  # refreshed once, then cached
    assert form["grant_type"] == ["refresh_token"]
    assert form["refresh_token"] == ["1//refresh-me"]
    assert form["client_id"] == ["764086051850-adc.apps.googleusercontent.com"]


def test_user_credentials_without_an_id_token_say_what_to_do(
    user_credentials: Callable[[int, dict[str, object]], TokenEndpoint],
) -> None:
    endpoint = user_credentials(200, GRANTED)  # granted without the openid scope
    auth = GoogleIdTokenAuth(RUN_URL, transport=routed_to(endpoint))
    with pytest.raises(Unauthorized, match="no ID token") as raised:
        auth.headers("GET", f"{RUN_URL}/", b"")
    assert GOOGLE_FIX in raised.value.message


def test_revoked_user_credentials_are_one_clear_error(
    user_credentials: Callable[[int, dict[str, object]], TokenEndpoint],
) -> None:
    body: dict[str, object] = {"error": "invalid_grant", "error_description": "Token revoked"}
    endpoint = user_credentials(400, body)
    auth = GoogleIdTokenAuth(RUN_URL, transport=routed_to(endpoint))
    with pytest.raises(Unauthorized, match="would not issue an ID token") as raised:
        auth.headers("GET", f"{RUN_URL}/", b"")
    assert "invalid_grant" in raised.value.message
    assert "\n" not in raised.value.message


def test_an_unreachable_token_endpoint_is_retried_not_fatal(
    user_credentials: Callable[[int, dict[str, object]], TokenEndpoint],
) -> None:
    endpoint = user_credentials(200, GRANTED)
    endpoint.close()  # Google cannot be reached: transient, so the client retries it
    auth = GoogleIdTokenAuth(RUN_URL, transport=routed_to(endpoint))
    with pytest.raises(StoreUnavailable, match="could not reach Google"):
        auth.headers("GET", f"{RUN_URL}/", b"")


# -- bearer tokens and no credentials -------------------------------------------------------------

CLOUD_URLS = [LAMBDA_URL, "https://obque-abc-uc.a.run.app", "https://broker.example.com"]


@pytest.mark.parametrize("url", CLOUD_URLS)
def test_obque_token_wins_over_the_url(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("OBQUE_TOKEN", "s3cr3t")
    auth = auth_for(url)
    assert isinstance(auth, BearerAuth)
    assert auth.headers("POST", url, b"{}") == {"Authorization": "Bearer s3cr3t"}


@pytest.mark.parametrize("url", CLOUD_URLS)
def test_an_explicit_token_wins_over_obque_token(monkeypatch: pytest.MonkeyPatch, url: str) -> None:
    monkeypatch.setenv("OBQUE_TOKEN", "from-env")
    assert auth_for(url, "given").headers("GET", url, b"") == {"Authorization": "Bearer given"}


def test_client_token_reaches_the_wire(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBQUE_TOKEN", "from-env")
    seen = scripted_transport(monkeypatch, lambda request: PUSHED)
    with Client("http://127.0.0.1:8080", queue="q", token="given") as q:
        q.push(1)
    with Client("http://127.0.0.1:8080", queue="q") as q:
        q.push(1)
    assert [r.headers["authorization"] for r in seen] == ["Bearer given", "Bearer from-env"]


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080",
        "http://localhost:8080/",
        "https://broker.example.com",
        "https://abc.execute-api.us-east-1.amazonaws.com/prod",
        "https://lambda-url.us-east-1.on.aws",
        "https://abc.lambda-url.us-east-1.on.aws.example.com",
        "https://run.app.example.com",
        "https://example.com/abc.a.run.app",
    ],
)
def test_unknown_hosts_get_no_credentials(url: str) -> None:
    auth = auth_for(url)
    assert isinstance(auth, NoAuth)
    assert auth.headers("POST", url, b"{}") == {}


def test_client_sends_no_authorization_to_unknown_hosts(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = scripted_transport(monkeypatch, lambda request: PUSHED)
    with Client("http://127.0.0.1:8080", queue="q") as q:
        q.push(1)
    assert "authorization" not in seen[0].headers


def test_empty_token_means_no_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBQUE_TOKEN", "")
    assert isinstance(auth_for("http://127.0.0.1:8080", ""), NoAuth)
