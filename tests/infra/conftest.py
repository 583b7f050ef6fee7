"""Fixtures of the infra tests: a moto S3 server, a stand-in for CloudFormation's response
URL, and the stack synthesized in-process (bundling skipped) or by the real CDK CLI.

Every test here is marked ``infra``; ``pytest -m infra`` runs just these.
"""

from __future__ import annotations

import json
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import boto3
import pytest
from infra_tools import INFRA, REPO, cdk_cli, hermetic_env, run

__all__ = ["CfnResponses", "S3Server"]

_TEST_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "obqueinfratest",
    "AWS_SECRET_ACCESS_KEY": "obqueinfratest",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_CONFIG_FILE": "/dev/null",
    "AWS_SHARED_CREDENTIALS_FILE": "/dev/null",
    "AWS_EC2_METADATA_DISABLED": "true",
}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in item.path.parents:
            item.add_marker(pytest.mark.infra)


# -- S3 ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class S3Server:
    endpoint: str

    @property
    def env(self) -> dict[str, str]:
        return {**_TEST_CREDENTIALS, "AWS_ENDPOINT_URL_S3": self.endpoint}

    def client(self) -> Any:
        return boto3.session.Session(
            aws_access_key_id="obqueinfratest",
            aws_secret_access_key="obqueinfratest",
            region_name="us-east-1",
        ).client("s3", endpoint_url=self.endpoint)

    def new_bucket(self) -> str:
        name = f"obque-infra-{uuid.uuid4().hex[:12]}"
        self.client().create_bucket(Bucket=name)
        return name


@pytest.fixture(scope="session")
def s3_server() -> Iterator[S3Server]:
    """moto in server mode on loopback: AWS's conditional-write semantics over real HTTP."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    try:
        host, port = server.get_host_and_port()
        yield S3Server(f"http://{host}:{port}")
    finally:
        server.stop()


@pytest.fixture
def s3(s3_server: S3Server, monkeypatch: pytest.MonkeyPatch) -> S3Server:
    """The moto server, with this process's SDK environment pointed at it for one test."""
    for key in ("AWS_PROFILE", "AWS_REGION", "AWS_SESSION_TOKEN", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(key, raising=False)
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


# -- CloudFormation's response URL ---------------------------------------------------------


@dataclass
class CfnResponses:
    """Answers a custom resource sent, as CloudFormation's pre-signed S3 URL receives them."""

    url: str
    bodies: list[dict[str, Any]] = field(default_factory=list)
    headers: list[dict[str, str]] = field(default_factory=list)

    def only(self) -> dict[str, Any]:
        assert len(self.bodies) == 1, self.bodies
        return self.bodies[0]


@pytest.fixture
def cfn_responses() -> Iterator[CfnResponses]:
    received = CfnResponses(url="")

    class Handler(BaseHTTPRequestHandler):
        def do_PUT(self) -> None:
            length = int(self.headers.get("Content-Length", "0"))
            received.bodies.append(json.loads(self.rfile.read(length)))
            received.headers.append(dict(self.headers.items()))
            self.send_response(200)
            self.end_headers()

        def log_message(self, format: str, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    received.url = f"http://127.0.0.1:{server.server_address[1]}/cfn-response?X-Amz-Signature=x"
    try:
        yield received
    finally:
        server.shutdown()
        server.server_close()


# -- synthesized stacks --------------------------------------------------------------------


@dataclass(frozen=True)
class Assembly:
    """A synthesized cloud assembly: the stack's template and cdk-nag's report."""

    directory: Path
    template: dict[str, Any]
    report: dict[str, Any]

    def resources(self, kind: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.template["Resources"].items() if v["Type"] == kind}


def read_assembly(directory: Path, stack: str = "Obque") -> Assembly:
    template = json.loads((directory / f"{stack}.template.json").read_text())
    report_file = directory / "validation-report.json"
    report = json.loads(report_file.read_text()) if report_file.exists() else {}
    return Assembly(directory, template, report)


def synth_in_process(outdir: Path, context: dict[str, Any] | None = None) -> Assembly:
    """The app synthesized in this process with the real context parsing and cdk-nag, but
    no bundling (the CLI test bundles for real)."""
    from obque_infra.cdk_app import build_app

    app = build_app({"aws:cdk:bundling-stacks": [], **(context or {})}, outdir=str(outdir))
    app.synth()
    return read_assembly(outdir)


@pytest.fixture(scope="session")
def default_assembly(tmp_path_factory: pytest.TempPathFactory) -> Assembly:
    return synth_in_process(tmp_path_factory.mktemp("cdk-default"))


@pytest.fixture(scope="session")
def cli_assembly(tmp_path_factory: pytest.TempPathFactory) -> Assembly:
    """``cdk synth`` by the real CLI from the repo root: no credentials, no Docker, and
    the Lambda bundle really built (or taken from ``.build/cache``)."""
    cli = cdk_cli()
    out = tmp_path_factory.mktemp("cdk-cli") / "cdk.out"
    done = run(
        [str(cli), "synth", "--no-notices", "--ec2creds=false", "--output", str(out), "-q"],
        env=hermetic_env(PATH=f"{INFRA / 'node_modules' / '.bin'}:{hermetic_env()['PATH']}"),
    )
    assert done.returncode == 0, f"cdk synth failed:\n{done.stdout}\n{done.stderr}"
    return read_assembly(out)


@pytest.fixture(scope="session")
def repo() -> Path:
    return REPO
