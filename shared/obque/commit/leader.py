"""Broker leadership of one queue file: advertise, heartbeat, fence.

A long-running broker becomes the queue's broker by committing a ``broker`` record with
its URL, a fresh ``id`` and ``epoch + 1``. It refreshes ``heartbeat_ms`` at least every
``timeout / 3``: piggy-backed on ordinary commits, and written on its own when that much
time has passed since the last one (the engine's idle writer wakes for it). Another broker
takes over only when that heartbeat is older than ``timeout`` -- or at once when the record
names its own URL, since whoever advertised that address before can no longer be listening
on it.

Every commit starts from the state it will write over; if that state names another
broker, this one is *fenced*: it never commits again and answers ``NotLeader`` with the
URL now advertised. A broker whose write lost to a newer epoch finds out on the re-read
that follows the conflict, so a stale broker is fenced within one commit.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from obque.core import Advertise, BrokerRecord, NotLeader, QueueState

__all__ = ["Leadership"]


@dataclass
class Leadership:
    url: str
    timeout_s: float = 10.0
    broker_id: str = field(default_factory=lambda: f"b-{secrets.token_hex(4)}")
    #: Take over a queue advertised by a serverless deployment.
    take_serverless: bool = False
    epoch: int | None = None
    fenced_by: str | None = None
    last_heartbeat_ms: int = 0

    @property
    def heartbeat_every_s(self) -> float:
        """The longest a leader lets pass between two heartbeats it writes."""
        return self.timeout_s / 3

    @property
    def is_leader(self) -> bool:
        return self.epoch is not None and self.fenced_by is None

    def not_leader(self, state: QueueState | None = None) -> NotLeader:
        url = self.fenced_by
        if state is not None and state.broker is not None:
            url = state.broker.url
        return NotLeader(
            f"this broker ({self.url}) does not serve this queue; it is served by {url}",
            broker_url=url,
        )

    def can_take(self, state: QueueState, now_ms: int) -> bool:
        """May this broker become the leader of a queue in ``state``?"""
        record = state.broker
        if record is None or record.id == self.broker_id or record.url == self.url:
            return True
        if record.mode == "serverless":
            return self.take_serverless
        return now_ms - record.heartbeat_ms > self.timeout_s * 1000

    def claim_op(self, state: QueueState, now_ms: int) -> Advertise:
        """The operation that makes this broker the leader (``epoch + 1``)."""
        epoch = (state.broker.epoch if state.broker is not None else 0) + 1
        return Advertise(BrokerRecord(self.url, "process", self.broker_id, epoch, now_ms))

    def check(self, state: QueueState) -> None:
        """Raise ``NotLeader`` (and stay fenced) if ``state`` names another leader."""
        record = state.broker
        if self.epoch is None:
            raise self.not_leader(state)
        if record is None or record.id != self.broker_id or record.epoch != self.epoch:
            self.fenced_by = record.url if record is not None else "nobody"
            raise self.not_leader(state)

    def heartbeat_op(self, now_ms: int) -> Advertise | None:
        """A heartbeat to piggy-back on this commit, when one is due."""
        if self.epoch is None or now_ms - self.last_heartbeat_ms < self.heartbeat_every_s * 1000:
            return None
        return Advertise(BrokerRecord(self.url, "process", self.broker_id, self.epoch, now_ms))

    def release_op(self) -> Advertise:
        """What a leader that stops cleanly leaves behind: its epoch (so fencing still
        counts up), but no URL and a heartbeat of 0 -- clients see no broker (and serve a
        local queue themselves), and the next broker takes over without waiting."""
        assert self.epoch is not None
        return Advertise(BrokerRecord("", "process", self.broker_id, self.epoch, 0))

    def committed(self, state: QueueState) -> None:
        """Note what a successful commit advertised."""
        record = state.broker
        if record is not None and record.id == self.broker_id:
            self.epoch = record.epoch
            self.last_heartbeat_ms = record.heartbeat_ms
