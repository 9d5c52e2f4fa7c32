// What the signed-in caller may do: the gateway's scope check, mirrored so the console shows only
// the actions it would allow (docs/protocol.md#scopes). The gateway still checks every call.

const RUN_READ = "run:read";
const RUN_WRITE = "run:write";
const RUN_ADMIN = "run:admin";
const APPROVAL_SUBMIT = "approval:submit";
const SIGNAL_SUBMIT = "signal:submit";
const CRON_READ = "cron:read";
const CRON_WRITE = "cron:write";
const OBSERVABILITY_READ = "observability:read";
const ALL = [RUN_READ, RUN_WRITE, RUN_ADMIN, APPROVAL_SUBMIT, SIGNAL_SUBMIT, CRON_READ, CRON_WRITE, OBSERVABILITY_READ];

// docs/protocol.md#required-scope-per-method
const METHOD_SCOPES = {};
const put = (scope, names) => names.forEach((name) => (METHOD_SCOPES[name] = scope));
put(RUN_READ, [
  "health", "runs.list", "listRuns", "workflows.list", "listWorkflows", "runs.get", "getRun", "runs.diff",
  "frames.list", "frames.get", "attempts.list", "attempts.get", "events.list", "approvals.list", "listApprovals",
  "streamRunEvents", "getNodeOutput", "devtools.getNodeOutput", "getNodeDiff", "devtools.getNodeDiff", "connect",
]);
put(RUN_WRITE, ["runs.create", "launchRun", "resumeRun", "runs.cancel", "cancelRun", "runs.rerun", "runs.fork"]);
put(RUN_ADMIN, ["jumpToFrame", "devtools.jumpToFrame", "rewindRun", "hijackRun"]);
put(APPROVAL_SUBMIT, ["approvals.decide", "submitApproval", "approve"]);
put(SIGNAL_SUBMIT, ["signals.send", "submitSignal"]);
put(CRON_READ, ["cron.list", "cronList"]);
put(CRON_WRITE, ["cron.add", "cronCreate", "cron.remove", "cronDelete", "cron.trigger", "cronRun"]);
put(OBSERVABILITY_READ, ["getDevToolsSnapshot", "streamDevTools"]);

// docs/protocol.md#how-grants-match
const IMPLIED = {
  [RUN_ADMIN]: [RUN_ADMIN, RUN_WRITE, RUN_READ],
  [RUN_WRITE]: [RUN_WRITE, RUN_READ],
  [CRON_WRITE]: [CRON_WRITE, CRON_READ],
  [RUN_READ]: [RUN_READ],
  [APPROVAL_SUBMIT]: [APPROVAL_SUBMIT],
  [SIGNAL_SUBMIT]: [SIGNAL_SUBMIT],
  [CRON_READ]: [CRON_READ],
  [OBSERVABILITY_READ]: [OBSERVABILITY_READ],
};
const EXECUTE = [RUN_READ, RUN_WRITE, SIGNAL_SUBMIT, CRON_READ, CRON_WRITE];
const LEGACY = {
  read: [RUN_READ, CRON_READ, OBSERVABILITY_READ],
  execute: EXECUTE,
  approve: [...EXECUTE, APPROVAL_SUBMIT],
  admin: ALL,
};

/** The scope a method needs. */
export function requiredScope(method) {
  if (IMPLIED[method]) return method; // a scope name stands for itself
  if (method.startsWith("config.")) return RUN_ADMIN;
  return METHOD_SCOPES[method] || RUN_READ;
}

/** Whether granted `scopes` allow calling `method`. */
export function allows(scopes, method) {
  const needed = requiredScope(method);
  for (const raw of scopes || []) {
    if (typeof raw !== "string") continue;
    const grant = raw.trim();
    if (!grant) continue;
    if (grant === "*" || grant === method) return true;
    if (grant.endsWith(".*") && grant.length > 2 && method.startsWith(grant.slice(0, -1))) return true;
    if ((IMPLIED[grant] || []).includes(needed)) return true;
    if ((LEGACY[grant] || []).includes(needed)) return true;
  }
  return false;
}

/**
 * Whether the caller may decide an approval with these `allowedUsers`/`allowedScopes`
 * (docs/protocol.md#approvalsdecide--submitapproval): an entry is read as a method name, so a
 * scope name needs that scope and any other string needs run:read.
 */
export function mayDecide(identity, entry) {
  if (!allows(identity.scopes, "submitApproval")) return false;
  const users = entry.allowedUsers || [];
  if (users.length && !users.includes(identity.userId)) return false;
  const scopes = entry.allowedScopes || [];
  if (!scopes.length) return true;
  return scopes.some((scope) => allows(identity.scopes, scope));
}
