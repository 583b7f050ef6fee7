"""The Lambda code bundle, built with pip alone: no Docker, no Lambda build image.

The bundle is one directory that both functions of the stack run from (the broker and the
queue-file custom resource)::

    obque/                       the repo's wheel, installed with --no-deps
    msgspec/ pydantic_core/ ...  the `aws` extra's dependencies, as manylinux aarch64
                                 cp312 wheels (--platform ... --only-binary=:all:)
    obque_queue_resource.py      the custom resource handler (obque_infra/queue_resource.py)

The repo is not a binary wheel, so ``pip install --only-binary=:all: .`` cannot work: the
wheel is built first (``pip wheel --no-deps``) and installed on its own, and its
dependencies are resolved from that wheel's metadata for the Lambda's interpreter and
platform, then installed with the platform flags. Markers are evaluated here for the
target (aarch64 Linux, CPython 3.12), not for the machine running the build.

Bundles are cached under ``.build/cache/`` by a key over everything that goes into them
(the sources, ``pyproject.toml``, the target, this file), so a repeated ``cdk synth``
copies (hard-links) a finished directory instead of running pip. Resolved versions are not
part of the key: delete ``.build/cache/`` to pick up newer dependencies.

``python infra/build_bundle.py aws --out DIR`` writes the bundle to DIR: ``sam build``
runs it through ``infra/sam/Makefile``.
"""

from __future__ import annotations

import email.parser
import hashlib
import importlib.util
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

__all__ = [
    "BundleError",
    "BundleSpec",
    "build_bundle",
    "build_wheel",
    "check_bundle",
    "export_bundle",
    "repo_root",
]

#: The distribution whose wheel the bundle holds.
PROJECT = "obque"
#: Lambda's limit on the unzipped size of a function's code.
LAMBDA_UNZIPPED_LIMIT = 250 * 1024 * 1024
#: ELF ``e_machine`` values, for checking that native code matches the architecture.
_ELF_MACHINES = {"aarch64": 183, "x86_64": 62}
_PLATFORMS = {"aarch64": "manylinux2014_aarch64", "x86_64": "manylinux2014_x86_64"}
_SOURCE_DIRS = ("shared/obque", "client/obque", "functions/obque")
_KEEP_CACHED = 3

RESOURCE_MODULE = Path(__file__).with_name("queue_resource.py")
#: The module name of the custom resource handler inside the bundle.
RESOURCE_MODULE_NAME = "obque_queue_resource"


class BundleError(RuntimeError):
    """The bundle could not be built (pip failed, or the result would not run on Lambda)."""


def repo_root() -> Path:
    """The repository this package sits in (``infra/obque_infra/`` -> the root)."""
    return Path(__file__).resolve().parents[2]


@dataclass(frozen=True)
class BundleSpec:
    """What to bundle and for which Lambda runtime."""

    repo: Path = field(default_factory=repo_root)
    python_version: str = "3.12"
    architecture: str = "aarch64"
    extra: str = "aws"

    @property
    def platform(self) -> str:
        return _PLATFORMS[self.architecture]

    @property
    def cache_root(self) -> Path:
        return self.repo / ".build" / "cache"

    def inputs(self) -> Iterator[Path]:
        """Every file whose content goes into the bundle (or decides how it is built)."""
        yield self.repo / "pyproject.toml"
        yield RESOURCE_MODULE
        yield Path(__file__)
        for folder in _SOURCE_DIRS:
            for path in sorted((self.repo / folder).rglob("*")):
                if path.is_file() and "__pycache__" not in path.parts and path.suffix != ".pyc":
                    yield path

    def cache_key(self) -> str:
        digest = hashlib.sha256()
        digest.update(f"{self.python_version} {self.platform} {self.extra}\n".encode())
        for path in self.inputs():
            name = path.relative_to(self.repo) if path.is_relative_to(self.repo) else path.name
            digest.update(f"{name}\n".encode())
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        return digest.hexdigest()


def build_bundle(spec: BundleSpec, *, log: bool = True) -> Path:
    """The bundle directory for ``spec``: from the cache, or built now and cached."""
    key = spec.cache_key()
    cached = spec.cache_root / f"lambda-{key[:20]}"
    if cached.is_dir():
        os.utime(cached)  # most recently used: pruned last
        return cached
    spec.cache_root.mkdir(parents=True, exist_ok=True)
    if log:
        _say(f"building the Lambda bundle into {cached} (pip, no Docker)")
    work = Path(tempfile.mkdtemp(prefix="building-", dir=spec.cache_root))
    try:
        target = work / "bundle"
        wheel = build_wheel(spec.repo, work / "wheel")
        requirements = dependencies(wheel, spec)
        _pip(
            "install",
            "--target",
            str(target),
            "--platform",
            spec.platform,
            "--only-binary=:all:",
            "--python-version",
            spec.python_version,
            "--implementation",
            "cp",
            *requirements,
        )
        _pip("install", "--no-deps", "--target", str(target), str(wheel))
        shutil.copy2(RESOURCE_MODULE, target / f"{RESOURCE_MODULE_NAME}.py")
        _tidy(target)
        check_bundle(target, spec.architecture)
        try:
            target.rename(cached)
        except OSError:
            if not cached.is_dir():  # not just a concurrent build finishing first
                raise
    finally:
        shutil.rmtree(work, ignore_errors=True)
    _prune(spec.cache_root, keep=cached)
    return cached


def export_bundle(bundle: Path, destination: Path) -> None:
    """Put the bundle's files into ``destination`` (hard links where the disk allows)."""

    def link(source: str, target: str) -> None:
        try:
            os.link(source, target)
        except OSError:
            shutil.copy2(source, target)

    shutil.copytree(bundle, destination, copy_function=link, dirs_exist_ok=True)


def dependencies(wheel: Path, spec: BundleSpec) -> list[str]:
    """The requirements of ``PROJECT[extra]`` on the target, from the wheel's metadata."""
    with zipfile.ZipFile(wheel) as archive:
        name = next(n for n in archive.namelist() if n.endswith(".dist-info/METADATA"))
        metadata = email.parser.BytesParser().parsebytes(archive.read(name))
    declared = [Requirement(line) for line in metadata.get_all("Requires-Dist") or ()]
    environment = {
        "python_version": spec.python_version,
        "python_full_version": f"{spec.python_version}.0",
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "platform_machine": spec.architecture,
        "platform_system": "Linux",
        "sys_platform": "linux",
        "os_name": "posix",
    }
    wanted: list[str] = []
    pending, seen = [spec.extra], set()
    while pending:
        extra = pending.pop()
        if extra in seen:
            continue
        seen.add(extra)
        for requirement in declared:
            marker = requirement.marker
            if marker is not None and not marker.evaluate({**environment, "extra": extra}):
                continue
            if marker is None and extra != spec.extra:
                continue  # unconditional requirements are taken once, with the first extra
            if canonicalize_name(requirement.name) == PROJECT:
                pending.extend(requirement.extras)  # "obque[s3,broker]": our own extras
                continue
            requirement.marker = None
            if str(requirement) not in wanted:
                wanted.append(str(requirement))
    return wanted


def check_bundle(bundle: Path, architecture: str = "aarch64") -> None:
    """Fail unless the bundle can run on Lambda: the handlers are there, every native
    library is built for ``architecture``, and it fits Lambda's size limit."""
    for module in ("obque/broker/aws.py", f"{RESOURCE_MODULE_NAME}.py"):
        if not (bundle / module).is_file():
            raise BundleError(f"{bundle}: {module} is missing")
    expected = _ELF_MACHINES[architecture]
    size = 0
    for path in bundle.rglob("*"):
        if not path.is_file():
            continue
        size += path.stat().st_size
        if ".so" in path.suffixes:
            machine = _elf_machine(path)
            if machine is not None and machine != expected:
                raise BundleError(f"{path} is native code for another machine ({machine})")
    if size > LAMBDA_UNZIPPED_LIMIT:
        raise BundleError(f"{bundle} holds {size / 2**20:.0f} MiB; Lambda allows 250 MiB")


def _elf_machine(path: Path) -> int | None:
    with path.open("rb") as stream:
        header = stream.read(20)
    if len(header) < 20 or header[:4] != b"\x7fELF":
        return None
    return int.from_bytes(header[18:20], "little" if header[5] == 1 else "big")


def build_wheel(repo: Path, into: Path) -> Path:
    """Build the repo's (pure Python) wheel into ``into`` and return its path."""
    # Without build isolation when the build backend is already importable: no download
    # of hatchling for every bundle.
    flags = ["--no-build-isolation"] if _importable("hatchling") else []
    _pip("wheel", "--no-deps", *flags, "--wheel-dir", str(into), str(repo))
    wheels = sorted(into.glob(f"{PROJECT}-*.whl"))
    if len(wheels) != 1:
        raise BundleError(f"pip wheel left {len(wheels)} {PROJECT} wheels in {into}")
    return wheels[0]


def _importable(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


def _pip(*args: str) -> None:
    command = [
        sys.executable,
        "-m",
        "pip",
        *args[:1],
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        *(("--no-compile",) if args[0] == "install" else ()),
        *args[1:],
    ]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-20:])
        raise BundleError(f"{' '.join(command[2:4])} failed ({done.returncode}):\n{tail}")


def _tidy(target: Path) -> None:
    """Drop what pip's ``--target`` leaves that Lambda cannot use."""
    shutil.rmtree(target / "bin", ignore_errors=True)  # scripts with this machine's shebang
    for cache in list(target.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)


def _prune(cache_root: Path, *, keep: Path) -> None:
    bundles = sorted(
        (p for p in cache_root.glob("lambda-*") if p.is_dir() and p != keep),
        key=lambda p: p.stat().st_mtime,
        reverse=True,
    )
    for stale in bundles[_KEEP_CACHED - 1 :]:
        shutil.rmtree(stale, ignore_errors=True)


def _say(message: str) -> None:
    print(f"obque-infra: {message}", file=sys.stderr, flush=True)
