"""The Lambda bundle: which requirements go in, what the build checks, and -- on a host
that has CPython 3.12 -- the bundle's own code answering a real Function URL event and a
real custom-resource request, with nothing but the bundle and the standard library on
``sys.path``.

The deployed bundle is for arm64 and cannot run here, so the run test builds the same
bundle for x86_64 (the one difference is which wheels pip picks).
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import subprocess
import textwrap
import zipfile
from pathlib import Path

import pytest
from conftest import CfnResponses, S3Server
from infra_tools import function_url_event, hermetic_env, missing
from obque_infra.bundle import (
    RESOURCE_MODULE_NAME,
    BundleError,
    BundleSpec,
    build_bundle,
    build_wheel,
    check_bundle,
    dependencies,
)
from packaging.requirements import Requirement


def _fake_wheel(tmp_path: Path, requires: list[str]) -> Path:
    wheel = tmp_path / "obque-0.0.0-py3-none-any.whl"
    metadata = "Metadata-Version: 2.3\nName: obque\nVersion: 0.0.0\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires
    )
    with zipfile.ZipFile(wheel, "w") as archive:
        archive.writestr("obque-0.0.0.dist-info/METADATA", metadata)
    return wheel


def test_dependencies_follow_the_extra_and_the_target_platform(tmp_path: Path) -> None:
    wheel = _fake_wheel(
        tmp_path,
        [
            "msgspec>=0.19",
            "boto3>=1.36; extra == 's3'",
            "fastapi>=0.115; extra == 'broker'",
            "obque[s3,broker]; extra == 'aws'",
            "mangum>=0.19; extra == 'aws'",
            "uvloop; extra == 'aws' and platform_machine == 'x86_64'",
            "exceptiongroup; extra == 'aws' and python_version < '3.11'",
            "pywin32; extra == 'aws' and sys_platform == 'win32'",
            "httpx>=0.27; extra == 'client'",
        ],
    )
    found = dependencies(wheel, BundleSpec(python_version="3.12", architecture="aarch64"))
    assert sorted(found) == ["boto3>=1.36", "fastapi>=0.115", "mangum>=0.19", "msgspec>=0.19"]
    on_intel = dependencies(wheel, BundleSpec(architecture="x86_64"))
    assert "uvloop" in on_intel


def test_dependencies_of_the_real_wheel(tmp_path: Path) -> None:
    wheel = build_wheel(BundleSpec().repo, tmp_path)
    found = {Requirement(line).name for line in dependencies(wheel, BundleSpec())}
    assert {"msgspec", "boto3", "fastapi", "mangum", "pydantic"} <= found
    assert not found & {"google-cloud-storage", "functions-framework", "pytest", "obque"}


def test_check_bundle_refuses_native_code_for_another_machine(tmp_path: Path) -> None:
    (tmp_path / "obque" / "broker").mkdir(parents=True)
    (tmp_path / "obque" / "broker" / "aws.py").write_text("")
    (tmp_path / f"{RESOURCE_MODULE_NAME}.py").write_text("")
    check_bundle(tmp_path, "aarch64")
    # An x86-64 ELF header (e_machine 62) where aarch64 (183) is wanted.
    header = b"\x7fELF\x02\x01\x01" + bytes(11) + (62).to_bytes(2, "little")
    (tmp_path / "_speedups.cpython-312-x86_64-linux-gnu.so").write_bytes(header)
    with pytest.raises(BundleError, match="another machine"):
        check_bundle(tmp_path, "aarch64")


def test_check_bundle_wants_both_handlers(tmp_path: Path) -> None:
    with pytest.raises(BundleError, match="is missing"):
        check_bundle(tmp_path)


def _python312() -> str:
    for candidate in [
        shutil.which("python3.12"),
        *sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.12*/bin/python3.12"))),
        "/usr/bin/python3.12",
        "/usr/local/bin/python3.12",
    ]:
        if candidate and Path(candidate).exists():
            done = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2])"],
                capture_output=True,
                text=True,
                check=False,
            )
            if done.returncode == 0 and done.stdout.strip() == "(3, 12)":
                return candidate
    missing(
        "CPython 3.12 (the Lambda runtime's Python, to run the bundle with)",
        "install it (pyenv install 3.12, or your OS's python3.12); scripts/setup-infra cannot",
    )


_RUNNER = textwrap.dedent(
    """
    import json, sys
    sys.path.insert(0, sys.argv[1])
    request = json.loads(sys.stdin.read())

    class Context:
        log_stream_name = "local"
        def get_remaining_time_in_millis(self):
            return 30_000

    import obque_queue_resource
    obque_queue_resource.on_event(request["create"], Context())

    from obque.broker.aws import handler
    answers = [handler(event, Context()) for event in request["http"]]
    print(json.dumps({"answers": answers, "path": [p for p in sys.path if "site-packages" in p]}))
    """
)


def test_the_bundle_runs_both_handlers(s3: S3Server, cfn_responses: CfnResponses) -> None:
    python = _python312()
    bundle = build_bundle(BundleSpec(architecture="x86_64"), log=False)
    bucket = s3.new_bucket()
    uri = f"s3://{bucket}/queue.json"
    request = {
        "create": {
            "RequestType": "Create",
            "ResponseURL": cfn_responses.url,
            "StackId": "stack",
            "RequestId": "r1",
            "LogicalResourceId": "Queuequeue",
            "ResourceProperties": {
                "QueueUri": uri,
                "BrokerUrl": "https://abc123.lambda-url.us-east-1.on.aws/",
                "BrokerId": "lambda:test",
                "Config": {"max_attempts": "4"},
            },
        },
        "http": [
            function_url_event("POST", "/v1/queues/queue/push", {"jobs": [{"payload": {"n": 1}}]}),
            function_url_event("GET", "/v1/queues/queue/stats"),
        ],
    }
    done = subprocess.run(
        # -I -S: the bundle and the standard library, nothing else of this host.
        [python, "-I", "-S", "-c", _RUNNER, str(bundle)],
        input=json.dumps(request),
        env=hermetic_env(**s3.env, OBQUE_ROOT=f"s3://{bucket}/", OBQUE_QUEUES="queue"),
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-4000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["path"] == []
    assert cfn_responses.only()["Status"] == "SUCCESS"
    push, stats = result["answers"]
    assert push["statusCode"] == 200, push
    assert len(json.loads(push["body"])["ids"]) == 1
    assert stats["statusCode"] == 200, stats
    assert json.loads(stats["body"])["ready"] == 1
    doc = json.loads(s3.client().get_object(Bucket=bucket, Key="queue.json")["Body"].read())
    assert doc["config"]["max_attempts"] == 4
    assert doc["broker"]["mode"] == "serverless"
    assert len(doc["jobs"]) == 1


def test_bundle_cache_is_reused() -> None:
    spec = BundleSpec(architecture="x86_64")
    first = build_bundle(spec, log=False)
    assert build_bundle(spec, log=False) == first
    assert first.parent == spec.cache_root
