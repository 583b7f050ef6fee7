"""The tools the infra tests drive, and the hermetic environment they run in.

Every tool is the real one: the CDK CLI from npm (``infra/node_modules``), cfn-lint,
SAM CLI (its own venv under ``.build/tools/sam``: its pins clash with the dev venv),
Terraform. ``scripts/setup-infra`` installs the first three and checks for Terraform and
CPython 3.12, which no registry here serves. A missing tool skips its tests with
that advice -- or fails them when ``OBQUE_REQUIRE_INFRA=1`` (CI sets it), so a missing
install step cannot pass as green.

The environment given to the tools has no AWS credentials, no AWS config files and no
instance metadata (``AWS_EC2_METADATA_DISABLED``), so nothing can reach an AWS endpoint,
and no telemetry or notices are fetched. It has no Docker either: CDK's docker command
is ``/bin/false`` and ``DOCKER_HOST`` names a socket that does not exist, so a build that
reached for Docker (CDK bundling, ``sam build --use-container``) would fail, not pass
because no daemon happens to run here.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import NoReturn

import pytest

__all__ = [
    "INFRA",
    "REPO",
    "cdk_cli",
    "cfn_lint",
    "function_url_event",
    "hermetic_env",
    "missing",
    "need_module",
    "run",
    "sam_cli",
    "terraform",
]

REPO = Path(__file__).resolve().parents[2]
#: Terraform is not a pip or npm package, so scripts/setup-infra cannot install it.
TERRAFORM_ADVICE = (
    "install Terraform 1.5+ on PATH (https://developer.hashicorp.com/terraform/install); "
    "scripts/setup-infra cannot install it"
)
INFRA = REPO / "infra"

if str(INFRA) not in sys.path:
    sys.path.insert(0, str(INFRA))


def missing(what: str, advice: str = "run scripts/setup-infra") -> NoReturn:
    message = f"{what} is not installed: {advice}"
    if os.environ.get("OBQUE_REQUIRE_INFRA") == "1":
        pytest.fail(message, pytrace=False)
    pytest.skip(message, allow_module_level=True)


def need_module(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError:
        missing(f"the Python package {name}")


def _node_major() -> str:
    node = shutil.which("node")
    if node is None:
        return ""
    done = subprocess.run([node, "--version"], capture_output=True, text=True, check=False)
    return done.stdout.strip().lstrip("v").split(".")[0]


def hermetic_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AWS_", "CDK_", "JSII_"))}
    env.update(
        AWS_EC2_METADATA_DISABLED="true",
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_REGION="us-east-1",
        AWS_DEFAULT_REGION="us-east-1",
        CDK_DISABLE_CLI_TELEMETRY="true",
        SAM_CLI_TELEMETRY="0",
        # jsii prints a banner on Node versions past their end of life; the tests do not
        # need to read it on every run (Node 22+ is recommended: docs/deploy.md).
        JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION=_node_major(),
        JSII_SILENCE_WARNING_UNTESTED_NODE_VERSION="1",
        TF_IN_AUTOMATION="1",
        # "No Docker" is enforced, not assumed (the docker CLI may well be installed).
        CDK_DOCKER="/bin/false",
        DOCKER_HOST="unix:///nonexistent/obque-tests-forbid-docker.sock",
    )
    config = os.environ.get("TF_CLI_CONFIG_FILE")
    if config is not None and not Path(config).is_file():
        env["TF_CLI_CONFIG_FILE"] = os.devnull  # named but absent: Terraform warns
    env.update(extra)
    return env


def run(
    command: list[str],
    *,
    cwd: Path = REPO,
    timeout: float = 600,
    env: dict[str, str] | None = None,
    stdin: str = "",
) -> subprocess.CompletedProcess[str]:
    """Run a tool in the hermetic environment (stdin: ``stdin``, never the terminal)."""
    return subprocess.run(
        command,
        cwd=cwd,
        env=env if env is not None else hermetic_env(),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


def cdk_cli() -> Path:
    cli = INFRA / "node_modules" / ".bin" / "cdk"
    if not cli.exists() or shutil.which("node") is None:
        missing("the AWS CDK CLI (npm aws-cdk in infra/node_modules)")
    return cli


def cfn_lint() -> Path:
    cli = Path(sys.executable).with_name("cfn-lint")
    if not cli.exists():
        missing("cfn-lint")
    return cli


def sam_cli() -> Path:
    cli = REPO / ".build" / "tools" / "sam" / "bin" / "sam"
    if not cli.exists():
        missing("the AWS SAM CLI (.build/tools/sam)")
    return cli


def terraform() -> str:
    cli = shutil.which("terraform")
    if cli is None:
        missing("terraform", TERRAFORM_ADVICE)
    return cli


def function_url_event(method: str, path: str, body: object = None) -> dict[str, object]:
    """A Lambda Function URL request (payload format 2.0)."""
    domain = "abc123.lambda-url.us-east-1.on.aws"
    return {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path,
        "rawQueryString": "",
        "headers": {"host": domain, "content-type": "application/json"},
        "requestContext": {
            "accountId": "123456789012",
            "apiId": "abc123",
            "domainName": domain,
            "domainPrefix": "abc123",
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": "127.0.0.1",
                "userAgent": "obque-tests",
            },
            "requestId": "req-1",
            "routeKey": "$default",
            "stage": "$default",
            "time": "29/Nov/2026:12:00:00 +0000",
            "timeEpoch": 1_795_000_000_000,
        },
        "body": None if body is None else json.dumps(body),
        "isBase64Encoded": False,
    }
