"""Every ``obque`` command run as a subprocess (SPEC §8), on its happy path and on the
mistakes a user makes: those end in one ``obque: …`` line on stderr and a non-zero exit,
never a stack trace.

Commands run in a fresh directory per test, so the defaults (``file://./.obque/``) land
there; no ``OBQUE_*`` setting leaks in from the environment running the tests.
"""

from __future__ import annotations

import json
import os
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

# broker_proc is also loaded as a plugin (its fixtures and report hook); have its asserts
# rewritten before the import below, as pytest does for plugins.
pytest.register_assert_rewrite("broker_proc")

from broker_proc import (  # noqa: E402
    OBQUE,
    BrokerFactory,
    BrokerProcess,
    free_port,
    read_queue_file,
    wait_until,
)

pytest_plugins = ["broker_proc"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

FORMS = ("mem://", "file://", "s3://", "gs://")


@dataclass
class Run:
    """A finished ``obque`` command."""

    args: tuple[str, ...]
    returncode: int
    stdout: str
    stderr: str

    def ok(self) -> Run:
        assert self.returncode == 0, self
        assert "Traceback" not in self.stderr, self.stderr
        return self

    def lines(self) -> list[str]:
        return self.stdout.splitlines()

    def user_error(self, *mentions: str) -> str:
        """Assert the command failed the way a user mistake should; return the line."""
        assert self.returncode != 0, self
        assert "Traceback" not in self.stderr, self.stderr
        assert "Traceback" not in self.stdout, self.stdout
        errors = [ln for ln in self.stderr.splitlines() if ln.startswith("obque: ")]
        assert len(errors) == 1, self.stderr
        line = errors[0]
        for needle in mentions:
            assert needle in line, (needle, line)
        return line


@dataclass
class Cli:
    """Runs ``obque`` in ``cwd`` with a clean environment (plus ``env``)."""

    cwd: Path
    env: dict[str, str]

    def __call__(
        self, *args: str, stdin: str | None = None, timeout: float = 60, **env: str
    ) -> Run:
        done = subprocess.run(
            [OBQUE, *args],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=self.cwd,
            env={**self.env, **env},
        )
        return Run(tuple(args), done.returncode, done.stdout, done.stderr)

    @property
    def queue_dir(self) -> Path:
        return self.cwd / ".obque"

    def queue_file(self, name: str = "queue") -> dict[str, Any]:
        return read_queue_file(self.queue_dir, name)


@pytest.fixture
def cli(tmp_path: Path) -> Cli:
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith("OBQUE_")}
    env["PYTHONUNBUFFERED"] = "1"
    return Cli(workdir, env)


QUEUE = "file://./.obque/queue.json"


def jobs_of(cli: Cli, name: str = "queue") -> dict[str, dict[str, Any]]:
    return {job["id"]: job for job in cli.queue_file(name)["jobs"]}


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
        (("init", "--queue", "Bad Name!"), ("queue name",)),
        (("init", "bogus://bucket/q.json"), ("bogus", *FORMS)),
        (("init", "/tmp/not-a-uri.json"), ("not a store URI", *FORMS)),
        (("init", "file://host/q.json"), ("file:///absolute/path",)),
    ],
    ids=["zero-lease", "bad-name", "bad-scheme", "bare-path", "file-host"],
)
def test_init_mistakes(cli: Cli, args: tuple[str, ...], mentions: tuple[str, ...]) -> None:
    cli(*args).user_error(*mentions)


# -- push ------------------------------------------------------------------------------------


def test_push_json_text_and_options(cli: Cli) -> None:
    cli("init").ok()
    ids = cli("push", QUEUE, '{"video": "a.mp4"}', "[1, 2]", "3").ok().lines()
    assert ids == ["1", "2", "3"]
    assert cli("push", QUEUE, "plain words", "--text").ok().lines() == ["4"]
    cli("push", QUEUE, '"later"', "--delay", "600", "--max-attempts", "2").ok()
    jobs = jobs_of(cli)
    assert [jobs[i]["payload"] for i in "1234"] == [{"video": "a.mp4"}, [1, 2], 3, "plain words"]
    assert jobs["5"]["max_attempts"] == 2
    assert jobs["5"]["ready_ms"] - jobs["5"]["enqueued_ms"] >= 599_000


def test_push_key_deduplicates(cli: Cli) -> None:
    cli("init").ok()
    first = cli("push", QUEUE, '{"n": 1}', "--key", "upload-a").ok().lines()
    again = cli("push", QUEUE, '{"n": 2}', "--key", "upload-a").ok().lines()
    assert first == again == ["1"]
    assert cli.queue_file()["stats"]["pushed"] == 1
    cli("push", QUEUE, "1", "2", "--key", "k").user_error("--key")


def test_push_json_lines_from_stdin(cli: Cli) -> None:
    cli("init").ok()
    lines = "\n".join(json.dumps({"n": n}) for n in range(2500)) + "\n\n"
    run = cli("push", QUEUE, "-", stdin=lines).ok()
    assert "pushed 2500" in run.stderr
    state = cli.queue_file()
    assert state["stats"]["pushed"] == 2500
    assert [j["payload"]["n"] for j in state["jobs"]] == list(range(2500))
    # Batches of 1000: three commits after the creating one.
    assert state["revision"] == 4


def test_push_invalid_json(cli: Cli) -> None:
    cli("init").ok()
    cli("push", QUEUE, '{"video": ').user_error("not JSON", "--text")
    cli("push", QUEUE, "hello").user_error("not JSON")
    cli("push", QUEUE, "-", stdin='{"ok": 1}\nnot json\n').user_error("line 2", "not JSON")
    assert cli.queue_file()["stats"]["pushed"] == 0


def test_push_mistakes_about_the_queue(cli: Cli) -> None:
    cli("push", QUEUE, "1").user_error("no queue", "obque init")
    cli("push", "bogus://bucket/q.json", "1").user_error("bogus", *FORMS)
    cli("push", "./relative/q.json", "1").user_error("not a store URI", *FORMS)
    cli("init").ok()
    cli("push", QUEUE, "1", "--delay", "-5").user_error("delay_seconds")
    cli("push", QUEUE, "1", "--max-attempts", "0").user_error("max_attempts")


# -- work -------------------------------------------------------------------------------------


def test_work_command_acks_on_exit_zero_and_nacks_with_stderr(cli: Cli) -> None:
    cli("init").ok()
    cli("push", QUEUE, '{"ok": true}', '{"ok": false}').ok()
    script = (
        'read payload; echo "job $OBQUE_JOB_ID attempt $OBQUE_ATTEMPT got $payload"; '
        'case "$payload" in *false*) echo "it went wrong" >&2; echo "really wrong" >&2; '
        "exit 3;; esac"
    )
    run = cli("work", QUEUE, "--command", script, "--max-jobs", "2", "-v").ok()
    assert 'job 1 attempt 1 got {"ok": true}' in run.stdout
    assert 'job 2 attempt 1 got {"ok": false}' in run.stdout
    assert "1 succeeded, 1 failed" in run.stderr
    (left,) = cli.queue_file()["jobs"]
    assert left["id"] == "2"
    assert left["attempts"] == 1
    assert left["last_error"] == "CommandFailed: exit 3: it went wrong\nreally wrong"
    assert cli.queue_file()["stats"]["acked"] == 1


def test_work_command_long_stderr_keeps_its_tail(cli: Cli) -> None:
    cli("init").ok()
    cli("push", QUEUE, "1").ok()
    cli("work", QUEUE, "-c", "seq 1 500 >&2; exit 1", "--max-jobs", "1").ok()
    (job,) = cli.queue_file()["jobs"]
    error = job["last_error"]
    assert error.startswith("CommandFailed: exit 1: ")
    assert error.endswith("498\n499\n500")
    assert len(error) < 600


def test_work_handler_from_the_current_directory(cli: Cli) -> None:
    (cli.cwd / "tasks.py").write_text(
        "def resize(job):\n"
        "    if job.payload['size'] < 0:\n"
        "        raise ValueError(f\"negative size {job.payload['size']}\")\n"
        "    print('resized', job.id, job.payload['size'], flush=True)\n"
    )
    cli("init").ok()
    cli("push", QUEUE, '{"size": 10}', '{"size": -1}', '{"size": 20}').ok()
    run = cli("work", QUEUE, "--handler", "tasks:resize", "--max-jobs", "3", "-v", "-n", "2")
    run.ok()
    assert "resized 1 10" in run.stdout and "resized 3 20" in run.stdout
    assert "job 2 attempt 1: failed: negative size -1" in run.stderr
    assert "2 succeeded, 1 failed" in run.stderr
    (left,) = cli.queue_file()["jobs"]
    assert left["last_error"] == "ValueError: negative size -1"


@pytest.mark.parametrize(
    ("flags", "mentions"),
    [
        ((), ("--command", "--handler")),
        (("--command", "true", "--handler", "tasks:f"), ("exactly one",)),
        (("--handler", "no_such_module:f"), ("cannot import", "no_such_module")),
        (("--handler", "json:no_such_function"), ("no function", "no_such_function")),
        (("--handler", "tasks"), ("module:function",)),
    ],
    ids=["neither", "both", "no-module", "no-function", "no-colon"],
)
def test_work_mistakes(cli: Cli, flags: tuple[str, ...], mentions: tuple[str, ...]) -> None:
    cli("init").ok()
    cli("work", QUEUE, *flags, "--max-jobs", "1").user_error(*mentions)


def test_work_on_a_missing_queue(cli: Cli) -> None:
    cli("work", QUEUE, "-c", "true", "--max-jobs", "1").user_error("no queue", "obque init")


# -- inspect, stats, dead -------------------------------------------------------------------------


def test_inspect_human_and_json(cli: Cli) -> None:
    cli("init").ok()
    cli("push", QUEUE, '{"video": "a.mp4"}', '"x"').ok()
    human = cli("inspect").ok().stdout
    assert human.startswith(f"{QUEUE}  revision 2")
    assert "broker:   none advertised" in human
    assert "2 ready, 0 delayed, 0 claimed, 0 dead" in human
    assert "2 pushed, 0 acked" in human
    assert '{"video":"a.mp4"}' in human
    raw = json.loads(cli("inspect", "--json").ok().stdout)
    assert raw == cli.queue_file()
    limited = cli("inspect", "--limit", "1").ok().stdout
    assert "... 1 more" in limited


def test_inspect_and_stats_of_a_missing_queue(cli: Cli) -> None:
    cli("inspect").user_error("no queue", "obque init")
    cli("inspect", "--queue", "nope").user_error("nope.json", "obque init")
    cli("stats").user_error("no queue", "obque init")
    cli("stats", "file://./.obque/nope.json").user_error("nope.json")
    cli("dead", "list").user_error("no queue")
    cli("stats", "bogus://b/q.json").user_error("bogus", *FORMS)
    cli("inspect", "bogus://b/q.json").user_error("bogus", *FORMS)


def test_stats_human_and_json(cli: Cli) -> None:
    cli("init").ok()
    cli("push", QUEUE, "1", "2", "3").ok()
    stats = json.loads(cli("stats", "--json").ok().stdout)
    assert (stats["name"], stats["ready"], stats["pushed"], stats["broker"]) == (
        "queue",
        3,
        3,
        None,
    )
    human = cli("stats").ok().lines()
    rows = dict(line.split(None, 1) for line in human)
    assert (rows["name"], rows["ready"], rows["pushed"]) == ("queue", "3", "3")


def test_dead_list_redrive_purge(cli: Cli) -> None:
    cli("init").ok()
    cli("push", QUEUE, '{"n": 1}', '{"n": 2}', '{"n": 3}', "--max-attempts", "1").ok()
    assert cli("dead", "list").ok().lines() == ["no dead letters"]
    cli("work", QUEUE, "-c", "echo poisoned >&2; exit 1", "--max-jobs", "3").ok()

    listed = cli("dead", "list").ok().lines()
    assert len(listed) == 3
    assert all("attempts=1" in ln and "poisoned" in ln for ln in listed)
    as_json = json.loads(cli("dead", "list", "--json").ok().stdout)
    assert [j["id"] for j in as_json] == ["1", "2", "3"]
    assert as_json[0]["payload"] == {"n": 1}

    assert cli("dead", "redrive", "--ids", "2").ok().lines() == ["redriven 1"]
    assert list(jobs_of(cli)) == ["2"]
    assert cli("dead", "purge", "--ids", "1").ok().lines() == ["purged 1"]
    assert [j["id"] for j in cli.queue_file()["dead"]] == ["3"]
    assert cli("dead", "redrive").ok().lines() == ["redriven 1"]
    assert cli("dead", "purge").ok().lines() == ["purged 0"]
    assert sorted(jobs_of(cli)) == ["2", "3"]


# -- through a broker ------------------------------------------------------------------------------


@pytest.fixture
def served(cli: Cli, brokers: BrokerFactory) -> BrokerProcess:
    """A broker serving ``cli``'s default root (with a queue ``queue``)."""
    cli("init").ok()
    root = cli.queue_dir.resolve().as_uri() + "/"
    broker = brokers.start(root)
    wait_until(
        lambda: (cli.queue_file().get("broker") or {}).get("url") == broker.url,
        timeout=20,
        what="the broker to advertise itself",
    )
    return broker


def test_commands_go_through_an_advertised_broker(cli: Cli, served: BrokerProcess) -> None:
    assert cli("push", QUEUE, "1", "2").ok().lines() == ["1", "2"]
    stats = json.loads(cli("stats", "--json").ok().stdout)
    assert stats["broker"]["url"] == served.url
    assert stats["pushed"] == 2
    assert f"broker:   {served.url} (process, epoch 1" in cli("inspect").ok().stdout
    human = dict(line.split(None, 1) for line in cli("stats").ok().lines())
    assert human["broker"].startswith(f"{served.url} (process, epoch 1")
    cli("work", QUEUE, "-c", "cat >/dev/null", "--max-jobs", "2").ok()
    stats = json.loads(cli("stats", "--json").ok().stdout)
    assert stats["acked"] == 2
    # The broker URL itself, with the queue named, or through OBQUE_URL.
    assert cli("push", served.url, "3", "--queue", "queue").ok().lines() == ["3"]
    via_env = json.loads(cli("stats", "--json", OBQUE_URL=served.url).ok().stdout)
    assert via_env["pushed"] == 3
    cli("push", served.url, "1", "--queue", "nope").user_error("nope")


def test_token_reaches_a_broker_that_requires_one(cli: Cli, brokers: BrokerFactory) -> None:
    cli("init").ok()
    root = cli.queue_dir.resolve().as_uri() + "/"
    broker = brokers.start(root, token="s3cret-token")
    cli("push", broker.url, "1").user_error()
    assert cli("push", broker.url, "1", "--token", "s3cret-token").ok().lines() == ["1"]
    assert cli("push", broker.url, "2", OBQUE_TOKEN="s3cret-token").ok().lines() == ["2"]
    stats = json.loads(cli("stats", broker.url, "--json", OBQUE_TOKEN="s3cret-token").stdout)
    assert stats["pushed"] == 2


def test_unreachable_broker_is_one_line(cli: Cli) -> None:
    url = f"http://127.0.0.1:{free_port()}"
    cli("stats", url, timeout=90).user_error("unreachable", url)


# -- broker and demo ----------------------------------------------------------------------------


def test_broker_refuses_a_public_bind_without_a_token(cli: Cli) -> None:
    port = str(free_port())
    run = cli("broker", "--host", "0.0.0.0", "--port", port, timeout=30)
    line = run.user_error("0.0.0.0", "token", "--insecure")
    assert run.returncode != 0, line


def test_broker_with_a_bad_root_is_one_line(cli: Cli) -> None:
    port = str(free_port())
    cli("broker", "--root", "bogus://x/", "--port", port, timeout=30).user_error("bogus", *FORMS)


def test_demo_runs_end_to_end(cli: Cli) -> None:
    run = cli(
        "demo",
        "--jobs",
        "50",
        "--latency",
        "none",
        "--producers",
        "4",
        "--workers",
        "4",
        timeout=110,
    ).ok()
    assert "50 jobs pushed, processed and acked" in run.stderr
    assert "0 jobs lost" in run.stderr
    state = cli.queue_file("demo")
    assert state["stats"]["acked"] == 50
    assert state["jobs"] == []


def test_no_command_is_a_usage_error(cli: Cli) -> None:
    run = cli()
    assert run.returncode == 2
    assert "usage: obque" in run.stderr
    assert "Traceback" not in run.stderr
