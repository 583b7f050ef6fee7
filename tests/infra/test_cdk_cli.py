"""``cdk synth`` by the real CDK CLI from the repo root, exactly as ``cdk deploy`` starts:
no AWS credentials, no Docker, and the Lambda code really bundled by pip."""

from __future__ import annotations

from pathlib import Path

from conftest import Assembly
from infra_tools import cfn_lint, need_module, run

need_module("aws_cdk")

from obque_infra.bundle import RESOURCE_MODULE_NAME, check_bundle  # noqa: E402

# CDK writes DependsOn on a function's role next to the GetAtt of its ARN (W3005:
# redundant, harmless); everything else cfn-lint says about the template must be fixed.
CDK_LINT_IGNORES = ["W3005"]


def _asset_dir(assembly: Assembly) -> Path:
    (function,) = [
        f
        for f in assembly.resources("AWS::Lambda::Function").values()
        if f["Properties"]["Handler"].startswith("obque.broker")
    ]
    metadata = function["Metadata"]
    assert metadata["aws:asset:is-bundled"] is True
    return assembly.directory / metadata["aws:asset:path"]


def test_cli_synth_succeeds_and_passes_cdk_nag(cli_assembly: Assembly) -> None:
    (report,) = cli_assembly.report["pluginReports"]
    assert report["conclusion"] == "success"
    assert cli_assembly.resources("AWS::Lambda::Url")


def test_cli_synth_bundles_the_code_for_arm64(cli_assembly: Assembly) -> None:
    bundle = _asset_dir(cli_assembly)
    check_bundle(bundle, "aarch64")  # handlers present, native code for aarch64, size
    assert (bundle / "obque" / "broker" / "aws.py").is_file()
    assert (bundle / "obque" / "store" / "s3.py").is_file()
    assert (bundle / f"{RESOURCE_MODULE_NAME}.py").is_file()
    for package in ("mangum", "fastapi", "pydantic_core", "msgspec", "boto3"):
        assert (bundle / package).is_dir(), package
    natives = list(bundle.glob("msgspec/_core.cpython-312-aarch64-linux-gnu.so"))
    assert natives, sorted(p.name for p in (bundle / "msgspec").iterdir())
    assert not (bundle / "bin").exists()
    assert not list(bundle.rglob("__pycache__"))
    # Both functions run from the one bundle.
    paths = {
        f["Metadata"]["aws:asset:path"]
        for f in cli_assembly.resources("AWS::Lambda::Function").values()
    }
    assert len(paths) == 1


def test_synthesized_template_passes_cfn_lint(cli_assembly: Assembly) -> None:
    template = cli_assembly.directory / "Obque.template.json"
    done = run([str(cfn_lint()), "--ignore-checks", *CDK_LINT_IGNORES, "--", str(template)])
    assert done.returncode == 0, done.stdout + done.stderr
