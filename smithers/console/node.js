// One node of a run: what it produced (getNodeOutput: status, row, schema) and its attempts with
// their errors (attempts.list with nodeId), docs/protocol.md#getnodeoutput--devtoolsgetnodeoutput.

import { h, put, fmtTime, fmtDuration, badge, pretty, parseJsonText, errorText, field } from "./dom.js";

export function nodePanel(ctx, runId, nodeId, { iterations = [0], closeHref }) {
  let iteration = iterations.length ? iterations[iterations.length - 1] : 0;
  const output = h("div", { "data-testid": "node-output" }, h("p", { class: "muted" }, "Loading…"));
  const attempts = h("div", { "data-testid": "node-attempts" });
  const picker =
    iterations.length > 1
      ? field(
          "Iteration",
          h(
            "select",
            {
              "data-testid": "node-iteration",
              onchange: (e) => {
                iteration = Number(e.target.value);
                refresh();
              },
            },
            iterations.map((i) => h("option", { value: i, selected: i === iteration }, String(i))),
          ),
        )
      : null;
  const el = h(
    "section",
    { class: "panel node-panel", "data-testid": "node-panel", "data-node-id": nodeId, "aria-label": `Node ${nodeId}` },
    h("div", { class: "title-row" }, h("h2", {}, "Node ", h("span", { class: "mono" }, nodeId)), h("span", { class: "spacer" }), h("a", { href: closeHref, "data-testid": "node-close" }, "Close")),
    picker,
    h("h3", {}, "Output"),
    output,
    h("h3", {}, "Attempts"),
    attempts,
  );

  async function refresh() {
    const [out, tries] = await Promise.allSettled([
      ctx.call("getNodeOutput", { runId, nodeId, iteration }),
      ctx.call("attempts.list", { runId, nodeId, iteration }),
    ]);
    put(output, out.status === "fulfilled" ? outputView(out.value) : outputError(out.reason));
    put(attempts, tries.status === "fulfilled" ? attemptsView(tries.value) : h("p", { class: "error" }, errorText(tries.reason)));
  }
  refresh();
  return { el, refresh };
}

function outputError(err) {
  if (err && err.code === "NodeHasNoOutput") return h("p", { class: "muted", "data-testid": "node-no-output" }, `No output: ${err.message}`);
  return h("p", { class: "error" }, errorText(err));
}

function outputView(result) {
  const fields = (result.schema && result.schema.fields) || [];
  return h(
    "div",
    {},
    h("p", {}, badge(result.status, "node-output-status")),
    result.status === "produced" ? h("pre", { class: "json", "data-testid": "node-output-row" }, pretty(result.row)) : null,
    result.status === "failed" && result.partial ? h("div", {}, h("p", { class: "muted small" }, "Last heartbeat payload"), h("pre", { class: "json" }, pretty(result.partial))) : null,
    fields.length
      ? h(
          "table",
          { class: "grid compact", "data-testid": "node-schema" },
          h("thead", {}, h("tr", {}, h("th", {}, "Field"), h("th", {}, "Type"), h("th", {}, "Notes"))),
          h(
            "tbody",
            {},
            fields.map((f) =>
              h(
                "tr",
                {},
                h("td", { class: "mono" }, f.name),
                h("td", {}, f.type),
                h("td", { class: "muted" }, [f.optional ? "optional" : null, f.nullable ? "nullable" : null, f.enum ? `one of ${f.enum.join(", ")}` : null, f.description || null].filter(Boolean).join(" · ")),
              ),
            ),
          ),
        )
      : null,
  );
}

function attemptsView(rows) {
  if (!rows.length) return h("p", { class: "muted" }, "No attempts (approvals and nodes not reached yet have none).");
  return h(
    "table",
    { class: "grid compact" },
    h("thead", {}, h("tr", {}, h("th", {}, "#"), h("th", {}, "State"), h("th", {}, "Started"), h("th", { class: "num" }, "Took"), h("th", {}, "Error"))),
    h(
      "tbody",
      {},
      rows.map((a) => {
        const error = parseJsonText(a.errorJson);
        const took = typeof a.finishedAtMs === "number" && typeof a.startedAtMs === "number" ? fmtDuration(a.finishedAtMs - a.startedAtMs) : "—";
        return h(
          "tr",
          { "data-testid": "attempt-row", "data-attempt": a.attempt },
          h("td", {}, String(a.attempt), a.cached ? h("span", { class: "chip" }, "cached") : null),
          h("td", {}, badge(a.state)),
          h("td", {}, fmtTime(a.startedAtMs)),
          h("td", { class: "num" }, took),
          h("td", { class: "attempt-error", "data-testid": "attempt-error" }, error ? h("details", {}, h("summary", {}, error.message || error.code || "error"), h("pre", { class: "json" }, pretty(error))) : ""),
        );
      }),
    ),
  );
}
