"""``scripts/setup-infra``'s refusals, run for real with a PATH that lacks Node: without
``--gcp`` (what ``scripts/test``, and so CI, runs) a missing npm stops it at once, naming
``--gcp`` for users who deploy to GCP only; a wrong argument is refused in one line. The
``--gcp`` path itself installs the venv, so it is not run here."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from infra_tools import REPO

SCRIPT = REPO / "scripts" / "setup-infra"


def _run_without_node(tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    # Only what the script runs before its Node check: bash, and dirname for its `cd`.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname"):
        found = shutil.which(tool)
        assert found is not None, tool
        (bin_dir / tool).symlink_to(found)
    return subprocess.run(
        [str(bin_dir / "bash"), str(SCRIPT), *args],
        env={"PATH": str(bin_dir), "HOME": str(tmp_path)},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_without_npm_it_fails_before_installing_and_names_the_gcp_option(
    tmp_path: Path,
) -> None:
    done = _run_without_node(tmp_path)
    assert done.returncode == 1, done.stdout + done.stderr
    (line,) = done.stderr.splitlines()
    assert "Node 18+ with npm is needed for the CDK CLI" in line
    assert "found node: none, npm: none" in line
    assert "scripts/setup-infra --gcp" in line
    assert done.stdout == ""  # nothing was installed: scripts/setup was never reached


def test_an_unknown_argument_is_refused_in_one_line(tmp_path: Path) -> None:
    done = _run_without_node(tmp_path, "--aws")
    assert done.returncode == 2
    assert done.stderr.splitlines() == [
        "setup-infra: unknown argument '--aws': the only option is --gcp (GCP deployment only)"
    ]
