"""The live dashboard, in headless Chromium driven by Playwright, against a real broker.

Chromium is Debian's (``apt-get install chromium``, done by ``scripts/setup-system``);
Playwright only drives it (``executable_path``), it never downloads a browser.
Set ``OBQUE_SCREENSHOT_DIR`` to keep the screenshot (``docs/dashboard.png`` comes from it).
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

# broker_proc is also loaded as a plugin; rewrite its asserts before importing it.
pytest.register_assert_rewrite("broker_proc")

from broker_proc import BrokerFactory, BrokerProcess, wait_until  # noqa: E402

pytest_plugins = ["broker_proc"]
pytestmark = pytest.mark.integration

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "/usr/bin/chromium"
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]


@pytest.fixture(scope="module")
def browser() -> Iterator[Any]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield chromium
        chromium.close()


def _fill(broker: BrokerProcess) -> dict[str, Any]:
    with broker.client() as http:
        for name in ("emails", "videos"):
            assert http.put(f"/v1/queues/{name}", json={"max_attempts": 2}).status_code == 201
        jobs = [{"payload": {"n": i}} for i in range(40)]
        assert http.post("/v1/queues/videos/push", json={"jobs": jobs}).status_code == 200
        delayed = [{"payload": {"later": True}, "delay_seconds": 600}]
        assert http.post("/v1/queues/videos/push", json={"jobs": delayed}).status_code == 200
        claimed = http.post("/v1/queues/videos/claim", json={"worker": "w1", "max": 7}).json()
        assert len(claimed["jobs"]) == 7
        dead = claimed["jobs"][0]
        lease = [{"id": dead["id"], "lease": dead["lease"], "dead": True, "error": "bad"}]
        assert http.post("/v1/queues/videos/nack", json={"leases": lease}).json()["results"][0][
            "ok"
        ]
        stats: dict[str, Any] = http.get("/v1/queues/videos/stats").json()
        return stats


def _row(page: Any, name: str) -> list[str]:
    cells = page.locator(f"tr:has(td.name:text-is('{name}')) td").all_inner_texts()
    return [c.strip() for c in cells]


def test_dashboard_shows_every_queue_with_live_counts(
    brokers: BrokerFactory, browser: Any, tmp_path: Path
) -> None:
    broker = brokers.start(brokers.root())
    stats = _fill(broker)
    page = browser.new_page(viewport={"width": 1400, "height": 420})
    page.goto(broker.url + "/")
    page.wait_for_selector("td.name:text-is('videos')", timeout=15_000)
    row = _row(page, "videos")
    # queue, ready, delayed, claimed, dead, pushed, acked, ...
    assert row[0] == "videos"
    assert [int(x) for x in row[1:6]] == [
        stats["ready"],
        stats["delayed"],
        stats["claimed"],
        stats["dead"],
        stats["pushed"],
    ]
    assert (stats["ready"], stats["delayed"], stats["claimed"], stats["dead"]) == (33, 1, 6, 1)
    assert _row(page, "emails")[1] == "0"
    assert broker.advertised in page.inner_text("tbody")

    # Live: a push shows up without reloading the page.
    with broker.client() as http:
        http.post("/v1/queues/emails/push", json={"jobs": [{"payload": 1}, {"payload": 2}]})
    wait_until(lambda: _row(page, "emails")[1] == "2" or None, timeout=10, what="live update")

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if keep := os.environ.get("OBQUE_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(keep) / "dashboard.png")
    page.close()


def test_dashboard_asks_for_the_token_and_uses_it(brokers: BrokerFactory, browser: Any) -> None:
    broker = brokers.start(brokers.root(), token="s3cret-token")
    with broker.client() as http:
        assert http.put("/v1/queues/jobs").status_code == 201
    page = browser.new_page()
    page.goto(broker.url + "/")
    page.wait_for_selector("#err:has-text('needs a token')", timeout=15_000)
    page.goto(broker.url + "/#token=s3cret-token")
    page.reload()
    page.wait_for_selector("td.name:text-is('jobs')", timeout=15_000)
    assert page.inner_text("#err") == ""
    page.close()
