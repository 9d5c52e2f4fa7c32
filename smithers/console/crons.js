// Schedules: every cron row (cron.list), fired now (cron.trigger), enabled or disabled. There is
// no method that only flips `enabled`: cron.add with an existing cronId updates that row, keeping
// its creation time, last run and error (docs/protocol.md#cronadd--croncreate).

import { h, put, fmtTime, errorText, notify, failure } from "./dom.js";

export function cronsView(ctx) {
  document.title = "Schedules · Smithers";
  const body = h("tbody", { "data-testid": "crons-body" });
  const errorBox = h("div");
  const info = h("p", { class: "muted small" });
  const started = h("p", { class: "small", "aria-live": "polite", "data-testid": "cron-started" });
  const canWrite = ctx.can("cron.trigger");
  let rows = [];

  async function load() {
    try {
      rows = await ctx.call("cron.list", {});
    } catch (err) {
      put(errorBox, failure(err, load));
      put(body);
      table.hidden = true;
      return;
    }
    put(errorBox);
    table.hidden = false;
    paint();
  }

  function paint() {
    info.textContent = rows.length ? "" : "No schedules. Register a workflow with schedule=… or add one with `smithers cron add`.";
    put(
      body,
      rows.map((cron) => {
        const buttons = canWrite
          ? [
              h("button", { type: "button", "data-testid": "cron-trigger", onclick: () => trigger(cron) }, "Run now"),
              cron.workflow
                ? h("button", { type: "button", "data-testid": "cron-toggle", onclick: () => toggle(cron) }, cron.enabled ? "Disable" : "Enable")
                : null,
            ]
          : null;
        return h(
          "tr",
          { "data-testid": "cron-row", "data-cron-id": cron.cronId, "data-enabled": cron.enabled ? "1" : "0" },
          h("td", { class: "mono" }, cron.cronId),
          h("td", {}, cron.workflow || h("span", { class: "muted" }, cron.workflowPath)),
          h("td", { class: "mono" }, cron.pattern, cron.timezone ? h("span", { class: "muted" }, ` (${cron.timezone})`) : null),
          h("td", { "data-testid": "cron-enabled" }, cron.enabled ? "enabled" : "disabled"),
          h("td", {}, fmtTime(cron.lastRunAtMs)),
          h("td", {}, cron.enabled ? fmtTime(cron.nextRunAtMs) : "—"),
          h("td", { class: "error" }, cron.errorJson || ""),
          h("td", {}, h("div", { class: "actions" }, buttons)),
        );
      }),
    );
  }

  async function trigger(cron) {
    try {
      const result = await ctx.act("cron.trigger", { cronId: cron.cronId });
      notify(`Started ${result.runId}`);
      put(
        started,
        "Started ",
        h("a", { class: "mono", href: ctx.href(`/runs/${encodeURIComponent(result.runId)}`), "data-testid": "cron-run-link" }, result.runId),
        ` from ${cron.cronId}.`,
      );
      load();
    } catch (err) {
      notify(`Run now refused: ${errorText(err)}`, "error");
    }
  }

  async function toggle(cron) {
    const params = { cronId: cron.cronId, workflow: cron.workflow, pattern: cron.pattern, enabled: !cron.enabled };
    if (cron.timezone) params.timezone = cron.timezone;
    try {
      await ctx.act("cron.add", params);
      notify(`${cron.cronId} ${cron.enabled ? "disabled" : "enabled"}`);
      load();
    } catch (err) {
      notify(`Refused: ${errorText(err)}`, "error");
    }
  }

  const table = h(
    "table",
    { class: "grid", "data-testid": "crons-table" },
    h(
      "thead",
      {},
      h("tr", {}, h("th", {}, "Schedule"), h("th", {}, "Workflow"), h("th", {}, "Pattern"), h("th", {}, "State"), h("th", {}, "Last run"), h("th", {}, "Next run"), h("th", {}, "Error"), h("th", {}, "")),
    ),
    body,
  );
  const off = ctx.onEvent("cron.triggered", () => load());
  load();
  return {
    el: h("section", { "data-testid": "crons-page" }, h("h1", {}, "Schedules"), errorBox, table, info, started),
    destroy: off,
  };
}
