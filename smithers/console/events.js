// A run's event log, read from the run's durable stored engine events with `events.list`
// (docs/protocol.md#eventslist): they survive restarts and are numbered from 0 per run. The first
// paint is the newest PAGE events; "Load older" fetches the PAGE before the oldest shown
// (`beforeSeq`); any live sign of the run (one of its gateway events, a reconnect, the run page's
// poll while the run is active) fetches what follows the newest shown (`afterSeq`) and appends it.
// The rows always hold one contiguous run of seqs, each once, and never more than DOM_CAP of them:
// appending drops the oldest rows (to be loaded again on demand), loading older drops the newest
// (and the log stops following until "Jump to newest").

import { h, put, fmtTime, fmtDuration, errorText } from "./dom.js";

const PAGE = 500; // events per first paint and per "Load older"
const AFTER_LIMIT = 1000; // newer events per request (the gateway's most)
const DOM_CAP = 2000; // rows in the list at most
const LIVE_PREFIXES = ["run.", "node.", "task.", "approval."];

export class EventLog {
  /** `ctx.call` reads; `channel` (the run page's socket) brings the run's live events. */
  constructor(ctx, runId, channel) {
    this.ctx = ctx;
    this.runId = runId;
    this.items = []; // shown events, ascending and contiguous: exactly the rows of the list
    this.lastSeq = null; // the run's newest stored seq, as last heard
    this.floor = 0; // nothing is stored below this seq
    this.detached = false; // newer events than the shown ones were dropped (paged back)
    this.started = false; // the first page arrived
    this.destroyed = false;
    this.loadingOlder = false;
    this.caughtUp = Promise.resolve();
    this.queue = Promise.resolve(); // fetches run one at a time, in order
    this.wantNewer = false; // a catch-up is queued and has not started yet
    this.onEvents = null; // called with each batch of newly shown events

    this.list = h("ol", { class: "events", "data-testid": "event-list", "aria-label": "Run events" });
    this.note = h("p", { class: "events-note muted", "data-testid": "events-empty" }, "Loading…");
    this.olderButton = h("button", { type: "button", onclick: () => this.loadOlder(), "data-testid": "events-older", hidden: true }, "Load older events");
    this.newestButton = h("button", { type: "button", onclick: () => this.jumpToNewest(), "data-testid": "events-newest", hidden: true }, "Jump to newest");
    this.info = h("span", { class: "muted small", "data-testid": "events-info", "aria-live": "polite" });
    this.box = h("div", { class: "events-box" }, this.note, this.list);
    this.el = h(
      "section",
      { class: "panel", "data-testid": "event-log" },
      h("div", { class: "title-row" }, h("h2", {}, "Events"), h("span", { class: "spacer" }), this.info, this.olderButton, this.newestButton),
      this.box,
    );

    const live = (payload, frame) => {
      const name = frame && frame.event;
      if (!payload || payload.runId !== runId || typeof name !== "string" || name === "run.heartbeat") return;
      if (LIVE_PREFIXES.some((prefix) => name.startsWith(prefix))) this.poke();
    };
    this.offs = [channel.on("*", live), channel.on("open", () => this.poke())];
    if (ctx.onEvent) this.offs.push(ctx.onEvent("open", () => this.poke())); // the session's socket came back
  }

  /** The first paint: the newest page. */
  start() {
    return this.enqueue(() => this.loadNewest());
  }

  /**
   * Something may have happened: fetch what follows the newest shown event (coalesced; queued
   * behind the first page when that is still on its way, so nothing said meanwhile is missed).
   */
  poke() {
    if (this.detached || this.wantNewer || this.destroyed) return this.caughtUp;
    this.wantNewer = true;
    this.caughtUp = this.enqueue(() => {
      this.wantNewer = false;
      return this.loadNewer();
    });
    return this.caughtUp;
  }

  enqueue(task) {
    const next = this.queue.then(() => (this.destroyed ? null : task()));
    this.queue = next.catch((err) => console.error(err)); // a bug: fetch failures are handled where they happen
    return this.queue;
  }

  fetch(params) {
    return this.ctx.call("events.list", { runId: this.runId, ...params });
  }

  newest() {
    return this.items.length ? this.items[this.items.length - 1].seq : null;
  }

  oldest() {
    return this.items.length ? this.items[0].seq : null;
  }

  async loadNewest() {
    let res;
    try {
      res = await this.fetch({ limit: PAGE });
    } catch (err) {
      if (!this.started) this.showNote(`Could not load the events: ${errorText(err)}`, () => this.start());
      else this.info.textContent = `Could not load the events: ${errorText(err)}`;
      return;
    }
    if (this.destroyed) return;
    this.started = true;
    this.detached = false;
    this.lastSeq = res.lastSeq;
    this.items = [];
    this.list.replaceChildren();
    this.append(res.events);
    this.box.scrollTop = this.box.scrollHeight;
    this.paint();
  }

  async loadNewer() {
    for (;;) {
      const after = this.newest() ?? this.floor - 1;
      let res;
      try {
        res = await this.fetch({ afterSeq: after, limit: AFTER_LIMIT });
      } catch (err) {
        this.info.textContent = `Could not load newer events: ${errorText(err)}`;
        return; // the next poke tries again
      }
      if (this.destroyed || this.detached) return;
      this.started = true;
      this.lastSeq = res.lastSeq;
      if (res.lastSeq - after > DOM_CAP) {
        await this.loadNewest(); // too many to append: show the newest page, older ones on demand
        return;
      }
      const fresh = res.events.filter((e) => e.seq > after);
      if (!fresh.length || fresh[0].seq !== after + 1) {
        this.paint();
        return;
      }
      const stick = this.atBottom();
      this.append(fresh);
      if (this.onEvents) this.onEvents(fresh);
      this.trim("oldest");
      if (stick) this.box.scrollTop = this.box.scrollHeight;
      this.paint();
      if (this.newest() >= res.lastSeq || res.events.length < AFTER_LIMIT) return;
    }
  }

  /** The page before the oldest shown. */
  loadOlder() {
    if (this.loadingOlder || !this.items.length) return this.queue;
    this.loadingOlder = true;
    this.olderButton.disabled = true;
    return this.enqueue(async () => {
      try {
        const before = this.oldest();
        if (before === null || before <= this.floor) return;
        let res;
        try {
          res = await this.fetch({ beforeSeq: before, limit: PAGE });
        } catch (err) {
          this.info.textContent = `Could not load older events: ${errorText(err)}`;
          return;
        }
        if (this.destroyed || this.oldest() !== before) return;
        const older = res.events.filter((e) => e.seq < before);
        if (!older.length || older[older.length - 1].seq !== before - 1) {
          this.floor = before; // nothing is stored before it
        } else {
          const height = this.box.scrollHeight;
          this.items.unshift(...older);
          this.list.prepend(...older.map(eventRow));
          this.box.scrollTop += this.box.scrollHeight - height; // the rows read before stay in place
          if (this.trim("newest")) this.detached = true;
        }
        this.paint();
      } finally {
        this.loadingOlder = false;
        this.olderButton.disabled = false;
      }
    });
  }

  jumpToNewest() {
    this.detached = false;
    return this.enqueue(() => this.loadNewest());
  }

  append(events) {
    if (!events.length) return;
    this.items.push(...events);
    this.list.append(...events.map(eventRow));
  }

  /** Keep at most DOM_CAP rows, dropping from one end; true when rows were dropped. */
  trim(end) {
    const excess = this.items.length - DOM_CAP;
    if (excess <= 0) return false;
    if (end === "oldest") {
      const height = this.box.scrollHeight;
      this.items.splice(0, excess);
      for (let i = 0; i < excess; i++) this.list.firstElementChild.remove();
      this.box.scrollTop -= height - this.box.scrollHeight;
    } else {
      this.items.splice(this.items.length - excess, excess);
      for (let i = 0; i < excess; i++) this.list.lastElementChild.remove();
    }
    return true;
  }

  atBottom() {
    return this.box.scrollHeight - this.box.scrollTop - this.box.clientHeight < 40;
  }

  showNote(text, retry) {
    this.note.hidden = false;
    put(this.note, text, retry ? [" ", h("button", { type: "button", class: "link", onclick: retry }, "Try again")] : null);
  }

  paint() {
    const count = this.items.length;
    if (count) this.note.hidden = true;
    else this.showNote(this.started ? "No events yet." : "Loading…");
    const oldest = this.oldest();
    this.olderButton.hidden = oldest === null || oldest <= this.floor;
    this.newestButton.hidden = !this.detached;
    if (!count) this.info.textContent = "";
    else {
      const total = this.lastSeq !== null ? ` of ${this.lastSeq + 1}` : "";
      this.info.textContent = `#${oldest}–#${this.newest()} shown${total}`;
    }
  }

  destroy() {
    this.destroyed = true;
    this.offs.forEach((off) => off());
  }
}

// -- rows -----------------------------------------------------------------------------------------

function eventRow(event) {
  const p = event.payload || {};
  const node = typeof p.nodeId === "string" ? `${p.nodeId}${p.iteration ? ` [${p.iteration}]` : ""}` : "";
  const type = String(event.type);
  return h(
    "li",
    {
      "data-seq": event.seq,
      "data-event": type,
      class: `ev ev-${type.replace(/[^A-Za-z]/g, "")}`,
    },
    h("span", { class: "seq mono", title: fmtTime(event.timestampMs) }, `#${event.seq}`),
    h("span", { class: "name" }, type),
    h("span", { class: "node mono" }, node),
    h("span", { class: "detail", title: clip(JSON.stringify(p), 2000) }, summary(type, p)),
  );
}

const SKIP = new Set(["type", "runId", "timestampMs", "nodeId", "iteration"]);

/** A compact line for a payload: the fields that matter for its type, else its small fields. */
export function summary(type, p) {
  const parts = [];
  const add = (...items) => items.forEach((item) => item !== null && item !== undefined && item !== "" && parts.push(String(item)));
  const attempt = typeof p.attempt === "number" && p.attempt > 1 ? `attempt ${p.attempt}` : null;
  const message = (err) => (err && typeof err === "object" ? err.message || err.code || null : err || null);
  switch (type) {
    case "RunStarted":
      add(p.resumed ? "resumed" : null);
      break;
    case "RunStatusChanged":
      add(p.status);
      break;
    case "RunFinished":
      add("finished");
      break;
    case "RunFailed":
      add("failed", message(p.error));
      break;
    case "RunCancelled":
      add("cancelled");
      break;
    case "RunForked":
      add(`from ${p.parentRunId} at frame ${p.parentFrameNo}`);
      break;
    case "FrameCommitted":
    case "SnapshotCaptured":
      add(`frame ${p.frameNo}`);
      break;
    case "NodeStarted":
    case "NodeFinished":
    case "NodePending":
    case "NodeWaitingApproval":
    case "NodeWaitingEvent":
    case "ApprovalRequested":
      add(attempt);
      break;
    case "NodeFailed":
      add(attempt, message(p.error));
      break;
    case "NodeRetrying":
      add(`next attempt ${p.attempt}`);
      break;
    case "NodeCancelled":
    case "NodeSkipped":
      add(attempt, p.reason);
      break;
    case "NodeWaitingTimer":
    case "TimerCreated":
      add(typeof p.firesAtMs === "number" ? `fires ${fmtTime(p.firesAtMs)}` : null);
      break;
    case "TimerFired":
      add(typeof p.delayMs === "number" ? `late by ${fmtDuration(p.delayMs)}` : "fired");
      break;
    case "TaskHeartbeat":
      add(attempt, p.hasData ? `${p.dataSizeBytes} B of data` : null);
      break;
    case "TaskHeartbeatTimeout":
      add(attempt, typeof p.timeoutMs === "number" ? `no heartbeat for ${fmtDuration(p.timeoutMs)}` : null);
      break;
    case "NodeOutput":
      add(`${p.stream || "output"}: ${clip(String(p.text ?? p.output ?? ""), 300)}`);
      break;
    case "ToolCallStarted":
      add(p.toolName);
      break;
    case "ToolCallFinished":
      add(p.toolName, p.status, message(p.error));
      break;
    case "TokenUsageReported":
      add(p.model, `${p.inputTokens ?? 0} in / ${p.outputTokens ?? 0} out`, typeof p.costUsd === "number" ? `$${p.costUsd.toFixed(4)}` : null);
      break;
    case "ApprovalGranted":
    case "ApprovalDenied":
    case "ApprovalAutoApproved":
      add(type === "ApprovalDenied" ? "denied" : "approved", p.decidedBy ? `by ${p.decidedBy}` : null, p.note ? `“${clip(p.note, 120)}”` : null);
      break;
    case "SignalReceived":
      add(`“${p.signalName}”`, p.correlationId ? `correlation ${p.correlationId}` : null, typeof p.seq === "number" ? `signal #${p.seq}` : null);
      break;
    case "SignalRejected":
      add(`“${p.signalName}”`, message(p.error));
      break;
    case "TimeTravelJumped":
      add(`frame ${p.fromFrameNo} → ${p.toFrameNo}`, p.caller ? `by ${p.caller}` : null);
      break;
    default:
      for (const [key, value] of Object.entries(p)) {
        if (SKIP.has(key) || value === null || typeof value === "object") continue;
        add(`${key} ${clip(String(value), 80)}`);
      }
  }
  return clip(parts.join(" · "), 400);
}

function clip(text, max) {
  return text.length > max ? `${text.slice(0, max)}…` : text;
}
