"""The Terraform module under ``infra/gcp``: parsed with python-hcl2 and its security
settings asserted, formatted per ``terraform fmt``, and its provider-free parts (the queue
file's content, the IAM condition expressions) evaluated by the real Terraform offline.

Providers cannot be downloaded here, so ``terraform init``/``validate`` of the whole
module are not run.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from infra_tools import INFRA, hermetic_env, missing, need_module, run, terraform

from obque.core import QueueConfig, decode_state

hcl2 = need_module("hcl2")

MODULE = INFRA / "gcp"


def _load(path: Path) -> dict[str, Any]:
    options = hcl2.SerializationOptions(
        with_comments=False, explicit_blocks=False, strip_string_quotes=True
    )
    with path.open() as stream:
        parsed: dict[str, Any] = hcl2.load(stream, serialization_options=options)
    return parsed


@pytest.fixture(scope="module")
def module() -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for path in sorted(MODULE.glob("*.tf")):
        for key, value in _load(path).items():
            merged.setdefault(key, []).extend(value)
    return merged


def _resources(module: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    for block in module["resource"]:
        for resource_kind, named in block.items():
            if resource_kind == kind:
                found.update(named)
    return found


def _variables(module: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: body for block in module["variable"] for name, body in block.items()}


def _locals(module: dict[str, Any]) -> dict[str, str]:
    return {name: value for block in module["locals"] for name, value in block.items()}


def _console(expression: str, setup: str, tmp_path: Path) -> str:
    """Evaluate an HCL expression with the real Terraform (no provider needed)."""
    (tmp_path / "main.tf").write_text(setup)
    answer = run([terraform(), "console"], cwd=tmp_path, stdin=expression)
    assert answer.returncode == 0, answer.stderr
    value: str = json.loads(answer.stdout)
    return value


def _expression(interpolation: str) -> str:
    assert interpolation.startswith("${") and interpolation.endswith("}")
    return interpolation[2:-1]


# -- the bucket ----------------------------------------------------------------------------


def test_queue_bucket_is_private_and_keeps_its_data(module: dict[str, Any]) -> None:
    bucket = _resources(module, "google_storage_bucket")["queues"]
    assert bucket["uniform_bucket_level_access"] is True
    assert bucket["public_access_prevention"] == "enforced"
    assert bucket["force_destroy"] is False
    assert bucket["versioning"] == [{"enabled": False}]
    # Soft delete would keep a copy of every overwritten queue file for a week.
    assert bucket["soft_delete_policy"] == [{"retention_duration_seconds": 0}]


def test_source_bucket_is_private_too(module: dict[str, Any]) -> None:
    bucket = _resources(module, "google_storage_bucket")["sources"]
    assert bucket["uniform_bucket_level_access"] is True
    assert bucket["public_access_prevention"] == "enforced"


def test_no_principal_is_written_into_the_module(module: dict[str, Any]) -> None:
    """Every grant names the broker's own account or a principal from var.invokers."""
    members = [
        (kind, name, body.get("member", body.get("members")))
        for block in module["resource"]
        for kind, named in block.items()
        for name, body in named.items()
        if "member" in body or "members" in body
    ]
    assert members
    for kind, name, member in members:
        assert member in ("${each.value}", "${google_service_account.broker.member}"), (
            kind,
            name,
        )


# -- the function --------------------------------------------------------------------------


def test_function_is_second_gen_python312_concurrent_and_small(module: dict[str, Any]) -> None:
    from obque_infra.gcp_source import ENTRY_POINT

    function = _resources(module, "google_cloudfunctions2_function")["broker"]
    (build,) = function["build_config"]
    assert build["runtime"] == "python312"
    assert build["entry_point"] == ENTRY_POINT
    (service,) = function["service_config"]
    assert service["max_instance_request_concurrency"] == "${var.concurrency}"
    assert service["max_instance_count"] == "${var.max_instances}"
    assert service["service_account_email"] == "${google_service_account.broker.email}"
    env = service["environment_variables"]
    assert env["OBQUE_ROOT"] == "gs://${google_storage_bucket.queues.name}/"
    assert env["OBQUE_QUEUES"] == '${join(",", var.queues)}'
    assert "OBQUE_MODE" not in env  # the entry point decides
    variables = _variables(module)
    assert variables["concurrency"]["default"] > 1
    assert variables["cpu"]["default"] == "1"  # concurrency > 1 needs a whole vCPU
    assert 1 <= variables["max_instances"]["default"] <= 5


def test_invokers_are_named_principals_only(module: dict[str, Any]) -> None:
    variable = _variables(module)["invokers"]
    assert "default" not in variable  # no one by default: the caller must name them
    (validation,) = variable["validation"]
    assert "allUsers" in validation["condition"]
    assert "allAuthenticatedUsers" in validation["condition"]
    invoker = _resources(module, "google_cloud_run_v2_service_iam_member")["invokers"]
    assert invoker["role"] == "roles/run.invoker"
    assert invoker["for_each"] == "${toset(var.invokers)}"
    assert invoker["member"] == "${each.value}"
    assert not _resources(module, "google_cloudfunctions2_function_iam_member")


def test_storage_grants_are_conditioned_on_the_queue_objects(
    module: dict[str, Any], tmp_path: Path
) -> None:
    grants = _resources(module, "google_storage_bucket_iam_member")
    assert set(grants) == {"broker_queue_objects", "invokers_read_queue_files"}
    broker = grants["broker_queue_objects"]
    assert broker["role"] == "roles/storage.objectUser"
    assert broker["member"] == "${google_service_account.broker.member}"
    assert broker["condition"][0]["expression"] == "${local.queue_access}"
    setup = (
        'variable "queues" {\n  default = ["queue", "emails"]\n}\n'
        'locals {\n  bucket_name = "p-obque-queues"\n}\n'
    )
    access = _console(_expression(_locals(module)["queue_access"]), setup, tmp_path)
    objects = "projects/_/buckets/p-obque-queues/objects"
    assert access.split(" || ") == [
        f'resource.name == "{objects}/queue.json"',
        f'resource.name.startsWith("{objects}/queue.json.d/")',
        'api.getAttribute("storage.googleapis.com/objectListPrefix", "")'
        '.startsWith("queue.json.d/")',
        f'resource.name == "{objects}/emails.json"',
        f'resource.name.startsWith("{objects}/emails.json.d/")',
        'api.getAttribute("storage.googleapis.com/objectListPrefix", "")'
        '.startsWith("emails.json.d/")',
    ]
    readers = grants["invokers_read_queue_files"]
    assert readers["role"] == "roles/storage.objectViewer"
    reading = _console(_expression(readers["condition"][0]["expression"]), setup, tmp_path)
    assert reading.split(" || ") == [
        f'resource.name == "{objects}/queue.json"',
        f'resource.name == "{objects}/emails.json"',
    ]
    # No project-level grant anywhere: only the bucket's IAM.
    assert not _resources(module, "google_project_iam_member")
    assert not _resources(module, "google_project_iam_binding")


# -- the queue file ------------------------------------------------------------------------


def test_queue_file_is_created_once_and_never_destroyed(module: dict[str, Any]) -> None:
    queue = _resources(module, "google_storage_bucket_object")["queue"]
    assert queue["name"] == "${each.key}.json"
    assert queue["bucket"] == "${google_storage_bucket.queues.name}"
    assert queue["content"] == "${module.queue_file[each.key].content}"
    (lifecycle,) = queue["lifecycle"]
    assert lifecycle["prevent_destroy"] is True
    # Every commit rewrites the object: Terraform must not put its first content back.
    assert set(lifecycle["ignore_changes"]) >= {"content", "detect_md5hash"}
    (call,) = [m["queue_file"] for m in module["module"] if "queue_file" in m]
    uri = "${google_cloudfunctions2_function.broker.service_config[0].uri}"
    assert call["broker_url"] == uri
    outputs = {name: body for block in module["output"] for name, body in block.items()}
    assert outputs["function_url"]["value"] == uri
    # What infra/queue_file.py needs to re-point the files (docs/deploy.md): the same id.
    assert outputs["broker_id"]["value"] == call["broker_id"]


def test_queue_file_content_is_a_queue_obque_reads(tmp_path: Path) -> None:
    (tmp_path / "main.tf").write_text(
        f"""
module "q" {{
  source     = "{MODULE / "modules" / "queue-file"}"
  name       = "emails"
  broker_url = "https://obque-broker-abc-ew.a.run.app"
  broker_id  = "cloudfunctions:obque-broker"
  config     = {{ lease_seconds = 60, max_attempts = 3 }}
}}

output "content" {{
  value = module.q.content
}}
"""
    )
    for command in (
        ["init", "-backend=false", "-input=false"],
        ["apply", "-auto-approve", "-input=false", "-lock=false"],
    ):
        done = run([terraform(), *command], cwd=tmp_path)
        assert done.returncode == 0, done.stdout + done.stderr
    done = run([terraform(), "output", "-raw", "content"], cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    state = decode_state(done.stdout.encode(), "gs://bucket/emails.json")
    assert state.name == "emails"
    assert state.revision == 1
    assert state.broker is not None
    assert (state.broker.url, state.broker.mode, state.broker.epoch) == (
        "https://obque-broker-abc-ew.a.run.app",
        "serverless",
        1,
    )
    assert state.config.lease_seconds == 60
    assert state.config.max_attempts == 3
    assert state.config.dedup_seconds == QueueConfig().dedup_seconds  # defaults fill in
    assert state.jobs == {}
    assert state.dead == ()


def test_terraform_fmt_check_passes() -> None:
    done = run([terraform(), "fmt", "-check", "-recursive", "-diff", str(MODULE)])
    assert done.returncode == 0, f"run `terraform fmt -recursive infra/gcp`:\n{done.stdout}"


# -- the function source -------------------------------------------------------------------


def test_function_source(tmp_path: Path) -> None:
    from obque_infra.gcp_source import ENTRY_POINT, build_gcp_source

    out = build_gcp_source(out=tmp_path / "gcp-function")
    (wheel,) = out.glob("obque-*-py3-none-any.whl")
    assert (out / "requirements.txt").read_text() == f"./{wheel.name}[gcp]\n"
    assert f"from obque.broker.gcp import {ENTRY_POINT}" in (out / "main.py").read_text()
    # pip (as Cloud Build runs it, from the source directory) accepts the requirement.
    done = run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "--dry-run",
            "--no-deps",
            "--ignore-installed",
            "--quiet",
            "-r",
            "requirements.txt",
        ],
        cwd=out,
    )
    assert done.returncode == 0, done.stderr


def test_function_source_serves_as_the_module_configures_it(tmp_path: Path) -> None:
    """functions-framework started with the target and port only (no ``--asgi``, no
    ``FUNCTION_USE_ASGI``) and the environment the module sets: the WSGI ``create_app()``
    path a runtime launcher may take must still serve the ASGI app, because the target
    is registered with ``functions_framework.aio.http``."""
    from obque_infra.gcp_source import ENTRY_POINT, build_gcp_source

    server = Path(sys.executable).with_name("functions-framework")
    if not server.exists():
        missing("functions-framework (the dev extra)")
    function = _resources(_load(MODULE / "main.tf"), "google_cloudfunctions2_function")
    environment = dict(function["broker"]["service_config"][0]["environment_variables"])
    assert environment.pop("OBQUE_ROOT").startswith("gs://")
    assert environment.pop("OBQUE_QUEUES") == '${join(",", var.queues)}'
    assert "FUNCTION_USE_ASGI" not in environment
    source = build_gcp_source(out=tmp_path / "gcp-function")
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    env = hermetic_env(
        **environment,
        OBQUE_ROOT=f"file://{tmp_path / 'queues'}/",
        OBQUE_QUEUES="queue",
        FUNCTION_TARGET=ENTRY_POINT,
        PORT=str(port),
        HOST="127.0.0.1",
    )
    log = (tmp_path / "server.log").open("w")
    process = subprocess.Popen(
        [str(server), "--source", "main.py"],
        cwd=source,
        env=env,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert process.poll() is None, (tmp_path / "server.log").read_text()[-3000:]
            try:
                with urllib.request.urlopen(f"{url}/healthz", timeout=2) as answer:
                    assert answer.status == 200
                    break
            except urllib.error.HTTPError:
                raise  # it answers, wrongly: no use waiting
            except OSError:  # not listening yet
                assert time.monotonic() < deadline, (tmp_path / "server.log").read_text()[-3000:]
                time.sleep(0.2)
        request = urllib.request.Request(f"{url}/v1/queues/queue", data=b"{}", method="PUT")
        request.add_header("Content-Type", "application/json")
        with urllib.request.urlopen(request, timeout=10) as answer:
            assert answer.status == 201
            assert json.loads(answer.read())["name"] == "queue"
        with urllib.request.urlopen(f"{url}/v1/queues", timeout=10) as answer:
            assert [q["name"] for q in json.loads(answer.read())["queues"]] == ["queue"]
    finally:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(timeout=30)
        log.close()
