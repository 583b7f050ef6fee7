"""``obque broker`` startup through the real command: every failure that is the user's
(a port in use, a root it cannot read) is one ``obque: …`` line and a non-zero exit, and
a broker that cannot start leaves the queues of a live broker alone."""

from __future__ import annotations

import os

import pytest

# broker_proc and cli_run are also loaded as plugins (their fixtures); have their asserts
# rewritten like this module's.
pytest.register_assert_rewrite("broker_proc", "cli_run")

from broker_proc import BrokerFactory, free_port, wait_until  # noqa: E402
from cli_run import Cli  # noqa: E402
from servers import StoreServer  # noqa: E402

pytest_plugins = ["broker_proc", "cli_run"]


def test_a_port_in_use_is_one_line_and_leaves_the_live_broker_leading(
    cli: Cli, brokers: BrokerFactory
) -> None:
    cli("init").ok()
    root = cli.queue_dir.resolve().as_uri() + "/"
    live = brokers.start(root)
    wait_until(
        lambda: (cli.queue_file().get("broker") or {}).get("url") == live.url,
        timeout=20,
        what="the live broker to lead the queue",
    )
    cli("push", live.url, "-q", "queue", '{"n": 1}').ok()
    before = cli.queue_file()["broker"]

    run = cli("broker", "--root", root, "--port", str(live.port), timeout=60)
    assert run.returncode == 2, run
    run.user_error(f"port {live.port} is in use", "--port")
    assert "serving" not in run.stderr  # it never claimed to start

    # The queue file still names the live broker at the same epoch: nothing took the lead,
    # and the live broker goes on committing without being fenced.
    assert cli.queue_file()["broker"] == before
    assert live.alive()
    assert cli("push", live.url, "-q", "queue", '{"n": 2}').ok().lines() == ["2"]
    after = cli.queue_file()["broker"]
    assert (after["url"], after["epoch"]) == (before["url"], before["epoch"])
    assert "fenced" not in live.log()


def test_a_root_without_credentials_is_one_line(cli: Cli) -> None:
    env = {
        "AWS_CONFIG_FILE": os.devnull,
        "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
        "AWS_EC2_METADATA_DISABLED": "true",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    base = {k: v for k, v in cli.env.items() if not k.startswith("AWS_")}
    no_credentials = Cli(cli.cwd, {**base, **env})
    port = str(free_port())
    run = no_credentials("broker", "--root", "s3://obque-no-creds/q/", "--port", port)
    run.user_error("cannot serve the root", "s3://obque-no-creds/q/", "no usable AWS credentials")
    assert "serving" not in run.stderr


def test_a_missing_bucket_is_one_line(cli: Cli, moto_server: StoreServer) -> None:
    on_moto = Cli(cli.cwd, moto_server.child_env(cli.env))
    port = str(free_port())
    run = on_moto("broker", "--root", "s3://obque-no-such-bucket/q/", "--port", port)
    run.user_error("s3://obque-no-such-bucket/q/", "bucket does not exist")
