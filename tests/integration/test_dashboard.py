"""The live dashboard, in headless Chromium driven by Playwright, against a real broker.

Chromium is Debian's (``apt-get install chromium``, done by ``scripts/setup-system``);
Playwright only drives it (``executable_path``), it never downloads a browser.
Every page is opened through :class:`Pages`, which aborts and records any request to a host
other than the broker and any uncaught script error: each test also proves the page works
offline. Set ``OBQUE_SCREENSHOT_DIR`` to keep the screenshot (``docs/dashboard.png`` comes
from it).
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

# broker_proc is also loaded as a plugin; rewrite its asserts before importing it.
pytest.register_assert_rewrite("broker_proc")

from broker_proc import BrokerFactory, BrokerProcess, wait_until  # noqa: E402

if TYPE_CHECKING:
    from playwright.sync_api import Browser, Dialog, Page, Route

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
#: Runs script if it ever reaches the page as markup rather than text.
XSS = "<img src=x onerror=window.__pwned=1>"


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=CHROMIUM, headless=True, args=FLAGS)
        yield chromium
        chromium.close()


class Pages:
    """Opens dashboard pages that may talk to their broker and nothing else."""

    def __init__(self, browser: Browser) -> None:
        self.browser = browser
        self.opened: list[Page] = []
        self.requests: list[str] = []  # every request a page made, in order
        self.foreign: list[str] = []  # those to anywhere but the broker (aborted)
        self.script_errors: list[str] = []

    def open(self, broker: BrokerProcess, fragment: str = "", **options: Any) -> Page:
        page = self.browser.new_page(**options)
        self.opened.append(page)
        origin = broker.url + "/"

        def only_the_broker(route: Route) -> None:
            url = route.request.url
            self.requests.append(f"{route.request.method} {url}")
            if url.startswith(origin):
                route.continue_()
            else:
                self.foreign.append(url)
                route.abort()

        page.route("**/*", only_the_broker)
        page.on("pageerror", lambda exc: self.script_errors.append(str(exc)))
        page.goto(origin + fragment)
        return page

    def close(self) -> None:
        for page in self.opened:
            page.close()


@pytest.fixture
def pages(browser: Browser) -> Iterator[Pages]:
    opener = Pages(browser)
    yield opener
    opener.close()
    assert opener.requests, "the pages made no request at all: the recorder saw nothing"
    assert opener.foreign == [], "the dashboard reached beyond its broker"
    assert opener.script_errors == []


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
        error = "ffmpeg exited with status 1: moov atom not found"
        lease = [{"id": dead["id"], "lease": dead["lease"], "dead": True, "error": error}]
        assert http.post("/v1/queues/videos/nack", json={"leases": lease}).json()["results"][0][
            "ok"
        ]
        stats: dict[str, Any] = http.get("/v1/queues/videos/stats").json()
        return stats


def _row(page: Page, name: str) -> list[str]:
    cells = page.locator(f"#rows tr[data-queue='{name}'] td").all_inner_texts()
    return [c.strip() for c in cells]


def _spark(page: Page, queue: str, metric: str) -> list[float]:
    """The per-second rates a sparkline draws, oldest first."""
    svg = page.locator(f"#rows tr[data-queue='{queue}'] svg[data-metric='{metric}']")
    values = svg.get_attribute("data-values")
    assert values is not None
    return [float(v) for v in values.split()]


def _stats(broker: BrokerProcess, queue: str) -> dict[str, Any]:
    with broker.client() as http:
        answer: dict[str, Any] = http.get(f"/v1/queues/{queue}/stats").json()
        return answer


def _cycle(broker: BrokerProcess, queue: str, n: int, *, ack: bool) -> None:
    """Push ``n`` jobs; with ``ack``, claim and ack them too."""
    with broker.client() as http:
        jobs = [{"payload": {"i": i}} for i in range(n)]
        assert http.post(f"/v1/queues/{queue}/push", json={"jobs": jobs}).status_code == 200
        if ack:
            claimed = http.post(f"/v1/queues/{queue}/claim", json={"worker": "w", "max": n})
            leases = [{"id": j["id"], "lease": j["lease"]} for j in claimed.json()["jobs"]]
            results = http.post(f"/v1/queues/{queue}/ack", json={"leases": leases}).json()
            assert all(r["ok"] for r in results["results"])


def _load_until_rate(
    page: Page, broker: BrokerProcess, metric: str, *, ack: bool, samples: int = 1
) -> None:
    """Put load on ``emails`` until its ``metric`` sparkline shows ``samples`` seconds
    with a rate above zero."""

    def step() -> bool:
        _cycle(broker, "emails", 5, ack=ack)
        return sum(v > 0 for v in _spark(page, "emails", metric)) >= samples

    wait_until(step, timeout=30, interval=0.2, what=f"the {metric} sparkline to rise")


def _heights(page: Page, queue: str, metric: str) -> list[float]:
    """How far above its baseline each point of a sparkline is drawn (in SVG units)."""
    svg = page.locator(f"#rows tr[data-queue='{queue}'] svg[data-metric='{metric}']")
    bottom = float((svg.get_attribute("viewBox") or "").split()[3]) - 1
    points = svg.locator("polyline").get_attribute("points") or ""
    return [bottom - float(p.split(",")[1]) for p in points.split()]


def test_dashboard_shows_counts_rates_and_dead_letters(
    brokers: BrokerFactory, pages: Pages, tmp_path: Path
) -> None:
    broker = brokers.start(brokers.root())
    stats = _fill(broker)
    page = pages.open(broker, viewport={"width": 1600, "height": 420})
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
    assert broker.advertised in page.inner_text("#rows")
    dead = page.locator("section.dead[data-queue='videos'] tr.dead-job")
    dead.wait_for(timeout=10_000)
    assert "moov atom not found" in dead.locator("td.error").inner_text()
    assert json.loads(dead.locator("td.payload").inner_text()) == {"n": 0}

    # Live: a push shows up without reloading the page.
    _cycle(broker, "emails", 2, ack=False)
    wait_until(lambda: _row(page, "emails")[1] == "2" or None, timeout=10, what="live update")

    # Pushes alone commit but ack nothing: the commit rate climbs, throughput stays flat.
    _load_until_rate(page, broker, "commits", ack=False)
    assert set(_spark(page, "emails", "acked")) == {0.0}
    # Claims and acks: the throughput sparkline rises too, and says so in numbers.
    _load_until_rate(page, broker, "acked", ack=True, samples=5)
    assert max(_heights(page, "emails", "acked")) > 0
    assert max(_heights(page, "emails", "commits")) > 0
    assert set(_heights(page, "videos", "acked")) == {0.0}  # drawn flat: nothing acked there
    assert _stats(broker, "emails")["acked"] > 0

    shot = tmp_path / "dashboard.png"
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    if keep := os.environ.get("OBQUE_SCREENSHOT_DIR"):
        shutil.copy(shot, Path(keep) / "dashboard.png")

    # A rate, not a total: with the load gone the newest sample falls back to zero.
    wait_until(
        lambda: _spark(page, "emails", "acked")[-1] == 0.0 or None,
        timeout=20,
        what="the throughput to fall back to zero",
    )
    assert _row(page, "emails")[14] == "0.0/s"


def _make_dead(broker: BrokerProcess, queue: str, errors: list[str]) -> list[str]:
    """Claim ``len(errors)`` jobs and nack them: the first with ``dead: true``, the others
    plainly, which dead-letters them when the queue allows one attempt."""
    with broker.client() as http:
        claimed = http.post(
            f"/v1/queues/{queue}/claim", json={"worker": "w", "max": len(errors)}
        ).json()["jobs"]
        assert len(claimed) == len(errors)
        leases = [
            {"id": j["id"], "lease": j["lease"], "error": e, "dead": i == 0}
            for i, (j, e) in enumerate(zip(claimed, errors, strict=True))
        ]
        results = http.post(f"/v1/queues/{queue}/nack", json={"leases": leases}).json()
        assert all(r["ok"] for r in results["results"])
        return [str(j["id"]) for j in claimed]


def test_dead_letters_are_shown_as_text_redriven_and_purged(
    brokers: BrokerFactory, pages: Pages
) -> None:
    broker = brokers.start(brokers.root())
    with broker.client() as http:
        assert http.put("/v1/queues/mail", json={"max_attempts": 1}).status_code == 201
        payloads = [{"to": "a@example.com"}, {"html": XSS}, {"n": 3}]
        jobs = [{"payload": p} for p in payloads]
        assert http.post("/v1/queues/mail/push", json={"jobs": jobs}).status_code == 200
    errors = ["mailbox full", "renderer choked on " + XSS, "smtp timeout"]
    ids = _make_dead(broker, "mail", errors)
    assert _stats(broker, "mail")["dead"] == 3

    page = pages.open(broker)
    rows = page.locator("section.dead[data-queue='mail'] tr.dead-job")
    wait_until(lambda: rows.count() == 3 or None, timeout=15, what="three dead letters")
    for job_id, payload, error in zip(ids, payloads, errors, strict=True):
        row = page.locator(f"section.dead[data-queue='mail'] tr[data-id='{job_id}']")
        assert row.locator("td.error").inner_text() == error
        assert json.loads(row.locator("td.payload").inner_text()) == payload
    # User data is text: the markup in a payload and an error is shown, never run.
    assert XSS in page.inner_text("#dead")
    assert page.locator("#dead img").count() == 0
    assert page.evaluate("window.__pwned") is None
    # ... and it would have run as markup (so the check above could fail).
    page.evaluate("html => document.body.insertAdjacentHTML('beforeend', html)", XSS)
    page.wait_for_function("window.__pwned === 1", timeout=10_000)

    # Redrive one, then the rest: back to ready, as the API counts them.
    page.click(f"tr[data-id='{ids[1]}'] button.redrive")
    page.wait_for_selector("#action:has-text('redrove 1 dead letter of mail')", timeout=10_000)
    stats = _stats(broker, "mail")
    assert (stats["ready"], stats["dead"]) == (1, 2)
    wait_until(lambda: rows.count() == 2 or None, timeout=10, what="two dead letters left")
    page.click("section.dead[data-queue='mail'] button.redrive-all")
    page.wait_for_selector("#action:has-text('redrove 2 dead letters of mail')", timeout=10_000)
    stats = _stats(broker, "mail")
    assert (stats["ready"], stats["dead"]) == (3, 0)
    page.wait_for_selector("#dead p.none", timeout=10_000)

    # Dead again; a purge asks first, and a refusal sends nothing.
    ids = _make_dead(broker, "mail", ["again 1", "again 2", "again 3"])
    wait_until(lambda: rows.count() == 3 or None, timeout=15, what="three new dead letters")
    asked: list[str] = []

    def answer(accept: bool) -> Any:
        def on_dialog(dialog: Dialog) -> None:
            asked.append(dialog.message)
            dialog.accept() if accept else dialog.dismiss()

        return on_dialog

    page.once("dialog", answer(False))
    page.click(f"tr[data-id='{ids[0]}'] button.purge")
    page.once("dialog", answer(True))
    page.click(f"tr[data-id='{ids[0]}'] button.purge")
    page.wait_for_selector("#action:has-text('purged 1 dead letter of mail')", timeout=10_000)
    assert asked == [f"Purge dead letter {ids[0]} of mail? It is deleted for good."] * 2
    purges = [r for r in pages.requests if r.startswith("POST") and "/dead/purge" in r]
    assert len(purges) == 1, purges
    assert _stats(broker, "mail")["dead"] == 2

    page.once("dialog", answer(True))
    wait_until(lambda: rows.count() == 2 or None, timeout=10, what="two dead letters left")
    page.click("section.dead[data-queue='mail'] button.purge-all")
    page.wait_for_selector("#action:has-text('purged 2 dead letters of mail')", timeout=10_000)
    assert asked[-1] == "Purge every dead letter of mail? It is deleted for good."
    stats = _stats(broker, "mail")
    assert (stats["ready"], stats["claimed"], stats["dead"]) == (0, 0, 0)
    page.wait_for_selector("#dead p.none", timeout=10_000)


def test_a_failed_action_is_reported_on_the_page(brokers: BrokerFactory, pages: Pages) -> None:
    broker = brokers.start(brokers.root())
    with broker.client() as http:
        assert http.put("/v1/queues/q", json={"max_attempts": 1}).status_code == 201
        assert http.post("/v1/queues/q/push", json={"jobs": [{"payload": 1}]}).status_code == 200
    _make_dead(broker, "q", ["boom"])
    page = pages.open(broker)
    page.wait_for_selector("section.dead[data-queue='q'] tr.dead-job", timeout=15_000)
    broker.stop()
    assert not broker.alive()
    page.click("section.dead[data-queue='q'] button.redrive-all")
    page.wait_for_selector("#action.failed:has-text('redrive failed')", timeout=10_000)
    assert "the broker did not answer" in page.inner_text("#action")
    page.wait_for_selector("#err:has-text('the broker did not answer')", timeout=10_000)
    # What the page last knew stays on screen, with its buttons usable again.
    assert page.locator("section.dead[data-queue='q'] button.redrive-all").is_enabled()


def test_dashboard_asks_for_the_token_and_uses_it(brokers: BrokerFactory, pages: Pages) -> None:
    broker = brokers.start(brokers.root(), token="s3cret-token")
    with broker.client() as http:
        assert http.put("/v1/queues/jobs", json={"max_attempts": 1}).status_code == 201
        assert http.post("/v1/queues/jobs/push", json={"jobs": [{"payload": 1}]}).is_success
    _make_dead(broker, "jobs", ["boom"])
    page = pages.open(broker)
    page.wait_for_selector("#err:has-text('needs a token')", timeout=15_000)
    page.goto(broker.url + "/#token=wrong-token")
    page.reload()
    page.wait_for_selector("#err:has-text('refused this page')", timeout=15_000)
    page.goto(broker.url + "/#token=s3cret-token")
    page.reload()
    page.wait_for_selector("td.name:text-is('jobs')", timeout=15_000)
    assert page.inner_text("#err") == ""
    assert "s3cret-token" not in page.url  # taken out of the address bar once stored
    # Actions carry the token too.
    page.click("section.dead[data-queue='jobs'] button.redrive-all")
    page.wait_for_selector("#action:has-text('redrove 1 dead letter of jobs')", timeout=10_000)
    with broker.client() as http:
        assert http.get("/v1/queues/jobs/stats").json()["dead"] == 0
