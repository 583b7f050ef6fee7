"""``template.yaml``, the SAM twin of the CDK stack: linted by cfn-lint and by
``sam validate --lint``, built by the real ``sam build`` without Docker, and held to the
same posture as the CDK template."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from infra_tools import REPO, cfn_lint, need_module, run, sam_cli

TEMPLATE = REPO / "template.yaml"


@pytest.fixture(scope="module")
def template() -> dict[str, Any]:
    need_module("cfnlint")
    from cfnlint.decode import cfn_yaml

    loaded: dict[str, Any] = cfn_yaml.loads(TEMPLATE.read_text())
    return loaded


def _of_type(template: dict[str, Any], kind: str) -> dict[str, dict[str, Any]]:
    return {k: v for k, v in template["Resources"].items() if v["Type"] == kind}


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def test_cfn_lint_passes() -> None:
    done = run([str(cfn_lint()), "--", str(TEMPLATE)])
    assert done.returncode == 0, done.stdout + done.stderr


def test_sam_validate_lint_passes() -> None:
    done = run([str(sam_cli()), "validate", "--lint", "--template-file", str(TEMPLATE)])
    assert done.returncode == 0, done.stdout + done.stderr
    assert "is a valid SAM Template" in done.stdout + done.stderr


def test_sam_build_bundles_both_functions_without_docker(tmp_path: Path) -> None:
    """``sam build`` as a user runs it: BuildMethod makefile, so infra/sam/Makefile builds
    the pip-only bundle (Docker is made to fail in this environment)."""
    need_module("packaging")
    from obque_infra.bundle import RESOURCE_MODULE_NAME, check_bundle

    build = tmp_path / "sam-build"
    done = run(
        [
            str(sam_cli()),
            "build",
            "--template-file",
            str(TEMPLATE),
            "--build-dir",
            str(build),
            "--cache-dir",
            str(tmp_path / "sam-cache"),
        ]
    )
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "Build Succeeded" in done.stdout + done.stderr
    from cfnlint.decode import cfn_yaml

    built = cfn_yaml.loads((build / "template.yaml").read_text())
    for name in ("BrokerFunction", "QueueInitFunction"):
        assert built["Resources"][name]["Properties"]["CodeUri"] == name
        bundle = build / name
        check_bundle(bundle, "aarch64")  # both handlers, native code for aarch64, size
        assert (bundle / "obque" / "broker" / "aws.py").is_file()
        assert (bundle / "obque" / "store" / "s3.py").is_file()
        assert (bundle / f"{RESOURCE_MODULE_NAME}.py").is_file()
        for package in ("mangum", "fastapi", "pydantic_core", "msgspec", "boto3"):
            assert (bundle / package).is_dir(), package
        assert list(bundle.glob("msgspec/_core.cpython-312-aarch64-linux-gnu.so"))
        assert list(bundle.glob("pydantic_core/_pydantic_core.cpython-312-aarch64-linux-gnu.so"))
        assert not (bundle / "Makefile").exists()


def test_bucket_posture(template: dict[str, Any]) -> None:
    (bucket,) = _of_type(template, "AWS::S3::Bucket").values()
    assert bucket["DeletionPolicy"] == "Retain"
    assert bucket["UpdateReplacePolicy"] == "Retain"
    props = bucket["Properties"]
    assert props["PublicAccessBlockConfiguration"] == {
        "BlockPublicAcls": True,
        "BlockPublicPolicy": True,
        "IgnorePublicAcls": True,
        "RestrictPublicBuckets": True,
    }
    (rule,) = props["BucketEncryption"]["ServerSideEncryptionConfiguration"]
    assert rule["ServerSideEncryptionByDefault"]["SSEAlgorithm"] == "AES256"
    (policy,) = _of_type(template, "AWS::S3::BucketPolicy").values()
    conditions = [s["Condition"] for s in policy["Properties"]["PolicyDocument"]["Statement"]]
    assert {"Bool": {"aws:SecureTransport": "false"}} in conditions
    assert {"NumericLessThan": {"s3:TlsVersion": 1.2}} in conditions


def test_functions_match_the_cdk_stack(template: dict[str, Any]) -> None:
    need_module("aws_cdk")
    from obque_infra.stack import BROKER_HANDLER, RESOURCE_HANDLER, RUNTIME

    functions = _of_type(template, "AWS::Serverless::Function")
    by_handler = {f["Properties"]["Handler"]: f["Properties"] for f in functions.values()}
    assert set(by_handler) == {BROKER_HANDLER, RESOURCE_HANDLER}
    for props in by_handler.values():
        assert props["Runtime"] == RUNTIME.name
        assert props["Architectures"] == ["arm64"]
        assert props["CodeUri"] == "infra/sam/"
    broker = by_handler[BROKER_HANDLER]
    assert broker["FunctionUrlConfig"]["AuthType"] == "AWS_IAM"
    assert broker["Environment"]["Variables"]["OBQUE_QUEUES"] == {"Ref": "QueueName"}
    assert "OBQUE_MODE" not in broker["Environment"]["Variables"]  # the entry point decides
    assert broker["Environment"]["Variables"]["OBQUE_ROOT"] == {"Fn::Sub": "s3://${QueueBucket}/"}


def test_iam_is_scoped_to_the_queue_objects(template: dict[str, Any]) -> None:
    statements = [
        statement
        for role in _of_type(template, "AWS::IAM::Role").values()
        for policy in role["Properties"].get("Policies", [])
        for statement in policy["PolicyDocument"]["Statement"]
    ]
    for policy in _of_type(template, "AWS::IAM::ManagedPolicy").values():
        statements += policy["Properties"]["PolicyDocument"]["Statement"]
    for role in _of_type(template, "AWS::IAM::Role").values():
        assert "ManagedPolicyArns" not in role["Properties"]
    s3 = [s for s in statements if any(a.startswith("s3:") for a in _listed(s["Action"]))]
    assert s3
    for statement in s3:
        for resource in _listed(statement["Resource"]):
            assert resource != "*"
            text = resource.get("Fn::Sub", "") if isinstance(resource, dict) else resource
            assert not text.endswith(".Arn}/*"), statement
        if statement["Action"] == "s3:ListBucket":
            assert statement["Condition"] == {
                "StringLike": {"s3:prefix": {"Fn::Sub": "${QueueName}.json.d/*"}}
            }


def test_queue_initialisation_is_retained(template: dict[str, Any]) -> None:
    (queue,) = _of_type(template, "Custom::ObqueQueue").values()
    assert queue["DeletionPolicy"] == "Retain"
    assert queue["UpdateReplacePolicy"] == "Retain"
    props = queue["Properties"]
    assert props["BrokerUrl"] == {"Fn::GetAtt": ["BrokerFunctionUrl", "FunctionUrl"]}
    assert props["QueueUri"] == {"Fn::Sub": "s3://${QueueBucket}/${QueueName}.json"}
    assert set(props["Config"]) == {"lease_seconds", "max_attempts"}
    assert set(template["Outputs"]) >= {"QueueUri", "FunctionUrl", "WorkerPolicyArn"}
