"""Every ``obque`` command run as a subprocess (SPEC §8), on its happy path and on the
mistakes a user makes: those end in one ``obque: …`` line on stderr and a non-zero exit,
never a stack trace.

Commands run in a fresh directory per test, so the defaults (``file://./.obque/``) land
there; no ``OBQUE_*`` setting leaks in from the environment running the tests. The demo
and the README walkthrough are in ``test_cli_demo.py``.
"""

from __future__ import annotations

import json
import sys

import pytest

# broker_proc and cli_run are also loaded as plugins (their fixtures); have their asserts
# rewritten before the imports below, as pytest does for plugins.
pytest.register_assert_rewrite("broker_proc", "cli_run")

from broker_proc import BrokerFactory, BrokerProcess, free_port, wait_until  # noqa: E402
from cli_run import FORMS, QUEUE, Cli, jobs_of  # noqa: E402

pytest_plugins = ["broker_proc", "cli_run"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]


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
    cli("push", QUEUE, "-", "--key", "k", stdin="1\n2\n").user_error("--key", "'-'")
    cli("push", QUEUE).user_error("Missing argument", "PAYLOAD")


def test_push_json_lines_from_stdin(cli: Cli) -> None:
    cli("init").ok()
    lines = "\n".join(json.dumps({"n": n}) for n in range(2500)) + "\n\n"
    run = cli("push", QUEUE, "-", stdin=lines).ok()
    # stderr is not a terminal here: one plain final line, no spinner glyph.
    assert run.stderr == "pushed 2500 jobs\n"
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
        ((), ("--command", "--handler", "-- PROGRAM")),
        (("--command", "true", "--handler", "tasks:f"), ("exactly one",)),
        (("--command", "true", "--", "cat"), ("exactly one",)),
        (("--",), ("exactly one",)),
        (("--", "no-such-program-xyz"), ("no-such-program-xyz", "no such program")),
        (("-c", "true", "-n", "0"), ("--concurrency", "x>=1")),
        (("-c", "true", "--grace-seconds", "-1"), ("--grace-seconds",)),
        (("--handler", "no_such_module:f"), ("cannot import", "no_such_module")),
        (("--handler", "json:no_such_function"), ("no function", "no_such_function")),
        (("--handler", "tasks"), ("module:function",)),
        (
            ("--handler", "broken_syntax:f"),
            ("cannot import broken_syntax: SyntaxError:", "(broken_syntax.py:2)"),
        ),
        (
            ("--handler", "broken_import:f"),
            ("cannot import broken_import: RuntimeError: no database (broken_import.py:2)",),
        ),
    ],
    ids=[
        "neither",
        "both",
        "command-and-argv",
        "empty-argv",
        "no-program",
        "zero-concurrency",
        "negative-grace",
        "no-module",
        "no-function",
        "no-colon",
        "syntax-error-in-module",
        "exception-at-import",
    ],
)
def test_work_mistakes(cli: Cli, flags: tuple[str, ...], mentions: tuple[str, ...]) -> None:
    (cli.cwd / "broken_syntax.py").write_text("def f(job):\n    return (\n")
    (cli.cwd / "broken_import.py").write_text(
        "import os\nraise RuntimeError('no database')\ndef f(job): pass\n"
    )
    cli("init").ok()
    cli("work", QUEUE, "--max-jobs", "1", *flags).user_error(*mentions)
    cli("work", QUEUE, "-c", "true", "--max-jobs", "0").user_error("--max-jobs", "x>=1")


def test_work_runs_a_program_after_double_dash_without_a_shell(cli: Cli) -> None:
    cli("init").ok()
    cli("push", QUEUE, '{"n": 1}', '{"n": 2}').ok()
    # The arguments reach the program as they are: no shell splits, globs or expands them.
    program = (
        "import json, os, sys; p = json.load(sys.stdin); "
        "print('argv', sys.argv[1:], 'job', os.environ['OBQUE_JOB_ID'], 'n', p['n']); "
        "sys.exit(0 if p['n'] == 1 else (sys.stderr.write('n was 2\\n'), 4)[1])"
    )
    argv = (sys.executable, "-c", program, "$HOME", "*", "a b")
    run = cli("work", QUEUE, "--max-jobs", "2", "-v", "--", *argv).ok()
    assert "argv ['$HOME', '*', 'a b'] job 1 n 1" in run.stdout
    assert "argv ['$HOME', '*', 'a b'] job 2 n 2" in run.stdout
    assert "1 succeeded, 1 failed" in run.stderr
    (left,) = cli.queue_file()["jobs"]
    assert left["id"] == "2"
    assert left["last_error"] == "CommandFailed: exit 4: n was 2"


def test_work_on_a_missing_queue(cli: Cli) -> None:
    cli("work", QUEUE, "-c", "true", "--max-jobs", "1").user_error(
        f"no queue at {QUEUE}; create it with `obque init {QUEUE}`"
    )


# -- inspect, stats, dead -------------------------------------------------------------------------


def test_inspect_and_stats_of_a_missing_queue(cli: Cli) -> None:
    hint = "no queue at {0}; create it with `obque init {0}`"
    cli("inspect").user_error(hint.format(QUEUE))
    nope = "file://./.obque/nope.json"
    cli("inspect", "--queue", "nope").user_error(hint.format(nope))
    cli("inspect", "file://./x/q.json").user_error(hint.format("file://./x/q.json"))
    cli("stats").user_error(hint.format(QUEUE))
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

    header, *listed = cli("dead", "list").ok().lines()
    assert header.split() == ["id", "attempts", "last", "error", "payload"]
    assert [ln.split()[:2] for ln in listed] == [["1", "1"], ["2", "1"], ["3", "1"]]
    assert all("CommandFailed: exit 1: poisoned" in ln for ln in listed)
    assert listed[1].endswith('{"n": 2}')
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


def test_dead_mistakes(cli: Cli) -> None:
    cli("init").ok()
    cli("dead").user_error("Missing argument", "list", "redrive", "purge")
    cli("dead", "resurrect").user_error("resurrect", "list", "redrive", "purge")
    cli("dead", "list", "--limit", "0").user_error("--limit", "x>=1")
    cli("dead", "list", "file://./.obque/nope.json").user_error("no queue", "nope.json")
    cli("dead", "redrive", "bogus://b/q.json").user_error("bogus", *FORMS)
    # Ids that name no dead letter change nothing.
    assert cli("dead", "redrive", "--ids", "41,42").ok().lines() == ["redriven 0"]
    assert cli("dead", "purge", "--ids", "41", "--ids", "42").ok().lines() == ["purged 0"]


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


# -- broker and usage ----------------------------------------------------------------------------


def test_broker_refuses_a_public_bind_without_a_token(cli: Cli) -> None:
    port = str(free_port())
    run = cli("broker", "--host", "0.0.0.0", "--port", port, timeout=30)
    line = run.user_error("0.0.0.0", "token", "--insecure")
    assert run.returncode != 0, line


def test_broker_with_a_bad_root_is_one_line(cli: Cli) -> None:
    port = str(free_port())
    cli("broker", "--root", "bogus://x/", "--port", port, timeout=30).user_error("bogus", *FORMS)


def test_no_command_is_a_usage_error(cli: Cli) -> None:
    run = cli()
    assert run.returncode == 2
    assert "Usage: obque" in run.stderr
    assert "Traceback" not in run.stderr
    cli("frobnicate").user_error("No such command", "frobnicate")
