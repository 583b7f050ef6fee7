"""Committing operations to queue files: one CAS per batch, batches formed by group commit."""

from obque.commit.cas import CommitStats, Committer, create_queue

__all__ = ["CommitStats", "Committer", "create_queue"]
