"""``obque demo`` and the README's walkthrough "From the demo to your own queue", run as a
user would: subprocesses in a fresh directory.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest

pytest.register_assert_rewrite("broker_proc", "cli_run")

from broker_proc import OBQUE, free_port, wait_until  # noqa: E402
from cli_run import Cli, Run  # noqa: E402

pytest_plugins = ["broker_proc", "cli_run"]
pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]

README = Path(__file__).resolve().parents[2] / "README.md"
SMALL = ("--jobs", "40", "--producers", "4", "--workers", "4", "--latency", "none")


def summary_of(run: Run) -> dict[str, str]:
    """The demo's summary lines, by what they begin with."""
    text = run.stdout.split("\nsummary\n", 1)[1]
    found = {
        "acked": r"(\d+) of (\d+) jobs pushed, processed and acked in [\d.]+s \(\d+ jobs/s\)",
        "latency": r"latency push to ack: p50 (\d+) ms, p99 (\d+) ms",
        "lost": r"(\d+) failures retried by the queue; (\d+) jobs lost",
        "commits": r"(\d+) commits \(\d+ store writes\) for (\d+) operations \(a claim or "
        r"an ack may cover several jobs\) = [\d.]+ operations per commit",
    }
    out = {}
    for name, pattern in found.items():
        match = re.search(pattern, text)
        assert match, (name, text)
        out[name] = match.group(0)
        out[name + ".groups"] = ",".join(match.groups())
    return out


def assert_clean_summary(run: Run, jobs: int) -> None:
    s = summary_of(run.ok())
    assert s["acked.groups"] == f"{jobs},{jobs}"
    assert s["lost.groups"].endswith(",0")
    p50, p99 = map(int, s["latency.groups"].split(","))
    assert 0 <= p50 <= p99
    commits, ops = map(int, s["commits.groups"].split(","))
    # Counted by the broker's engine: the producers push one job per call, and then
    # the jobs were claimed and acked (in batches: a claim or ack may cover several).
    assert 0 < commits < ops
    assert ops > jobs
    # The progress bars' final state (printed once when stderr is not a terminal).
    assert re.search(rf"pushed .*{jobs}/{jobs}", run.stderr), run.stderr
    assert re.search(rf"acked .*{jobs}/{jobs}", run.stderr), run.stderr


def test_demo_on_a_temporary_root_twice(cli: Cli) -> None:
    tmp = cli.cwd.parent / "tmp"
    tmp.mkdir()
    for _ in range(2):
        run = cli("demo", *SMALL, timeout=180, TMPDIR=str(tmp))
        assert_clean_summary(run, 40)
        assert "temporary folder, now removed" in run.stdout
    assert list(tmp.iterdir()) == []  # each run removed its root
    assert not cli.queue_dir.exists()  # and never touched ./.obque/


def test_demo_on_a_kept_root_counts_only_its_own_jobs(cli: Cli) -> None:
    """The second run finds the first run's counters in the file: its summary still
    describes only its own jobs."""
    for _ in range(2):
        run = cli("demo", *SMALL, "--root", "file://./.obque/", timeout=180)
        assert_clean_summary(run, 40)
        assert "inspect it with `obque inspect file://./.obque/demo.json`" in run.stdout
    state = cli.queue_file("demo")
    assert state["stats"]["acked"] == 80
    assert state["jobs"] == []


@pytest.mark.parametrize(
    ("flags", "mentions"),
    [
        (("--workers", "0"), ("--workers", "x>=1")),
        (("--producers", "0"), ("--producers", "x>=1")),
        (("--jobs", "-1"), ("--jobs", "x>=0")),
        (("--latency", "fast"), ("--latency", "fast", "s3")),
        (("--root", "bogus://x/"), ("bogus",)),
        # The user's value, not the one with ?latency= appended, and the URI to use.
        (("--root", "./somedir"), ("'./somedir';", "file://./somedir/")),
    ],
    ids=["no-workers", "no-producers", "negative-jobs", "bad-latency", "bad-root", "bare-path"],
)
def test_demo_mistakes(cli: Cli, flags: tuple[str, ...], mentions: tuple[str, ...]) -> None:
    line = cli("demo", *flags, timeout=60).user_error(*mentions)
    assert "latency=" not in line


# -- the README walkthrough ----------------------------------------------------------------


def walkthrough() -> str:
    text = README.read_text()
    section = text.split("## From the demo to your own queue", 1)[1]
    return section.split("\n## ", 1)[0]


def shell_lines(section: str) -> list[str]:
    """The commands of the section's ``sh`` blocks, continuations joined, comments cut."""
    lines: list[str] = []
    for block in re.findall(r"```sh\n(.*?)```", section, re.S):
        for line in re.sub(r"\\\n\s*", "", block).splitlines():
            line = re.sub(r"\s+#\s.*$", "", line.strip())
            if line:
                lines.append(line)
    return lines


class Walk:
    def __init__(self, cli: Cli) -> None:
        self.cli = cli
        bin_dir = str(Path(OBQUE).parent)
        self.env = {**cli.env, "PATH": bin_dir + os.pathsep + cli.env.get("PATH", "")}
        self.started: list[subprocess.Popen[str]] = []

    def sh(self, line: str) -> str:
        done = subprocess.run(
            ["bash", "-c", line],
            cwd=self.cli.cwd,
            env=self.env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 0, (line, done.stderr)
        assert "Traceback" not in done.stderr, done.stderr
        return done.stdout

    def start(self, line: str) -> subprocess.Popen[str]:
        proc = subprocess.Popen(
            ["bash", "-c", f"exec {line}"],
            cwd=self.cli.cwd,
            env=self.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        """Stop what is still running (after a failure), the broker last."""
        for proc in reversed(self.started):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
            try:
                proc.communicate(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.communicate()

    def state(self) -> dict[str, Any]:
        return self.cli.queue_file("thumbnails")


def interrupt(proc: subprocess.Popen[str]) -> tuple[str, str]:
    """Ctrl-C, as the README says: the process drains and stops by itself."""
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "Traceback" not in err, err
    return out, err


def test_readme_walkthrough(cli: Cli) -> None:
    walk = Walk(cli)
    section = walkthrough()
    step1 = section.split("\n1. ", 1)[1].split("\n", 1)[0]
    assert "`obque demo`" in step1, "step 1 names the command that runs the demo"
    lines = shell_lines(section)
    assert lines[0] == "source .venv/bin/activate"
    assert lines[1] == "obque broker &"
    # The broker on a free port instead of 8080 (it may be taken on a test machine).
    broker = walk.start(f"obque broker --port {free_port()}")
    try:
        for line in lines[2:]:
            walk.sh(line)
        wait_until(
            lambda: (walk.state().get("broker") or {}).get("url"),
            timeout=30,
            what="the broker to advertise itself",
        )
        assert walk.state()["stats"]["pushed"] == 101
        _run_the_worker_script(walk, section)
        _watch_and_redrive(walk, section)
        _run_the_cli_workers(walk, section)
    finally:
        walk.stop_all()
    assert broker.returncode == 0


def _run_the_worker_script(walk: Walk, section: str) -> None:
    (block,) = re.findall(r"```python\n(.*?)```", section, re.S)
    script = textwrap.dedent(block)  # the block is indented inside a list item
    assert len(script.strip().splitlines()) <= 10
    (walk.cli.cwd / "thumbs.py").write_text(script)
    assert "Run it with `python thumbs.py`" in section
    proc = walk.start("python thumbs.py")
    # img13 fails every attempt: 5 attempts with 1+2+4+8 s of backoff, then dead.
    wait_until(
        lambda: not walk.state()["jobs"] and len(walk.state()["dead"]) == 1,
        timeout=120,
        what="every job acked but the unlucky one, which is dead",
    )
    out, _ = interrupt(proc)
    assert "resizing cat.png to 128px (attempt 1)" in out
    assert "resizing img13.png to 64px (attempt 5)" in out
    assert walk.state()["stats"]["acked"] == 100


def _watch_and_redrive(walk: Walk, section: str) -> None:
    step4 = section.split("\n4. ", 1)[1]
    commands = re.findall(r"`(obque [^`]*)`", step4)
    assert commands == [
        "obque stats -q thumbnails",
        "obque dead list -q thumbnails",
        "obque dead redrive -q thumbnails",
    ]
    stats = walk.sh(commands[0])
    assert re.search(r"^acked\s+100$", stats, re.M), stats
    listed = walk.sh(commands[1])
    assert "unlucky image" in listed and "img13.png" in listed
    assert walk.sh(commands[2]).strip() == "redriven 1"
    assert [j["payload"]["image"] for j in walk.state()["jobs"]] == ["img13.png"]


def _run_the_cli_workers(walk: Walk, section: str) -> None:
    step3 = section.split("\n3. ", 1)[1].split("\n4. ", 1)[0]
    handler_form, program_form = re.findall(r"`(obque work [^`]*)`", step3)
    assert "--handler thumbs:make_thumbnail" in handler_form
    # The handler fails img13 again: one more nack.
    nacked = walk.state()["stats"]["nacked"]
    proc = walk.start(handler_form)
    wait_until(
        lambda: walk.state()["stats"]["nacked"] > nacked,
        timeout=60,
        what="the handler to fail img13 once more",
    )
    interrupt(proc)
    # A program run per job without a shell, the payload on its stdin: it acks img13.
    proc = walk.start(program_form)
    wait_until(lambda: not walk.state()["jobs"], timeout=60, what="img13 to be acked")
    out, _ = interrupt(proc)
    assert out.strip() == "img13.png"
