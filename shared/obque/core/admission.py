"""Whether a push fits its queue: the limits ``apply`` answers per operation.

A push is refused as a whole (``OpError``) when one of its payloads is above
``max_payload_bytes``, or when the jobs it would really add -- not the keyed ones that
turn out to be duplicates, which add nothing and answer the existing id -- would take
the queue past ``max_jobs`` or its file past ``max_inline_bytes``. So a retried keyed
push whose first attempt landed gets its id back even from a full queue.
"""

from __future__ import annotations

from collections.abc import Sequence

from obque.core.model import QueueConfig
from obque.core.ops import NewJob, OpError

__all__ = ["push_refusal"]


def push_refusal(
    queue: str,
    config: QueueConfig,
    jobs: int,
    inline_bytes: int,
    pushed: Sequence[NewJob],
    added: Sequence[NewJob],
) -> OpError | None:
    """Why a push must be refused, or None. ``pushed`` is the whole push; ``added``
    the part of it that would become new jobs; ``jobs`` and ``inline_bytes`` what the
    queue holds now."""
    limit = config.max_payload_bytes
    for new in pushed:
        if new.size > limit:
            return OpError(
                "payload_too_large",
                f"a payload of {new.size} bytes exceeds this queue's max_payload_bytes of {limit}",
            )
    if added and jobs + len(added) > config.max_jobs:
        return OpError(
            "queue_full",
            f"queue {queue!r} holds {jobs} jobs; max_jobs is {config.max_jobs}",
        )
    adding = sum(new.inline_bytes for new in added)
    if adding and inline_bytes + adding > config.max_inline_bytes:
        return OpError(
            "queue_full",
            f"queue {queue!r} holds {inline_bytes} bytes of payloads in its "
            f"file; {adding} more would pass max_inline_bytes of "
            f"{config.max_inline_bytes} (payloads above spill_payload_bytes are "
            "stored beside the file and count only their name)",
        )
    return None
