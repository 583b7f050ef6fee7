"""Operations and results as JSON, for intents (SPEC §5): an invocation writes its
operations to an intent object, whoever folds it applies them and stores the results in
the queue file's ``applied`` map, and the invocation reads its answer from there.

Each value is wrapped as ``{"t": KIND, "v": {...}}``; payloads stay raw JSON throughout.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import msgspec

from obque.core.errors import InvalidRequest
from obque.core.ops import (
    Ack,
    Advertise,
    Claim,
    ClaimResult,
    ConfigResult,
    Configure,
    CountResult,
    Heartbeat,
    Intent,
    ItemsResult,
    Nack,
    Op,
    OpError,
    Purge,
    Push,
    PushResult,
    Redrive,
    Result,
)

__all__ = ["decode_ops", "decode_results", "encode_ops", "encode_results"]

_OPS: dict[str, type[Any]] = {
    "push": Push,
    "claim": Claim,
    "heartbeat": Heartbeat,
    "ack": Ack,
    "nack": Nack,
    "redrive": Redrive,
    "purge": Purge,
    "configure": Configure,
    "advertise": Advertise,
    "intent": Intent,
}
_RESULTS: dict[str, type[Any]] = {
    "push": PushResult,
    "claim": ClaimResult,
    "items": ItemsResult,
    "count": CountResult,
    "config": ConfigResult,
    "error": OpError,
}
_OP_KIND = {cls: kind for kind, cls in _OPS.items()}
_RESULT_KIND = {cls: kind for kind, cls in _RESULTS.items()}


class _Tagged(msgspec.Struct, frozen=True):
    t: str
    v: msgspec.Raw


_encoder = msgspec.json.Encoder()
_tagged = msgspec.json.Decoder(list[_Tagged])


def _encode(values: Sequence[Any], kinds: dict[type[Any], str]) -> bytes:
    return _encoder.encode(
        [{"t": kinds[type(v)], "v": msgspec.Raw(_encoder.encode(v))} for v in values]
    )


def _decode(data: bytes, kinds: dict[str, type[Any]], what: str) -> list[Any]:
    try:
        return [msgspec.json.decode(item.v, type=kinds[item.t]) for item in _tagged.decode(data)]
    except (msgspec.DecodeError, msgspec.ValidationError, KeyError) as exc:
        raise InvalidRequest(f"not a valid list of {what}: {exc}") from None


def encode_ops(ops: Sequence[Op]) -> bytes:
    return _encode(ops, _OP_KIND)


def decode_ops(data: bytes) -> list[Op]:
    return _decode(data, _OPS, "operations")


def encode_results(results: Sequence[Result]) -> bytes:
    return _encode(results, _RESULT_KIND)


def decode_results(data: bytes) -> list[Result]:
    return _decode(data, _RESULTS, "results")
