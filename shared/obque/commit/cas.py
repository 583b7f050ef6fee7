"""Committing a batch of operations to one queue file by compare-and-set.

``Committer`` keeps the last state it committed and that state's token, so a commit
normally costs one write and no read. When the write loses (``Conflict``) it re-reads,
re-applies the whole batch to the fresh state and tries again; callers are answered only
once a write containing their operations has landed.

Timeline of an ambiguous write (the request left, the answer was lost):

    write(rev 8) ──X  answer lost       -> re-read
        file shows rev 8 with our bytes -> it landed: answer from the pending results
        file shows anything else        -> it did not (or was built upon): re-apply

Re-applying after a write that landed and was then built upon can repeat its pushes;
pushes carrying a key (clients add one to every push) are deduplicated, so at-least-once
holds and keyed pushes stay exactly-once.
"""

from __future__ import annotations

import dataclasses
import os
import random
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from obque.commit.payloads import Payloads, unused
from obque.core import (
    Configure,
    Conflict,
    Op,
    QueueConfig,
    QueueNotFound,
    QueueState,
    Result,
    Stats,
    StoreUnavailable,
    apply,
    decode_state,
    encode_state,
)
from obque.store import Snapshot, Store

__all__ = ["CommitStats", "Committer", "create_queue"]

Clock = Callable[[], float]


@dataclass
class CommitStats:
    commits: int = 0
    conflicts: int = 0
    retries: int = 0
    ops: int = 0


class Committer:
    """Applies batches to one queue file, one compare-and-set per batch.

    Not thread-safe by design: the group-commit writer calls it from one thread at a time
    (a lock here guards against misuse). ``max_unavailable`` transport failures in a row
    give up with ``StoreUnavailable``; conflicts are retried until ``conflict_deadline``.
    """

    def __init__(
        self,
        store: Store,
        *,
        clock: Clock = time.time,
        entropy: Callable[[int], bytes] = os.urandom,
        max_unavailable: int = 5,
        conflict_deadline: float = 30.0,
        trust_cache: bool = False,
        payloads: Payloads | None = None,
    ) -> None:
        self.store = store
        #: Where spilled payloads live: objects commits stop naming are deleted there.
        self.payloads = payloads
        self.clock = clock
        self.entropy = entropy
        self.max_unavailable = max_unavailable
        self.conflict_deadline = conflict_deadline
        #: A leader is the queue's only writer, so its cached state is current. Anyone
        #: else re-reads before answering from a commit that would change nothing.
        self.trust_cache = trust_cache
        self.stats = CommitStats()
        self._state: QueueState | None = None
        self._token: str | None = None
        self._last_write = 0.0
        self._lock = threading.Lock()

    @property
    def state(self) -> QueueState | None:
        """The last state read or committed (None before the first read)."""
        return self._state

    def now_ms(self) -> int:
        return int(self.clock() * 1000)

    def snapshot(self) -> QueueState:
        """The last committed state, or a fresh read when there is none."""
        with self._lock:
            return self._state if self._state is not None else self.refresh()

    def refresh(self) -> QueueState:
        """Re-read the file (``QueueNotFound`` if absent, ``QueueFileCorrupt`` if unreadable)."""
        return self._adopt_or_missing(self.store.read())

    def _adopt_or_missing(self, snap: Snapshot | None) -> QueueState:
        if snap is None:
            self._state = self._token = None
            raise QueueNotFound(f"no queue at {self.store.uri}; create it first")
        return self._adopt(snap)

    def _adopt(self, snap: Snapshot) -> QueueState:
        state = decode_state(snap.data, self.store.uri)
        self._state, self._token = state, snap.token
        return state

    @property
    def last_write_started(self) -> float:
        """``time.monotonic()`` when the last write began (0 before any)."""
        return self._last_write

    def _pace(self) -> None:
        interval = self.store.min_write_interval
        if interval:
            wait = self._last_write + interval - time.monotonic()
            if wait > 0:
                time.sleep(wait)

    def commit(
        self,
        ops: Sequence[Op],
        *,
        check: Callable[[QueueState], None] | None = None,
        max_conflicts: int | None = None,
    ) -> tuple[QueueState, list[Result]]:
        """Apply ``ops`` in one commit and return the committed state and the results.

        ``max_conflicts`` lost writes in a row re-raise ``Conflict`` (the serverless
        handler uses 1 to switch to intents as soon as it meets contention).

        ``check`` runs on the state each attempt starts from (leadership fencing raises
        from there), so nothing is written over a state the caller must not build on.
        """
        with self._lock:
            state, results = self._commit(ops, check, max_conflicts)
        if self.payloads is not None:
            self.payloads.release(unused(ops, results, state))
        return state, results

    def _commit(
        self,
        ops: Sequence[Op],
        check: Callable[[QueueState], None] | None,
        max_conflicts: int | None = None,
    ) -> tuple[QueueState, list[Result]]:
        deadline = time.monotonic() + self.conflict_deadline
        unavailable = conflicts = 0
        backoff = 0.005
        fresh = False
        # A write whose outcome stayed unknown: a later read showing exactly these bytes
        # means it landed, and its results are the answer (applying again would repeat it).
        unconfirmed: tuple[bytes, QueueState, list[Result]] | None = None
        while True:
            sent: tuple[bytes, QueueState, list[Result]] | None = None
            try:
                if self._state is None:
                    snap = self.store.read()
                    if unconfirmed is not None and snap is not None and snap.data == unconfirmed[0]:
                        self._state, self._token = unconfirmed[1], snap.token
                        self._landed_state(unconfirmed[1])
                        self.stats.commits += 1
                        self.stats.ops += len(ops)
                        return unconfirmed[1], unconfirmed[2]
                    state, fresh = self._adopt_or_missing(snap), True
                else:
                    state = self._state
                if check is not None:
                    check(state)
                new_state, results = apply(state, ops, self.now_ms(), self.entropy(16))
                if new_state is state:  # nothing changed: nothing to write
                    if self.trust_cache or fresh:
                        return state, results
                    self._state = None
                    continue
                sent = (encode_state(new_state), new_state, results)
                self._pace()
                # The interval runs from the start of one write to the start of the next
                # (GCS limits how often writes begin); a rare early one is retried.
                self._last_write = time.monotonic()
                token = self.store.write(sent[0], self._token)
                self._state, self._token = new_state, token
                self._landed_state(new_state)
                self.stats.commits += 1
                self.stats.ops += len(ops)
                return new_state, results
            except Conflict:
                self.stats.conflicts += 1
                self._state = None  # the next attempt re-reads
                conflicts += 1
                if max_conflicts is not None and conflicts >= max_conflicts:
                    raise
                if time.monotonic() > deadline:
                    raise StoreUnavailable(
                        f"{self.store.uri}: gave up after {self.conflict_deadline:g}s of "
                        "conflicting writes"
                    ) from None
            except StoreUnavailable:
                self._state = None
                if sent is not None:
                    if self._landed(sent[0], sent[1]):
                        self.stats.ops += len(ops)
                        return sent[1], sent[2]
                    unconfirmed = sent
                unavailable += 1
                if unavailable >= self.max_unavailable:
                    raise
            self.stats.retries += 1
            time.sleep(backoff * random.uniform(0.5, 1.5))
            backoff = min(backoff * 2, 0.5)

    def _landed(self, data: bytes, new_state: QueueState) -> bool:
        """After a write whose answer was lost: did it land? (False: no, or unknown)."""
        try:
            snap = self.store.read()
        except StoreUnavailable:
            return False
        if snap is not None and snap.data == data:
            self._state, self._token = new_state, snap.token
            self._landed_state(new_state)
            self.stats.commits += 1
            return True
        return False

    def _landed_state(self, state: QueueState) -> None:
        """``state`` is in the store now: the payload objects it dropped can go."""
        if state.released and self.payloads is not None:
            self.payloads.release(state.released)


def create_queue(
    store: Store,
    name: str,
    config: dict[str, object] | None = None,
    *,
    clock: Clock = time.time,
    update: bool = True,
) -> tuple[bool, QueueState]:
    """Create the queue file if absent (``(True, state)``); otherwise apply the given
    settings to it (``(False, state)``). Never overwrites an unreadable file.

    ``update=False`` leaves an existing queue as it is (a broker changes settings through
    the queue's engine, so only the queue's leader writes them)."""
    configure = Configure.of(config or {})
    # Revision 1 is the creating commit.
    state = dataclasses.replace(
        QueueState.new(name, configure.applied_to(QueueConfig())),
        revision=1,
        stats=Stats(commits=1),
    )
    try:
        token = store.write(encode_state(state), None)
    except Conflict:
        committer = Committer(store, clock=clock)
        committer.refresh()
        if not configure.changes or not update:
            assert committer.state is not None
            return False, committer.state
        state, _ = committer.commit([configure])
        return False, state
    del token
    return True, state
