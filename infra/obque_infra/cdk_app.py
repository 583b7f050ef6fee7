"""The CDK app: one ``ObqueStack`` from context, checked by cdk-nag's AwsSolutions rules.

A nag error fails ``cdk synth`` (and so ``cdk deploy``): every rule the stack does not
meet is either fixed or suppressed next to the resource with its reason.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import aws_cdk as cdk
from cdk_nag import AwsSolutionsChecks

from obque_infra.assets import lambda_code
from obque_infra.bundle import BundleSpec
from obque_infra.settings import ContextError, DeploySettings
from obque_infra.stack import ObqueStack

__all__ = ["DEFAULT_STACK_NAME", "build_app"]

DEFAULT_STACK_NAME = "Obque"


def build_app(context: Mapping[str, Any] | None = None, *, outdir: str | None = None) -> cdk.App:
    """The app with its stack (env-agnostic: it deploys to the CLI's account and region)."""
    app = cdk.App(context=dict(context or {}), outdir=outdir)
    try:
        settings = DeploySettings.from_context(app.node.try_get_context)
    except ContextError as exc:
        raise SystemExit(f"obque-infra: bad context: {exc}") from None
    stack_name = app.node.try_get_context("stack_name") or DEFAULT_STACK_NAME
    ObqueStack(
        app,
        stack_name,
        settings=settings,
        code=lambda_code(BundleSpec()),
        description="obque: a job queue in one S3 object, with its serverless broker",
    )
    cdk.Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app
