"""``obque init``, ``inspect`` and ``sweep`` (the commands that read or write the queue file
itself) run as subprocesses, with the mistakes a user makes: one ``obque: …`` line and a
non-zero exit each.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.register_assert_rewrite("broker_proc", "cli_run")

from cli_run import FORMS, QUEUE, Cli, jobs_of  # noqa: E402

pytest_plugins = ["broker_proc", "cli_run"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


# -- init ----------------------------------------------------------------------------------------


def test_init_creates_then_reports_that_it_exists(cli: Cli) -> None:
    assert cli("init").ok().lines() == [f"created {QUEUE} (revision 1)"]
    assert cli.queue_file()["name"] == "queue"
    assert cli("init").ok().lines() == [f"exists: {QUEUE} (revision 1)"]

    made = cli("init", "--queue", "emails", "--lease-seconds", "60", "--max-attempts", "3")
    assert made.ok().lines() == ["created file://./.obque/emails.json (revision 1)"]
    config = cli.queue_file("emails")["config"]
    assert (config["lease_seconds"], config["max_attempts"]) == (60, 3)
    # Settings given for an existing queue are applied to it.
    cli("init", "file://./.obque/emails.json", "--max-jobs", "10").ok()
    assert cli.queue_file("emails")["config"]["max_jobs"] == 10


def test_init_has_a_flag_for_every_queue_setting(cli: Cli) -> None:
    settings = {
        "lease_seconds": 45,
        "max_attempts": 7,
        "retry_delay_seconds": 2.5,
        "retry_delay_max_seconds": 90.0,
        "dead_retention": 12,
        "max_payload_bytes": 4096,
        "dedup_seconds": 60,
        "max_jobs": 500,
        "spill_payload_bytes": 2048,
        "max_inline_bytes": 1_048_576,
    }
    flags = [x for k, v in settings.items() for x in ("--" + k.replace("_", "-"), str(v))]
    cli("init", *flags).ok()
    config = cli.queue_file()["config"]
    assert {k: config[k] for k in settings} == settings
    # Every setting the file holds has its flag.
    assert set(config) == set(settings)


def test_init_follows_obque_root_and_flags_override_it(cli: Cli, tmp_path: Path) -> None:
    from_env = (tmp_path / "from-env").as_uri() + "/"
    from_flag = (tmp_path / "from-flag").as_uri() + "/"
    cli("init", OBQUE_ROOT=from_env).ok()
    assert (tmp_path / "from-env" / "queue.json").exists()
    cli("init", "--root", from_flag, "-q", "jobs", OBQUE_ROOT=from_env).ok()
    assert (tmp_path / "from-flag" / "jobs.json").exists()
    assert not (tmp_path / "from-env" / "jobs.json").exists()


@pytest.mark.parametrize(
    ("args", "mentions"),
    [
        (("init", "--lease-seconds", "0"), ("lease_seconds",)),
        (("init", "--dead-retention", "-1"), ("dead_retention", "from 0 to")),
        (("init", "--retry-delay-seconds", "1e12"), ("retry_delay_seconds", "from 0 to")),
        (("init", "--spill-payload-bytes", "10"), ("spill_payload_bytes", "from 1024")),
        (("init", "--max-jobs", "many"), ("--max-jobs", "not a valid integer")),
        (("init", "--no-such-flag"), ("No such option", "--no-such-flag")),
        (("init", "--queue", "Bad Name!"), ("queue name",)),
        (("init", "bogus://bucket/q.json"), ("bogus", *FORMS)),
        (("init", "/tmp/not-a-uri.json"), ("not a store URI", *FORMS)),
        (("init", "file://host/q.json"), ("file:///absolute/path",)),
    ],
    ids=[
        "zero-lease",
        "negative-retention",
        "huge-retry-delay",
        "tiny-spill",
        "not-a-number",
        "unknown-flag",
        "bad-name",
        "bad-scheme",
        "bare-path",
        "file-host",
    ],
)
def test_init_mistakes(cli: Cli, args: tuple[str, ...], mentions: tuple[str, ...]) -> None:
    cli(*args).user_error(*mentions)


# -- inspect -----------------------------------------------------------------------------------


def test_inspect_human_and_json(cli: Cli) -> None:
    cli("init").ok()
    cli("push", QUEUE, '{"video": "a.mp4"}', '"x"').ok()
    human = cli("inspect").ok().stdout
    assert human.startswith(f"{QUEUE}  revision 2")
    assert "broker:   none advertised" in human
    assert "2 ready, 0 delayed, 0 claimed, 0 dead" in human
    assert "oldest:   a job has been ready for " in human
    assert "2 pushed, 0 acked" in human
    assert '{"video":"a.mp4"}' in human
    assert "claimed" not in human.split("jobs:", 1)[1].split("\n", 1)[1]
    raw = json.loads(cli("inspect", "--raw").ok().stdout)
    assert raw == cli.queue_file()
    limited = cli("inspect", "--limit", "1").ok().stdout
    assert "... 1 more" in limited
    cli("inspect", "--limit", "-1").user_error("--limit")


def claim_in_another_process(cli: Cli, worker: str, count: int) -> None:
    """Claim jobs the way a worker would, from its own process, and leave them held."""
    script = (
        "from obque.client import Client\n"
        f"jobs = Client({QUEUE!r}).claim({worker!r}, {count}, lease_seconds=600)\n"
        f"assert len(jobs) == {count}, jobs\n"
    )
    subprocess.run([sys.executable, "-c", script], cwd=cli.cwd, env=cli.env, check=True)


def test_inspect_shows_every_claimed_job_and_the_oldest_ready(cli: Cli) -> None:
    cli("init").ok()
    cli("push", QUEUE, '"later"', "--delay", "600").ok()  # job 1 stays first in the file
    cli("push", QUEUE, "2", "3", "4").ok()
    claim_in_another_process(cli, "w-east", 2)  # jobs 2 and 3
    before = time.time() * 1000

    # The claimed section lists jobs 2 and 3 although --limit 1 lists only job 1.
    human = cli("inspect", "--limit", "1").ok().stdout
    assert "1 ready, 1 delayed, 2 claimed, 0 dead" in human
    claimed_rows = human.split("claimed (2)", 1)[1].split("jobs (first 1)", 1)[0]
    rows = [line.split() for line in claimed_rows.strip().splitlines()[1:]]
    assert [(r[0], r[1], r[2]) for r in rows] == [("2", "w-east", "1"), ("3", "w-east", "1")]
    assert all(590 < float(r[3].removesuffix("s")) <= 600 for r in rows)

    summary = json.loads(cli("inspect", "--json").ok().stdout)
    assert summary["uri"] == QUEUE
    assert summary["revision"] == cli.queue_file()["revision"]
    assert summary["broker"] is None
    assert {k: summary[k] for k in ("ready", "delayed", "claimed", "dead")} == {
        "ready": 1,
        "delayed": 1,
        "claimed": 2,
        "dead": 0,
    }
    ready_ms = jobs_of(cli)["4"]["ready_ms"]
    assert summary["oldest_ready_age_seconds"] >= (before - ready_ms) / 1000 - 1
    assert summary["lifetime"]["pushed"] == 4
    assert summary["config"]["lease_seconds"] == 30
    claimed = summary["claimed_jobs"]
    assert [(c["id"], c["worker"], c["attempts"]) for c in claimed] == [
        ("2", "w-east", 1),
        ("3", "w-east", 1),
    ]
    file_jobs = jobs_of(cli)
    for c in claimed:
        assert c["lease_expires_ms"] == file_jobs[c["id"]]["claim"]["expires_ms"]
        assert 590 < c["lease_expires_in_seconds"] <= 600


# -- sweep -------------------------------------------------------------------------------------


def test_sweep_deletes_old_orphans_and_keeps_what_jobs_name(cli: Cli) -> None:
    cli("init", "--spill-payload-bytes", "1024").ok()
    big = json.dumps({"blob": "x" * 4000})
    cli("push", QUEUE, big).ok()
    payloads = cli.queue_dir / "queue.json.d" / "payloads"
    (named,) = payloads.iterdir()  # the pushed job's spilled payload
    assert jobs_of(cli)["1"]["spilled"] == f"payloads/{named.name}"
    # Objects no job names, as a push that never committed leaves them.
    hour_ago = int(time.time() * 1000) - 3_600_000
    old = payloads / f"{hour_ago:013d}-{'0' * 16}.json"
    young = payloads / f"{int(time.time() * 1000):013d}-{'1' * 16}.json"
    for orphan in (old, young):
        orphan.write_text('{"orphan": true}')

    run = cli("sweep", "--min-age-minutes", "30").ok()
    assert run.lines() == [f"deleted 1 orphaned payload object(s) of {QUEUE}"]
    assert sorted(p.name for p in payloads.iterdir()) == sorted([named.name, young.name])
    # The default age (60 minutes) spares the young orphan; the job still has its payload.
    assert cli("sweep").ok().lines()[0].startswith("deleted 0 ")
    out = cli(
        "work",
        QUEUE,
        "--max-jobs",
        "1",
        "--",
        sys.executable,
        "-c",
        "import json, sys; print(len(json.load(sys.stdin)['blob']))",
    ).ok()
    assert out.lines() == ["4000"]


def test_sweep_mistakes(cli: Cli) -> None:
    cli("sweep").user_error("no queue", "obque init")
    cli("init").ok()
    cli("sweep", "--min-age-minutes", "-5").user_error("--min-age-minutes")
    cli("sweep", "bogus://b/q.json").user_error("bogus", *FORMS)
