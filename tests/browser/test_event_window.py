"""The event log with a very long run: 50 000 stored events. The page fetches and shows the newest
500, appends live ones (one ``events.list`` per burst of gateway events), loads older ones 500 at a
time back to seq 0, and never holds more than 2 000 rows. The log module runs against a stand-in
for ``events.list`` that pages like the gateway (docs/protocol.md#eventslist)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from playwright.sync_api import Page, expect

from tests.browser.conftest import Console

SCRIPT = """
async () => {
  const { EventLog } = await import("/console/__smithers_ui/events.js");
  let stored = 50000;  // seqs 0 .. stored - 1
  const event = (seq) => {
    const type = seq % 2 ? "NodeStarted" : "NodeFinished";
    const timestampMs = 1767225600000 + seq;
    return { seq, type, timestampMs,
             payload: { type, runId: "big", timestampMs, nodeId: `t${seq}`, iteration: 0, attempt: 1 } };
  };
  const calls = [];
  const ctx = {
    async call(method, params) {  // events.list, as the gateway pages it
      if (method !== "events.list") throw new Error(`unexpected ${method}`);
      calls.push(params);
      await new Promise((resolve) => setTimeout(resolve, 0));
      const limit = Math.min(params.limit ?? 100, 1000);
      let from, to;
      if (params.afterSeq !== undefined) {
        from = params.afterSeq + 1;
        to = Math.min(stored, from + limit);
      } else {
        to = Math.min(stored, params.beforeSeq ?? stored);
        from = Math.max(0, to - limit);
      }
      const events = [];
      for (let seq = from; seq < to; seq++) events.push(event(seq));
      return { runId: "big", events, lastSeq: stored - 1 };
    },
  };
  const handlers = {};
  const channel = { on(name, fn) { (handlers[name] = handlers[name] || []).push(fn); return () => {}; } };
  const emit = (name, payload) => (handlers["*"] || []).forEach((fn) => fn(payload, { event: name }));
  const box = document.createElement("div");
  box.id = "log-under-test";
  document.body.append(box);
  const log = new EventLog(ctx, "big", channel);
  box.append(log.el);
  const started = performance.now();
  await log.start();
  const firstPaint = performance.now() - started;
  // The run goes on: each stored event comes with a gateway event of the run.
  globalThis.__grow = async (n) => {
    for (let i = 0; i < n; i++) {
      stored += 1;
      emit(i % 2 ? "node.finished" : "node.started", { runId: "big", nodeId: "x" });
      emit("node.started", { runId: "another-run", nodeId: "x" });  // not this run's
      emit("run.heartbeat", { runId: "big" });  // no news
    }
    await log.poke();
  };
  globalThis.__log = log;
  globalThis.__calls = calls;
  await __grow(300);
  return { firstPaint, calls: calls.slice() };
}
"""


def rows(page: Page) -> list[int]:
    values = page.locator("#log-under-test li[data-seq]").evaluate_all("els => els.map(e => Number(e.dataset.seq))")
    return [int(v) for v in values]


def test_fifty_thousand_events_stay_a_bounded_window(page: Page, gateways: Callable[..., Console]) -> None:
    console = gateways(auth=None)
    page.goto(console.url())
    expect(page.get_by_test_id("runs-page")).to_be_visible()
    result: dict[str, Any] = page.evaluate(SCRIPT)
    assert result["firstPaint"] < 2000, result
    assert result["calls"] == [  # the newest page, then one fetch for a burst of 300 live events
        {"runId": "big", "limit": 500},
        {"runId": "big", "afterSeq": 49_999, "limit": 1000},
    ]
    older = page.locator("#log-under-test [data-testid=events-older]")
    newest = page.locator("#log-under-test [data-testid=events-newest]")
    info = page.locator("#log-under-test [data-testid=events-info]")
    assert rows(page) == list(range(49_500, 50_300))  # the newest 500 and the live ones
    expect(info).to_have_text("#49500–#50299 shown of 50300")
    expect(older).to_be_visible()

    page.evaluate("__grow(1500)")  # past 2 000 rows: the oldest leave the page
    assert rows(page) == list(range(49_800, 51_800))
    page.evaluate("__grow(2500)")  # more than a page can take at once: the newest page instead
    assert rows(page) == list(range(53_800, 54_300))
    assert page.evaluate("__calls.slice(-2)") == [
        {"runId": "big", "afterSeq": 51_799, "limit": 1000},
        {"runId": "big", "limit": 500},
    ]

    def load_older() -> None:
        older.click()
        page.wait_for_function("!globalThis.__log.loadingOlder")

    load_older()
    assert rows(page) == list(range(53_300, 54_300))
    for _ in range(3):  # up to 2 000 rows, then the newest leave the page and live ones wait
        load_older()
    assert rows(page) == list(range(51_800, 53_800))
    expect(newest).to_be_visible()
    calls = page.evaluate("__calls.length")
    page.evaluate("__grow(10)")
    assert page.evaluate("__calls.length") == calls and rows(page)[-1] == 53_799
    assert page.evaluate("document.querySelectorAll('#log-under-test li').length") == 2000

    page.evaluate("(async () => { while (!__log.olderButton.hidden) await __log.loadOlder(); })()")
    assert rows(page) == list(range(0, 2000))  # back to the run's first event
    expect(older).to_be_hidden()
    newest.click()
    expect(newest).to_be_hidden()
    expect(page.locator("#log-under-test li[data-seq='54309']")).to_be_attached()
    assert rows(page) == list(range(53_810, 54_310))
    page.evaluate("__grow(5)")
    assert rows(page) == list(range(53_810, 54_315))  # following again
