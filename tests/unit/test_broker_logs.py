"""The broker's JSON log lines and the commit layer's events that fill them.

The engine's log (``obque.commit.events.CommitLog``) writes through the real
``obque.commit`` logger into a handler with the broker's formatter; every line is read
back with ``json.loads``.
"""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest

from obque.broker.logs import JsonLogFormatter
from obque.commit.events import CommitLog, CommitRecord


class Lines:
    def __init__(self) -> None:
        self.buffer = io.StringIO()

    def read(self) -> list[dict[str, Any]]:
        text = self.buffer.getvalue()
        return [json.loads(line) for line in text.splitlines()]


@pytest.fixture
def lines() -> Iterator[Lines]:
    captured = Lines()
    handler = logging.StreamHandler(captured.buffer)
    handler.setFormatter(JsonLogFormatter())
    logger = logging.getLogger("obque.commit")
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield captured
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_leadership_events_are_json_lines_with_their_fields(lines: Lines) -> None:
    log = CommitLog("emails")
    log.acquired("http://a:8080", 3, "http://old:8080")
    log.fenced(3, "http://b:8080")
    log.standing_by("http://b:8080")  # already said by the fencing line
    log.standing_by("http://c:8080")
    log.released(4)
    got = lines.read()
    assert [line["event"] for line in got] == [
        "leader_acquired",
        "leader_fenced",
        "leader_standby",
        "leader_released",
    ]
    assert all(line["queue"] == "emails" and line["logger"] == "obque.commit" for line in got)
    assert got[0] | {"ts": None} == {
        "ts": None,
        "level": "info",
        "logger": "obque.commit",
        "msg": "queue emails: leading it at http://a:8080 (epoch 3; before: http://old:8080)",
        "event": "leader_acquired",
        "queue": "emails",
        "url": "http://a:8080",
        "epoch": 3,
        "previous": "http://old:8080",
    }
    assert got[0]["ts"].startswith("20") and got[0]["ts"].endswith("+00:00")
    assert (got[1]["level"], got[1]["leader"], got[1]["epoch"]) == ("warning", "http://b:8080", 3)
    assert got[2]["leader"] == "http://c:8080"


def test_conflicts_slow_commits_and_failures_are_throttled_and_counted(lines: Lines) -> None:
    clock = Clock()
    log = CommitLog("q", slow_commit_s=1.0, every_s=10.0, clock=clock)
    for _ in range(5):
        log.committed(CommitRecord("q", ops=7, seconds=1.5, conflicts=2))
        log.failed("store_unavailable", "s3://b/q.json: 503 SlowDown", callers=4)
        clock.now += 1
    clock.now += 10
    log.committed(CommitRecord("q", ops=1, seconds=0.01, conflicts=1))
    log.failed("queue_file_corrupt", "s3://b/q.json is not a queue file", callers=1)
    got = lines.read()
    conflicts = [line["conflicts"] for line in got if line["event"] == "conflicts"]
    assert conflicts == [2, 9]  # the first at once, then the 8 held back plus 1
    slow = [line for line in got if line["event"] == "slow_commit"]
    assert [(line["seconds"], line["ops"], line["count"]) for line in slow] == [(1.5, 7, 1)]
    assert slow[0]["level"] == "warning"
    failed = [(line["code"], line["count"]) for line in got if line["event"] == "commit_failed"]
    assert failed == [("store_unavailable", 1), ("queue_file_corrupt", 1)]


def test_a_crash_is_one_line_with_its_traceback(lines: Lines) -> None:
    try:
        raise RuntimeError("a bug\nover two lines")
    except RuntimeError as exc:
        CommitLog("q").crashed(exc)
    (line,) = lines.read()  # one line despite the newlines in the message and traceback
    assert (line["level"], line["event"]) == ("error", "commit_crashed")
    assert line["exc"].startswith("Traceback") and "a bug\nover two lines" in line["exc"]


def test_uvicorn_colour_copies_are_dropped_and_odd_values_still_encode() -> None:
    record = logging.LogRecord("uvicorn.error", logging.INFO, "", 0, "Started %s", ("x",), None)
    record.color_message = "\x1b[1mStarted\x1b[0m %s"
    record.path = io  # not JSON: written as its text
    line = json.loads(JsonLogFormatter().format(record))
    assert line["msg"] == "Started x"
    assert "color_message" not in line
    assert line["path"].startswith("<module 'io'")
