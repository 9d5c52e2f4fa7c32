"""The run page: a signal sent to a waiting run; the event log (the run's stored engine events)
resuming after a reload or a dropped connection without gaps or duplicates, whole after a gateway
restart and paged back to its first event; the frame slider showing an earlier tree, rewind and
fork from a frame."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from playwright.sync_api import Page, WebSocketRoute, expect

from tests.browser.conftest import Console, sign_in


def seqs_in_log(page: Page) -> list[int]:
    rows = page.get_by_test_id("event-list").locator("li[data-seq]")
    values = rows.evaluate_all("els => els.map(e => e.dataset.seq)")
    return [int(v) for v in values]


def stored_seqs(console: Console, run_id: str) -> list[int]:
    """Every stored engine event's seq of the run, from ``events.list``."""
    last = console.rpc("events.list", {"runId": run_id, "limit": 1})["lastSeq"]
    return list(range(0, last + 1))


def test_send_a_signal_to_a_waiting_run(page: Page, console: Console) -> None:
    run_id = console.launch("waiter", run_id="waits-for-go")
    console.live.wait_status(run_id, {"waiting-event"})
    sign_in(page, console, f"/runs/{run_id}")
    expect(page.get_by_test_id("run-status")).to_have_text("waiting-event")
    expect(page.get_by_test_id("run-waiting")).to_have_text("event “go” at w")
    expect(page.locator("[data-testid=tree-node][data-node-id='w']")).to_have_attribute("data-state", "waiting-event")
    form = page.get_by_test_id("signal-form")
    expect(form.get_by_label("Signal name")).to_have_value("go")  # filled in from what the run waits for
    form.get_by_label("Payload (JSON)").fill('{"amount": 12')
    form.get_by_role("button", name="Send signal").click()
    expect(form.get_by_test_id("signal-error")).to_contain_text("Payload is not valid JSON")
    form.get_by_label("Payload (JSON)").fill('{"amount": 12}')
    form.get_by_role("button", name="Send signal").click()
    expect(form.get_by_test_id("signal-result")).to_have_text("Sent “go” (signal #0).")
    expect(page.get_by_test_id("run-status")).to_have_text("finished")
    page.locator("[data-testid=tree-node][data-node-id='after'] a").click()
    expect(page.get_by_test_id("node-output-row")).to_contain_text('"amount": 12')
    assert console.status(run_id) == "finished"


def test_reload_mid_run_resumes_the_event_log_without_gaps_or_duplicates(page: Page, console: Console) -> None:
    run_id = console.launch("chatty", {"tasks": 80, "delay": 0.15}, run_id="chatty-1")
    sign_in(page, console, f"/runs/{run_id}")
    log = page.get_by_test_id("event-list")
    expect(log.locator("li[data-seq='12']")).to_be_attached()
    mid = seqs_in_log(page)
    assert mid == list(range(0, len(mid))), mid  # from the run's first event, each once
    page.reload()
    expect(page.get_by_test_id("run-page")).to_be_visible()
    assert console.status(run_id) == "running", "the reload must happen mid-run"
    expect(log.locator("li[data-seq]").first).to_have_attribute("data-seq", "0")
    expect(page.get_by_test_id("run-status")).to_have_text("finished", timeout=30_000)
    expect(log.locator("li[data-event='RunFinished']")).to_be_attached()
    expected = stored_seqs(console, run_id)
    assert len(expected) > 80 * 3, len(expected)  # pending, started and finished per task, and frames
    assert seqs_in_log(page) == expected  # the engine's seqs: no gaps, no duplicates
    assert log.locator("li[data-event='NodeStarted']").count() == 80

    page.reload()  # after the run: the whole log again, from the store
    expect(log.locator("li[data-event='RunFinished']")).to_be_attached()
    assert seqs_in_log(page) == expected


def test_a_run_from_before_a_restart_shows_its_whole_log(page: Page, gateways: Callable[..., Console]) -> None:
    """The log is read from the stored events: a run that finished before the gateway restarted
    shows them all, the newest 500 first and older ones 500 at a time back to seq 0."""
    first = gateways()
    run_id = first.launch("chatty", {"tasks": 300}, run_id="before-restart")
    first.live.wait_status(run_id, {"finished"}, timeout=30)
    expected = stored_seqs(first, run_id)
    assert len(expected) >= 1200, len(expected)
    first.stop()
    console = gateways(db=first.live.db_url)  # a new gateway on the same database
    sign_in(page, console, f"/runs/{run_id}")
    expect(page.get_by_test_id("run-status")).to_have_text("finished")
    log = page.get_by_test_id("event-list")
    expect(log.locator("li[data-event='RunFinished']")).to_contain_text("finished")
    assert seqs_in_log(page) == expected[-500:]  # the newest page
    expect(page.get_by_test_id("events-empty")).to_be_hidden()
    info = f"#{expected[-500]}–#{expected[-1]} shown of {len(expected)}"
    expect(page.get_by_test_id("events-info")).to_have_text(info)
    older = page.get_by_test_id("events-older")
    for oldest in (expected[-1000], 0):
        older.click()
        expect(log.locator("li[data-seq]").first).to_have_attribute("data-seq", str(oldest))
    expect(older).to_be_hidden()
    assert seqs_in_log(page) == expected
    expect(log.locator("li[data-seq='0']")).to_have_attribute("data-event", "RunStarted")
    expect(page.get_by_test_id("events-newest")).to_be_hidden()  # nothing newer was dropped


def test_frame_slider_shows_an_earlier_tree(page: Page, console: Console) -> None:
    run_id = console.launch("grow", {"steps": 4, "delay": 0}, run_id="grown")
    console.live.wait_status(run_id, {"finished"})
    latest = console.rpc("frames.get", {"runId": run_id})["frameNo"]  # a frame per mounted step, and the last
    sign_in(page, console, f"/runs/{run_id}")
    tree = page.get_by_test_id("tree-panel")
    nodes = tree.locator("[data-testid=tree-node][data-type=task]")
    expect(nodes).to_have_count(4)
    expect(tree).to_have_attribute("data-live", "1")
    expect(page.get_by_test_id("frame-label")).to_have_text(f"live · frame {latest}")

    page.get_by_test_id("frame-prev").click()
    expect(page).to_have_url(console.url(f"/runs/{run_id}?frame={latest - 1}"))
    expect(tree).to_have_attribute("data-frame", str(latest - 1))
    page.get_by_test_id("frame-prev").click()
    expect(tree).to_have_attribute("data-frame", str(latest - 2))
    expect(nodes).to_have_count(3)
    slider = page.get_by_test_id("frame-slider")
    slider.focus()
    page.keyboard.press("Home")  # the range input: keyboard moves, change picks the frame
    expect(tree).to_have_attribute("data-frame", "1")
    expect(nodes).to_have_count(1)
    expect(page.get_by_test_id("frame-label")).to_have_text(f"frame 1 of {latest}")
    expect(page.get_by_test_id("tree-note")).to_contain_text("Frame 1")

    page.reload()  # the frame is part of the URL
    expect(tree).to_have_attribute("data-frame", "1")
    expect(nodes).to_have_count(1)
    page.get_by_test_id("frame-live").click()
    expect(tree).to_have_attribute("data-live", "1")
    expect(nodes).to_have_count(4)
    assert page.url == console.url(f"/runs/{run_id}")


def test_rewind_from_the_slider(page: Page, console: Console) -> None:
    run_id = console.launch("grow", {"steps": 3, "delay": 0}, run_id="rewound")
    console.live.wait_status(run_id, {"finished"})
    latest = console.rpc("frames.get", {"runId": run_id})["frameNo"]
    sign_in(page, console, f"/runs/{run_id}?frame=1")
    tree = page.get_by_test_id("tree-panel")
    expect(tree).to_have_attribute("data-frame", "1")
    page.get_by_test_id("frame-rewind").click()
    dialog = page.get_by_test_id("confirm-dialog")
    expect(dialog).to_contain_text("Rewind rewound to frame 1?")
    page.get_by_test_id("confirm-cancel").click()
    expect(dialog).to_have_count(0)
    assert console.rpc("frames.get", {"runId": run_id})["frameNo"] == latest  # cancelled: nothing changed

    page.get_by_test_id("frame-rewind").click()
    page.get_by_test_id("confirm-ok").click()
    expect(page.get_by_test_id("notice").last).to_contain_text(
        f"Rewound to frame 1: {latest - 1} frames and 3 attempts deleted."  # every step started after frame 1
    )
    expect(tree).to_have_attribute("data-live", "1")
    jumped = page.get_by_test_id("event-list").locator("li[data-event='TimeTravelJumped']")
    expect(jumped).to_contain_text(f"frame {latest} → 1")
    expect(page.get_by_test_id("run-status")).to_have_text("finished")  # it ran again from frame 1
    expect(tree.locator("[data-testid=tree-node][data-type=task]")).to_have_count(3)


def test_fork_from_a_frame(page: Page, console: Console) -> None:
    run_id = console.launch("grow", {"steps": 3, "delay": 0}, run_id="source")
    console.live.wait_status(run_id, {"finished"})
    sign_in(page, console, f"/runs/{run_id}?frame=2")
    page.get_by_test_id("frame-fork").click()
    expect(page.get_by_test_id("notice").last).to_contain_text("from frame 2")
    expect(page.get_by_test_id("run-page")).not_to_have_attribute("data-run-id", run_id)
    expect(page.get_by_text("Forked from")).to_be_visible()
    expect(page.get_by_test_id("run-status")).to_have_text("finished")
    page.get_by_role("link", name=run_id, exact=True).click()
    expect(page.get_by_test_id("run-page")).to_have_attribute("data-run-id", run_id)


def test_an_operator_who_does_not_own_the_run_is_offered_no_rewind(page: Page, console: Console) -> None:
    run_id = console.launch("grow", {"steps": 2, "delay": 0}, run_id="not-mine")
    console.live.wait_status(run_id, {"finished"})
    sign_in(page, console, f"/runs/{run_id}?frame=1", token="operator-token")
    expect(page.get_by_test_id("tree-panel")).to_have_attribute("data-frame", "1")
    expect(page.get_by_test_id("frame-fork")).to_be_visible()
    expect(page.get_by_test_id("frame-rewind")).to_have_count(0)


def test_a_dropped_connection_resumes_the_event_log_after_its_last_seq(page: Page, console: Console) -> None:
    sockets: list[WebSocketRoute] = []

    def through(ws: WebSocketRoute) -> None:  # every socket of the page, passed through to the gateway
        ws.connect_to_server()
        sockets.append(ws)

    page.route_web_socket(lambda url: True, through)
    sent: list[str] = []
    page.on("websocket", lambda ws: ws.on("framesent", lambda payload: sent.append(str(payload))))
    run_id = console.launch("grow", {"steps": 2, "delay": 0}, run_id="dropped")
    console.live.wait_status(run_id, {"finished"})
    console.rpc("jumpToFrame", {"runId": run_id, "frameNo": 1, "confirm": True})  # events 1-4, then again
    console.live.wait_status(run_id, {"finished"})
    sign_in(page, console, f"/runs/{run_id}")
    log = page.get_by_test_id("event-list")
    expect(log.locator("li[data-event='RunFinished']")).to_have_count(2)
    before = seqs_in_log(page)
    assert before == stored_seqs(console, run_id)
    opened = len(sockets)
    for ws in sockets:
        ws.close()  # the page sees its sockets drop ...
    # ... and the run goes on meanwhile: a rewind and a second pass, seen by no one
    console.rpc("jumpToFrame", {"runId": run_id, "frameNo": 1, "confirm": True})
    console.live.wait_status(run_id, {"finished"})
    expect(page.get_by_test_id("connection")).to_have_text("connected")
    assert len(sockets) > opened, "the console opened new sockets"
    expect(log.locator("li[data-event='RunFinished']")).to_have_count(3)  # fetched after the last seq it had
    expect(log.locator("li[data-event='TimeTravelJumped']")).to_have_count(2)
    after = seqs_in_log(page)
    assert after == stored_seqs(console, run_id) and len(after) > len(before), (before, after)
    resumed = [json.loads(f) for f in sent if '"events.list"' in f and '"afterSeq"' in f]
    assert before[-1] in [f["params"]["afterSeq"] for f in resumed], resumed


def test_a_failed_tree_stream_is_followed_again(page: Page, console: Console) -> None:
    """A ``devtools.error`` ends a DevTools stream (docs/protocol.md#streamdevtools): the page asks
    for a new one and goes on drawing the live tree."""
    pairs: list[tuple[WebSocketRoute, WebSocketRoute]] = []
    answers: list[dict[str, Any]] = []

    def through(ws: WebSocketRoute) -> None:
        server = ws.connect_to_server()

        def from_server(message: str | bytes) -> None:
            frame = json.loads(message)
            if frame.get("type") == "res" and isinstance(frame.get("payload"), dict) and "fromSeq" in frame["payload"]:
                answers.append({"ws": ws, **frame["payload"]})  # a streamDevTools answer
            ws.send(message)

        server.on_message(from_server)
        ws.on_message(lambda message: server.send(message))
        pairs.append((ws, server))

    page.route_web_socket(lambda url: True, through)
    run_id = console.launch("grow", {"steps": 6, "delay": 0.3}, run_id="streamed")
    sign_in(page, console, f"/runs/{run_id}")
    tree = page.get_by_test_id("tree-panel")
    expect(tree.locator("[data-node-id='step-1']")).to_be_attached()
    assert len(answers) == 1
    stream = answers[0]
    error = {"code": "BackpressureDisconnect", "message": "Subscriber outbound queue exceeded 1000 events."}
    stream["ws"].send(
        json.dumps(
            {
                "type": "event",
                "event": "devtools.error",
                "payload": {"streamId": stream["streamId"], "runId": run_id, "error": error},
                "seq": 10_000,
                "stateVersion": 0,
                "apiVersion": "v1",
            }
        )
    )
    expect(page.get_by_test_id("tree-note")).to_contain_text("The tree stream stopped (Subscriber outbound queue")
    expect(page.get_by_test_id("tree-note")).to_have_text("")  # a new stream's snapshot arrived
    assert len(answers) == 2 and answers[1]["streamId"] != stream["streamId"]
    expect(page.get_by_test_id("run-status")).to_have_text("finished")
    expect(tree.locator("[data-type=task]")).to_have_count(6)
    expect(tree.locator("[data-node-id='step-5']")).to_have_attribute("data-state", "finished")


def test_rerun_and_resume(page: Page, console: Console) -> None:
    console.launch("hello", {"name": "ada"}, run_id="first")
    console.launch("nap", {"ms": 60_000}, run_id="napping")
    console.live.wait_status("first", {"finished"})
    console.live.wait_status("napping", {"waiting-timer"})
    sign_in(page, console, "/runs/first")
    page.get_by_test_id("run-rerun").click()
    expect(page.get_by_test_id("run-page")).not_to_have_attribute("data-run-id", "first")
    expect(page.get_by_test_id("run-status")).to_have_text("finished")
    rerun_id = page.get_by_test_id("run-page").get_attribute("data-run-id")
    assert rerun_id and console.rpc("getNodeOutput", {"runId": rerun_id, "nodeId": "greet"})["row"] == {
        "message": "hello ada"
    }

    page.goto(console.url("/runs/napping"))
    expect(page.get_by_test_id("run-waiting")).to_contain_text("timer nap until")
    expect(page.get_by_test_id("run-cancel")).to_be_visible()  # a waiting run can be cancelled too
    page.get_by_test_id("run-resume").click()
    expect(page.get_by_test_id("notice").last).to_have_text("Resume requested for napping×")
    expect(page.get_by_test_id("run-status")).to_have_text("waiting-timer")
