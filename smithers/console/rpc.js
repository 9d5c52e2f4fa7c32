// The gateway client: one WebSocket per Connection (challenge, then `connect`, then requests
// matched to responses by id, events dispatched by name, reconnection with backoff), and
// `httpCall` for the calls that change things (docs/protocol.md#websocket-transport).

const CLIENT = { id: "smithers-console", version: "1", platform: "browser" };
const CALL_TIMEOUT_MS = 60_000;
const MAX_BACKOFF_MS = 10_000;

/** A refused call: `code`, `message` and the error's details (`requiredScope`, …). */
export class RpcError extends Error {
  constructor(error, method, status) {
    super((error && error.message) || "Request failed");
    this.name = "RpcError";
    this.code = (error && error.code) || "ERROR";
    this.details = error || {};
    this.method = method || null;
    this.status = status || null;
  }

  /** The credential itself was refused (not the DevTools `Unauthorized` of a rewind). */
  get isAuth() {
    return this.code === "UNAUTHORIZED";
  }

  get isForbidden() {
    return this.code === "FORBIDDEN";
  }
}

/**
 * A WebSocket to the gateway. `open()` resolves with the hello (docs/protocol.md#handshake) or
 * rejects with an RpcError; calls made while the socket is (re)connecting wait for it.
 * Events: `on(name, fn)` with an event name, `"*"` (every event), `"status"` (open/connecting/
 * closed), `"open"` (each successful connect, with the hello) and `"unauthorized"` (a reconnect
 * refused: the token was revoked or expired).
 */
export class Connection {
  constructor({ url, token = null, subscribe = null, reconnect = true }) {
    this.url = url;
    this.token = token;
    this.subscribe = subscribe;
    this.reconnect = reconnect;
    this.ws = null;
    this.ready = false;
    this.closed = false;
    this.hello = null;
    this.nextId = 0;
    this.pending = new Map(); // id -> {resolve, reject, timer, method}
    this.queue = []; // frames waiting for the socket to be ready
    this.handlers = new Map();
    this.attempt = 0;
    this.retryTimer = null;
  }

  on(name, fn) {
    if (!this.handlers.has(name)) this.handlers.set(name, new Set());
    this.handlers.get(name).add(fn);
    return () => this.handlers.get(name)?.delete(fn);
  }

  emit(name, payload, frame) {
    for (const fn of [...(this.handlers.get(name) || [])]) {
      try {
        fn(payload, frame);
      } catch (err) {
        console.error(err);
      }
    }
  }

  open() {
    this.closed = false;
    return this.dial();
  }

  close() {
    this.closed = true;
    clearTimeout(this.retryTimer);
    if (this.ws) this.ws.close(1000);
    this.failPending("Connection closed");
    this.setStatus("closed");
  }

  setStatus(status) {
    this.status = status;
    this.emit("status", status);
  }

  dial() {
    this.setStatus("connecting");
    return new Promise((resolve, reject) => {
      let ws;
      try {
        ws = new WebSocket(this.url);
      } catch (err) {
        reject(new RpcError({ code: "DISCONNECTED", message: String(err) }));
        return;
      }
      this.ws = ws;
      this.ready = false;
      let settled = false;
      const connectId = `connect-${++this.nextId}`;
      const settle = (err, hello) => {
        if (settled) return;
        settled = true;
        if (err) reject(err);
        else resolve(hello);
      };
      ws.onmessage = (message) => {
        let frame;
        try {
          frame = JSON.parse(message.data);
        } catch {
          return;
        }
        if (frame.type === "event" && frame.event === "connect.challenge" && !this.ready) {
          ws.send(JSON.stringify({ type: "req", id: connectId, method: "connect", params: this.connectParams() }));
          return;
        }
        if (frame.type === "res" && frame.id === connectId) {
          if (!frame.ok) {
            const err = new RpcError(frame.error, "connect");
            this.closed = true; // a refused credential is not retried
            ws.close(1000);
            settle(err);
            this.emit("unauthorized", err);
            return;
          }
          this.ready = true;
          this.attempt = 0;
          this.hello = frame.payload;
          this.setStatus("open");
          for (const queued of this.queue.splice(0)) ws.send(queued);
          settle(null, frame.payload);
          this.emit("open", frame.payload);
          return;
        }
        this.dispatch(frame);
      };
      ws.onclose = () => {
        const wasReady = this.ready;
        this.ready = false;
        if (this.ws === ws) this.ws = null;
        this.failPending("Connection to the gateway lost");
        settle(new RpcError({ code: "DISCONNECTED", message: "Cannot reach the gateway" }));
        if (this.closed || !this.reconnect) {
          this.setStatus("closed");
          return;
        }
        if (wasReady || this.attempt > 0) this.scheduleRedial();
        else this.setStatus("closed");
      };
      ws.onerror = () => {}; // onclose follows and reports it
    });
  }

  scheduleRedial() {
    const delay = Math.min(MAX_BACKOFF_MS, 500 * 2 ** this.attempt);
    this.attempt += 1;
    this.setStatus("connecting");
    clearTimeout(this.retryTimer);
    this.retryTimer = setTimeout(() => {
      if (!this.closed) this.dial().catch(() => {});
    }, delay);
  }

  connectParams() {
    const params = { minProtocol: 1, maxProtocol: 1, client: CLIENT };
    if (this.token) params.auth = { token: this.token };
    if (this.subscribe) params.subscribe = this.subscribe;
    return params;
  }

  dispatch(frame) {
    if (frame.type === "res") {
      const waiting = this.pending.get(frame.id);
      if (!waiting) return;
      this.pending.delete(frame.id);
      clearTimeout(waiting.timer);
      if (frame.ok) waiting.resolve(frame.payload);
      else waiting.reject(new RpcError(frame.error, waiting.method));
      return;
    }
    if (frame.type === "event") {
      this.emit(frame.event, frame.payload, frame);
      this.emit("*", frame.payload, frame);
    }
  }

  /** Send a request; resolves with its payload, rejects with an RpcError. */
  call(method, params = {}) {
    if (this.closed && !this.ready) {
      return Promise.reject(new RpcError({ code: "DISCONNECTED", message: "Connection closed" }, method));
    }
    const id = `c${++this.nextId}`;
    const text = JSON.stringify({ type: "req", id, method, params });
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => {
        this.pending.delete(id);
        reject(new RpcError({ code: "TIMEOUT", message: `${method} got no answer` }, method));
      }, CALL_TIMEOUT_MS);
      this.pending.set(id, { resolve, reject, timer, method });
      if (this.ready && this.ws) this.ws.send(text);
      else this.queue.push(text);
    });
  }

  failPending(message) {
    this.queue.length = 0;
    for (const [id, waiting] of this.pending) {
      clearTimeout(waiting.timer);
      waiting.reject(new RpcError({ code: "DISCONNECTED", message }, waiting.method));
      this.pending.delete(id);
    }
  }
}

/**
 * One call over HTTP (`POST <rpcPath>/<method>`, docs/protocol.md#post-v1rpcmethod). The console
 * sends the calls that start or resume runs this way: over a WebSocket they would narrow that
 * socket's subscription filter to the runs it started (docs/protocol.md#subscription-filter),
 * and the runs list would stop seeing the others.
 */
export async function httpCall(rpcPath, token, method, params = {}) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  let response;
  try {
    response = await fetch(`${rpcPath}/${encodeURIComponent(method)}`, {
      method: "POST",
      headers,
      body: JSON.stringify(params),
      credentials: "omit",
      cache: "no-store",
    });
  } catch (err) {
    throw new RpcError({ code: "DISCONNECTED", message: "Cannot reach the gateway" }, method);
  }
  let body = null;
  try {
    body = await response.json();
  } catch {
    throw new RpcError({ code: "SERVER_ERROR", message: `HTTP ${response.status}` }, method, response.status);
  }
  if (body && body.ok) return body.payload;
  throw new RpcError(body && body.error, method, response.status);
}

/** The gateway's WebSocket URL for `wsPath` on this page's host. */
export function socketUrl(wsPath) {
  const scheme = location.protocol === "https:" ? "wss:" : "ws:";
  return `${scheme}//${location.host}${wsPath || "/"}`;
}
