"""Committing operations to queue files: one CAS per batch, batches formed by group commit."""

from obque.commit.cas import CommitStats, Committer, create_queue
from obque.commit.engine import EngineStats, QueueEngine
from obque.commit.intents import IntentEngine, IntentSettings
from obque.commit.leader import Leadership
from obque.commit.protocol import Engine

__all__ = [
    "CommitStats",
    "Committer",
    "Engine",
    "EngineStats",
    "IntentEngine",
    "IntentSettings",
    "Leadership",
    "QueueEngine",
    "create_queue",
]
