"""``ObqueStack``: a bucket of queue files, the broker Lambda behind a Function URL, and a
custom resource per queue that creates ``NAME.json`` and advertises the URL in it.

    clients ──SigV4──▶ Function URL (AWS_IAM) ──▶ broker Lambda ──CAS──▶ s3://BUCKET/NAME.json
       └──── read NAME.json (finds broker.url) ─────────────────────────────────┘

Least privilege throughout: every S3 permission names the queue objects
(``NAME.json``, ``NAME.json.d/*``) -- never the whole bucket -- and listing is allowed only
under the queues' ``.json.d/`` prefixes. The functions get their own roles and log groups,
with no AWS managed policies.
"""

from __future__ import annotations

from typing import Any

import aws_cdk as cdk
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_s3 as s3
from constructs import Construct

from obque_infra.bundle import RESOURCE_MODULE_NAME
from obque_infra.settings import DeploySettings

__all__ = ["BROKER_HANDLER", "RESOURCE_HANDLER", "RUNTIME", "ObqueStack"]

RUNTIME = lambda_.Runtime.PYTHON_3_12  # the bundle is built for cp312: change both together
BROKER_HANDLER = "obque.broker.aws.handler"
RESOURCE_HANDLER = f"{RESOURCE_MODULE_NAME}.on_event"
RESOURCE_TYPE = "Custom::ObqueQueue"


class ObqueStack(cdk.Stack):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        settings: DeploySettings,
        code: lambda_.Code,
        **kwargs: Any,
    ) -> None:
        super().__init__(scope, construct_id, **kwargs)
        self.settings = settings

        self.bucket = s3.Bucket(
            self,
            "QueueBucket",
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            encryption=s3.BucketEncryption.S3_MANAGED,
            enforce_ssl=True,
            minimum_tls_version=1.2,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            # Every commit overwrites the queue file: versions would pile up one per commit.
            versioned=False,
            removal_policy=cdk.RemovalPolicy.RETAIN,
        )
        self.queue_uris = {
            name: f"s3://{self.bucket.bucket_name}/{name}.json" for name in settings.queues
        }

        self.broker = self._function(
            "Broker",
            code=code,
            handler=BROKER_HANDLER,
            description="obque broker: serves the queues in its bucket over HTTP",
            memory_mb=settings.memory_mb,
            timeout=cdk.Duration.seconds(settings.timeout_s),
            environment=self._broker_environment(),
            statements=self._broker_statements(),
        )
        auth = (
            lambda_.FunctionUrlAuthType.AWS_IAM
            if settings.auth == "iam"
            else lambda_.FunctionUrlAuthType.NONE
        )
        self.url = self.broker.add_function_url(
            auth_type=auth, invoke_mode=lambda_.InvokeMode.BUFFERED
        )

        self.initializer = self._function(
            "QueueInit",
            code=code,
            handler=RESOURCE_HANDLER,
            description="obque: creates queue files and advertises the broker URL in them",
            memory_mb=256,
            timeout=cdk.Duration.minutes(2),
            environment={},
            statements=[
                iam.PolicyStatement(
                    sid="QueueFiles",
                    actions=["s3:GetObject", "s3:PutObject"],
                    resources=[self.bucket.arn_for_objects(f"{q}.json") for q in settings.queues],
                )
            ],
        )
        for name in settings.queues:
            self._queue(name)

        self.worker_policy: iam.ManagedPolicy | None = (
            self._worker_policy() if settings.worker_policy else None
        )
        self._outputs()
        self._justify()

    # -- pieces ---------------------------------------------------------------------------

    def _function(
        self,
        name: str,
        *,
        code: lambda_.Code,
        handler: str,
        description: str,
        memory_mb: int,
        timeout: cdk.Duration,
        environment: dict[str, str],
        statements: list[iam.PolicyStatement],
    ) -> lambda_.Function:
        log_group = logs.LogGroup(self, f"{name}Logs", retention=logs.RetentionDays.ONE_MONTH)
        role = iam.Role(
            self,
            f"{name}Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"obque {name}: its queue objects and its own log group, nothing else",
        )
        log_group.grant_write(role)
        for statement in statements:
            role.add_to_policy(statement)
        return lambda_.Function(
            self,
            name,
            runtime=RUNTIME,
            architecture=lambda_.Architecture.ARM_64,
            code=code,
            handler=handler,
            description=description,
            memory_size=memory_mb,
            timeout=timeout,
            environment=environment,
            role=role,
            log_group=log_group,
        )

    def _broker_environment(self) -> dict[str, str]:
        environment = {
            "OBQUE_ROOT": f"s3://{self.bucket.bucket_name}/",
            # The role may touch only these queues' objects (not list the bucket), so the
            # broker lists its queues from here.
            "OBQUE_QUEUES": ",".join(self.settings.queues),
        }
        if self.settings.auth == "token":
            assert self.settings.token is not None
            # Readable by anyone allowed lambda:GetFunctionConfiguration, and kept in the
            # template: docs/deploy.md says so where it offers this mode.
            environment["OBQUE_TOKEN"] = self.settings.token
        return environment

    def _broker_statements(self) -> list[iam.PolicyStatement]:
        queues = self.settings.queues
        files = [self.bucket.arn_for_objects(f"{q}.json") for q in queues]
        folders = [self.bucket.arn_for_objects(f"{q}.json.d/*") for q in queues]
        return [
            iam.PolicyStatement(
                sid="QueueObjects",
                actions=["s3:GetObject", "s3:PutObject"],
                resources=[*files, *folders],
            ),
            # Intents are deleted once folded into a commit; queue files never are.
            iam.PolicyStatement(
                sid="QueueAuxiliaryDelete",
                actions=["s3:DeleteObject"],
                resources=folders,
            ),
            iam.PolicyStatement(
                sid="ListQueueAuxiliary",
                actions=["s3:ListBucket"],
                resources=[self.bucket.bucket_arn],
                conditions={"StringLike": {"s3:prefix": [f"{q}.json.d/*" for q in queues]}},
            ),
        ]

    def _queue(self, name: str) -> None:
        config = {key: str(value) for key, value in self.settings.queue_config.items()}
        cdk.CustomResource(
            self,
            f"Queue-{name}",
            service_token=self.initializer.function_arn,
            resource_type=RESOURCE_TYPE,
            properties={
                "QueueUri": self.queue_uris[name],
                "BrokerUrl": self.url.url,
                "BrokerId": f"lambda:{self.broker.function_name}",
                "Config": config,
            },
            # The queue outlives the stack: CloudFormation keeps it on deletion and on
            # replacement (and the handler ignores Delete anyway).
            removal_policy=cdk.RemovalPolicy.RETAIN,
            service_timeout=cdk.Duration.minutes(5),
        )

    def _worker_policy(self) -> iam.ManagedPolicy:
        """What a producer or worker needs: read the queue files (to find the broker) and
        call the Function URL with SigV4."""
        statements = [
            iam.PolicyStatement(
                sid="ReadQueueFiles",
                actions=["s3:GetObject"],
                resources=[self.bucket.arn_for_objects(f"{q}.json") for q in self.settings.queues],
            )
        ]
        if self.settings.auth == "iam":
            statements += [
                iam.PolicyStatement(
                    sid="InvokeBrokerUrl",
                    actions=["lambda:InvokeFunctionUrl"],
                    resources=[self.broker.function_arn],
                    conditions={"StringEquals": {"lambda:FunctionUrlAuthType": "AWS_IAM"}},
                ),
                # Since October 2025 a Function URL also needs lambda:InvokeFunction, which
                # the condition limits to calls through the URL.
                iam.PolicyStatement(
                    sid="InvokeBrokerViaUrl",
                    actions=["lambda:InvokeFunction"],
                    resources=[self.broker.function_arn],
                    conditions={"Bool": {"lambda:InvokedViaFunctionUrl": "true"}},
                ),
            ]
        return iam.ManagedPolicy(
            self,
            "WorkerPolicy",
            description="obque producers and workers: read the queue files, call the broker",
            statements=statements,
        )

    def _outputs(self) -> None:
        first = self.settings.queues[0]
        cdk.CfnOutput(self, "QueueUri", value=self.queue_uris[first], description="queue file")
        cdk.CfnOutput(
            self,
            "QueueUris",
            value=" ".join(self.queue_uris.values()),
            description="every queue file of this deployment",
        )
        cdk.CfnOutput(self, "FunctionUrl", value=self.url.url, description="broker URL")
        cdk.CfnOutput(self, "BucketName", value=self.bucket.bucket_name)
        if self.worker_policy is not None:
            cdk.CfnOutput(
                self,
                "WorkerPolicyArn",
                value=self.worker_policy.managed_policy_arn,
                description="attach to the roles of producers and workers",
            )

    def _justify(self) -> None:
        """cdk-nag findings that are decisions, each acknowledged with its reason."""
        cdk.Validations.of(self.bucket).acknowledge(
            cdk.Acknowledgment(
                id="AwsSolutions::AwsSolutions-S1",
                reason=(
                    "Every queue operation is a request on this bucket, so server access logs "
                    "would write a line per commit that nobody reads. Audit access with "
                    "CloudTrail S3 data events, scoped by the account owner."
                ),
            )
        )
        bucket = self.resolve(self.get_logical_id(self.bucket.node.default_child))  # type: ignore[arg-type]
        cdk.Validations.of(self.broker.role).acknowledge(  # type: ignore[arg-type]
            *(
                cdk.Acknowledgment(
                    id=f"AwsSolutions::AwsSolutions-IAM5[Resource::<{bucket}.Arn>/{q}.json.d/*]",
                    reason=(
                        "Intents and spilled payloads get generated names under the queue's "
                        f"own {q}.json.d/ prefix; the wildcard covers that prefix only."
                    ),
                )
                for q in self.settings.queues
            )
        )
        runtime = cdk.Acknowledgment(
            id="AwsSolutions::AwsSolutions-L1",
            reason=(
                "Pinned to python3.12 on purpose: the bundle's native wheels (msgspec, "
                "pydantic-core) are built for cp312; RUNTIME and BundleSpec change together."
            ),
        )
        cdk.Validations.of(self.broker).acknowledge(runtime)
        cdk.Validations.of(self.initializer).acknowledge(runtime)
