"""How a broker takes a queue: one commit of a new broker record, epoch above the last.

A standby (or a broker starting up) may take the queue when nobody leads it, or when
the leader's heartbeat is older than the timeout. Its cached record may be old, so it
reads the file again before giving up, and the commit checks again that the queue is
still free *and* that the record it built on is still the one in the file: if another
broker advertised meanwhile, ``epoch + 1`` of the old record would not be above theirs
(epochs would stop being a total order), so the new record is built on the one found.
"""

from __future__ import annotations

from obque.commit.cas import Committer
from obque.commit.leader import Leadership
from obque.core import QueueState

__all__ = ["take_over"]


def take_over(committer: Committer, lead: Leadership) -> str | None:
    """Commit ``lead``'s claim to the queue; the URL of the broker it replaced (or
    None). Raises ``NotLeader`` when another broker leads it and is not stale."""
    state = committer.state or committer.refresh()
    now = committer.now_ms()
    if not lead.can_take(state, now):
        state = committer.refresh()  # the cached record may be old
        if not lead.can_take(state, now):
            raise lead.not_leader(state)

    def still_free(current: QueueState) -> None:
        if not lead.can_take(current, committer.now_ms()):
            raise lead.not_leader(current)
        if current.broker != state.broker:
            # Another broker advertised since ``state`` was read (our cache was old):
            # epoch + 1 of the old record would not be above theirs. Build anew.
            raise _RecordMoved(current)

    while True:
        try:
            taken, _ = committer.commit([lead.claim_op(state, now)], check=still_free)
            break
        except _RecordMoved as moved:
            state = moved.state
    lead.fenced_by = None
    lead.committed(taken)
    return state.broker.url if state.broker is not None else None


class _RecordMoved(Exception):
    """A takeover's commit found another broker record than the one it was built on."""

    def __init__(self, state: QueueState) -> None:
        super().__init__("the queue's broker record changed meanwhile")
        self.state = state
