"""The posture of ``ObqueStack``, asserted on the synthesized template (aws_cdk.assertions)
and by cdk-nag's AwsSolutions pack, which runs in every synth."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from conftest import Assembly, synth_in_process
from infra_tools import need_module

need_module("aws_cdk")
need_module("cdk_nag")

from aws_cdk.assertions import Match, Template  # noqa: E402
from obque_infra.bundle import BundleSpec  # noqa: E402
from obque_infra.settings import ContextError, DeploySettings  # noqa: E402
from obque_infra.stack import BROKER_HANDLER, RESOURCE_HANDLER, RUNTIME  # noqa: E402

TOKEN = "t" * 40


@pytest.fixture(scope="module")
def template(default_assembly: Assembly) -> Template:
    return Template.from_json(default_assembly.template)


def _statements(assembly: Assembly) -> list[dict[str, Any]]:
    found = []
    for kind in ("AWS::IAM::Policy", "AWS::IAM::ManagedPolicy"):
        for resource in assembly.resources(kind).values():
            found += resource["Properties"]["PolicyDocument"]["Statement"]
    return found


def _listed(value: Any) -> list[Any]:
    return value if isinstance(value, list) else [value]


def _text(value: Any) -> str:
    """A resource ARN as text, intrinsics included (Fn::Join parts are joined)."""
    if isinstance(value, dict) and "Fn::Join" in value:
        separator, parts = value["Fn::Join"]
        return separator.join(_text(p) for p in parts)
    if isinstance(value, dict) and "Fn::GetAtt" in value:
        return "<{}.{}>".format(*value["Fn::GetAtt"])
    if isinstance(value, dict) and "Ref" in value:
        return "<{}>".format(value["Ref"])
    return str(value)


# -- the bucket ----------------------------------------------------------------------------


def test_bucket_is_private_encrypted_and_retained(template: Template) -> None:
    template.resource_count_is("AWS::S3::Bucket", 1)
    template.has_resource(
        "AWS::S3::Bucket",
        {
            "DeletionPolicy": "Retain",
            "UpdateReplacePolicy": "Retain",
            "Properties": Match.object_like(
                {
                    "PublicAccessBlockConfiguration": {
                        "BlockPublicAcls": True,
                        "BlockPublicPolicy": True,
                        "IgnorePublicAcls": True,
                        "RestrictPublicBuckets": True,
                    },
                    "BucketEncryption": {
                        "ServerSideEncryptionConfiguration": [
                            {"ServerSideEncryptionByDefault": {"SSEAlgorithm": "AES256"}}
                        ]
                    },
                    "OwnershipControls": {"Rules": [{"ObjectOwnership": "BucketOwnerEnforced"}]},
                }
            ),
        },
    )
    bucket = next(iter(template.find_resources("AWS::S3::Bucket").values()))
    assert "VersioningConfiguration" not in bucket["Properties"]  # one version per commit


def test_bucket_policy_denies_plain_http_and_old_tls(default_assembly: Assembly) -> None:
    (policy,) = default_assembly.resources("AWS::S3::BucketPolicy").values()
    statements = policy["Properties"]["PolicyDocument"]["Statement"]
    denies = [s for s in statements if s["Effect"] == "Deny"]
    assert {json.dumps(s["Condition"], sort_keys=True) for s in denies} == {
        json.dumps({"Bool": {"aws:SecureTransport": "false"}}),
        json.dumps({"NumericLessThan": {"s3:TlsVersion": 1.2}}),
    }
    for statement in denies:
        assert statement["Principal"] == {"AWS": "*"}
        assert statement["Action"] == "s3:*"
    assert not [s for s in statements if s["Effect"] == "Allow"]


# -- the functions -------------------------------------------------------------------------


def test_broker_function(template: Template) -> None:
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Handler": BROKER_HANDLER,
            "Runtime": "python3.12",
            "Architectures": ["arm64"],
            "MemorySize": 1024,
            "Timeout": 60,
            "Environment": {
                "Variables": {
                    "OBQUE_ROOT": {"Fn::Join": ["", ["s3://", {"Ref": Match.any_value()}, "/"]]},
                    "OBQUE_QUEUES": "queue",
                }
            },
            "LoggingConfig": {"LogGroup": {"Ref": Match.any_value()}},
        },
    )


def test_runtime_matches_the_bundle() -> None:
    assert RUNTIME.name == f"python{BundleSpec().python_version}"
    assert BundleSpec().architecture == "aarch64"  # Architectures: arm64


def test_functions_use_own_roles_without_managed_policies(default_assembly: Assembly) -> None:
    functions = default_assembly.resources("AWS::Lambda::Function")
    assert {f["Properties"]["Handler"] for f in functions.values()} == {
        BROKER_HANDLER,
        RESOURCE_HANDLER,
    }
    roles = default_assembly.resources("AWS::IAM::Role")
    assert len(roles) == 2
    for role in roles.values():
        assert "ManagedPolicyArns" not in role["Properties"]
        (trust,) = role["Properties"]["AssumeRolePolicyDocument"]["Statement"]
        assert trust["Principal"] == {"Service": "lambda.amazonaws.com"}
    for group in default_assembly.resources("AWS::Logs::LogGroup").values():
        assert group["Properties"]["RetentionInDays"] == 30


def test_function_url_uses_aws_iam(template: Template) -> None:
    template.resource_count_is("AWS::Lambda::Url", 1)
    template.has_resource_properties(
        "AWS::Lambda::Url", {"AuthType": "AWS_IAM", "InvokeMode": "BUFFERED"}
    )
    # AWS_IAM: no resource policy opens the function to anyone.
    template.resource_count_is("AWS::Lambda::Permission", 0)


# -- IAM -----------------------------------------------------------------------------------


def test_no_s3_action_has_a_wildcard_resource(default_assembly: Assembly) -> None:
    statements = _statements(default_assembly)
    assert statements
    for statement in statements:
        for resource in _listed(statement["Resource"]):
            assert resource != "*", statement
            assert not _text(resource).endswith(">/*"), f"whole-bucket grant: {statement}"
        for action in _listed(statement["Action"]):
            assert "*" not in action, statement


def test_broker_s3_access_is_the_queue_objects(default_assembly: Assembly) -> None:
    (broker_role,) = [k for k in default_assembly.resources("AWS::IAM::Role") if "Broker" in k]
    (policy,) = [
        p
        for p in default_assembly.resources("AWS::IAM::Policy").values()
        if p["Properties"]["Roles"] == [{"Ref": broker_role}]
    ]
    by_sid = {s.get("Sid"): s for s in policy["Properties"]["PolicyDocument"]["Statement"]}
    objects = by_sid["QueueObjects"]
    assert sorted(objects["Action"]) == ["s3:GetObject", "s3:PutObject"]
    assert sorted(_text(r).split(">", 1)[1] for r in objects["Resource"]) == [
        "/queue.json",
        "/queue.json.d/*",
    ]
    delete = by_sid["QueueAuxiliaryDelete"]
    assert delete["Action"] == "s3:DeleteObject"
    assert _text(delete["Resource"]).endswith(">/queue.json.d/*")  # never the queue file
    listing = by_sid["ListQueueAuxiliary"]
    assert listing["Action"] == "s3:ListBucket"
    assert listing["Condition"] == {"StringLike": {"s3:prefix": ["queue.json.d/*"]}}
    s3_sids = {s for s, st in by_sid.items() if any("s3:" in a for a in _listed(st["Action"]))}
    assert s3_sids == {"QueueObjects", "QueueAuxiliaryDelete", "ListQueueAuxiliary"}


def test_worker_policy(default_assembly: Assembly) -> None:
    (policy,) = default_assembly.resources("AWS::IAM::ManagedPolicy").values()
    by_sid = {s["Sid"]: s for s in policy["Properties"]["PolicyDocument"]["Statement"]}
    assert by_sid["ReadQueueFiles"]["Action"] == "s3:GetObject"
    assert _text(by_sid["ReadQueueFiles"]["Resource"]).endswith(">/queue.json")
    url = by_sid["InvokeBrokerUrl"]
    assert url["Action"] == "lambda:InvokeFunctionUrl"
    assert url["Condition"] == {"StringEquals": {"lambda:FunctionUrlAuthType": "AWS_IAM"}}
    invoke = by_sid["InvokeBrokerViaUrl"]
    assert invoke["Action"] == "lambda:InvokeFunction"
    assert invoke["Condition"] == {"Bool": {"lambda:InvokedViaFunctionUrl": "true"}}
    for statement in (url, invoke):
        assert statement["Resource"]["Fn::GetAtt"][1] == "Arn"


# -- the queue file ------------------------------------------------------------------------


def test_custom_resource_creates_each_queue(tmp_path: Path) -> None:
    assembly = synth_in_process(
        tmp_path, {"queues": "emails,videos", "lease_seconds": "120", "max_attempts": "3"}
    )
    queues = assembly.resources("Custom::ObqueQueue")
    assert len(queues) == 2
    uris = []
    for queue in queues.values():
        assert queue["DeletionPolicy"] == "Retain"
        assert queue["UpdateReplacePolicy"] == "Retain"
        props = queue["Properties"]
        assert props["ServiceToken"]["Fn::GetAtt"][1] == "Arn"
        assert props["ServiceTimeout"] == "300"
        assert props["BrokerUrl"]["Fn::GetAtt"][1] == "FunctionUrl"
        assert _text(props["BrokerId"]).startswith("lambda:<")
        assert props["Config"] == {"lease_seconds": "120", "max_attempts": "3"}
        uris.append(_text(props["QueueUri"]))
    assert sorted(uri.split(">")[1] for uri in uris) == ["/emails.json", "/videos.json"]
    init = [
        f
        for f in assembly.resources("AWS::Lambda::Function").values()
        if f["Properties"]["Handler"] == RESOURCE_HANDLER
    ]
    assert init[0]["Properties"]["Architectures"] == ["arm64"]
    # The broker lists the deployment's queues from its environment, not from the bucket
    # (its role may not list the bucket root).
    (broker,) = [
        f
        for f in assembly.resources("AWS::Lambda::Function").values()
        if f["Properties"]["Handler"] == BROKER_HANDLER
    ]
    assert broker["Properties"]["Environment"]["Variables"]["OBQUE_QUEUES"] == "emails,videos"
    # The initialiser reads and writes the queue files, and nothing else in S3.
    init_statements = [
        s
        for p in assembly.resources("AWS::IAM::Policy").values()
        if "QueueInit" in p["Properties"]["PolicyName"]
        for s in p["Properties"]["PolicyDocument"]["Statement"]
        if any(a.startswith("s3:") for a in _listed(s["Action"]))
    ]
    (statement,) = init_statements
    assert sorted(statement["Action"]) == ["s3:GetObject", "s3:PutObject"]
    assert sorted(_text(r).split(">")[1] for r in statement["Resource"]) == [
        "/emails.json",
        "/videos.json",
    ]
    outputs = assembly.template["Outputs"]
    assert _text(outputs["QueueUri"]["Value"]).endswith("/emails.json")
    assert _text(outputs["QueueUris"]["Value"]).count(".json") == 2


def test_outputs(default_assembly: Assembly) -> None:
    outputs = default_assembly.template["Outputs"]
    assert _text(outputs["QueueUri"]["Value"]).startswith("s3://<")
    assert _text(outputs["QueueUri"]["Value"]).endswith(">/queue.json")
    assert outputs["FunctionUrl"]["Value"]["Fn::GetAtt"][1] == "FunctionUrl"
    assert "BucketName" in outputs
    assert "WorkerPolicyArn" in outputs


# -- opt-in bearer-token mode ----------------------------------------------------------------


def test_token_mode_opens_the_url_and_sets_the_token(tmp_path: Path) -> None:
    assembly = synth_in_process(tmp_path, {"auth": "token", "token": TOKEN})
    template = Template.from_json(assembly.template)
    template.has_resource_properties("AWS::Lambda::Url", {"AuthType": "NONE"})
    template.has_resource_properties(
        "AWS::Lambda::Function",
        {
            "Handler": BROKER_HANDLER,
            "Environment": {"Variables": Match.object_like({"OBQUE_TOKEN": TOKEN})},
        },
    )
    permissions = assembly.resources("AWS::Lambda::Permission")
    assert {p["Properties"]["Action"] for p in permissions.values()} == {
        "lambda:InvokeFunctionUrl",
        "lambda:InvokeFunction",
    }
    # Workers need no Lambda permission in this mode: the policy only reads queue files.
    (policy,) = assembly.resources("AWS::IAM::ManagedPolicy").values()
    actions = {s["Action"] for s in policy["Properties"]["PolicyDocument"]["Statement"]}
    assert actions == {"s3:GetObject"}
    assert assembly.report["pluginReports"][0]["conclusion"] == "success"


@pytest.mark.parametrize(
    ("context", "message"),
    [
        ({"auth": "token"}, "needs a token of at least 32"),
        ({"auth": "token", "token": "short"}, "needs a token of at least 32"),
        ({"auth": "iam", "token": TOKEN}, "only used with auth=token"),
        ({"auth": "open"}, "auth must be one of"),
        ({"queues": "Bad Name"}, "invalid queue name"),
        ({"queues": "a,a"}, "names a queue twice"),
        ({"lease_seconds": "0"}, "lease_seconds must be"),
        ({"max_attempts": "many"}, "max_attempts must be an integer"),
        ({"memory": "64"}, "memory must be 128-10240"),
        ({"timeout": "5"}, "timeout must be 30-900"),
        ({"worker_policy": "maybe"}, "worker_policy must be true or false"),
    ],
)
def test_bad_context_is_refused(
    context: dict[str, Any], message: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("OBQUE_TOKEN", raising=False)
    with pytest.raises(ContextError, match=message):
        DeploySettings.from_context(context.get)


def test_context_from_cdk_json_types() -> None:
    settings = DeploySettings.from_context(
        {"queues": ["a", "b"], "memory": 2048, "worker_policy": False}.get
    )
    assert settings.queues == ("a", "b")
    assert settings.memory_mb == 2048
    assert settings.worker_policy is False
    assert settings.queue_config == {}


def test_token_from_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OBQUE_TOKEN", TOKEN)
    assert DeploySettings.from_context({"auth": "token"}.get).token == TOKEN


# -- cdk-nag -------------------------------------------------------------------------------


def test_cdk_nag_passes_with_justified_acknowledgements(default_assembly: Assembly) -> None:
    (report,) = default_assembly.report["pluginReports"]
    assert report["pluginName"] == "AwsSolutions"
    assert report["conclusion"] == "success"
    assert report["violations"] == []
    acknowledged = {v["ruleName"]: v for v in report["suppressedViolations"]}
    assert set(acknowledged) == {
        "AwsSolutions-S1",
        "AwsSolutions-L1",
        "AwsSolutions-IAM5[Resource::<QueueBucketB93DACC0.Arn>/queue.json.d/*]",
    }
    for violation in acknowledged.values():
        assert len(violation["reason"]) > 60, violation
    # The wildcard acknowledgement is for the broker's prefix grant, nowhere else.
    iam5 = acknowledged["AwsSolutions-IAM5[Resource::<QueueBucketB93DACC0.Arn>/queue.json.d/*]"]
    assert [c["constructPath"] for c in iam5["violatingConstructs"]] == [
        "Obque/BrokerRole/DefaultPolicy/Resource"
    ]


def test_cdk_nag_fails_synth_on_an_unjustified_finding(tmp_path: Path) -> None:
    """The pack is live: a wildcard grant nobody acknowledged stops the synth."""
    import aws_cdk as cdk
    from aws_cdk import aws_iam as iam
    from obque_infra.cdk_app import build_app

    app = build_app({"aws:cdk:bundling-stacks": []}, outdir=str(tmp_path))
    stack = app.node.find_child("Obque")
    assert isinstance(stack, cdk.Stack)
    role = stack.node.find_child("BrokerRole")
    assert isinstance(role, iam.Role)
    role.add_to_policy(iam.PolicyStatement(actions=["s3:GetObject"], resources=["*"]))
    with pytest.raises(RuntimeError, match=r"AwsSolutions-IAM5\[Resource::\*\]"):
        app.synth()
