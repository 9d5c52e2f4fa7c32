"""Schedules: listed, fired now, disabled and enabled again."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from tests.browser.conftest import Console, sign_in


def test_list_trigger_and_toggle_a_schedule(page: Page, console: Console) -> None:
    sign_in(page, console, "/crons")
    row = page.locator("[data-testid=cron-row][data-cron-id='gateway:nightly']")
    expect(row).to_contain_text("nightly")
    expect(row).to_contain_text("0 8 * * 1-5")
    expect(row.get_by_test_id("cron-enabled")).to_have_text("enabled")

    row.get_by_role("button", name="Disable").click()
    expect(row.get_by_test_id("cron-enabled")).to_have_text("disabled")
    assert console.rpc("cron.list")[0]["enabled"] is False
    row.get_by_role("button", name="Enable").click()
    expect(row.get_by_test_id("cron-enabled")).to_have_text("enabled")
    assert console.rpc("cron.list")[0]["enabled"] is True

    row.get_by_role("button", name="Run now").click()
    link = page.get_by_test_id("cron-run-link")
    expect(link).to_be_visible()
    run_id = link.inner_text()
    console.live.wait_status(run_id, {"finished"})
    assert console.rpc("cron.list")[0]["lastRunAtMs"] is not None
    link.click()
    expect(page.get_by_test_id("run-page")).to_have_attribute("data-run-id", run_id)
    expect(page.get_by_test_id("run-status")).to_have_text("finished")
