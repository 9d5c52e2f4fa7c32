// The runs list: one page of runs.list at a time (keyset paging with `after`, so it stays fast
// however many runs are stored), filters in the URL, rows kept current from the session's
// events, bulk cancel (of the selected runs still active: running or waiting) and resume, and the
// launch form (docs/protocol.md#runslist--listruns).

import { h, put, fmtTime, runDuration, badge, waitingOn, debounce, errorText, notify, confirmDialog, failure, parseInput, field, ACTIVE, STATUSES } from "./dom.js";

const PAGE_SIZE = 50;
const RUN_EVENTS = ["node.started", "node.finished", "node.failed", "run.completed", "approval.requested", "approval.decided", "run.time_travel_jumped", "cron.triggered"];

export function runsView(ctx, route) {
  document.title = "Runs · Smithers";
  let state = readQuery(route);
  let rows = [];
  let hasNext = false;
  let loading = false;
  let again = false;
  let workflows = [];
  const selected = new Set();
  const statuses = new Map(); // runId -> status as last listed (selected runs may be on other pages)

  const table = h("tbody", { "data-testid": "runs-body" });
  const status = h("p", { class: "muted small", "data-testid": "runs-status", "aria-live": "polite" });
  const pager = h("div", { class: "pager" });
  const bulk = h("div", { class: "bulk", "data-testid": "bulk" });
  const errorBox = h("div");
  const selectAll = h("input", {
    type: "checkbox",
    "aria-label": "Select every run on this page",
    "data-testid": "select-all",
    onchange: () => {
      rows.forEach((r) => (selectAll.checked ? selected.add(r.runId) : selected.delete(r.runId)));
      paint();
    },
  });

  // -- filters ------------------------------------------------------------------------------------
  const statusSelect = h(
    "select",
    { "data-testid": "filter-status", onchange: () => setFilter({ status: statusSelect.value }) },
    h("option", { value: "" }, "any status"),
    STATUSES.map((s) => h("option", { value: s }, s)),
  );
  const workflowSelect = h("select", { "data-testid": "filter-workflow", onchange: () => setFilter({ workflow: workflowSelect.value }) }, h("option", { value: "" }, "any workflow"));
  const search = h("input", { type: "search", placeholder: "part of a run id", "data-testid": "search", autocomplete: "off" });
  const searchLater = debounce(() => setFilter({ q: search.value.trim() }), 300);
  search.addEventListener("input", searchLater);

  function setFilter(change) {
    const next = { ...state, ...change, after: null };
    ctx.navigate(`/runs${toQuery(next)}`, { replace: true });
  }

  function syncControls() {
    statusSelect.value = state.status;
    workflowSelect.value = state.workflow;
    if (document.activeElement !== search) search.value = state.q;
  }

  // -- loading ------------------------------------------------------------------------------------
  async function load({ quiet = false } = {}) {
    if (loading) {
      again = true;
      return;
    }
    loading = true;
    if (!quiet) status.textContent = "Loading…";
    const params = { limit: PAGE_SIZE + 1, withRunState: true };
    if (state.status) params.status = state.status;
    if (state.workflow) params.workflow = state.workflow;
    if (state.q) params.search = state.q;
    if (state.after) params.after = state.after;
    try {
      const page = await ctx.call("listRuns", params);
      hasNext = page.length > PAGE_SIZE;
      rows = page.slice(0, PAGE_SIZE);
      rows.forEach((r) => statuses.set(r.runId, r.status));
      put(errorBox);
      paint();
    } catch (err) {
      put(errorBox, failure(err, () => load()));
      status.textContent = "";
    } finally {
      loading = false;
      if (again) {
        again = false;
        load({ quiet: true });
      }
    }
  }

  async function loadWorkflows() {
    try {
      workflows = await ctx.call("listWorkflows", {});
    } catch {
      workflows = [];
    }
    put(workflowSelect, h("option", { value: "" }, "any workflow"), workflows.map((w) => h("option", { value: w.key }, w.readableName ? `${w.key} (${w.readableName})` : w.key)));
    put(launchWorkflow, workflows.map((w) => h("option", { value: w.key }, w.key)));
    describe();
    syncControls();
  }

  // -- painting -----------------------------------------------------------------------------------
  function paint() {
    const titles = new Map(ctx.approvals.entries.map((e) => [`${e.runId}\u0000${e.nodeId}`, e.requestTitle]));
    put(table, rows.length ? rows.map((run) => row(run, titles)) : h("tr", {}, h("td", { colspan: 7, class: "empty" }, "No runs match.")));
    const first = state.after === null;
    status.textContent = rows.length ? `${first ? "Newest" : "Older"} runs: ${rows.length} shown${hasNext ? ", more on the next page" : ""}.` : "";
    put(
      pager,
      h("button", { type: "button", disabled: first, onclick: () => go(state.trail.length ? state.trail[state.trail.length - 1] : null, state.trail.slice(0, -1)), "data-testid": "runs-prev" }, "← Newer"),
      h("button", { type: "button", disabled: first, onclick: () => go(null, []), "data-testid": "runs-first" }, "Newest"),
      h(
        "button",
        {
          type: "button",
          disabled: !hasNext,
          "data-testid": "runs-next",
          onclick: () => {
            const last = rows[rows.length - 1];
            go({ createdAtMs: last.createdAtMs, runId: last.runId }, [...state.trail, state.after]);
          },
        },
        "Older →",
      ),
    );
    selectAll.checked = rows.length > 0 && rows.every((r) => selected.has(r.runId));
    paintBulk();
  }

  function row(run, titles) {
    const checkbox = h("input", {
      type: "checkbox",
      checked: selected.has(run.runId),
      "aria-label": `Select run ${run.runId}`,
      "data-testid": "select-run",
      onchange: () => {
        if (checkbox.checked) selected.add(run.runId);
        else selected.delete(run.runId);
        paintBulk();
      },
    });
    const approvalTitles = { get: (nodeId) => titles.get(`${run.runId}\u0000${nodeId}`) };
    const duration = h("td", { class: "num", "data-active": ACTIVE.has(run.status) ? "1" : null }, runDuration(run));
    duration.run = run;
    return h(
      "tr",
      { "data-testid": "run-row", "data-run-id": run.runId, "data-status": run.status },
      h("td", {}, checkbox),
      h("td", { class: "mono" }, h("a", { href: ctx.href(`/runs/${encodeURIComponent(run.runId)}`), "data-testid": "run-link" }, run.runId)),
      h("td", {}, run.workflowKey || run.workflowName),
      h("td", {}, badge(run.status, "run-status")),
      h("td", { "data-testid": "run-waiting" }, waitingOn(run.runState, approvalTitles)),
      h("td", { title: fmtTime(run.createdAtMs) }, fmtTime(run.startedAtMs ?? run.createdAtMs)),
      duration,
    );
  }

  /** Selected runs that may still be cancelled: active ones (and any whose status is unknown). */
  function cancellable(ids) {
    return ids.filter((id) => {
      const row = rows.find((r) => r.runId === id);
      const status = row ? row.status : statuses.get(id);
      return status === undefined || ACTIVE.has(status);
    });
  }

  function paintBulk() {
    const ids = [...selected];
    const active = cancellable(ids);
    const buttons = [];
    if (ctx.can("cancelRun")) {
      buttons.push(
        h(
          "button",
          { type: "button", disabled: !active.length, onclick: () => bulkAct("cancelRun", active), "data-testid": "bulk-cancel", title: "Cancels the selected runs that are running or waiting" },
          `Cancel selected (${active.length})`,
        ),
      );
    }
    if (ctx.can("resumeRun")) buttons.push(h("button", { type: "button", disabled: !ids.length, onclick: () => bulkAct("resumeRun", ids), "data-testid": "bulk-resume" }, `Resume selected (${ids.length})`));
    put(bulk, buttons, ids.length ? h("button", { type: "button", class: "link", onclick: () => { selected.clear(); paint(); } }, "Clear selection") : null);
  }

  async function bulkAct(method, ids) {
    const verb = method === "cancelRun" ? "Cancel" : "Resume";
    const sure = await confirmDialog({
      title: `${verb} ${ids.length} run${ids.length === 1 ? "" : "s"}?`,
      body: h("ul", { class: "mono" }, ids.slice(0, 20).map((id) => h("li", {}, id)), ids.length > 20 ? h("li", {}, `and ${ids.length - 20} more`) : null),
      confirmLabel: verb,
      danger: method === "cancelRun",
    });
    if (!sure) return;
    const results = await Promise.allSettled(ids.map((runId) => ctx.act(method, { runId })));
    const refused = [];
    results.forEach((r, i) => (r.status === "rejected" ? refused.push(`${ids[i]}: ${errorText(r.reason)}`) : selected.delete(ids[i])));
    const done = ids.length - refused.length;
    const cancelling = method === "cancelRun" ? results.filter((r) => r.status === "fulfilled" && r.value && r.value.status === "cancelling").length : 0;
    const pending = cancelling ? ` (${cancelling} still stopping)` : "";
    notify(`${verb}: ${done} accepted${pending}${refused.length ? `, ${refused.length} refused — ${refused.join("; ")}` : ""}.`, refused.length ? "error" : "info");
    load({ quiet: true });
  }

  function go(after, trail) {
    const next = { ...state, after };
    ctx.navigate(`/runs${toQuery(next)}`, { state: { trail } });
  }

  // -- launch -------------------------------------------------------------------------------------
  const launchWorkflow = h("select", { required: true, "data-testid": "launch-workflow", onchange: () => describe() });
  const launchAbout = h("p", { class: "muted small", "data-testid": "launch-about" });
  const describe = () => {
    const chosen = workflows.find((w) => w.key === launchWorkflow.value);
    launchAbout.textContent = chosen ? [chosen.readableName, chosen.description].filter(Boolean).join(": ") : "";
  };
  const launchInput = h("textarea", { rows: 4, spellcheck: "false", class: "mono", "data-testid": "launch-input" }, "{}");
  const launchId = h("input", { type: "text", autocomplete: "off", placeholder: "random when empty", "data-testid": "launch-run-id" });
  const launchError = h("p", { class: "error", role: "alert", "data-testid": "launch-error", hidden: true });
  const launchForm = ctx.can("launchRun")
    ? h(
        "details",
        { class: "panel launch", "data-testid": "launch" },
        h("summary", { "data-testid": "launch-open" }, "Launch a run"),
        h(
          "form",
          {
            onsubmit: async (event) => {
              event.preventDefault();
              launchError.hidden = true;
              let input;
              try {
                input = parseInput(launchInput.value, "Input");
              } catch (err) {
                launchError.textContent = err.message;
                launchError.hidden = false;
                return;
              }
              const params = { workflow: launchWorkflow.value, input };
              if (launchId.value.trim()) params.runId = launchId.value.trim();
              try {
                const result = await ctx.act("launchRun", params);
                notify(`Launched ${result.runId}`);
                ctx.navigate(`/runs/${encodeURIComponent(result.runId)}`);
              } catch (err) {
                launchError.textContent = errorText(err);
                launchError.hidden = false;
              }
            },
          },
          h("div", { class: "row" }, field("Workflow", launchWorkflow), field("Run id", launchId)),
          launchAbout,
          field("Input (JSON)", launchInput),
          launchError,
          h("div", { class: "actions" }, h("button", { type: "submit", class: "primary", "data-testid": "launch-submit" }, "Launch")),
        ),
      )
    : null;

  // -- live updates -------------------------------------------------------------------------------
  const refreshSoon = debounce(() => load({ quiet: true }), 250);
  const onRunEvent = (payload, frame) => {
    const run = payload && rows.find((r) => r.runId === payload.runId);
    if (run) {
      if (frame.event === "run.completed") run.status = payload.status;
      if (frame.event === "approval.requested") run.status = "waiting-approval";
      if (frame.event === "node.started" && run.status.startsWith("waiting")) run.status = "running";
      paint();
    }
    if (run || state.after === null) refreshSoon(); // new runs appear on the first page
  };
  const offs = RUN_EVENTS.map((name) => ctx.onEvent(name, onRunEvent));
  offs.push(ctx.onEvent("open", () => load({ quiet: true })));
  offs.push(ctx.approvals.onChange(() => paint()));
  // Some changes send no event (a run starting to wait for a signal or a timer): look again now and then.
  const poll = setInterval(() => {
    if (rows.some((r) => ACTIVE.has(r.status))) load({ quiet: true });
  }, 5000);
  const tick = () => table.querySelectorAll("td[data-active]").forEach((td) => (td.textContent = runDuration(td.run)));
  document.addEventListener("smithers:tick", tick);

  const el = h(
    "section",
    { class: "runs", "data-testid": "runs-page" },
    h("div", { class: "title-row" }, h("h1", {}, "Runs"), h("span", { class: "spacer" }), launchForm),
    h(
      "form",
      { class: "filters", role: "search", onsubmit: (e) => e.preventDefault() },
      field("Status", statusSelect),
      field("Workflow", workflowSelect),
      field("Search run ids", search),
    ),
    errorBox,
    h("div", { class: "toolbar" }, bulk, h("span", { class: "spacer" }), pager),
    h(
      "table",
      { class: "grid", "data-testid": "runs-table" },
      h(
        "thead",
        {},
        h("tr", {}, h("th", { class: "check" }, selectAll), h("th", {}, "Run"), h("th", {}, "Workflow"), h("th", {}, "Status"), h("th", {}, "Waiting on"), h("th", {}, "Started"), h("th", { class: "num" }, "Duration")),
      ),
      table,
    ),
    status,
  );
  syncControls();
  loadWorkflows();
  load();

  return {
    el,
    update(next) {
      const fresh = readQuery(next);
      const filtersChanged = fresh.status !== state.status || fresh.workflow !== state.workflow || fresh.q !== state.q;
      if (filtersChanged) selected.clear();
      state = fresh;
      syncControls();
      load();
    },
    destroy() {
      offs.forEach((off) => off());
      clearInterval(poll);
      refreshSoon.cancel();
      searchLater.cancel();
      document.removeEventListener("smithers:tick", tick);
    },
  };
}

function readQuery(route) {
  const q = route.query;
  const afterMs = Number(q.get("afterMs"));
  const afterId = q.get("afterId");
  const trail = (history.state && Array.isArray(history.state.trail) && history.state.trail) || [];
  return {
    status: q.get("status") || "",
    workflow: q.get("workflow") || "",
    q: q.get("q") || "",
    after: afterId !== null && Number.isInteger(afterMs) && q.get("afterMs") ? { createdAtMs: afterMs, runId: afterId } : null,
    trail,
  };
}

function toQuery(state) {
  const q = new URLSearchParams();
  if (state.status) q.set("status", state.status);
  if (state.workflow) q.set("workflow", state.workflow);
  if (state.q) q.set("q", state.q);
  if (state.after) {
    q.set("afterMs", String(state.after.createdAtMs));
    q.set("afterId", state.after.runId);
  }
  const text = q.toString();
  return text ? `?${text}` : "";
}
