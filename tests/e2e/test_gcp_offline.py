"""The GCP deployment, end to end and offline: what ``infra/gcp`` builds, run locally.

    obque CLI ──HTTP_PROXY──▶ Cloud Functions front ──▶ functions-framework --asgi
    (ID token from google-auth's   (checks the ID token:        (main.py as the module
     chain: a service-account       issuer, signature and         deploys it) ── CAS ──┐
     key whose token_uri is the     audience = the function's                          │
     loopback token issuer)         URL; strips /FUNCTION)                             │
        └── reads gs://…/queue.json ─────────────────────────▶ fake-gcs-server ◀───────┘

``queue.json`` is the content the Terraform module's own ``queue-file`` submodule renders
(run with the real ``terraform``), uploaded as the module's bucket object does. The
client finds the broker only from there. Google's token service is stood in for by a
loopback issuer that checks the client's signed JWT assertion against the service
account's public key and mints an ID token for the requested audience; the front admits
only tokens it signed for this function's URL, as Cloud Functions' IAM check does.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from e2e_support import Cli, FrontHandler, LoopbackServer, push_work_and_check
from google.auth import crypt, jwt
from infra_tools import INFRA, terraform
from servers import StoreServer, free_ports

from obque.core import decode_state

FUNCTION_URL = "http://us-central1-obque-test.cloudfunctions.net/obque-broker"
FUNCTION_PATH = urlsplit(FUNCTION_URL).path
SERVICE_ACCOUNT = "worker@obque-test.iam.gserviceaccount.com"
ISSUER = "https://accounts.google.com"
GOOGLE_TOKEN_URI = "https://oauth2.googleapis.com/token"
JOBS = 30


def _key_pair() -> tuple[str, str]:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return private, public


@dataclass
class TokenIssuer:
    """Google's OAuth token endpoint, as far as a service-account key uses it."""

    account_public_key: str
    issued: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.private_key, self.public_key = _key_pair()
        signer = crypt.RSASigner.from_string(self.private_key, "issuer-1")
        issuer = self

        class Handler(FrontHandler):
            def do_POST(self) -> None:
                form = {k: v[0] for k, v in parse_qs(self.body().decode()).items()}
                try:
                    claims = jwt.decode(
                        form["assertion"],
                        certs=issuer.account_public_key,
                        # google-auth addresses the assertion to Google's token URI
                        # even when the key's token_uri sends it elsewhere.
                        audience=[GOOGLE_TOKEN_URI, f"{issuer.url}/token"],
                    )
                except (KeyError, ValueError) as exc:
                    self.answer(400, {}, json.dumps({"error": str(exc)}).encode())
                    return
                now = int(time.time())
                if "target_audience" not in claims:  # an access token (not used by obque)
                    body = {"access_token": "unused", "expires_in": 3600, "token_type": "Bearer"}
                else:
                    audience = claims["target_audience"]
                    issuer.issued.append(audience)
                    payload = {"iss": ISSUER, "aud": audience, "sub": claims["iss"]}
                    payload |= {"email": claims["iss"], "iat": now, "exp": now + 3600}
                    body = {"id_token": jwt.encode(signer, payload).decode()}
                self.answer(200, {"content-type": "application/json"}, json.dumps(body).encode())

        self.http = LoopbackServer(Handler)

    @property
    def url(self) -> str:
        return self.http.url


@dataclass
class CloudFunctionsFront:
    """A loopback proxy serving ``FUNCTION_URL`` the way Cloud Functions' front end does."""

    backend: str
    issuer_public_key: str
    admitted: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        front = self

        class Handler(FrontHandler):
            def _forward(self) -> None:
                body = self.body()
                url = urlsplit(self.path)
                if f"{url.scheme}://{url.netloc}" != FUNCTION_URL.removesuffix(FUNCTION_PATH):
                    self.answer(502, {}, b"this front serves only the function")
                    return
                if not url.path.startswith(FUNCTION_PATH):
                    self.answer(404, {}, b"no such function")
                    return
                problem = front.token_problem(self.headers.get("authorization", ""))
                if problem:
                    front.refused.append(problem)
                    self.answer(403, {"content-type": "text/html"}, b"<h1>403 Forbidden</h1>")
                    return
                front.admitted.append(url.path)
                path = url.path.removeprefix(FUNCTION_PATH) or "/"
                query = f"?{url.query}" if url.query else ""
                headers = {
                    k: v
                    for k, v in self.headers.items()
                    if k.lower() not in ("host", "authorization", "proxy-connection", "connection")
                }
                with httpx.Client(trust_env=False, timeout=60) as http:
                    answer = http.request(
                        self.command,
                        f"{front.backend}{path}{query}",
                        content=body,
                        headers=headers,
                    )
                self.answer(answer.status_code, dict(answer.headers), answer.content)

            do_GET = do_POST = do_PUT = do_DELETE = _forward

        self.http = LoopbackServer(Handler)

    def token_problem(self, authorization: str) -> str:
        """Why a request may not call the function ("" when it may)."""
        if not authorization.startswith("Bearer "):
            return "no bearer token"
        try:
            claims = jwt.decode(
                authorization.removeprefix("Bearer "),
                certs=self.issuer_public_key,
                audience=FUNCTION_URL,
            )
        except ValueError as exc:
            return f"token refused: {exc}"
        if claims.get("iss") != ISSUER:
            return f"token from {claims.get('iss')}"
        return ""

    @property
    def url(self) -> str:
        return self.http.url


# -- the deployment ---------------------------------------------------------------------


def rendered_queue_file(workdir: Path, name: str) -> bytes:
    """The queue file the Terraform module would upload, rendered by ``terraform apply``
    of its provider-free ``queue-file`` submodule."""
    module = INFRA / "gcp" / "modules" / "queue-file"
    (workdir / "main.tf").write_text(
        f'module "q" {{\n  source = "{module}"\n  name = "{name}"\n'
        f'  broker_url = "{FUNCTION_URL}"\n  broker_id = "cloudfunctions:obque-broker"\n'
        f"  config = {{ lease_seconds = 30, max_attempts = 2 }}\n}}\n"
        f'output "content" {{\n  value = module.q.content\n}}\n'
    )
    env = {**os.environ, "TF_IN_AUTOMATION": "1", "CHECKPOINT_DISABLE": "1"}
    for command in (
        ["init", "-backend=false", "-input=false"],
        ["apply", "-auto-approve", "-input=false", "-lock=false"],
        ["output", "-raw", "content"],
    ):
        done = subprocess.run(
            [terraform(), *command],
            cwd=workdir,
            env=env,
            capture_output=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


@dataclass
class Deployment:
    target: str
    obque: Cli
    front: CloudFunctionsFront
    issuer: TokenIssuer


def _wait_healthy(process: subprocess.Popen[bytes], url: str, log: Path) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and process.poll() is None:
        with contextlib.suppress(httpx.TransportError):
            if httpx.get(f"{url}/healthz", timeout=2, trust_env=False).status_code == 200:
                return
        time.sleep(0.05)
    pytest.fail(f"functions-framework did not start\n{log.read_text(errors='replace')}", False)


@pytest.fixture(scope="module")
def deployment(
    fake_gcs_server: StoreServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Deployment]:
    workdir = tmp_path_factory.mktemp("e2e-gcp")
    prefix = f"e2e-{uuid.uuid4().hex[:10]}/"
    content = rendered_queue_file(workdir, "queue")
    decode_state(content, "rendered queue.json")  # obque reads what Terraform renders
    with fake_gcs_server.applied():
        from google.cloud import storage

        bucket = storage.Client().bucket(fake_gcs_server.bucket)
        bucket.blob(f"{prefix}queue.json").upload_from_string(
            content, content_type="application/json", if_generation_match=0
        )
    source = workdir / "function"
    source.mkdir()
    (source / "main.py").write_text("from obque.broker.gcp import handler\n")
    port = free_ports(1)[0]
    function_env = fake_gcs_server.child_env()
    function_env.pop("OBQUE_TOKEN", None)
    function_env.update({"OBQUE_ROOT": fake_gcs_server.uri(prefix), "OBQUE_QUEUES": "queue"})
    log = workdir / "functions-framework.log"
    argv = [str(Path(sys.executable).parent / "functions-framework"), "--asgi"]
    argv += ["--target", "handler", "--source", "main.py", "--host", "127.0.0.1"]
    argv += ["--port", str(port)]
    with open(log, "wb") as out:
        process = subprocess.Popen(
            argv,
            cwd=source,
            env=function_env,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    backend = f"http://127.0.0.1:{port}"
    account_private, account_public = _key_pair()
    issuer = TokenIssuer(account_public)
    front = CloudFunctionsFront(backend, issuer.public_key)
    key_file = workdir / "worker-key.json"
    key_file.write_text(
        json.dumps(
            {
                "type": "service_account",
                "project_id": "obque-test",
                "private_key_id": "worker-key-1",
                "private_key": account_private,
                "client_email": SERVICE_ACCOUNT,
                "client_id": "100000000000000000001",
                "token_uri": f"{issuer.url}/token",
            }
        )
    )
    user_env = fake_gcs_server.child_env()
    for name in ("OBQUE_URL", "OBQUE_TOKEN", "OBQUE_ROOT", "HTTPS_PROXY", "https_proxy"):
        user_env.pop(name, None)
    user_env.update(
        {
            "HTTP_PROXY": front.url,
            "http_proxy": front.url,
            "GOOGLE_APPLICATION_CREDENTIALS": str(key_file),
            # Never probe a real metadata server from a test machine.
            "GCE_METADATA_HOST": "127.0.0.1:9",
            "GCE_METADATA_IP": "127.0.0.1:9",
        }
    )
    try:
        _wait_healthy(process, backend, log)
        yield Deployment(fake_gcs_server.uri(f"{prefix}queue.json"), Cli(user_env), front, issuer)
    finally:
        front.http.close()
        issuer.http.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()


def test_a_request_without_an_id_token_for_the_function_is_refused(
    deployment: Deployment,
) -> None:
    refused_before = len(deployment.front.refused)
    with httpx.Client(proxy=deployment.front.url, trust_env=False, timeout=30) as http:
        bare = http.get(f"{FUNCTION_URL}/v1/queues/queue/stats")
        wrong = http.get(
            f"{FUNCTION_URL}/v1/queues/queue/stats",
            headers={"authorization": "Bearer not.a.token"},
        )
    assert (bare.status_code, wrong.status_code) == (403, 403)
    assert len(deployment.front.refused) == refused_before + 2


def test_push_work_and_stats_through_the_cloud_function(
    deployment: Deployment, tmp_path: Path
) -> None:
    refused_before = len(deployment.front.refused)
    # Eight at a time: GCS takes one write per second per object, so acks are batched.
    push_work_and_check(deployment.obque, deployment.target, tmp_path, JOBS, concurrency=8)
    # The client asked Google's (stand-in) token service for the function's audience,
    # and every call it made was admitted on that token.
    assert FUNCTION_URL in deployment.issuer.issued
    assert set(deployment.issuer.issued) == {FUNCTION_URL}
    assert len(deployment.front.admitted) > 4
    assert deployment.front.refused[refused_before:] == []
