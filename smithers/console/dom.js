// Small DOM and formatting helpers shared by the views.

/**
 * An element: `h("button", {class: "primary", onclick: fn, "data-testid": "x"}, "Label")`.
 * Attributes starting with `on` become listeners; `true`/`false` toggle boolean attributes;
 * `null`/`undefined` are left out. Children may be strings, nodes, arrays, or null (skipped).
 */
export function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === null || value === undefined || value === false) continue;
    if (key.startsWith("on") && typeof value === "function") el.addEventListener(key.slice(2), value);
    else if (key === "value") el.value = value;
    else if (key === "checked") el.checked = Boolean(value);
    else if (value === true) el.setAttribute(key, "");
    else el.setAttribute(key, String(value));
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const child of children) {
    if (child === null || child === undefined || child === false) continue;
    if (Array.isArray(child)) append(el, child);
    else el.append(child instanceof Node ? child : String(child));
  }
}

/** Replace an element's content. */
export function put(el, ...children) {
  el.replaceChildren();
  append(el, children);
  return el;
}

const pad = (n) => String(n).padStart(2, "0");

/** `2026-01-01 09:05:03` in local time, or "—". */
export function fmtTime(ms) {
  if (typeof ms !== "number") return "—";
  const d = new Date(ms);
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`;
}

/** `850 ms`, `12.4 s`, `3 min 05 s`, `2 h 04 min`, `3 d 2 h`. */
export function fmtDuration(ms) {
  if (typeof ms !== "number" || ms < 0) return "—";
  if (ms < 1000) return `${Math.round(ms)} ms`;
  const s = ms / 1000;
  if (s < 60) return `${s.toFixed(1)} s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m} min ${pad(Math.floor(s % 60))} s`;
  const hours = Math.floor(m / 60);
  if (hours < 48) return `${hours} h ${pad(m % 60)} min`;
  return `${Math.floor(hours / 24)} d ${hours % 24} h`;
}

/** A run's duration so far: ended runs from start to end, active ones until now. */
export function runDuration(run, now = Date.now()) {
  const start = run.startedAtMs ?? run.createdAtMs;
  if (typeof start !== "number") return "—";
  const end = typeof run.finishedAtMs === "number" ? run.finishedAtMs : now;
  return fmtDuration(end - start);
}

export const ACTIVE = new Set(["running", "waiting-approval", "waiting-event", "waiting-timer"]);
export const STATUSES = ["running", "waiting-approval", "waiting-event", "waiting-timer", "finished", "failed", "cancelled", "continued"];

/** A status pill. */
export function badge(status, testid) {
  const text = status || "unknown";
  return h("span", { class: `badge s-${text.replace(/[^a-z-]/g, "")}`, "data-testid": testid }, text);
}

/** What a waiting run waits on, from its RunStateView (docs/protocol.md#runstateview). */
export function waitingOn(runState, approvalTitles) {
  const blocked = runState && runState.blocked;
  if (!blocked) {
    if (runState && runState.unhealthy) return `${runState.state}: no heartbeat since ${runState.unhealthy.lastHeartbeatAt || "?"}`;
    return "";
  }
  if (blocked.kind === "approval") {
    const title = approvalTitles && approvalTitles.get(blocked.nodeId);
    return `approval ${blocked.nodeId}${title && title !== blocked.nodeId ? ` (“${title}”)` : ""}`;
  }
  if (blocked.kind === "event") {
    const key = blocked.correlationKey;
    return `event ${key ? `“${key}” ` : ""}at ${blocked.nodeId}`;
  }
  if (blocked.kind === "timer") {
    const at = blocked.wakeAt ? new Date(blocked.wakeAt).getTime() : null;
    return `timer ${blocked.nodeId}${at ? ` until ${fmtTime(at)}` : ""}`;
  }
  return `${blocked.kind} ${blocked.nodeId || ""}`;
}

/** JSON for display. */
export function pretty(value) {
  return JSON.stringify(value, null, 2);
}

/** A `*Json` column parsed, or null. */
export function parseJsonText(text) {
  if (typeof text !== "string") return null;
  try {
    return JSON.parse(text);
  } catch {
    return null;
  }
}

/** Parse what a user typed as JSON; throws an Error naming the field. */
export function parseInput(text, label) {
  const trimmed = (text || "").trim();
  if (!trimmed) return {};
  try {
    return JSON.parse(trimmed);
  } catch (err) {
    throw new Error(`${label} is not valid JSON: ${err.message}`);
  }
}

/** A refusal in words: scope failures name the scope that is missing. */
export function errorText(err) {
  if (!err) return "Unknown error";
  if (err.code === "FORBIDDEN") {
    if (err.details && err.details.requiredScope) {
      return `Not allowed: this token lacks the scope ${err.details.requiredScope} needed for ${err.method || "this call"}.`;
    }
    return `Not allowed: ${err.message}`;
  }
  if (err.code && err.code !== "ERROR") return `${err.message} (${err.code})`;
  return err.message || String(err);
}

/** Calls `fn` once, `ms` after the last of a burst of calls. */
export function debounce(fn, ms) {
  let timer = null;
  const wrapped = (...args) => {
    clearTimeout(timer);
    timer = setTimeout(() => fn(...args), ms);
  };
  wrapped.cancel = () => clearTimeout(timer);
  return wrapped;
}

/** A short message in the page's notice area (announced to screen readers). */
export function notify(text, kind = "info") {
  const area = document.getElementById("notices");
  if (!area) return;
  const item = h("div", { class: `notice ${kind}`, role: kind === "error" ? "alert" : "status", "data-testid": "notice" }, text);
  const close = h("button", { class: "link", "aria-label": "Dismiss", onclick: () => item.remove() }, "×");
  item.append(close);
  area.append(item);
  setTimeout(() => item.remove(), kind === "error" ? 15000 : 6000);
}

/**
 * A modal confirmation; resolves true when confirmed. The body may be text or nodes.
 */
export function confirmDialog({ title, body, confirmLabel = "Confirm", danger = false }) {
  return new Promise((resolve) => {
    const dialog = h("dialog", { class: "confirm", "data-testid": "confirm-dialog", "aria-labelledby": "confirm-title" });
    const done = (value) => {
      dialog.close();
      dialog.remove();
      resolve(value);
    };
    put(
      dialog,
      h("h2", { id: "confirm-title" }, title),
      h("div", { class: "dialog-body" }, body),
      h(
        "div",
        { class: "actions" },
        h("button", { type: "button", onclick: () => done(false), "data-testid": "confirm-cancel" }, "Cancel"),
        h(
          "button",
          { type: "button", class: danger ? "danger" : "primary", onclick: () => done(true), "data-testid": "confirm-ok" },
          confirmLabel,
        ),
      ),
    );
    dialog.addEventListener("cancel", (event) => {
      event.preventDefault();
      done(false);
    });
    document.body.append(dialog);
    dialog.showModal();
  });
}

/** A panel telling the caller a page needs a scope they do not have. */
export function notAllowed(err) {
  return h(
    "div",
    { class: "panel not-allowed", role: "alert", "data-testid": "not-allowed" },
    h("h2", {}, "Not allowed"),
    h("p", {}, errorText(err)),
    h("p", { class: "muted" }, "Ask for a token with that scope, or sign in with another one."),
  );
}

/** A panel for a failed load. */
export function failure(err, retry) {
  if (err && err.code === "FORBIDDEN") return notAllowed(err);
  return h(
    "div",
    { class: "panel error", role: "alert", "data-testid": "load-error" },
    h("p", {}, errorText(err)),
    retry ? h("button", { type: "button", onclick: retry }, "Try again") : null,
  );
}

/** Label + control, stacked. */
export function field(label, control, hint) {
  const id = control.id || `f-${Math.random().toString(36).slice(2, 9)}`;
  control.id = id;
  return h("div", { class: "field" }, h("label", { for: id }, label), control, hint ? h("small", { class: "muted" }, hint) : null);
}
