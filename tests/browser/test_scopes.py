"""What a token may do decides what the console offers: a ``run:read`` token sees runs, their
events and outputs but no action buttons, and a page it may not read says so clearly."""

from __future__ import annotations

from collections.abc import Callable

from playwright.sync_api import Page, expect

from tests.browser.conftest import READER, Console, PageErrors, sign_in

ACTIONS = [
    "launch",
    "bulk-cancel",
    "bulk-resume",
    "run-cancel",
    "run-resume",
    "run-rerun",
    "signal-form",
    "frame-rewind",
    "frame-fork",
    "approve",
    "deny",
    "cron-trigger",
    "cron-toggle",
]


def no_actions(page: Page) -> None:
    for testid in ACTIONS:
        expect(page.get_by_test_id(testid)).to_have_count(0)


def test_a_read_only_token_sees_no_action_buttons(page: Page, console: Console) -> None:
    console.launch("gate", run_id="gated")
    console.launch("waiter", run_id="waiting")
    console.launch("slow", run_id="running")
    console.live.wait_status("waiting", {"waiting-event"})
    sign_in(page, console, token=READER)
    expect(page.get_by_test_id("identity")).to_have_text("user:reader · viewer")
    expect(page.get_by_test_id("run-row")).to_have_count(3)
    no_actions(page)

    page.goto(console.url("/runs/running"))
    expect(page.get_by_test_id("run-status")).to_have_text("running")
    # No observability:read: no DevTools tree, but the nodes that ran, with their states.
    expect(page.get_by_test_id("tree-note")).to_contain_text("needs the observability:read scope")
    expect(page.locator("[data-testid=tree-node][data-node-id='wait']")).to_have_attribute("data-state", "in-progress")
    expect(page.get_by_test_id("frames")).to_have_count(0)
    no_actions(page)

    page.goto(console.url("/runs/gated"))
    expect(page.get_by_test_id("approval-card")).to_be_visible()
    refusal = page.get_by_test_id("approval-not-allowed")
    expect(refusal).to_have_text("Your token cannot decide approvals (approval:submit).")
    no_actions(page)

    page.goto(console.url("/approvals"))
    expect(page.get_by_test_id("approval-card")).to_have_count(1)
    no_actions(page)


def test_a_call_the_token_cannot_make_is_refused_clearly(page: Page, console: Console, page_errors: PageErrors) -> None:
    page_errors.allow("status of 403")  # the refused fetch below
    sign_in(page, console, "/crons", token=READER)
    refusal = page.get_by_test_id("not-allowed")
    expect(refusal).to_contain_text("Not allowed")
    expect(refusal).to_contain_text("this token lacks the scope cron:read needed for cron.list")
    expect(page.get_by_test_id("crons-table")).to_be_hidden()

    # The gateway is the judge: a call made anyway (here from the page itself) is refused.
    refused = page.evaluate(
        """async () => {
            const r = await fetch("/v1/rpc/launchRun", {method: "POST",
              headers: {"Authorization": "Bearer " + sessionStorage.getItem("smithers.console.token")},
              body: JSON.stringify({workflow: "hello", input: {}})});
            return [r.status, (await r.json()).error];
        }"""
    )
    assert refused[0] == 403 and refused[1]["requiredScope"] == "run:write"


def test_a_token_limited_to_approvals_gets_the_not_allowed_page(page: Page, gateways: Callable[..., Console]) -> None:
    auth = {"mode": "token", "tokens": {"approver": {"role": "operator", "scopes": ["approval:submit"]}}}
    console = gateways(auth=auth)
    sign_in(page, console, token="approver")
    refusal = page.get_by_test_id("not-allowed")
    expect(refusal).to_contain_text("this token lacks the scope run:read needed for listRuns")
    page.get_by_test_id("nav-approvals").click()
    expect(page.get_by_test_id("not-allowed")).to_contain_text("run:read")


GRANTS = [
    ["*"],
    ["run:read"],
    ["run:write"],
    ["run:admin"],
    ["cron:write"],
    ["approval:submit"],
    ["signal:submit"],
    ["observability:read"],
    ["read"],
    ["execute"],
    ["approve"],
    ["admin"],
    ["runs.*"],
    [".*"],
    ["cron.list"],
    [" run:write ", ""],
    ["run:*"],
    [],
]
METHODS = [
    "listRuns",
    "launchRun",
    "cancelRun",
    "resumeRun",
    "runs.rerun",
    "runs.fork",
    "runs.get",
    "events.list",
    "submitApproval",
    "submitSignal",
    "cron.list",
    "cron.add",
    "cron.trigger",
    "streamDevTools",
    "getDevToolsSnapshot",
    "jumpToFrame",
    "getNodeOutput",
    "config.set",
    "approve",
    "run:admin",
    "deploy.prod",
]


def test_the_console_reads_scopes_as_the_gateway_does(page: Page, gateways: Callable[..., Console]) -> None:
    """The console hides what the gateway would refuse: its grant check agrees with the gateway's."""
    from smithers.gateway.scopes import has_scope, required_scope_for_method

    console = gateways(auth=None)
    page.goto(console.url())
    expect(page.get_by_test_id("runs-page")).to_be_visible()
    seen = page.evaluate(
        """async ([grants, methods]) => {
            const { allows } = await import("/console/__smithers_ui/scopes.js");
            return grants.map((g) => methods.map((m) => allows(g, m)));
        }""",
        [GRANTS, METHODS],
    )
    expected = [[has_scope(g, required_scope_for_method(m), m) for m in METHODS] for g in GRANTS]
    assert seen == expected
