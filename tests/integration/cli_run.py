"""Running ``obque`` as a subprocess in a fresh directory, for the CLI tests."""

from __future__ import annotations

import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from broker_proc import OBQUE, read_queue_file

__all__ = ["FORMS", "QUEUE", "Cli", "Run", "cli", "jobs_of"]

FORMS = ("mem://", "file://", "s3://", "gs://")


@dataclass
class Run:
    """A finished ``obque`` command."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def ok(self) -> Run:
        assert self.returncode == 0, self
        assert "Traceback" not in self.stderr, self.stderr
        return self

    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def user_error(self, *mentions: str) -> str:
        """Assert the command failed the way a user mistake should; return the line."""
        assert self.returncode != 0, self
        assert "Traceback" not in self.stderr, self.stderr
        assert "Traceback" not in self.stdout, self.stdout
        errors = [ln for ln in self.stderr.splitlines() if ln.startswith("obque: ")]
        assert len(errors) == 1, self.stderr
        line = errors[0]
        for needle in mentions:
            assert needle in line, (needle, line)
        return line


@dataclass
class Cli:
    """Runs ``obque`` in ``cwd`` with a clean environment (plus ``env``)."""

    cwd: Path
    env: dict[str, str]

    def __call__(
        self, *args: str, stdin: str | None = None, timeout: float = 60, **env: str
    ) -> Run:
        done = subprocess.run(
            [OBQUE, *args],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.cwd,
            env={**self.env, **env},
        )
        return Run(tuple(args), done.returncode, done.stdout, done.stderr)

    @property
    def queue_dir(self) -> Path:
        return self.cwd / ".obque"

    def queue_file(self, name: str = "queue") -> dict[str, Any]:
        return read_queue_file(self.queue_dir, name)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBQUE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return Cli(workdir, env)


QUEUE = "file://./.obque/queue.json"


def jobs_of(cli: Cli, name: str = "queue") -> dict[str, dict[str, Any]]:
    return {job["id"]: job for job in cli.queue_file(name)["jobs"]}
