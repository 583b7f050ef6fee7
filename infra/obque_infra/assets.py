"""The functions' code asset, bundled locally by :mod:`obque_infra.bundle`.

CDK's bundling normally runs a command in a Docker image; an ``ILocalBundling`` gets the
first try, and since this one always succeeds (or raises), Docker is never started. The
image named below only satisfies the API.

The asset hash is the bundle's cache key (the sources and build settings), given to CDK
as a custom hash: CDK then neither fingerprints the whole repository (``.venv``,
``node_modules``...) nor re-bundles an unchanged tree.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import aws_cdk as cdk
import jsii
from aws_cdk import aws_lambda as lambda_

from obque_infra.bundle import BundleSpec, build_bundle, export_bundle

__all__ = ["LocalBundling", "lambda_code"]

#: Never pulled: local bundling always answers first.
_UNUSED_IMAGE = "public.ecr.aws/sam/build-python3.12"


@jsii.implements(cdk.ILocalBundling)
class LocalBundling:
    """Builds the bundle with pip (cached under ``.build/``) and copies it to CDK's
    output directory."""

    def __init__(self, spec: BundleSpec) -> None:
        self.spec = spec

    def try_bundle(self, output_dir: str, *, image: cdk.DockerImage, **_options: Any) -> bool:
        export_bundle(build_bundle(self.spec), Path(output_dir))
        return True


def lambda_code(spec: BundleSpec | None = None) -> lambda_.Code:
    """The code of both functions: obque with its ``aws`` extra, plus the resource handler."""
    spec = spec or BundleSpec()
    return lambda_.Code.from_asset(
        str(spec.repo),
        asset_hash_type=cdk.AssetHashType.CUSTOM,
        asset_hash=spec.cache_key(),
        bundling=cdk.BundlingOptions(
            image=cdk.DockerImage.from_registry(_UNUSED_IMAGE),
            local=LocalBundling(spec),
            output_type=cdk.BundlingOutput.NOT_ARCHIVED,
        ),
    )
