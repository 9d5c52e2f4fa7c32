// A run's page: its record (getRun), actions (cancel, resume, rerun), pending approvals, a signal
// form, the DevTools tree live (streamDevTools) or at any frame (the slider), a node's output and
// attempts, and the event log (the run's stored engine events, see events.js). The page's streams
// use a WebSocket of its own, subscribed to this run only and closed when the page is left
// (docs/protocol.md#subscription-filter).

import { h, put, fmtTime, runDuration, badge, waitingOn, debounce, errorText, notify, confirmDialog, failure, parseJsonText, ACTIVE } from "./dom.js";
import { TreeModel, renderTree } from "./tree.js";
import { EventLog } from "./events.js";
import { frameSlider } from "./frames.js";
import { nodePanel } from "./node.js";
import { signalForm } from "./signals.js";
import { approvalCard } from "./approvals.js";

const NODE_EVENTS = { "node.started": "in-progress", "node.finished": "finished", "node.failed": "failed" };
// Stored engine events after which the run record or its attempts read differently.
const CHANGES = /^(Run|Approval|Node(Started|Finished|Failed|Cancelled|Skipped|Waiting)|TimeTravelJumped)/;
const LOG_POLL_MS = 1000;

export function runView(ctx, route) {
  const runId = route.params.runId;
  let nodeId = route.params.nodeId || null;
  let frame = parseFrame(route.query.get("frame"));
  let run = null;
  let attempts = [];
  let liveStates = new Map(); // from events since attempts were last read
  let historic = null; // the snapshot shown for ?frame=N
  let treeStream = null;
  let treeTrouble = null; // why the live tree is not following, until the next snapshot
  let panel = null;
  let destroyed = false;
  const model = new TreeModel();
  const canTree = ctx.can("streamDevTools");
  document.title = `${runId} · Smithers`;

  const channel = ctx.channel([runId]);
  const log = new EventLog(ctx, runId, channel);
  // Events of a run executing elsewhere come with no gateway event: the log's tells the page.
  log.onEvents = (events) => events.some((e) => CHANGES.test(e.type)) && refreshSoon();
  const signals = ctx.can("submitSignal") ? signalForm(ctx, runId) : null;
  const header = h("div", { class: "run-header" });
  const actions = h("div", { class: "actions", "data-testid": "run-actions" });
  const approvalsBox = h("div", { class: "cards", "data-testid": "run-approvals" });
  const treeBox = h("div", { class: "tree-box", "data-testid": "tree-panel" });
  const treeNote = h("p", { class: "muted small", "data-testid": "tree-note", "aria-live": "polite" });
  const nodeBox = h("div", { class: "node-box" });
  const slider = frameSlider(ctx, runId, {
    onPick: (n) => ctx.navigate(pathFor(nodeId, n), { replace: true }),
    canRewind: () => ctx.can("jumpToFrame") && run !== null && ownsOrAdmin(ctx.identity, run),
    canFork: () => ctx.can("runs.fork"),
  });
  const body = h(
    "div",
    {},
    h("div", { class: "title-row" }, header, h("span", { class: "spacer" }), actions),
    approvalsBox,
    signals ? signals.el : null,
    h(
      "div",
      { class: "split" },
      h("section", { class: "panel tree-panel" }, h("div", { class: "title-row" }, h("h2", {}, "Tree"), h("span", { class: "spacer" }), canTree ? slider.el : null), treeNote, treeBox),
      h("div", { class: "side" }, nodeBox, log.el),
    ),
  );
  const el = h(
    "section",
    { class: "run", "data-testid": "run-page", "data-run-id": runId },
    h("nav", { class: "crumbs", "aria-label": "Breadcrumb" }, h("a", { href: ctx.href("/runs") }, "Runs"), " / ", h("span", { class: "mono" }, runId)),
    body,
  );

  function pathFor(node, frameNo) {
    const base = `/runs/${encodeURIComponent(runId)}${node ? `/nodes/${encodeURIComponent(node)}` : ""}`;
    return frameNo === null || frameNo === undefined ? base : `${base}?frame=${frameNo}`;
  }

  // -- the run record -----------------------------------------------------------------------------
  async function loadRun() {
    try {
      run = await ctx.call("getRun", { runId });
    } catch (err) {
      if (err.code === "NOT_FOUND") {
        put(body, h("div", { class: "panel", "data-testid": "run-missing" }, h("h1", {}, "Run not found"), h("p", {}, `No run has the id ${runId}.`)));
        stop();
        return;
      }
      put(header, failure(err, loadRun));
      return;
    }
    paintRun();
    log.poke();
  }

  function paintRun() {
    const titles = ctx.approvals.titles(runId);
    const error = parseJsonText(run.errorJson);
    put(
      header,
      h("h1", { class: "mono" }, runId, " ", badge(run.status, "run-status")),
      h(
        "dl",
        { class: "facts" },
        fact("Workflow", run.workflowKey || run.workflowName),
        fact("Started", fmtTime(run.startedAtMs ?? run.createdAtMs)),
        fact("Duration", h("span", { "data-testid": "run-duration" }, runDuration(run))),
        run.finishedAtMs ? fact("Ended", fmtTime(run.finishedAtMs)) : null,
        run.parentRunId ? fact("Forked from", h("a", { class: "mono", href: ctx.href(`/runs/${encodeURIComponent(run.parentRunId)}`) }, run.parentRunId)) : null,
        run.runState && (run.runState.blocked || run.runState.unhealthy) ? fact("Waiting on", h("span", { "data-testid": "run-waiting" }, waitingOn(run.runState, titles))) : null,
        error ? fact("Error", h("span", { class: "error", "data-testid": "run-error" }, error.message || error.code || run.errorJson)) : null,
      ),
    );
    const buttons = [];
    const active = ACTIVE.has(run.status);
    // Any active run can be cancelled, waiting ones at once (docs/protocol.md#runscancel--cancelrun).
    if (active && ctx.can("cancelRun")) buttons.push(h("button", { type: "button", class: "danger", "data-testid": "run-cancel", onclick: cancel }, "Cancel"));
    if (active && ctx.can("resumeRun")) buttons.push(h("button", { type: "button", "data-testid": "run-resume", onclick: resume }, "Resume"));
    if (ctx.can("runs.rerun")) buttons.push(h("button", { type: "button", "data-testid": "run-rerun", onclick: rerun }, "Rerun"));
    put(actions, buttons);
    if (signals) signals.el.hidden = !active; // an ended run takes no signals
    slider.repaint();
    paintApprovals();
    prefillSignal();
  }

  async function cancel() {
    if (!(await confirmDialog({ title: `Cancel ${runId}?`, body: "The run stops; its finished steps stay recorded.", confirmLabel: "Cancel run", danger: true }))) return;
    try {
      const result = await ctx.act("cancelRun", { runId });
      notify(result.status === "cancelled" ? `Cancelled ${runId}` : `Cancelling ${runId}`);
    } catch (err) {
      notify(`Cancel refused: ${errorText(err)}`, "error");
    }
    refreshSoon();
  }

  async function resume() {
    try {
      const result = await ctx.act("resumeRun", { runId });
      notify(result.status === "already_terminal" ? `${runId} has already ended` : `Resume requested for ${runId}`);
    } catch (err) {
      notify(`Resume refused: ${errorText(err)}`, "error");
    }
    refreshSoon();
  }

  async function rerun() {
    try {
      const result = await ctx.act("runs.rerun", { runId });
      notify(`Started ${result.runId} with the same input`);
      ctx.navigate(`/runs/${encodeURIComponent(result.runId)}`);
    } catch (err) {
      notify(`Rerun refused: ${errorText(err)}`, "error");
    }
  }

  // -- approvals and signals ----------------------------------------------------------------------
  const cards = new Map();
  function paintApprovals() {
    const entries = ctx.approvals.forRun(runId);
    const keys = new Set(entries.map((e) => `${e.nodeId}\u0000${e.iteration}`));
    for (const [key, card] of cards) {
      if (!keys.has(key)) {
        card.remove();
        cards.delete(key);
      }
    }
    entries.forEach((entry) => {
      const key = `${entry.nodeId}\u0000${entry.iteration}`;
      if (!cards.has(key)) cards.set(key, approvalCard(ctx, entry));
      approvalsBox.append(cards.get(key));
    });
  }

  function prefillSignal() {
    if (!signals || !run) return;
    const waiting = attempts.find((a) => a.state === "waiting-event");
    const meta = waiting ? parseJsonText(waiting.metaJson) : null;
    if (meta && meta.waitForEvent) signals.prefill(meta.waitForEvent);
  }

  // -- node states --------------------------------------------------------------------------------
  async function loadAttempts() {
    const since = new Map(liveStates);
    try {
      attempts = await ctx.call("attempts.list", { runId });
    } catch {
      return;
    }
    // Events seen while the read was on its way stay; older ones are now in the attempts.
    for (const [key, value] of since) if (liveStates.get(key) === value) liveStates.delete(key);
    paintTree();
    prefillSignal();
    if (panel && nodeId) panel.refresh();
  }

  function nodeStates() {
    const states = new Map();
    const sorted = [...attempts].sort((a, b) => a.iteration - b.iteration || a.attempt - b.attempt);
    for (const a of sorted) states.set(a.nodeId, a.state);
    for (const entry of ctx.approvals.forRun(runId)) states.set(entry.nodeId, "waiting-approval");
    const blocked = run && run.runState && run.runState.blocked;
    if (blocked && blocked.nodeId && run.status.startsWith("waiting")) states.set(blocked.nodeId, run.status);
    for (const [key, value] of liveStates) states.set(key, value);
    return states;
  }

  // -- the tree -----------------------------------------------------------------------------------
  async function subscribeTree() {
    if (!canTree || destroyed) return;
    try {
      const res = await channel.call("streamDevTools", { runId });
      treeStream = res.streamId;
    } catch (err) {
      treeTrouble = `The live tree is not available: ${errorText(err)}`;
      paintTree();
    }
  }

  const resubscribeTree = debounce(() => subscribeTree(), 500);

  function onDevtools(payload) {
    if (!payload || payload.runId !== runId || payload.streamId !== treeStream) return;
    const event = payload.event;
    if (event.kind === "snapshot") {
      model.snapshot(event.snapshot);
      treeTrouble = null;
    }
    else if (!model.applyDelta(event.delta)) {
      treeStream = null; // out of step: start again from a snapshot
      resubscribeTree();
      return;
    }
    slider.setLatest(model.seq || 0);
    if (frame === null) paintTree();
  }

  function onDevtoolsError(payload) {
    if (!payload || payload.streamId !== treeStream) return;
    treeStream = null;
    treeTrouble = `The tree stream stopped (${payload.error && payload.error.message}); following again…`;
    paintTree();
    resubscribeTree();
  }

  async function loadFrame(frameNo) {
    try {
      historic = await channel.call("getDevToolsSnapshot", { runId, frameNo });
      treeNote.textContent = `Frame ${frameNo}: the tree as it was then (node states are not shown for past frames).`;
    } catch (err) {
      historic = null;
      treeNote.textContent = `Frame ${frameNo} is not available: ${errorText(err)}`;
    }
    paintTree();
  }

  function paintTree() {
    const selected = nodeId;
    const hrefFor = (id) => ctx.href(pathFor(id, frame));
    if (!canTree) {
      treeNote.textContent = "The tree needs the observability:read scope; the nodes that ran are listed instead.";
      const states = nodeStates();
      const ids = [...states.keys()];
      put(
        treeBox,
        ids.length
          ? h(
              "ul",
              { class: "tree flat", "data-testid": "node-list" },
              ids.map((id) => h("li", { "data-testid": "tree-node", "data-node-id": id, "data-state": states.get(id) }, h("a", { class: "mono", href: hrefFor(id) }, id), " ", badge(states.get(id), "node-state"))),
            )
          : h("p", { class: "muted" }, "No node has run yet."),
      );
      return;
    }
    if (frame !== null) {
      treeBox.dataset.frame = historic ? String(historic.frameNo) : "";
      treeBox.dataset.live = "0";
      put(treeBox, historic ? renderTree(historic.root, { states: new Map(), selected, hrefFor }) : null);
      return;
    }
    treeNote.textContent = treeTrouble || "";
    treeBox.dataset.frame = model.seq === null ? "" : String(model.seq);
    treeBox.dataset.live = "1";
    put(treeBox, model.root ? renderTree(model.root, { states: nodeStates(), selected, hrefFor }) : h("p", { class: "muted" }, "Loading the tree…"));
  }

  // -- the node panel -----------------------------------------------------------------------------
  function paintNode() {
    if (!nodeId) {
      panel = null;
      put(nodeBox);
      nodeBox.hidden = true;
      return;
    }
    const iterations = [...new Set(attempts.filter((a) => a.nodeId === nodeId).map((a) => a.iteration))].sort((a, b) => a - b);
    panel = nodePanel(ctx, runId, nodeId, { iterations: iterations.length ? iterations : [0], closeHref: ctx.href(pathFor(null, frame)) });
    nodeBox.hidden = false;
    put(nodeBox, panel.el);
  }

  // -- live updates -------------------------------------------------------------------------------
  const refreshSoon = debounce(() => {
    if (destroyed) return;
    loadRun();
    loadAttempts();
  }, 200);
  const refreshNode = debounce(() => panel && panel.refresh(), 300);

  const offs = [
    channel.on("devtools.event", onDevtools),
    channel.on("devtools.error", onDevtoolsError),
    ctx.approvals.onChange(() => run && (paintApprovals(), paintRun(), paintTree())),
  ];
  for (const [name, state] of Object.entries(NODE_EVENTS)) {
    offs.push(
      channel.on(name, (payload) => {
        if (!payload || payload.runId !== runId) return;
        liveStates.set(payload.nodeId, state);
        if (frame === null) paintTree();
        if (payload.nodeId === nodeId) refreshNode();
        refreshSoon();
      }),
    );
  }
  offs.push(
    channel.on("approval.decided", (payload) => {
      if (!payload || payload.runId !== runId) return;
      liveStates.set(payload.nodeId, payload.approved ? "approved" : "denied");
      refreshSoon();
    }),
  );
  for (const name of ["run.completed", "approval.requested", "run.time_travel_jumped"]) {
    offs.push(channel.on(name, (payload) => payload && payload.runId === runId && refreshSoon()));
  }
  // A reconnect: the socket's streams are gone; follow again (the log catches up by itself).
  let opened = false;
  offs.push(
    channel.on("open", () => {
      if (!opened) return;
      subscribeTree();
      refreshSoon();
    }),
  );
  const tick = () => {
    const cell = header.querySelector('[data-testid="run-duration"]');
    if (cell && run && ACTIVE.has(run.status)) cell.textContent = runDuration(run);
  };
  document.addEventListener("smithers:tick", tick);
  // Waits and timers begin without an event of their own: look again now and then while active.
  const poll = setInterval(() => run && ACTIVE.has(run.status) && refreshSoon(), 5000);
  // The log follows an active run even when no event tells of it (a run executing elsewhere).
  const logPoll = setInterval(() => run && ACTIVE.has(run.status) && log.poke(), LOG_POLL_MS);

  function stop() {
    destroyed = true;
    offs.forEach((off) => off());
    log.destroy();
    channel.close();
    clearInterval(poll);
    clearInterval(logPoll);
    refreshSoon.cancel();
    resubscribeTree.cancel();
    document.removeEventListener("smithers:tick", tick);
  }

  // -- start --------------------------------------------------------------------------------------
  slider.setFrame(frame);
  paintNode();
  paintTree();
  loadRun();
  loadAttempts();
  log.start();
  channel
    .open()
    .then(async () => {
      opened = true;
      log.poke(); // anything that happened before this socket heard of the run
      await subscribeTree();
      if (frame !== null) loadFrame(frame);
    })
    .catch((err) => {
      if (destroyed) return;
      treeTrouble = `Live updates are not available: ${errorText(err)}`;
      paintTree();
    });

  return {
    el,
    update(next) {
      const nextNode = next.params.nodeId || null;
      const nextFrame = parseFrame(next.query.get("frame"));
      const frameChanged = nextFrame !== frame;
      const nodeChanged = nextNode !== nodeId;
      frame = nextFrame;
      nodeId = nextNode;
      slider.setFrame(frame);
      if (nodeChanged) paintNode();
      if (frameChanged) {
        historic = null;
        if (frame !== null) loadFrame(frame);
        else treeNote.textContent = "";
      }
      paintTree();
    },
    destroy: stop,
  };
}

function fact(label, value) {
  return [h("dt", {}, label), h("dd", {}, value)];
}

function parseFrame(text) {
  if (text === null || text === "") return null;
  const n = Number(text);
  return Number.isInteger(n) && n >= 0 ? n : null;
}

/** Rewinds are for admins and the run's owner (docs/protocol.md#jumptoframe--devtoolsjumptoframe--rewindrun). */
function ownsOrAdmin(identity, run) {
  if (String(identity.role || "").toLowerCase() === "admin") return true;
  const config = parseJsonText(run.configJson);
  const owner = config && config.auth && config.auth.triggeredBy;
  return Boolean(identity.userId) && owner === identity.userId;
}
