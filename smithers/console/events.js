// A run's event log: live from streamRunEvents, deduplicated by the run's seq, resumed with
// `afterSeq` after a reconnect, and paged so a run with tens of thousands of events stays quick:
// the newest WINDOW events are shown, "Load older" fetches the previous ones through a short-lived
// socket's replay (docs/protocol.md#run-event-streams), and the page never holds more than
// DOM_CAP rows.

import { h, put } from "./dom.js";

const WINDOW = 500; // events fetched and shown at a time
const DOM_CAP = 2000; // rows in the page at most
const MEMORY_CAP = 10000; // events kept in memory at most (the gateway keeps as many per run)
const FETCH_TIMEOUT_MS = 15000;

export class EventLog {
  constructor(ctx, runId, channel) {
    this.ctx = ctx;
    this.runId = runId;
    this.channel = channel;
    this.events = new Map(); // seq -> RunEvent
    this.seqs = []; // held seqs, ascending
    this.covered = 0; // every event up to here is held, was dropped from memory, or is gone
    this.floor = 1; // the gateway holds nothing below this seq
    this.gaps = []; // {fromSeq, toSeq, text}
    this.anchor = null; // highest seq shown; null follows the newest
    this.shown = WINDOW;
    this.started = false;
    this.loadingOlder = false;
    this.renderQueued = false;
    this.rendered = []; // seqs of the rows in the list, when it holds nothing else

    this.list = h("ol", { class: "events", "data-testid": "event-list", "aria-label": "Run events" });
    this.olderButton = h("button", { type: "button", onclick: () => this.loadOlder(), "data-testid": "events-older" }, "Load older events");
    this.newestButton = h("button", { type: "button", onclick: () => this.jumpToNewest(), "data-testid": "events-newest", hidden: true }, "Jump to newest");
    this.info = h("span", { class: "muted small", "data-testid": "events-info", "aria-live": "polite" });
    this.box = h("div", { class: "events-box" }, this.list);
    this.el = h(
      "section",
      { class: "panel", "data-testid": "event-log" },
      h("div", { class: "title-row" }, h("h2", {}, "Events"), h("span", { class: "spacer" }), this.info, this.olderButton, this.newestButton),
      this.box,
    );

    this.offs = [
      channel.on("run.event", (payload) => payload && payload.runId === runId && this.add([payload], true)),
      channel.on("run.gap_resync", (payload) => payload && payload.runId === runId && this.gap(payload.fromSeq, payload.toSeq, "missed while away")),
    ];
  }

  /** Subscribe (first time) or resume after `covered` (after a reconnect). */
  async subscribe() {
    if (!this.started) {
      const res = await this.channel.call("streamRunEvents", { runId: this.runId });
      this.started = true;
      this.covered = Math.max(this.covered, res.currentSeq);
      if (res.currentSeq > 0) await this.fetchRange(Math.max(0, res.currentSeq - WINDOW), res.currentSeq);
      this.render();
      return;
    }
    try {
      await this.channel.call("streamRunEvents", { runId: this.runId, afterSeq: this.covered });
    } catch (err) {
      if (err.code !== "SeqOutOfRange") throw err;
      // The gateway restarted: its numbering began again (docs/protocol.md#per-run-window).
      this.reset("The gateway restarted; events before it are not available.");
      this.started = false;
      await this.subscribe();
    }
  }

  reset(text) {
    this.events.clear();
    this.seqs = [];
    this.covered = 0;
    this.floor = 1;
    this.gaps = [{ fromSeq: 0, toSeq: 0, text }];
    this.anchor = null;
    this.shown = WINDOW;
    this.render();
  }

  /** Add events (live ones advance `covered`, which only ever grows contiguously). */
  add(frames, live) {
    let changed = false;
    let unordered = false;
    for (const frame of frames) {
      if (typeof frame.seq !== "number" || this.events.has(frame.seq) || frame.seq < this.floor) continue;
      this.events.set(frame.seq, frame);
      changed = true;
      if (!this.seqs.length || frame.seq > this.seqs[this.seqs.length - 1]) this.seqs.push(frame.seq);
      else unordered = true;
      // A stream's live frames come in order with nothing skipped (docs/protocol.md#ordering-guarantee).
      if (live) this.covered = Math.max(this.covered, frame.seq);
    }
    if (unordered) this.seqs = [...this.events.keys()].sort((a, b) => a - b);
    if (this.seqs.length > MEMORY_CAP && this.anchor === null) {
      for (const seq of this.seqs.splice(0, this.seqs.length - MEMORY_CAP)) this.events.delete(seq);
    }
    if (changed) this.schedule();
  }

  gap(fromSeq, toSeq, why) {
    this.floor = Math.max(this.floor, toSeq + 1);
    if (this.gaps.some((g) => g.toSeq === toSeq)) return;
    this.gaps.push({ fromSeq, toSeq, text: `Events #${fromSeq}–#${toSeq} are no longer held by the gateway (${why}).` });
    this.schedule();
  }

  /**
   * Events in (afterSeq, untilSeq], from the replay of a socket of its own: the replay sends
   * everything after `afterSeq` and then goes live, so the socket is closed once it reached
   * `untilSeq` (streams end only with their socket).
   */
  async fetchRange(afterSeq, untilSeq) {
    const tmp = this.ctx.channel([this.runId], { reconnect: false });
    const got = [];
    let target = untilSeq;
    let finish;
    const done = new Promise((resolve) => (finish = resolve));
    tmp.on("run.event", (payload) => {
      if (!payload || payload.runId !== this.runId) return;
      if (payload.seq <= untilSeq) got.push(payload);
      if (payload.seq >= target) finish();
    });
    tmp.on("run.gap_resync", (payload) => {
      // Everything before the window's first event is gone, not only what this fetch asked for.
      if (payload && payload.runId === this.runId) this.gap(1, payload.toSeq, "older than the gateway's window");
    });
    const timer = setTimeout(() => finish(), FETCH_TIMEOUT_MS);
    try {
      await tmp.open();
      const res = await tmp.call("streamRunEvents", { runId: this.runId, afterSeq });
      target = Math.min(untilSeq, res.currentSeq);
      if (target <= afterSeq || got.some((f) => f.seq >= target)) finish();
      await done;
    } finally {
      clearTimeout(timer);
      tmp.close();
    }
    if (afterSeq === 0 && got.length && got[0].seq > 1 && this.floor <= 1) this.floor = got[0].seq;
    this.add(got, false);
  }

  async loadOlder() {
    if (this.loadingOlder) return;
    this.loadingOlder = true;
    this.olderButton.disabled = true;
    try {
      const visible = this.visible();
      const oldestShown = visible.length ? visible[0] : this.covered + 1;
      const held = this.seqs.filter((s) => s < oldestShown).length;
      const lowest = this.seqs.length ? this.seqs[0] : oldestShown;
      if (held < WINDOW && lowest > this.floor) {
        await this.fetchRange(Math.max(0, lowest - 1 - WINDOW), lowest - 1);
      }
      if (this.shown + WINDOW <= DOM_CAP) this.shown += WINDOW;
      else {
        // Slide the window back: the newest rows leave the page, and live events wait.
        const index = this.seqs.indexOf(visible[visible.length - 1]);
        this.anchor = this.seqs[Math.max(0, index - WINDOW)] ?? null;
      }
      this.render();
    } catch (err) {
      this.info.textContent = `Could not load older events: ${err.message}`;
    } finally {
      this.loadingOlder = false;
      this.olderButton.disabled = false;
    }
  }

  jumpToNewest() {
    this.anchor = null;
    this.shown = WINDOW;
    this.render();
    this.box.scrollTop = this.box.scrollHeight;
  }

  /** Seqs on screen: the newest `shown` up to the anchor. */
  visible() {
    let end = this.seqs.length;
    if (this.anchor !== null) {
      end = this.seqs.findIndex((s) => s > this.anchor);
      if (end === -1) end = this.seqs.length;
    }
    return this.seqs.slice(Math.max(0, end - this.shown), end);
  }

  schedule() {
    if (this.renderQueued) return;
    this.renderQueued = true;
    requestAnimationFrame(() => {
      this.renderQueued = false;
      this.render();
    });
  }

  render() {
    const atBottom = this.box.scrollHeight - this.box.scrollTop - this.box.clientHeight < 40;
    const seqs = this.visible();
    if (!this.appendOnly(seqs)) this.rebuild(seqs);
    this.rendered = seqs;
    const lowest = this.seqs.length ? this.seqs[0] : 1;
    const older = seqs.length && (seqs[0] > this.seqs[0] || lowest > this.floor);
    this.olderButton.hidden = !older;
    const newer = this.anchor === null ? 0 : this.seqs.filter((s) => s > this.anchor).length;
    this.newestButton.hidden = this.anchor === null;
    this.newestButton.textContent = newer ? `Jump to newest (${newer} newer)` : "Jump to newest";
    this.info.textContent = seqs.length ? `#${seqs[0]}–#${seqs[seqs.length - 1]} shown` : "";
    if (atBottom && this.anchor === null) this.box.scrollTop = this.box.scrollHeight;
  }

  /**
   * Live events while following the newest: rows leave at the top and arrive at the bottom, and
   * the rows in between stay as they are (no rebuild of the whole list per event).
   */
  appendOnly(seqs) {
    const before = this.rendered || [];
    if (!before.length || !seqs.length || this.gaps.length || this.list.children.length !== before.length) return false;
    const start = before.indexOf(seqs[0]);
    if (start < 0) return false;
    const kept = before.length - start;
    if (kept > seqs.length) return false;
    for (let i = 0; i < kept; i++) if (before[start + i] !== seqs[i]) return false;
    for (let i = 0; i < start; i++) this.list.firstElementChild.remove();
    this.list.append(...seqs.slice(kept).map((seq) => eventRow(this.events.get(seq))));
    return true;
  }

  rebuild(seqs) {
    const rows = [];
    const gapsBefore = (seq) => this.gaps.filter((g) => g.toSeq + 1 === seq || (g.toSeq === 0 && seq === seqs[0]));
    if (!seqs.length) {
      this.gaps.forEach((g) => rows.push(gapRow(g)));
      rows.push(
        h(
          "li",
          { class: "empty", "data-testid": "events-empty" },
          this.started ? "No events yet. Events are kept in the gateway's memory for the runs it executes since it started." : "Loading…",
        ),
      );
    }
    for (const seq of seqs) {
      gapsBefore(seq).forEach((g) => rows.push(gapRow(g)));
      rows.push(eventRow(this.events.get(seq)));
    }
    put(this.list, rows);
  }

  destroy() {
    this.offs.forEach((off) => off());
  }
}

function gapRow(gap) {
  return h("li", { class: "gap", "data-testid": "events-gap" }, gap.text);
}

function eventRow(frame) {
  const p = frame.payload || {};
  const detail = [];
  if (p.state) detail.push(p.state);
  if (p.status) detail.push(p.status);
  if (typeof p.approved === "boolean") detail.push(p.approved ? "approved" : "denied");
  if (p.decidedBy) detail.push(`by ${p.decidedBy}`);
  if (typeof p.fromFrameNo === "number") detail.push(`frame ${p.fromFrameNo} → ${p.toFrameNo}`);
  if (p.error && p.error.message) detail.push(p.error.message);
  if (typeof p.output === "string") detail.push(`${p.stream || "output"}: ${p.output.length > 300 ? `${p.output.slice(0, 300)}…` : p.output}`);
  return h(
    "li",
    { "data-seq": frame.seq, "data-event": frame.event, class: `ev ev-${String(frame.event).replace(/[^a-z]/g, "-")}` },
    h("span", { class: "seq mono" }, `#${frame.seq}`),
    h("span", { class: "name" }, frame.event),
    h("span", { class: "node mono" }, p.nodeId || ""),
    h("span", { class: "detail" }, detail.join(" · ")),
  );
}
