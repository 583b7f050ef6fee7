"""Committing operations to queue files: one CAS per batch, batches formed by group commit."""

from obque.commit.cas import CommitStats, Committer, create_queue
from obque.commit.engine import EngineStats, QueueEngine
from obque.commit.leader import Leadership

__all__ = ["CommitStats", "Committer", "EngineStats", "Leadership", "QueueEngine", "create_queue"]
