// The approvals inbox: pending approvals across runs (listApprovals, kept current from events),
// each decided with a note; select approvals pick one option and rank approvals order them
// (docs/protocol.md#pending-approval-entry, docs/protocol.md#approvalsdecide--submitapproval).

import { h, put, fmtTime, errorText, notify, failure, field } from "./dom.js";
import { mayDecide } from "./scopes.js";

export function approvalsView(ctx, route) {
  document.title = "Approvals · Smithers";
  const cards = new Map(); // key -> element (kept while pending, so a half-typed note survives updates)
  const list = h("div", { class: "cards", "data-testid": "approvals-list" });
  const info = h("p", { class: "muted small", "aria-live": "polite", "data-testid": "approvals-info" });
  const errorBox = h("div");
  let workflow = route.query.get("workflow") || "";
  const workflowSelect = h("select", {
    "data-testid": "approvals-workflow",
    onchange: () => ctx.navigate(`/approvals${workflowSelect.value ? `?workflow=${encodeURIComponent(workflowSelect.value)}` : ""}`, { replace: true }),
  });

  function paint(store) {
    if (store.error && !store.loaded) {
      put(errorBox, failure(store.error, () => store.refresh()));
      return;
    }
    put(errorBox);
    const keys = [...new Set(store.entries.map((e) => e.workflowKey))].sort();
    put(workflowSelect, h("option", { value: "" }, "any workflow"), keys.map((k) => h("option", { value: k }, k)));
    workflowSelect.value = workflow;
    const entries = store.entries.filter((e) => !workflow || e.workflowKey === workflow);
    const wanted = new Set(entries.map(keyOf));
    for (const [key, card] of cards) {
      if (!wanted.has(key)) {
        card.remove();
        cards.delete(key);
      }
    }
    entries.forEach((entry) => {
      const key = keyOf(entry);
      if (!cards.has(key)) cards.set(key, approvalCard(ctx, entry));
      list.append(cards.get(key)); // keeps the order: oldest request first
    });
    info.textContent = !store.loaded
      ? "Loading…"
      : entries.length
        ? `${entries.length} pending${store.truncated ? " (the oldest 500 are shown)" : ""}, oldest first.`
        : "Nothing is waiting for a decision.";
  }

  const off = ctx.approvals.onChange(paint);
  if (!ctx.can("listApprovals")) {
    put(errorBox, failure({ code: "FORBIDDEN", message: "", method: "listApprovals", details: { requiredScope: "run:read" } }));
  } else {
    paint(ctx.approvals);
    ctx.approvals.refresh();
  }
  const el = h(
    "section",
    { "data-testid": "approvals-page" },
    h("div", { class: "title-row" }, h("h1", {}, "Approvals"), h("span", { class: "spacer" }), field("Workflow", workflowSelect)),
    errorBox,
    info,
    list,
  );
  return {
    el,
    update(next) {
      workflow = next.query.get("workflow") || "";
      paint(ctx.approvals);
    },
    destroy: off,
  };
}

const keyOf = (e) => `${e.runId}\u0000${e.nodeId}\u0000${e.iteration}`;

/** One pending approval, with its decision form when the caller may decide it. */
export function approvalCard(ctx, entry) {
  const allowed = mayDecide(ctx.identity, entry);
  const mode = entry.approvalMode;
  const options = entry.options || [];
  const note = h("textarea", { rows: 2, "data-testid": "approval-note", placeholder: "optional" });
  const error = h("p", { class: "error", role: "alert", hidden: true, "data-testid": "approval-error" });
  const group = `choice-${Math.random().toString(36).slice(2, 9)}`;

  let picker = null;
  let ranking = options.map((o) => o.key);
  const rankList = h("ol", { class: "rank", "data-testid": "rank-list" });
  const paintRank = () =>
    put(
      rankList,
      ranking.map((key, i) => {
        const option = options.find((o) => o.key === key);
        return h(
          "li",
          { "data-testid": "rank-item", "data-key": key },
          h("span", {}, option ? option.label : key),
          h("button", { type: "button", class: "small", disabled: i === 0, "aria-label": `Move ${option ? option.label : key} up`, "data-testid": "rank-up", onclick: () => move(i, -1) }, "↑"),
          h("button", { type: "button", class: "small", disabled: i === ranking.length - 1, "aria-label": `Move ${option ? option.label : key} down`, "data-testid": "rank-down", onclick: () => move(i, 1) }, "↓"),
        );
      }),
    );
  const move = (i, by) => {
    const next = [...ranking];
    [next[i], next[i + by]] = [next[i + by], next[i]];
    ranking = next;
    paintRank();
  };
  if (mode === "select" && options.length) {
    picker = h(
      "fieldset",
      { class: "options" },
      h("legend", {}, "Choose one"),
      options.map((o, i) =>
        h(
          "label",
          { class: "option" },
          h("input", { type: "radio", name: group, value: o.key, checked: i === 0, "data-testid": "approval-option" }),
          ` ${o.label}`,
          o.summary ? h("small", { class: "muted" }, ` — ${o.summary}`) : null,
        ),
      ),
    );
  } else if (mode === "rank" && options.length) {
    paintRank();
    picker = h("fieldset", { class: "options" }, h("legend", {}, "Order, best first"), rankList);
  } else if (mode === "select" || mode === "rank") {
    // No options offered: the value is typed (a key, or keys separated by commas).
    const free = h("input", { type: "text", "data-testid": "approval-free", name: group });
    picker = field(mode === "select" ? "Selection" : "Order (comma-separated, best first)", free);
  }

  const approve = h("button", { type: "button", class: "primary", "data-testid": "approve", onclick: () => decide(true) }, mode === "select" ? "Approve choice" : mode === "rank" ? "Approve order" : "Approve");
  const deny = h("button", { type: "button", class: "danger", "data-testid": "deny", onclick: () => decide(false) }, "Deny");

  async function decide(approved) {
    error.hidden = true;
    approve.disabled = deny.disabled = true;
    const decision = { approved, note: note.value.trim() || null };
    const free = card.querySelector('[data-testid="approval-free"]');
    if (approved && mode === "select") {
      const chosen = card.querySelector(`input[name="${group}"]:checked`);
      decision.selected = free ? free.value.trim() : chosen ? chosen.value : null;
    }
    if (approved && mode === "rank") decision.ranked = free ? free.value.split(",").map((s) => s.trim()).filter(Boolean) : ranking;
    if (decision.note === null) delete decision.note;
    try {
      await ctx.act("submitApproval", { runId: entry.runId, nodeId: entry.nodeId, iteration: entry.iteration, decision });
      notify(`${approved ? "Approved" : "Denied"} ${entry.requestTitle} (${entry.runId})`);
      put(actions, h("p", { class: "done", "data-testid": "approval-done" }, approved ? "Approved." : "Denied."));
      ctx.approvals.refresh();
    } catch (err) {
      error.textContent = errorText(err);
      error.hidden = false;
      approve.disabled = deny.disabled = false;
    }
  }

  const limits = [];
  if ((entry.allowedUsers || []).length) limits.push(`only ${entry.allowedUsers.join(", ")}`);
  if ((entry.allowedScopes || []).length) limits.push(`needs ${entry.allowedScopes.join(" or ")}`);
  const actions = allowed
    ? h("div", { class: "decide" }, picker, field("Note", note), error, h("div", { class: "actions" }, approve, deny))
    : h("p", { class: "muted", "data-testid": "approval-not-allowed" }, ctx.can("submitApproval") ? `You may not decide this approval (${limits.join("; ")}).` : "Your token cannot decide approvals (approval:submit).");
  const card = h(
    "article",
    { class: "panel approval", "data-testid": "approval-card", "data-run-id": entry.runId, "data-node-id": entry.nodeId },
    h("h3", {}, entry.requestTitle, " ", h("span", { class: "chip" }, mode)),
    entry.requestSummary ? h("p", {}, entry.requestSummary) : null,
    h(
      "p",
      { class: "muted small" },
      "Run ",
      h("a", { class: "mono", href: ctx.href(`/runs/${encodeURIComponent(entry.runId)}`) }, entry.runId),
      ` · ${entry.workflowKey} · node `,
      h("span", { class: "mono" }, entry.nodeId),
      entry.iteration ? ` · iteration ${entry.iteration}` : "",
      ` · asked ${fmtTime(entry.requestedAtMs)}`,
      limits.length ? ` · ${limits.join("; ")}` : "",
    ),
    actions,
  );
  return card;
}
