"""Every limit obque enforces, in one place, so the engine, the HTTP layer and the
client name the same numbers in their errors."""

from __future__ import annotations

import re

from obque.core.errors import InvalidRequest

__all__ = [
    "FORMAT",
    "MAX_CLAIM",
    "MAX_DELAY_SECONDS",
    "MAX_ERROR_CHARS",
    "MAX_KEY_CHARS",
    "MAX_LEASE_SECONDS",
    "MAX_PUSH_BATCH",
    "MAX_WAIT_SECONDS",
    "MAX_WORKER_CHARS",
    "NAME_PATTERN",
    "check_queue_name",
]

FORMAT = "obque/1"

#: Queue names become object keys and URL path segments: keep them boring.
NAME_PATTERN = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")

MAX_PUSH_BATCH = 1000
MAX_CLAIM = 100
MAX_WAIT_SECONDS = 20.0
MIN_LEASE_SECONDS = 1
MAX_LEASE_SECONDS = 43_200  # 12 hours, as SQS's visibility timeout
MAX_DELAY_SECONDS = 30 * 86_400  # 30 days, as Cloud Tasks' schedule horizon
MAX_ATTEMPTS_LIMIT = 1000
MAX_KEY_CHARS = 256
MAX_WORKER_CHARS = 128
MAX_ID_CHARS = 32
MAX_LEASE_CHARS = 64
#: Nack error texts are kept on the job; longer texts are cut, not refused, because the
#: text usually comes from an exception a worker did not choose.
MAX_ERROR_CHARS = 4096
#: Ceiling for a queue's ``max_payload_bytes`` setting (a payload travels in one request).
MAX_PAYLOAD_BYTES_LIMIT = 4 * 1024 * 1024
#: Floor for ``spill_payload_bytes``: below it a separate object costs more than it saves.
MIN_SPILL_PAYLOAD_BYTES = 1024
#: Ceiling for a queue's ``max_jobs`` setting; every commit rewrites every job.
MAX_JOBS_LIMIT = 1_000_000
#: Range of a queue's ``max_inline_bytes`` setting (payload bytes held in the file): at
#: the ceiling every commit rewrites a file of over a gigabyte.
MIN_INLINE_BYTES = 1024
MAX_INLINE_BYTES_LIMIT = 1024 * 1024 * 1024
#: Ceilings for a queue's ``dead_retention`` and ``dedup_seconds`` settings.
MAX_DEAD_RETENTION = 1_000_000
MAX_DEDUP_SECONDS = 7 * 86_400
#: Keys a client adds to make a retried push idempotent start with this character...
RETRY_KEY_PREFIX = "~"
#: ...and deduplicate for this long after their job leaves the queue (a retry comes
#: within seconds; user keys keep the queue's longer ``dedup_seconds``).
RETRY_KEY_SECONDS = 60
#: ``applied`` remembers at most this many keys and intents, oldest dropped first.
MAX_APPLIED = 100_000


def check_queue_name(name: str) -> str:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise InvalidRequest(
            f"invalid queue name {name!r}: use 1-63 characters of a-z, 0-9, '.', '_', '-', "
            "starting with a letter or digit"
        )
    return name
