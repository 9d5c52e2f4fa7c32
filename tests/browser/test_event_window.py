"""The event log with a very long run: 50 000 events behind a gateway window of 5 000. The page
fetches and shows the newest 500, loads older ones 500 at a time, never holds more than 2 000
rows, and says where the gateway's window ends. The log module runs against a stand-in channel
that replays like a gateway (docs/protocol.md#run-event-streams)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from playwright.sync_api import Page, expect

from tests.browser.conftest import Console

SCRIPT = """
async () => {
  const { EventLog } = await import("/console/__smithers_ui/events.js");
  const N = 50000, WINDOW = 5000, first = N - WINDOW + 1;
  const frame = (seq) => ({ runId: "big", seq, event: seq % 2 ? "node.started" : "node.finished",
                            payload: { runId: "big", nodeId: `t${seq}`, state: "in-progress" } });
  const calls = [];
  let live = null;
  function channel() {
    const handlers = {};
    const emit = (name, payload) => (handlers[name] || []).forEach((fn) => fn(payload));
    return {
      on(name, fn) { (handlers[name] = handlers[name] || []).push(fn); return () => {}; },
      async open() {},
      close() { this.closed = true; },
      async call(method, params) {
        calls.push(params);
        if (params.afterSeq === undefined) live = emit;
        else setTimeout(() => {  // the replay: what the window holds after afterSeq, then live
          const gap = { runId: "big", fromSeq: params.afterSeq + 1, toSeq: first - 1 };
          if (params.afterSeq < first - 1) emit("run.gap_resync", gap);
          for (let seq = Math.max(params.afterSeq + 1, first); seq <= N; seq++) emit("run.event", frame(seq));
        }, 0);
        return { streamId: `s${calls.length}`, runId: "big", afterSeq: params.afterSeq ?? null, currentSeq: N };
      },
    };
  }
  const box = document.createElement("div");
  box.id = "log-under-test";
  document.body.append(box);
  const log = new EventLog({ channel }, "big", channel());
  box.append(log.el);
  const started = performance.now();
  await log.subscribe();
  const firstPaint = performance.now() - started;
  for (let seq = N + 1; seq <= N + 300; seq++) live("run.event", frame(seq));  // live ones go on
  globalThis.__log = log;
  return { firstPaint, calls };
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
    assert result["calls"] == [{"runId": "big"}, {"runId": "big", "afterSeq": 49_500}]  # live, then the newest 500
    older = page.locator("#log-under-test [data-testid=events-older]")
    newest = page.locator("#log-under-test [data-testid=events-newest]")
    expect(page.locator("#log-under-test li[data-seq='50300']")).to_be_attached()
    assert rows(page) == list(range(49_801, 50_301))  # the newest 500, live ones included

    older.click()
    expect(page.locator("#log-under-test li[data-seq='49301']")).to_be_attached()
    assert rows(page) == list(range(49_301, 50_301))

    def load_older() -> None:
        older.click()
        page.wait_for_function("!globalThis.__log.loadingOlder")

    for _ in range(4):  # up to 2 000 rows, then the window slides back
        load_older()
    shown = rows(page)
    assert len(shown) == 2000 and shown == list(range(shown[0], shown[0] + 2000)), (shown[0], shown[-1])
    assert shown[-1] < 50_300
    expect(newest).to_be_visible()
    assert page.evaluate("document.querySelectorAll('#log-under-test li').length") <= 2001

    for _ in range(30):  # back to where the gateway's window ends
        if older.is_hidden():
            break
        load_older()
    expect(older).to_be_hidden()
    expect(page.locator("#log-under-test [data-testid=events-gap]")).to_have_text(
        "Events #1–#45000 are no longer held by the gateway (older than the gateway's window)."
    )
    assert rows(page)[0] == 45_001
    newest.click()
    assert rows(page) == list(range(49_801, 50_301))
