"""The approvals inbox: pending approvals across runs, decided with a note; select and rank
approvals; the run page's own approval cards."""

from __future__ import annotations

import json

from playwright.sync_api import Locator, Page, expect

from tests.browser.conftest import Console, screenshot, sign_in


def card(page: Page, run_id: str) -> Locator:
    return page.locator(f"[data-testid=approval-card][data-run-id='{run_id}']")


def test_approve_a_waiting_run_from_the_inbox(page: Page, console: Console) -> None:
    console.launch("ship", run_id="deploy-1")
    console.launch("pick", run_id="colour-1")
    console.launch("rank", run_id="order-1")
    console.live.wait_status("order-1", {"waiting-approval"})
    sign_in(page, console, "/approvals")
    expect(page.get_by_test_id("approval-card")).to_have_count(3)
    expect(page.get_by_test_id("approvals-count")).to_have_text("3")
    ship = card(page, "deploy-1")
    expect(ship).to_contain_text("Ship it?")
    expect(ship).to_contain_text("Deploy v2 to production")
    screenshot(page, "approvals")

    ship.get_by_label("Note").fill("looks good")
    ship.get_by_role("button", name="Approve").click()
    expect(ship).to_have_count(0)  # decided: it leaves the inbox
    expect(page.get_by_test_id("approvals-count")).to_have_text("2")
    console.live.wait_status("deploy-1", {"finished"})
    page.get_by_test_id("nav-runs").click()
    expect(page.locator("[data-run-id='deploy-1'] [data-testid=run-status]")).to_have_text("finished")
    page.goto(console.url("/runs/deploy-1/nodes/ok"))
    output = page.get_by_test_id("node-output-row")
    expect(output).to_contain_text('"approved": true')
    expect(output).to_contain_text('"note": "looks good"')
    expect(output).to_contain_text('"decidedBy": "user:admin"')


def test_select_and_rank_approvals(page: Page, console: Console) -> None:
    console.launch("pick", run_id="colour-2")
    console.launch("rank", run_id="order-2")
    console.live.wait_status("order-2", {"waiting-approval"})
    sign_in(page, console, "/approvals")
    pick = card(page, "colour-2")
    options = pick.get_by_test_id("approval-option")
    expect(options).to_have_count(2)  # options without a key or label are not offered
    pick.get_by_label("Red").check()
    pick.get_by_role("button", name="Approve choice").click()
    expect(pick).to_have_count(0)

    order = card(page, "order-2")
    items = order.get_by_test_id("rank-item")
    expect(items).to_have_count(3)
    order.get_by_role("button", name="Move C up").click()
    order.get_by_role("button", name="Move C up").click()
    assert items.evaluate_all("els => els.map(e => e.dataset.key)") == ["c", "a", "b"]
    order.get_by_role("button", name="Approve order").click()
    expect(order).to_have_count(0)
    expect(page.get_by_test_id("approvals-info")).to_have_text("Nothing is waiting for a decision.")

    console.live.wait_status("colour-2", {"finished"})
    console.live.wait_status("order-2", {"finished"})
    picked = console.rpc("getNodeOutput", {"runId": "colour-2", "nodeId": "after"})["row"]
    ranked = console.rpc("getNodeOutput", {"runId": "order-2", "nodeId": "after"})["row"]
    assert picked["value"]["selected"] == "red", json.dumps(picked)
    assert ranked["value"]["ranked"] == ["c", "a", "b"], json.dumps(ranked)


def test_deny_from_the_run_page(page: Page, console: Console) -> None:
    console.launch("gate", run_id="gated")
    console.live.wait_status("gated", {"waiting-approval"})
    sign_in(page, console, "/runs/gated")
    expect(page.get_by_test_id("run-waiting")).to_have_text("approval ok (“Ship it?”)")
    gate_node = page.locator("[data-testid=tree-node][data-node-id='ok']")
    expect(gate_node).to_have_attribute("data-state", "waiting-approval")
    gate = card(page, "gated")
    gate.get_by_label("Note").fill("not today")
    gate.get_by_role("button", name="Deny").click()
    expect(gate).to_have_count(0)
    expect(page.get_by_test_id("run-status")).to_have_text("finished")  # the gate records the denial and goes on
    expect(page.get_by_test_id("event-list").locator("li[data-event='ApprovalDenied']")).to_contain_text(
        "denied · by user:admin · “not today”"
    )


def test_cancel_a_run_waiting_for_approval_from_its_page(page: Page, console: Console) -> None:
    """A waiting run executes nowhere; cancelling it ends it at once, its approval with it."""
    console.launch("gate", run_id="held")
    console.live.wait_status("held", {"waiting-approval"})
    sign_in(page, console, "/runs/held")
    expect(card(page, "held")).to_be_visible()
    expect(page.get_by_test_id("approvals-count")).to_have_text("1")
    page.get_by_test_id("run-cancel").click()
    expect(page.get_by_test_id("confirm-dialog")).to_contain_text("Cancel held?")
    page.get_by_test_id("confirm-ok").click()
    expect(page.get_by_test_id("notice").last).to_contain_text("Cancelled held")
    expect(page.get_by_test_id("run-status")).to_have_text("cancelled")
    expect(card(page, "held")).to_have_count(0)
    expect(page.get_by_test_id("approvals-count")).to_be_hidden()
    expect(page.get_by_test_id("run-cancel")).to_have_count(0)  # an ended run has nothing to cancel
    log = page.get_by_test_id("event-list")
    expect(log.locator("li[data-event='RunCancelled']")).to_contain_text("cancelled")
    seqs = [int(s) for s in log.locator("li[data-seq]").evaluate_all("els => els.map(e => e.dataset.seq)")]
    assert seqs == list(range(0, len(seqs))), seqs
    assert console.status("held") == "cancelled"
    page.get_by_test_id("nav-approvals").click()
    expect(page.get_by_test_id("approvals-info")).to_have_text("Nothing is waiting for a decision.")
    expect(page.get_by_test_id("approval-card")).to_have_count(0)
