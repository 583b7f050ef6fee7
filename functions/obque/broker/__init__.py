"""The obque broker: the HTTP API v1 over group-committed queue files."""

from obque.broker.app import create_app
from obque.broker.settings import BrokerSettings

__all__ = ["BrokerSettings", "create_app"]
