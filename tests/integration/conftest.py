"""Registers the object-store server fixtures of :mod:`servers` for integration tests."""

from servers import (
    fake_gcs,
    fake_gcs_server,
    moto_s3,
    moto_server,
    seaweedfs_s3,
    seaweedfs_server,
)

__all__ = [
    "fake_gcs",
    "fake_gcs_server",
    "moto_s3",
    "moto_server",
    "seaweedfs_s3",
    "seaweedfs_server",
]
