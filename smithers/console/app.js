// The console's entry point (served as client.js): boot config, sign-in, the page shell and the
// router. Every page has its own URL under the mount path (History API); the token lives in
// sessionStorage only, never in a URL.

import { Connection, RpcError, httpCall, socketUrl } from "./rpc.js";
import { allows } from "./scopes.js";
import { h, put, debounce, notify } from "./dom.js";
import { signinView } from "./signin.js";
import { runsView } from "./runs.js";
import { runView } from "./run.js";
import { approvalsView } from "./approvals.js";
import { cronsView } from "./crons.js";

const TOKEN_KEY = "smithers.console.token";
const APPROVALS_LIMIT = 500;

const boot = globalThis.__SMITHERS_GATEWAY_UI__ || {};
const cfg = {
  mountPath: (boot.mountPath || "/console").replace(/\/+$/, ""),
  rpcPath: boot.rpcPath || "/v1/rpc",
  wsPath: boot.wsPath || "/",
  props: boot.props || {},
};
const root = document.getElementById("root") || document.body.appendChild(h("div", { id: "root" }));

loadStyle();

let session = null; // {conn, identity, token, ...} while signed in
let current = null; // {key, view}

function loadStyle() {
  const href = new URL("./style.css", import.meta.url).href;
  if (![...document.querySelectorAll("link[rel=stylesheet]")].some((l) => l.href === href)) {
    document.head.append(h("link", { rel: "stylesheet", href }));
  }
  if (!document.querySelector("link[rel~=icon]")) {
    document.head.append(h("link", { rel: "icon", type: "image/svg+xml", href: new URL("./icon.svg", import.meta.url).href }));
  }
}

// -- routes ---------------------------------------------------------------------------------------
const ROUTES = [
  { name: "runs", pattern: /^\/(?:runs\/?)?$/ },
  { name: "run", pattern: /^\/runs\/([^/]+)\/?$/, keys: ["runId"] },
  { name: "run", pattern: /^\/runs\/([^/]+)\/nodes\/([^/]+)\/?$/, keys: ["runId", "nodeId"] },
  { name: "approvals", pattern: /^\/approvals\/?$/ },
  { name: "crons", pattern: /^\/crons\/?$/ },
];
const VIEWS = { runs: runsView, run: runView, approvals: approvalsView, crons: cronsView };

function currentRoute() {
  let path = location.pathname;
  path = path.startsWith(cfg.mountPath) ? path.slice(cfg.mountPath.length) : path;
  if (!path.startsWith("/")) path = `/${path}`;
  const query = new URLSearchParams(location.search);
  for (const route of ROUTES) {
    const match = route.pattern.exec(path);
    if (!match) continue;
    const params = {};
    (route.keys || []).forEach((key, i) => {
      try {
        params[key] = decodeURIComponent(match[i + 1]);
      } catch {
        params[key] = match[i + 1];
      }
    });
    return { name: route.name, params, query, path };
  }
  return { name: "missing", params: {}, query, path };
}

const viewKey = (route) => (route.name === "run" ? `run:${route.params.runId}` : route.name);

function render() {
  if (!session) return;
  const route = currentRoute();
  const key = viewKey(route);
  markNav(route.name);
  if (current && current.key === key && current.view.update) {
    current.view.update(route);
    return;
  }
  if (current && current.view.destroy) current.view.destroy();
  const main = document.getElementById("view");
  if (route.name === "missing") {
    current = { key, view: {} };
    document.title = "Not found · Smithers";
    put(
      main,
      h(
        "div",
        { class: "panel", "data-testid": "page-missing" },
        h("h1", {}, "Page not found"),
        h("p", {}, h("a", { href: href("/runs") }, "Go to the runs")),
      ),
    );
    return;
  }
  const view = VIEWS[route.name](session.ctx, route);
  current = { key, view };
  put(main, view.el);
}

function href(path) {
  return cfg.mountPath + path;
}

function navigate(path, { replace = false, state = null } = {}) {
  const url = path.startsWith(cfg.mountPath) ? path : href(path);
  if (replace) history.replaceState(state, "", url);
  else history.pushState(state, "", url);
  render();
}

// Same-origin links under the mount path are followed without a page load.
document.addEventListener("click", (event) => {
  if (event.defaultPrevented || event.button !== 0 || event.metaKey || event.ctrlKey || event.shiftKey || event.altKey) return;
  const link = event.target.closest && event.target.closest("a[href]");
  if (!link || link.target || link.hasAttribute("download")) return;
  const url = new URL(link.href, location.href);
  if (url.origin !== location.origin || !(url.pathname === cfg.mountPath || url.pathname.startsWith(`${cfg.mountPath}/`))) return;
  event.preventDefault();
  if (url.pathname + url.search !== location.pathname + location.search) {
    history.pushState(null, "", url.pathname + url.search);
  }
  render();
});
window.addEventListener("popstate", render);

// -- session --------------------------------------------------------------------------------------
async function start(token, { typed = false } = {}) {
  const conn = new Connection({ url: socketUrl(cfg.wsPath), token });
  let hello;
  try {
    hello = await conn.open();
  } catch (err) {
    conn.close();
    if (err.code === "DISCONNECTED") {
      showSignin({ error: "Cannot reach the gateway. Is it running?", retry: () => start(token, { typed }) });
      return;
    }
    // Forget the token that was refused (not one stored meanwhile).
    if (sessionStorage.getItem(TOKEN_KEY) === token) sessionStorage.removeItem(TOKEN_KEY);
    // No token yet and the gateway wants one: a plain sign-in page, not an error.
    showSignin({ error: token || typed ? err.message : null });
    return;
  }
  if (token) sessionStorage.setItem(TOKEN_KEY, token);
  else sessionStorage.removeItem(TOKEN_KEY);
  openSession(conn, hello, token);
}

function showSignin({ error = null, retry = null } = {}) {
  if (current && current.view.destroy) current.view.destroy();
  current = null;
  session = null;
  document.title = "Sign in · Smithers";
  put(root, signinView({ error, retry, onSubmit: (token) => start(token, { typed: true }) }));
}

function signOut(message) {
  if (session) {
    session.conn.close();
    session.approvals.stop();
  }
  sessionStorage.removeItem(TOKEN_KEY);
  showSignin({ error: message || null });
}

function openSession(conn, hello, token) {
  const identity = hello.auth || { role: "operator", scopes: ["*"], userId: null };
  const guard = (promise) =>
    promise.catch((err) => {
      if (err instanceof RpcError && err.isAuth) {
        signOut(`Signed out: ${err.message}`);
      }
      throw err;
    });
  const ctx = {
    cfg,
    identity,
    token,
    conn,
    hello,
    href,
    navigate,
    can: (method) => allows(identity.scopes, method),
    /** A read over the session's WebSocket. */
    call: (method, params = {}) => guard(conn.call(method, params)),
    /** A call that changes something, over HTTP (see httpCall). */
    act: (method, params = {}) => guard(httpCall(cfg.rpcPath, token, method, params)),
    /** A WebSocket of its own (streams end with their socket: docs/protocol.md#close-behaviour). */
    channel: (subscribe, { reconnect = true } = {}) => new Connection({ url: socketUrl(cfg.wsPath), token, subscribe, reconnect }),
    onEvent: (name, fn) => conn.on(name, fn),
  };
  ctx.approvals = approvalsStore(ctx, hello);
  session = { conn, identity, token, ctx, approvals: ctx.approvals };
  conn.on("unauthorized", (err) => signOut(`Signed out: ${err.message}`));
  renderShell(ctx);
  render();
}

/** Pending approvals across runs, kept current from events (the inbox and the nav badge). */
function approvalsStore(ctx, hello) {
  const listeners = new Set();
  const store = {
    entries: [],
    loaded: false,
    error: null,
    truncated: false,
    onChange(fn) {
      listeners.add(fn);
      return () => listeners.delete(fn);
    },
    async refresh() {
      if (!ctx.can("listApprovals")) return;
      try {
        const entries = await ctx.call("listApprovals", { limit: APPROVALS_LIMIT });
        store.set(entries, entries.length >= APPROVALS_LIMIT);
      } catch (err) {
        store.error = err;
        listeners.forEach((fn) => fn(store));
      }
    },
    set(entries, truncated) {
      store.entries = entries;
      store.loaded = true;
      store.error = null;
      store.truncated = truncated;
      listeners.forEach((fn) => fn(store));
    },
    forRun(runId) {
      return store.entries.filter((e) => e.runId === runId);
    },
    titles(runId) {
      return new Map(store.forRun(runId).map((e) => [e.nodeId, e.requestTitle]));
    },
    stop() {
      offs.forEach((off) => off());
      later.cancel();
    },
  };
  const later = debounce(() => store.refresh(), 150);
  const offs = ["approval.requested", "approval.decided", "run.completed", "run.time_travel_jumped"].map((name) => ctx.onEvent(name, later));
  offs.push(ctx.onEvent("open", later)); // after a reconnect
  const snapshot = hello.snapshot || {};
  if (Array.isArray(snapshot.approvals) && !snapshot.truncated) store.set(snapshot.approvals, false);
  else store.refresh();
  return store;
}

function renderShell(ctx) {
  const { identity, token } = ctx;
  const status = h("span", { class: "conn open", "data-testid": "connection", title: "Connected" }, "connected");
  ctx.conn.on("status", (state) => {
    status.className = `conn ${state}`;
    status.textContent = state === "open" ? "connected" : state === "connecting" ? "reconnecting…" : "disconnected";
  });
  const count = h("span", { class: "count", "data-testid": "approvals-count", hidden: true });
  const showCount = (store) => {
    const n = store.entries.length;
    count.hidden = n === 0;
    count.textContent = store.truncated ? `${n}+` : String(n);
  };
  ctx.approvals.onChange(showCount);
  showCount(ctx.approvals);
  const who = identity.userId || (token ? "token" : "no authentication");
  put(
    root,
    h(
      "header",
      { class: "top" },
      h("a", { class: "brand", href: href("/runs") }, "Smithers"),
      h(
        "nav",
        { "aria-label": "Main" },
        h("a", { href: href("/runs"), "data-nav": "runs", "data-testid": "nav-runs" }, "Runs"),
        h("a", { href: href("/approvals"), "data-nav": "approvals", "data-testid": "nav-approvals" }, "Approvals ", count),
        h("a", { href: href("/crons"), "data-nav": "crons", "data-testid": "nav-crons" }, "Schedules"),
      ),
      h("span", { class: "spacer" }),
      status,
      h(
        "span",
        { class: "who", "data-testid": "identity", title: `scopes: ${(identity.scopes || []).join(", ") || "none"}` },
        `${who} · ${identity.role || "operator"}`,
      ),
      token ? h("button", { type: "button", class: "link", onclick: () => signOut(), "data-testid": "sign-out" }, "Sign out") : null,
    ),
    h("main", { id: "view" }),
    h("div", { id: "notices", class: "notices", "aria-live": "polite" }),
  );
}

function markNav(name) {
  const section = name === "run" ? "runs" : name;
  document.querySelectorAll("nav [data-nav]").forEach((a) => {
    if (a.dataset.nav === section) a.setAttribute("aria-current", "page");
    else a.removeAttribute("aria-current");
  });
}

// Durations of active runs tick once a second.
setInterval(() => document.dispatchEvent(new CustomEvent("smithers:tick")), 1000);

window.addEventListener("unhandledrejection", (event) => {
  // Refusals are shown where they happen; anything else is a bug worth seeing.
  if (event.reason instanceof RpcError) {
    event.preventDefault();
    if (!event.reason.isAuth) notify(event.reason.message, "error");
  }
});

start(sessionStorage.getItem(TOKEN_KEY));
