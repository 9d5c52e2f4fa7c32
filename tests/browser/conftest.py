"""Browser tests: a real gateway serving the console (``ui=True``) on loopback, driven by Debian's
Chromium through Playwright. One browser per test worker, a fresh context (cookies, session
storage) per test; console errors of the page fail the test unless the test expects them.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Error, Page, ViewportSize, expect, sync_playwright

from smithers.store.store import Store
from tests.browser.workflows import build
from tests.gateway.support import Live

ROOT = Path(__file__).resolve().parents[2]
SCREENSHOTS = ROOT / "docs" / "screenshots"
VIEWPORT: ViewportSize = {"width": 1280, "height": 800}

ADMIN = "admin-token"
OPERATOR = "operator-token"
READER = "reader-token"
AUTH: dict[str, Any] = {
    "mode": "token",
    "tokens": {
        ADMIN: {"role": "admin", "scopes": ["*"], "userId": "user:admin"},
        OPERATOR: {"role": "operator", "scopes": ["*"], "userId": "user:op"},
        READER: {"role": "viewer", "scopes": ["run:read"], "userId": "user:reader"},
    },
}

expect.set_options(timeout=15_000)  # generous: the whole suite runs in parallel with these


class Console:
    """A gateway serving the console, with helpers to reach it."""

    def __init__(self, live: Live):
        self.live = live
        self.base = f"{live.url}/console"
        self.stopped = False

    def url(self, path: str = "") -> str:
        return self.base + path

    def rpc(self, method: str, params: Any = None, token: str = ADMIN) -> Any:
        return self.live.ok(method, params if params is not None else {}, token=token)

    def launch(self, workflow: str, input: Any = None, run_id: str | None = None) -> str:
        params: dict[str, Any] = {"workflow": workflow, "input": input or {}}
        if run_id:
            params["runId"] = run_id
        return str(self.rpc("launchRun", params)["runId"])

    def status(self, run_id: str) -> str | None:
        row = self.live.gateway.store.get_run(run_id)
        return None if row is None else str(row["status"])

    def stop(self) -> None:
        """Stop the gateway now (a restart: start another on ``self.live.db_url``)."""
        self.stopped = True
        self.live.stop()


class PageErrors:
    """Errors the page logged; ``allow(text)`` accepts those containing ``text``."""

    def __init__(self) -> None:
        self.seen: list[str] = []
        self.allowed: list[str] = []

    def console(self, message: ConsoleMessage) -> None:
        if message.type == "error":
            self.seen.append(message.text)

    def page(self, error: Error) -> None:
        self.seen.append(f"uncaught: {error}")

    def allow(self, text: str) -> None:
        self.allowed.append(text)

    def unexpected(self) -> list[str]:
        return [e for e in self.seen if not any(a in e for a in self.allowed)]


def chromium_path() -> str:
    """Debian's Chromium (``scripts/ensure-tools.sh`` installs it); Playwright's own download is not used."""
    path = shutil.which("chromium") or "/usr/bin/chromium"
    if not Path(path).exists():
        pytest.fail("Chromium is not installed: run scripts/ensure-tools.sh (apt-get install chromium)")
    return path


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    """One Chromium per test module. Not per session: Playwright's sync API keeps an event loop
    running on the thread while it is started, and tests of other directories that a worker runs
    next (``smithers.run`` refuses a running loop) must not find it there."""
    with sync_playwright() as playwright:
        launched = playwright.chromium.launch(executable_path=chromium_path(), args=["--no-sandbox"])
        yield launched
        launched.close()


@pytest.fixture(scope="session")
def template_db(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An empty, migrated SQLite file; each gateway starts from a copy."""
    path = tmp_path_factory.mktemp("browser-template") / "template.db"
    Store(str(path)).close()
    return path


@pytest.fixture
def gateways(tmp_path: Path, template_db: Path) -> Iterator[Callable[..., Console]]:
    """``gateways(**options)``: a console gateway (token auth unless ``auth=None``) on a fresh
    database, or on the database ``db`` (a restart), stopped at the end."""
    started: list[Console] = []

    def start(db: str | None = None, **options: Any) -> Console:
        options.setdefault("auth", AUTH)
        if options["auth"] is None:
            del options["auth"]
        if db is None:
            path = tmp_path / f"console-{len(started)}.db"
            shutil.copyfile(template_db, path)
            db = str(path)
        console = Console(Live(build(db, **options)))
        started.append(console)
        return console

    yield start
    for console in started:
        if not console.stopped:
            console.live.stop()


@pytest.fixture
def console(gateways: Callable[..., Console]) -> Console:
    return gateways()


@pytest.fixture
def page_errors() -> PageErrors:
    return PageErrors()


@pytest.fixture
def page(browser: Browser, gateways: Callable[..., Console], page_errors: PageErrors) -> Iterator[Page]:
    """A fresh context and page; closed before the gateways stop (this fixture depends on them)."""
    context = browser.new_context(viewport=VIEWPORT)
    new_page = context.new_page()
    new_page.on("console", page_errors.console)
    new_page.on("pageerror", page_errors.page)
    yield new_page
    context.close()
    assert page_errors.unexpected() == [], "the console logged errors"


def sign_in(page: Page, console: Console, path: str = "", token: str = ADMIN) -> None:
    """Open ``/console<path>``, sign in with ``token`` and wait for the page to show."""
    page.goto(console.url(path))
    page.get_by_label("Access token").fill(token)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("identity")).to_be_visible()


def screenshot(page: Page, name: str) -> None:
    """Save ``<name>.png`` (the viewport, 1280x800) under ``build/screenshots/``; with
    ``SMITHERS_UPDATE_SCREENSHOTS=1`` under ``docs/screenshots/``, the README's (they show times of
    day, so refreshing them on every run would leave the checkout changed)."""
    folder = SCREENSHOTS if os.environ.get("SMITHERS_UPDATE_SCREENSHOTS") == "1" else ROOT / "build" / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    page.evaluate("document.getElementById('notices')?.replaceChildren()")  # no passing toasts
    page.screenshot(path=str(folder / f"{name}.png"))
