"""The runs list: launching a run and watching it finish live, rows kept current from events,
what waiting runs wait on, paging through many stored runs, filters and search, bulk actions."""

from __future__ import annotations

from playwright.sync_api import Page, expect

from smithers.store.rows import now_ms
from tests.browser.conftest import Console, PageErrors, screenshot, sign_in


def test_launch_a_run_and_watch_it_finish_live(page: Page, console: Console) -> None:
    sign_in(page, console)
    page.get_by_test_id("launch-open").click()
    page.get_by_test_id("launch-workflow").select_option("grow")
    expect(page.get_by_test_id("launch-about")).to_have_text(
        "Grow: One step after another; each finished step mounts the next"
    )
    page.get_by_test_id("launch-input").fill('{"steps": 4, "delay": 0.25}')
    page.get_by_test_id("launch-run-id").fill("live-1")
    page.get_by_test_id("launch-submit").click()

    expect(page).to_have_url(console.url("/runs/live-1"))
    expect(page.get_by_test_id("run-status")).to_have_text("running")
    log = page.get_by_test_id("event-list")
    expect(log.locator("li[data-event='NodeStarted']").first).to_be_visible()
    step3 = page.locator("[data-testid=tree-node][data-node-id='step-3']")
    expect(step3).to_have_attribute("data-state", "finished")  # mounted and finished, live
    expect(page.get_by_test_id("run-status")).to_have_text("finished")
    expect(log.locator("li[data-event='RunFinished']")).to_contain_text("finished")
    seqs = [int(s) for s in log.locator("li[data-seq]").evaluate_all("els => els.map(e => e.dataset.seq)")]
    assert seqs == list(range(0, console.rpc("events.list", {"runId": "live-1", "limit": 1})["lastSeq"] + 1))
    expect(page.get_by_test_id("run-actions").get_by_role("button", name="Cancel")).to_have_count(0)
    expect(page.get_by_test_id("signal-form")).to_be_hidden()  # an ended run takes no signals
    assert console.status("live-1") == "finished"
    step3.get_by_role("link", name="step-3").click()
    expect(page.get_by_test_id("node-output-row")).to_contain_text('"n": 3')
    screenshot(page, "run")

    page.get_by_role("link", name="Runs").first.click()
    row = page.locator("[data-testid=run-row][data-run-id='live-1']")
    expect(row.get_by_test_id("run-status")).to_have_text("finished")


def test_rows_follow_run_events_and_show_what_runs_wait_on(page: Page, console: Console) -> None:
    sign_in(page, console)
    expect(page.get_by_test_id("runs-body")).to_contain_text("No runs match.")
    console.launch("gate", run_id="wait-approval")
    console.launch("waiter", run_id="wait-event")
    console.launch("nap", run_id="wait-timer")
    console.launch("grow", {"steps": 3, "delay": 0.3}, run_id="busy")
    rows = page.get_by_test_id("run-row")
    expect(rows).to_have_count(4)  # launched elsewhere: the list hears of them from the events
    waiting = {
        "wait-approval": "approval ok (“Ship it?”)",
        "wait-event": "event “go” at w",
        "wait-timer": "timer nap until",
    }
    for run_id, text in waiting.items():
        expect(page.locator(f"[data-run-id='{run_id}'] [data-testid=run-waiting]")).to_contain_text(text)
    busy = page.locator("[data-run-id='busy'] [data-testid=run-status]")
    expect(busy).to_have_text("finished")
    screenshot(page, "runs")

    console.rpc("submitApproval", {"runId": "wait-approval", "nodeId": "ok", "approved": True})
    expect(page.locator("[data-run-id='wait-approval'] [data-testid=run-status]")).to_have_text("finished")
    expect(page.get_by_test_id("approvals-count")).to_be_hidden()


def test_paging_through_runs_stored_directly(page: Page, console: Console) -> None:
    t0 = now_ms() - 1_000_000
    with console.live.gateway.store.write() as tx:
        for i in range(120):
            status = "failed" if i % 10 == 0 else "finished"
            tx.insert_run(
                run_id=f"bulk-{i:03d}",
                workflow_name="hello" if i % 2 else "grow",
                status=status,
                created_at_ms=t0 + i * 1000,
                started_at_ms=t0 + i * 1000,
                finished_at_ms=t0 + i * 1000 + 1500,
            )
    sign_in(page, console)

    def shown() -> list[str]:
        return [str(r) for r in page.get_by_test_id("run-row").evaluate_all("rows => rows.map(r => r.dataset.runId)")]

    rows = page.get_by_test_id("run-row")
    expect(rows.first).to_have_attribute("data-run-id", "bulk-119")
    assert shown() == [f"bulk-{i:03d}" for i in range(119, 69, -1)]
    expect(page.get_by_test_id("runs-prev")).to_be_disabled()
    page.get_by_test_id("runs-next").click()
    expect(rows.first).to_have_attribute("data-run-id", "bulk-069")
    assert shown() == [f"bulk-{i:03d}" for i in range(69, 19, -1)]
    assert "afterId=bulk-070" in page.url  # the page has its own URL
    page.get_by_test_id("runs-next").click()
    expect(rows).to_have_count(20)
    expect(page.get_by_test_id("runs-next")).to_be_disabled()
    page.get_by_test_id("runs-prev").click()
    expect(rows.first).to_have_attribute("data-run-id", "bulk-069")
    page.go_back()
    expect(rows).to_have_count(20)
    page.get_by_test_id("runs-first").click()
    expect(rows.first).to_have_attribute("data-run-id", "bulk-119")

    page.get_by_test_id("filter-status").select_option("failed")
    expect(rows).to_have_count(12)
    assert all(s == "failed" for s in rows.evaluate_all("rows => rows.map(r => r.dataset.status)"))
    page.get_by_test_id("filter-workflow").select_option("grow")
    expect(rows).to_have_count(12)  # every failed one is even, so a grow run
    page.get_by_test_id("filter-status").select_option("")
    expect(rows).to_have_count(50)
    assert "workflow=grow" in page.url
    page.get_by_test_id("runs-next").click()
    expect(rows).to_have_count(10)
    page.get_by_test_id("filter-workflow").select_option("")
    page.get_by_test_id("search").fill("bulk-11")
    expect(rows).to_have_count(10)
    assert shown() == [f"bulk-{i:03d}" for i in range(119, 109, -1)]
    page.reload()  # filters and search live in the URL
    expect(rows).to_have_count(10)
    expect(page.get_by_test_id("search")).to_have_value("bulk-11")


def test_bulk_cancel_and_resume(page: Page, console: Console) -> None:
    """Bulk cancel acts on the selected runs that are active: running here, or waiting (cancelled
    through the store at once); an ended run stays as it is."""
    for name in ("slow-a", "slow-b"):
        console.launch("slow", run_id=name)
    console.launch("waiter", run_id="waits")
    console.launch("gate", run_id="gated")
    console.launch("hello", run_id="done")
    console.live.wait_status("waits", {"waiting-event"})
    console.live.wait_status("gated", {"waiting-approval"})
    console.live.wait_status("done", {"finished"})
    sign_in(page, console)
    rows = page.get_by_test_id("run-row")
    expect(rows).to_have_count(5)
    expect(page.get_by_test_id("bulk-cancel")).to_be_disabled()
    page.get_by_test_id("select-all").check()
    expect(page.get_by_test_id("bulk-cancel")).to_have_text("Cancel selected (4)")  # not the finished one
    page.get_by_test_id("bulk-cancel").click()
    expect(page.get_by_test_id("confirm-dialog")).to_contain_text("Cancel 4 runs?")
    page.get_by_test_id("confirm-ok").click()
    expect(page.get_by_test_id("notice").last).to_contain_text("Cancel: 4 accepted (2 still stopping).")
    for run_id in ("slow-a", "slow-b", "waits", "gated"):
        expect(page.locator(f"[data-run-id='{run_id}'] [data-testid=run-status]")).to_have_text("cancelled")
        assert console.live.wait_status(run_id, {"cancelled"})
    expect(page.locator("[data-run-id='done'] [data-testid=run-status]")).to_have_text("finished")
    expect(page.get_by_test_id("approvals-count")).to_be_hidden()  # the cancelled gate's approval is gone
    expect(page.get_by_test_id("bulk-cancel")).to_have_text("Cancel selected (0)")  # the finished one stays selected
    expect(page.get_by_test_id("bulk-cancel")).to_be_disabled()

    page.get_by_test_id("select-all").check()
    expect(page.get_by_test_id("bulk-resume")).to_have_text("Resume selected (5)")
    page.get_by_test_id("bulk-resume").click()
    page.get_by_test_id("confirm-ok").click()
    expect(page.get_by_test_id("notice").last).to_contain_text("Resume: 5 accepted.")


def test_a_launch_the_gateway_refuses_says_why(page: Page, console: Console, page_errors: PageErrors) -> None:
    page_errors.allow("status of 400")  # the refused launchRun
    sign_in(page, console)
    page.get_by_test_id("launch-open").click()
    page.get_by_test_id("launch-workflow").select_option("hello")
    page.get_by_test_id("launch-input").fill("{name: ada}")
    page.get_by_test_id("launch-submit").click()
    expect(page.get_by_test_id("launch-error")).to_contain_text("Input is not valid JSON")
    page.get_by_test_id("launch-input").fill("{}")
    page.get_by_test_id("launch-run-id").fill("x" * 300)
    page.get_by_test_id("launch-submit").click()
    expect(page.get_by_test_id("launch-error")).to_have_text(
        "runId exceeds the maximum length of 256 characters. (INVALID_INPUT)"
    )
    expect(page).to_have_url(console.url())
