"""What a deployment is made of, from CDK context (``cdk.json`` or ``-c key=value``).

    queues         queue names, comma-separated                 queue
    lease_seconds  lease of a claim, for queues created now      obque's default (30)
    max_attempts   deliveries before a job is dead, ditto        obque's default (5)
    memory         broker memory in MB (CPU grows with it)       1024
    timeout        broker timeout in seconds                     60
    auth           iam: Function URL with AWS_IAM (SigV4)        iam
                   token: auth NONE + bearer token -- see docs/deploy.md for the risk
    token          the bearer token for auth=token (or env OBQUE_TOKEN at synth)
    worker_policy  create a managed policy producers and workers can attach   true

Values given with ``-c`` arrive as strings; ``cdk.json`` may hold real numbers and lists.
Every value is checked here, so a bad one fails ``cdk synth`` with its name in the message.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

from obque.core import Configure, InvalidRequest
from obque.core.limits import check_queue_name

__all__ = ["ContextError", "DeploySettings"]

#: Shorter tokens are guessable by anyone who can reach a public URL.
MIN_TOKEN_LENGTH = 32
AUTH_MODES = ("iam", "token")


class ContextError(ValueError):
    """A CDK context value is missing or out of range (the message names the key)."""


@dataclass(frozen=True)
class DeploySettings:
    queues: tuple[str, ...] = ("queue",)
    lease_seconds: int | None = None
    max_attempts: int | None = None
    memory_mb: int = 1024
    timeout_s: int = 60
    auth: str = "iam"
    token: str | None = None
    worker_policy: bool = True

    def __post_init__(self) -> None:
        if not self.queues:
            raise ContextError("queues: name at least one queue")
        if len(set(self.queues)) != len(self.queues):
            raise ContextError(f"queues: {','.join(self.queues)} names a queue twice")
        for name in self.queues:
            try:
                check_queue_name(name)
            except InvalidRequest as exc:
                raise ContextError(f"queues: {exc}") from None
        try:
            Configure.of(self.queue_config)
        except InvalidRequest as exc:
            raise ContextError(str(exc)) from None
        if not 128 <= self.memory_mb <= 10240:
            raise ContextError(f"memory must be 128-10240 (MB), got {self.memory_mb}")
        # Claims long-poll for up to 20 s and then commit; a Function URL allows 900 s.
        if not 30 <= self.timeout_s <= 900:
            raise ContextError(f"timeout must be 30-900 (seconds), got {self.timeout_s}")
        if self.auth not in AUTH_MODES:
            raise ContextError(f"auth must be one of {', '.join(AUTH_MODES)}, got {self.auth!r}")
        if self.auth == "token" and (self.token is None or len(self.token) < MIN_TOKEN_LENGTH):
            raise ContextError(
                f"auth=token needs a token of at least {MIN_TOKEN_LENGTH} characters "
                "(-c token=… or OBQUE_TOKEN); make one with "
                "python -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
        if self.auth == "iam" and self.token is not None:
            raise ContextError("token is only used with auth=token")

    @property
    def queue_config(self) -> dict[str, object]:
        """Settings given for new queues (unset ones keep obque's defaults)."""
        config: dict[str, object] = {}
        if self.lease_seconds is not None:
            config["lease_seconds"] = self.lease_seconds
        if self.max_attempts is not None:
            config["max_attempts"] = self.max_attempts
        return config

    @classmethod
    def from_context(cls, get: Callable[[str], object]) -> DeploySettings:
        """Read settings through ``get`` (``node.try_get_context``); None means unset."""
        defaults = cls()
        auth = _text(get, "auth") or defaults.auth
        token = _text(get, "token")
        if token is None and auth == "token":
            token = os.environ.get("OBQUE_TOKEN") or None
        return cls(
            queues=_names(get, "queues") or defaults.queues,
            lease_seconds=_integer(get, "lease_seconds"),
            max_attempts=_integer(get, "max_attempts"),
            memory_mb=_integer(get, "memory") or defaults.memory_mb,
            timeout_s=_integer(get, "timeout") or defaults.timeout_s,
            auth=auth,
            token=token,
            worker_policy=_flag(get, "worker_policy", defaults.worker_policy),
        )


def _text(get: Callable[[str], object], key: str) -> str | None:
    value = get(key)
    if value is None:
        return None
    if not isinstance(value, str):
        raise ContextError(f"{key} must be a string, got {value!r}")
    return value.strip() or None


def _names(get: Callable[[str], object], key: str) -> tuple[str, ...]:
    value = get(key)
    if value is None:
        return ()
    if isinstance(value, str):
        items = value.split(",")
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = value
    else:
        raise ContextError(f"{key} must be names separated by commas, got {value!r}")
    return tuple(item.strip() for item in items if item.strip())


def _integer(get: Callable[[str], object], key: str) -> int | None:
    value = get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | str):
        raise ContextError(f"{key} must be an integer, got {value!r}")
    try:
        return int(value)
    except ValueError:
        raise ContextError(f"{key} must be an integer, got {value!r}") from None


def _flag(get: Callable[[str], object], key: str, default: bool) -> bool:
    value = get(key)
    if value is None:
        return default
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ContextError(f"{key} must be true or false, got {value!r}")
