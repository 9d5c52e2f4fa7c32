"""The console's UI mount seen from the browser: the index at /console and under it, client.js and
its modules loading without console errors, HEAD, and a missing asset."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import Page, expect

from tests.browser.conftest import Console


def test_index_and_modules_load_without_errors(page: Page, console: Console) -> None:
    loaded: list[str] = []
    page.on("response", lambda r: loaded.append(f"{r.status} {r.url.removeprefix(console.live.url)}"))
    response = page.goto(console.url())
    assert response is not None and response.status == 200
    assert response.headers["content-type"].startswith("text/html")
    expect(page).to_have_title("Sign in · Smithers")
    expect(page.get_by_test_id("signin")).to_be_visible()  # client.js ran: it drew the sign-in page
    boot = page.evaluate("globalThis.__SMITHERS_GATEWAY_UI__")
    assert boot["mountPath"] == "/console" and boot["assetBasePath"] == "/console/__smithers_ui/"
    for asset in ("client.js", "rpc.js", "dom.js", "runs.js", "run.js", "style.css", "icon.svg"):
        assert f"200 /console/__smithers_ui/{asset}" in loaded, loaded
    assert not [line for line in loaded if not line.startswith("200")], loaded


def test_paths_under_the_mount_get_the_index(page: Page, console: Console) -> None:
    for path in ("/runs", "/runs/some-run/nodes/a-node", "/approvals", "/crons", "/no/such/page"):
        response = page.request.get(console.url(path))
        assert response.status == 200, path
        assert '<div id="root"></div>' in response.text()


def test_head_and_missing_asset(page: Page, console: Console) -> None:
    head = page.request.head(console.url())
    assert head.status == 200
    assert head.headers["content-type"].startswith("text/html")
    assert head.body() == b""
    client = page.request.head(console.url("/__smithers_ui/client.js"))
    assert client.status == 200 and client.headers["content-type"].startswith("text/javascript")
    missing = page.request.get(console.url("/__smithers_ui/missing.js"))
    assert missing.status == 404
    assert page.request.head(console.url("/__smithers_ui/missing.css")).status == 404
    assert page.request.get(console.url("/__smithers_ui/sub/dir.js")).status == 404


def test_unknown_pages_and_runs_say_so(page: Page, gateways: Callable[..., Console]) -> None:
    console = gateways(auth=None)
    page.goto(console.url("/no/such/page"))
    expect(page.get_by_test_id("page-missing")).to_be_visible()
    page.get_by_role("link", name="Go to the runs").click()
    expect(page.get_by_test_id("runs-page")).to_be_visible()
    assert page.url == console.url("/runs")
    page.goto(console.url("/runs/no-such-run"))
    expect(page.get_by_test_id("run-missing")).to_contain_text("Run not found")
