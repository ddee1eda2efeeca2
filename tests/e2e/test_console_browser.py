"""The web console in a real browser: headless Chromium driven by selenium (Debian's
chromium-driver) logs in, searches statements a real client ran through pgwarden, opens that
session's timeline, and approves a pending request, which wakes the waiting side.

The first test drives the console pages over a broker it controls (the same AdminServer
`pgwarden serve` runs, over the trail the real proxy wrote); the last one is the whole loop in
the running proxy: psql waits on a held statement until bob approves it in the browser.

With PGWARDEN_SCREENSHOTS=DIR set, the screenshots of each page are written there (that is
how docs/img/console/*.png are made).
"""

from __future__ import annotations

import asyncio
import os
import shutil
import textwrap
import threading
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest

from proxy import config
from proxy.admin.app import AdminServer
from proxy.approvals.broker import ApprovalBroker, Outcome
from proxy.approvals.model import Request
from proxy.identity import Identity
from proxy.policy.loader import load_policy
from proxy.sql.extract import analyze
from proxy.sql.facts import ParserSettings
from proxy.state import ServerState
from tests.support.proxyproc import ProxyFactory
from tests.test_admin_approvals import ADMIN, TOKENS, FakeTrail, people_file

CHROMIUM = ("/usr/bin/chromium", "/usr/bin/chromium-browser")
DRIVER = "/usr/bin/chromedriver"
POLICY = """\
version: 1
groups:
  dba: [alice, bob]
rules:
  - id: no-unbounded-deletes
    when: {commands: [DELETE], missing_where: true}
    action: block
    message: Add a WHERE clause.
  - id: review-order-deletes
    description: Deleting orders needs a second pair of eyes
    when: {commands: [DELETE], tables: [console_orders]}
    action: review
    review: {approvers: {groups: [dba]}, timeout: 10m}
"""
STATEMENT = "DELETE FROM console_orders WHERE id = 3"


def _browser_paths() -> tuple[str, str]:
    binary = next((p for p in CHROMIUM if Path(p).exists()), None)
    if binary is None or not Path(DRIVER).exists():
        pytest.fail(
            "the console browser test needs Chromium and its driver: apt-get install chromium "
            "chromium-driver (Debian); .ci/run installs them"
        )
    return binary, DRIVER


class Loop:
    """An event loop in a thread: the console server runs there, the browser test here."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 30) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture
def driver(tmp_path: Path) -> Iterator[Any]:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    binary, path = _browser_paths()
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in (
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--window-size=1400,1000",
        "--hide-scrollbars",
        "--no-first-run",
        "--disable-background-networking",
        f"--user-data-dir={tmp_path / 'profile'}",
    ):
        options.add_argument(arg)
    browser = webdriver.Chrome(options=options, service=Service(executable_path=path))
    try:
        yield browser
    finally:
        browser.quit()


def _navigate(browser: Any, element: Any) -> None:
    """Click something that loads a new page, and wait until the old page is gone."""
    from selenium.common.exceptions import WebDriverException
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait

    old = browser.find_element(By.TAG_NAME, "html")
    element.click()

    def gone(_: Any) -> bool:
        # Chromium reports a replaced document either as a stale element or, mid-load, as
        # "Node with given id does not belong to the document": both mean the old page left.
        try:
            old.is_enabled()
        except WebDriverException:
            return True
        return False

    wait = WebDriverWait(browser, 15)
    wait.until(gone)
    wait.until(lambda b: b.execute_script("return document.readyState") == "complete")


def _screenshot(browser: Any, name: str, tmp_path: Path) -> None:
    """A PNG of the whole page; into $PGWARDEN_SCREENSHOTS too, when set."""
    height = browser.execute_script("return document.documentElement.scrollHeight")
    browser.set_window_size(1400, max(700, min(int(height) + 40, 2400)))
    target = tmp_path / f"{name}.png"
    assert browser.save_screenshot(str(target))
    data = target.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 20_000, name  # a page, not blank
    out = os.environ.get("PGWARDEN_SCREENSHOTS")
    if out:
        Path(out).mkdir(parents=True, exist_ok=True)
        shutil.copy(target, Path(out) / f"{name}.png")
    browser.set_window_size(1400, 1000)


def test_login_search_session_and_approve_in_a_real_browser(
    proxy_factory: ProxyFactory, tmp_path: Path, driver: Any
) -> None:
    from selenium.webdriver.common.by import By

    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(POLICY)
    proxy = proxy_factory(policies=[policy_path])
    with psycopg.connect(
        proxy.dsn(user="postgres", database="app"), autocommit=True, application_name="billing"
    ) as conn:
        conn.execute("DROP TABLE IF EXISTS console_orders")
        conn.execute("CREATE TABLE console_orders (id int PRIMARY KEY, total numeric)")
        conn.execute("INSERT INTO console_orders SELECT g, g * 10 FROM generate_series(1, 5) g")
        conn.execute("SELECT id, total FROM console_orders WHERE total > 20 ORDER BY id").fetchall()
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("DELETE FROM console_orders")
        for attempt in range(2):  # a review rule holds it; the client gives up (cancel)
            import threading

            failures: list[BaseException] = []

            def run(failed: list[BaseException] = failures) -> None:
                try:
                    conn.execute(STATEMENT)
                except BaseException as exc:
                    failed.append(exc)

            thread = threading.Thread(target=run)
            thread.start()
            proxy.wait_for(lambda e: e.get("type") == "review_requested", count=attempt + 1)
            conn.cancel_safe(timeout=5)
            thread.join(20)
            assert failures and isinstance(failures[0], psycopg.errors.QueryCanceled)
        conn.execute("UPDATE console_orders SET total = total + 1 WHERE id = 2")
    proxy.wait_for(lambda e: e.get("type") == "session_end")
    session_id = next(e["session_id"] for e in proxy.events("session_start"))
    fingerprint = next(
        e["fingerprint"] for e in proxy.events("query") if e["statement"] == STATEMENT
    )

    # The real proxy's admin listener serves the console (its login page).
    with urllib.request.urlopen(proxy.admin_url("/console/login"), timeout=10) as page:
        assert b'id="token"' in page.read()

    # The same console, in this process, over the same trail, with a broker we can drive.
    (tmp_path / "admin-token").write_text(ADMIN)
    cfg = config.defaults().replace(
        admin__listen="127.0.0.1:0",
        admin__token_file=str(tmp_path / "admin-token"),
        approvals__approvers_file=str(people_file(tmp_path)),
        audit__dir=str(proxy.audit_dir),
        approvals__explain_dsn=proxy.pg.dsn(database="app"),
    )
    loop = Loop()
    try:
        state = ServerState(proxy_id="pgw-test", started_at=0.0)
        trail_events: list[dict[str, Any]] = []
        broker = ApprovalBroker("pgw-test", trail_events.append, console_url="")
        state.approvals = broker

        admin = AdminServer(cfg, state, FakeTrail())  # type: ignore[arg-type]
        loop.run(admin.start())
        base = f"http://127.0.0.1:{admin.port}"
        broker.console_url = base
        decision = load_policy([policy_path], holding=True).evaluate(
            Identity("alice", "app"), analyze(STATEMENT, ParserSettings())
        )
        assert decision.review is not None

        async def ask() -> tuple[Request, asyncio.Future[Outcome]]:
            who = Identity("alice", "app", "psql", "127.0.0.1", 50000, session_id)
            request = broker.request(
                decision.review,
                text=STATEMENT,
                identity=who,
                statement=STATEMENT,
                fingerprint=fingerprint,
            )
            return request, asyncio.ensure_future(broker.wait(request.id))

        request, waiter = loop.run(ask())

        # Log in as bob (a dba).
        driver.get(f"{base}/console/reviews")
        assert driver.find_element(By.ID, "token")  # sent to the login form
        _screenshot(driver, "login", tmp_path)
        driver.find_element(By.ID, "token").send_keys(TOKENS["bob"])
        _navigate(driver, driver.find_element(By.ID, "login"))
        assert driver.find_element(By.ID, "whoami").text == "bob"
        assert driver.current_url == f"{base}/console/reviews"
        driver.get(f"{base}/console/")
        assert "Statements over time" in driver.page_source
        _screenshot(driver, "overview", tmp_path)

        # Search with the logs filters: the held (and withdrawn) statements of user postgres.
        _navigate(driver, driver.find_element(By.LINK_TEXT, "Statements"))
        driver.find_element(By.ID, "f-user").send_keys("postgres")
        driver.find_element(By.ID, "f-action").send_keys("review")
        _navigate(driver, driver.find_element(By.ID, "search-button"))
        rows = driver.find_elements(By.CSS_SELECTOR, "#results tbody tr")
        texts = [r.text for r in rows]
        assert len(rows) == 2, texts
        assert all(STATEMENT in t and "review-order-deletes" in t for t in texts), texts
        _screenshot(driver, "statements", tmp_path)

        # Open the session of a result: its timeline, start to end.
        _navigate(driver, rows[0].find_element(By.CSS_SELECTOR, "a.session"))
        timeline = driver.find_element(By.ID, "timeline").text
        assert "session start" in timeline and "session end" in timeline
        assert "INSERT 0 5" in timeline and "UPDATE 1" in timeline
        assert "billing" in driver.find_element(By.ID, "session-who").text
        _screenshot(driver, "session", tmp_path)

        # The review queue: the pending request; approve it with a reason.
        _navigate(driver, driver.find_element(By.PARTIAL_LINK_TEXT, "Review queue"))
        assert "1" in driver.find_element(By.CSS_SELECTOR, "header .badge").text
        _navigate(driver, driver.find_element(By.LINK_TEXT, request.id))
        assert driver.find_element(By.ID, "statement").text == STATEMENT
        assert driver.find_element(By.ID, "approvals").text == "0 of 1"
        similar = driver.find_elements(By.CSS_SELECTOR, "#similar tbody tr")
        assert len(similar) == 2 and all(STATEMENT in row.text for row in similar)
        assert not driver.find_elements(By.ID, "plan")  # EXPLAIN runs only when asked
        _navigate(driver, driver.find_element(By.ID, "explain"))
        plan = driver.find_element(By.ID, "plan").text
        assert plan.startswith("Delete on console_orders"), plan
        assert "Index Scan using console_orders_pkey" in plan, plan
        _screenshot(driver, "review", tmp_path)
        driver.find_element(By.ID, "reason").send_keys("checked: order 3 is a test order")
        _navigate(driver, driver.find_element(By.ID, "approve"))
        assert driver.find_element(By.ID, "done").text == (
            "you approved this request; it is now approved"
        )
        assert driver.find_element(By.ID, "state").text == "approved"
        assert (
            "bob approved: checked: order 3 is a test order"
            in driver.find_element(By.ID, "votes").text
        )
        _screenshot(driver, "approved", tmp_path)

        # The waiting side is released, and the trail has both steps.
        outcome = loop.run(asyncio.wait_for(waiter, 10))
        assert outcome.forward and outcome.request.approved_by == ("bob",)
        assert [e["type"] for e in trail_events] == ["review_requested", "review_decided"]
        assert trail_events[1]["approver"] == "bob"
        driver.get(f"{base}/console/reviews")
        assert request.id in driver.find_element(By.ID, "decided").text
        _screenshot(driver, "queue", tmp_path)
        loop.run(admin.aclose())
    finally:
        loop.close()
    with psycopg.connect(proxy.pg.dsn(database="app"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM console_orders").fetchone() == (
            5,
        )  # EXPLAIN ran nothing
        conn.execute("DROP TABLE console_orders")


def test_the_requester_cannot_approve_in_the_browser(tmp_path: Path, driver: Any) -> None:
    """alice sees her own request without buttons; a viewer neither."""
    from selenium.webdriver.common.by import By

    (tmp_path / "audit").mkdir()
    cfg = config.defaults().replace(
        admin__listen="127.0.0.1:0",
        approvals__approvers_file=str(people_file(tmp_path)),
        audit__dir=str(tmp_path / "audit"),
    )
    loop = Loop()
    try:
        state = ServerState(proxy_id="p", started_at=0.0)
        broker = ApprovalBroker("p", lambda e: None)
        state.approvals = broker

        admin = AdminServer(cfg, state, FakeTrail())  # type: ignore[arg-type]
        loop.run(admin.start())
        base = f"http://127.0.0.1:{admin.port}"
        spec = (
            load_policy([_write(tmp_path)], holding=True)
            .evaluate(Identity("alice", "app"), analyze(STATEMENT, ParserSettings()))
            .review
        )
        assert spec is not None

        async def ask() -> Request:
            return broker.request(
                spec, text=STATEMENT, identity=Identity("alice", "app"), statement=STATEMENT
            )

        request = loop.run(ask())
        for name, expected in (
            ("alice", "You asked for this statement; someone else must decide it."),
            ("vera", "You can view requests but not decide them."),
        ):
            driver.delete_all_cookies()
            driver.get(f"{base}/console/reviews/{request.id}")
            driver.find_element(By.ID, "token").send_keys(TOKENS[name])
            _navigate(driver, driver.find_element(By.ID, "login"))
            assert driver.find_element(By.ID, "cannot-decide").text == expected
            assert not driver.find_elements(By.ID, "approve")
        loop.run(admin.aclose())
    finally:
        loop.close()


def _write(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(textwrap.dedent(POLICY))
    return path


def test_approving_in_the_browser_releases_a_waiting_psql_session(
    proxy_factory: ProxyFactory, tmp_path: Path, driver: Any
) -> None:
    """The whole loop, live: psql runs a statement a review rule holds; bob approves it in the
    console of the running proxy; psql prints the result (issue 12 §3)."""
    import subprocess

    from selenium.webdriver.common.by import By

    policy_path = tmp_path / "policy.yaml"
    policy_path.write_text(POLICY)
    proxy = proxy_factory(
        "--approvals-approvers-file", str(people_file(tmp_path)), policies=[policy_path]
    )
    with psycopg.connect(proxy.pg.dsn(database="app"), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS console_orders")
        conn.execute("CREATE TABLE console_orders (id int PRIMARY KEY, total numeric)")
        conn.execute("INSERT INTO console_orders SELECT g, g * 10 FROM generate_series(1, 5) g")
        conn.execute("GRANT ALL ON console_orders TO alice")
    psql = shutil.which("psql")
    assert psql is not None, "psql is needed (PostgreSQL's client package)"
    env = {**os.environ, "PGCONNECT_TIMEOUT": "10", "PGAPPNAME": "live-review"}
    waiting = subprocess.Popen(
        [psql, "-X", "-v", "ON_ERROR_STOP=1", proxy.dsn(user="alice", database="app",
         password="alice-pw"), "-c", STATEMENT],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        requested = proxy.wait_for(lambda e: e.get("type") == "review_requested", timeout=20)
        request_id = requested[0]["request_id"]
        assert waiting.poll() is None  # psql waits for the decision
        driver.get(proxy.admin_url(f"/console/reviews/{request_id}"))
        driver.find_element(By.ID, "token").send_keys(TOKENS["bob"])
        _navigate(driver, driver.find_element(By.ID, "login"))
        assert driver.find_element(By.ID, "statement").text == STATEMENT
        _navigate(driver, driver.find_element(By.ID, "approve"))
        assert driver.find_element(By.ID, "state").text == "approved"
        out, err = waiting.communicate(timeout=30)
    finally:
        if waiting.poll() is None:
            waiting.kill()
    assert waiting.returncode == 0, err
    assert "DELETE 1" in out
    assert "waits for approval" in err or request_id in err  # the notice psql printed
    with psycopg.connect(proxy.pg.dsn(database="app"), autocommit=True) as conn:
        assert conn.execute("SELECT count(*) FROM console_orders").fetchone() == (4,)
        conn.execute("DROP TABLE console_orders")
