"""Signing in: the token typed into the page and kept in sessionStorage (never in a URL), a bad
token sent back to the sign-in page with the error, deep links opened after sign-in, sign-out,
and a gateway without authentication."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import Page, expect

from tests.browser.conftest import ADMIN, Console, screenshot, sign_in


def test_sign_in_keeps_the_token_out_of_urls(page: Page, console: Console) -> None:
    urls: list[str] = []
    page.on("request", lambda r: urls.append(r.url))
    page.goto(console.url())
    expect(page.get_by_role("heading", name="Smithers console")).to_be_visible()
    screenshot(page, "signin")

    page.get_by_label("Access token").fill("not-a-token")
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("signin-error")).to_have_text("Invalid token")
    assert page.evaluate("sessionStorage.length") == 0

    page.get_by_label("Access token").fill(ADMIN)
    page.get_by_role("button", name="Sign in").click()
    expect(page.get_by_test_id("runs-page")).to_be_visible()
    expect(page.get_by_test_id("identity")).to_contain_text("user:admin · admin")
    assert page.evaluate("Object.values(sessionStorage)") == [ADMIN]

    page.reload()  # the session survives a reload of the tab
    expect(page.get_by_test_id("runs-page")).to_be_visible()
    assert not [u for u in urls if ADMIN in u]
    assert page.url == console.url()

    page.get_by_test_id("sign-out").click()
    expect(page.get_by_test_id("signin")).to_be_visible()
    assert page.evaluate("sessionStorage.length") == 0


def test_a_token_refused_later_signs_out(page: Page, console: Console) -> None:
    page.goto(console.url())
    expect(page.get_by_test_id("signin")).to_be_visible()  # the tokenless first try is over
    page.evaluate("sessionStorage.setItem('smithers.console.token', 'revoked-or-wrong')")
    page.reload()
    expect(page.get_by_test_id("signin-error")).to_have_text("Invalid token")
    assert page.evaluate("sessionStorage.length") == 0


def test_deep_links_open_after_sign_in(page: Page, console: Console) -> None:
    run_id = console.launch("grow", {"steps": 2, "delay": 0}, run_id="deep-1")
    console.live.wait_status(run_id, {"finished"})
    target = console.url(f"/runs/{run_id}/nodes/step-1")
    page.goto(target)
    expect(page.get_by_test_id("signin")).to_be_visible()
    page.get_by_label("Access token").fill(ADMIN)
    page.get_by_role("button", name="Sign in").click()
    panel = page.get_by_test_id("node-panel")
    expect(panel).to_have_attribute("data-node-id", "step-1")
    expect(panel.get_by_test_id("node-output-status")).to_have_text("produced")
    expect(panel.get_by_test_id("node-output-row")).to_contain_text('"n": 1')
    expect(panel.get_by_test_id("attempt-row")).to_have_count(1)
    assert page.url == target

    page.goto(console.url(f"/runs/{run_id}"))  # signed in: straight to the run
    expect(page.get_by_test_id("run-status")).to_have_text("finished")
    expect(page.get_by_test_id("node-panel")).to_have_count(0)
    page.get_by_test_id("tree").get_by_role("link", name="step-0").click()
    expect(page.get_by_test_id("node-panel")).to_have_attribute("data-node-id", "step-0")
    assert page.url == console.url(f"/runs/{run_id}/nodes/step-0")
    page.go_back()
    expect(page.get_by_test_id("node-panel")).to_have_count(0)


def test_a_gateway_without_auth_needs_no_sign_in(page: Page, gateways: Callable[..., Console]) -> None:
    console = gateways(auth=None)
    page.goto(console.url("/runs"))
    expect(page.get_by_test_id("runs-page")).to_be_visible()
    expect(page.get_by_test_id("identity")).to_have_text("no authentication · operator")
    expect(page.get_by_test_id("sign-out")).to_have_count(0)


def test_sign_in_helper_reaches_every_section(page: Page, console: Console) -> None:
    sign_in(page, console, "/approvals")
    expect(page.get_by_test_id("approvals-page")).to_be_visible()
    page.get_by_test_id("nav-crons").click()
    expect(page.get_by_test_id("crons-page")).to_be_visible()
    assert page.url == console.url("/crons")
    page.get_by_test_id("nav-runs").click()
    expect(page.get_by_test_id("runs-page")).to_be_visible()
    assert page.url == console.url("/runs")
