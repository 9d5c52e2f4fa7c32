"""Starting a run (checks first, rows with the first step) and taking a stored run over to resume it."""

from __future__ import annotations

import json
from typing import Any

from smithers.engine import events as ev
from smithers.engine import frames
from smithers.engine.context import ReadLog, StoredOutput
from smithers.engine.extract import Graph, extract
from smithers.engine.ownership import held_by_rewind, owner_gone
from smithers.engine.run_core import MAX_INPUT_BYTES, RunCore, RunResult
from smithers.engine.states import (
    CANCELLED,
    FAILED,
    FINISHED,
    PENDING,
    RUNNING,
    WAITING_NODE_STATES,
)
from smithers.engine.vcs import detect, vcs_of
from smithers.errors import (
    AGENT_AUTH_FAILED,
    ATTEMPT_ABANDONED,
    RENDER_FAILED,
    RUN_NOT_RESUMABLE,
    RUN_OWNER_ALIVE,
    RUN_RESUME_CLAIM_FAILED,
    InvalidInputError,
    RunExistsError,
    RunNotFoundError,
    RunOwnershipError,
    SmithersError,
)
from smithers.store.rows import dumps, loads, now_ms
from smithers.store.store import Row, Tx


class RunStart(RunCore):
    """Starting a run (checks first, rows with the first step) and taking a stored run over to resume it."""

    # ---- start / resume --------------------------------------------------------------------
    def create(self, input: dict[str, Any], auth: dict[str, Any] | None, config: dict[str, Any]) -> None:
        """Check input and the first render; the rows are written with the first step (``_write_create``)."""
        if len(dumps(input).encode()) > MAX_INPUT_BYTES:
            raise InvalidInputError(f"workflow input is larger than {MAX_INPUT_BYTES} bytes")
        self.input, self.auth = input, auth
        try:  # a tree that cannot even render its first frame is refused before any row is written
            reads = ReadLog()
            self._first_render = (extract(self.workflow.render(self._ctx(reads=reads)), self.workflow.key, {}), reads)
        except SmithersError:
            raise
        except Exception as exc:
            raise SmithersError(f"render failed: {type(exc).__name__}: {exc}", code=RENDER_FAILED) from exc
        now = now_ms()
        cfg = {"maxConcurrency": self.max_concurrency, "workflowKey": self.workflow.key, **config}
        self.agents.configure(cfg, self.workflow.token_budget)
        if auth is not None:
            cfg["auth"] = auth
        vcs_columns: dict[str, Any] = {}
        if self.workflow.workdir is not None:
            self.vcs = detect(self.workflow.workdir)
            if self.vcs is not None:  # the state the run starts from: a rewind to before any task restores it
                start = self.vcs.snapshot(f"smithers: run {self.run_id} starts")
                vcs_columns = {"vcs_type": self.vcs.kind, "vcs_root": self.vcs.root, "vcs_revision": start}
        self._create_row = {
            **vcs_columns,
            "run_id": self.run_id,
            "workflow_name": self.workflow.key,
            "workflow_path": self.workflow.path,
            "workflow_hash": self.workflow.source_hash(),
            "status": RUNNING,
            "created_at_ms": now,
            "started_at_ms": now,
            "heartbeat_at_ms": now,
            "runtime_owner_id": self.owner_id,
            "config_json": dumps(cfg),
        }

    def write_new_run(self, tx: Tx) -> None:
        """The run row, its input and RunStarted: in the caller's transaction, or with the first step."""
        row, self._create_row = self._create_row, None
        assert row is not None
        if tx.get_run(self.run_id) is not None:
            raise RunExistsError(f"run {self.run_id} already exists", details={"runId": self.run_id})
        tx.insert_run(**row)
        tx.insert_input(self.run_id, self.input)
        tx.emit(self.run_id, ev.RUN_STARTED)

    def claim(self, force: bool, auth: dict[str, Any] | None, config: dict[str, Any], retry: bool = False) -> bool:
        """Take a stored run over for resuming (compare-and-swap on its owner and heartbeat).

        A run that has ended is left alone (False, nothing written), unless ``retry`` asks to run the
        failed or cancelled nodes of a failed or cancelled run again.
        """
        now = now_ms()
        with self.store.write() as tx:
            row = tx.get_run(self.run_id)
            if row is None:
                raise RunNotFoundError.of(self.run_id)
            status = row["status"]
            if status in (FINISHED, FAILED, CANCELLED) and not (retry and status in (FAILED, CANCELLED)):
                return False
            if status == "continued":
                raise SmithersError(
                    f"run {self.run_id} was continued as a new run and cannot resume", code=RUN_NOT_RESUMABLE
                )
            if not force and held_by_rewind(row["pause_requested_at_ms"], now):
                raise RunOwnershipError(f"run {self.run_id} is held by a rewind in progress", code=RUN_OWNER_ALIVE)
            owner, beat = row["runtime_owner_id"], row["heartbeat_at_ms"]
            if status == RUNNING and owner and not force and not owner_gone(owner, beat, now):
                raise RunOwnershipError(
                    f"run {self.run_id} is still owned by {owner} (last heartbeat {now - (beat or now)} ms ago); "
                    "use --force to take it over",
                    code=RUN_OWNER_ALIVE,
                    details={"owner": owner},
                )
            cfg = {**(loads(row["config_json"]) or {}), **config, "maxConcurrency": self.max_concurrency}
            self.agents.configure(cfg, self.workflow.token_budget)
            if auth is not None:
                cfg["auth"] = auth
            won = tx.claim_run(
                self.run_id,
                # (and no rewind took its hold since it was read: docs/engine.md#time-travel)
                {
                    "status": status,
                    "runtime_owner_id": owner,
                    "heartbeat_at_ms": beat,
                    "pause_requested_at_ms": row["pause_requested_at_ms"],
                },
                status=RUNNING,
                runtime_owner_id=self.owner_id,
                heartbeat_at_ms=now,
                finished_at_ms=None,
                cancel_requested_at_ms=None,
                pause_requested_at_ms=None,  # a stale hold (its rewind is gone) or one overridden by force
                error_json=None,
                config_json=dumps(cfg),
                started_at_ms=row["started_at_ms"] or now,
            )
            if not won:
                raise self._claimed_by_other(tx)
            aborted = dumps(SmithersError("attempt interrupted; the run was resumed", code=ATTEMPT_ABANDONED).to_dict())
            for stale in tx.cancel_in_progress_attempts(self.run_id, aborted, now):
                tx.emit(
                    self.run_id,
                    ev.NODE_CANCELLED,
                    {
                        "nodeId": stale["node_id"],
                        "iteration": stale["iteration"],
                        "attempt": stale["attempt"],
                        "reason": "aborted",
                    },
                )
            # Cancelled nodes run again; failed ones only when a failed or cancelled run is retried
            # (a failure the run went on from, under continue_on_fail, stays as it is).
            again = (FAILED, CANCELLED) if status in (FAILED, CANCELLED) else (CANCELLED,)
            for node in tx.list_nodes(self.run_id):
                if node["state"] in again:
                    tx.update_node(self.run_id, node["node_id"], node["iteration"], state=PENDING, updated_at_ms=now)
                    tx.emit(self.run_id, ev.NODE_PENDING, {"nodeId": node["node_id"], "iteration": node["iteration"]})
            tx.emit(self.run_id, ev.RUN_STARTED, {"resumed": True})
            self.input = json.loads(tx.get_input_json(self.run_id) or "{}")
            self.auth = cfg.get("auth")
            self.vcs = vcs_of(row)
            self._load(tx, resumed_failed=status == FAILED)
        return True

    def stored_result(self) -> RunResult:
        """How the stored run ended, for a resume that found nothing to do."""
        with self.store.read() as tx:
            row = tx.get_run(self.run_id)
            outputs = tx.list_outputs(self.run_id)
        assert row is not None
        latest: dict[str, tuple[int, Any]] = {}
        for out in outputs:
            if out["node_id"] not in latest or out["iteration"] > latest[out["node_id"]][0]:
                latest[out["node_id"]] = (out["iteration"], json.loads(out["payload_json"]))
        error = json.loads(row["error_json"]) if row["error_json"] else None
        return RunResult(
            self.run_id,
            row["status"],
            outputs={node: value for node, (_, value) in latest.items()},
            error=error,
            unchanged=True,
        )

    def _claimed_by_other(self, tx: Tx) -> RunOwnershipError:
        """The error for a lost claim race, naming the process that won it."""
        winner = (tx.get_run(self.run_id) or {}).get("runtime_owner_id") or "another process"
        return RunOwnershipError(
            f"run {self.run_id} was just claimed by {winner}", code=RUN_RESUME_CLAIM_FAILED, details={"owner": winner}
        )

    def load_state(self, tx: Tx) -> None:
        """Node states, outputs and loop positions of the stored run (what a render reads)."""
        for node in tx.list_nodes(self.run_id):
            key = f"{node['node_id']}::{node['iteration']}"
            self.states[key] = node["state"]
            if node["state"] in WAITING_NODE_STATES:
                self.waiting.add(key)
            self.last_attempt[key] = node["last_attempt"] or 0
        for out in tx.list_outputs(self.run_id):
            self.outputs[(out["node_id"], out["iteration"])] = StoredOutput(
                out["node_id"], out["iteration"], out["output_table"], json.loads(out["payload_json"])
            )
        for loop in tx.list_ralph(self.run_id):
            self.loop_state[loop["ralph_id"]] = (loop["iteration"], bool(loop["done"]))

    def render_view(self) -> Graph:
        """The tree of the loaded state, as the run would render it now (read only: renders are pure)."""
        return self._render_graph(ReadLog())

    def _disable_agent_of(self, attempt: Row) -> None:
        error = json.loads(attempt["error_json"])
        agent = (json.loads(attempt["meta_json"] or "{}") or {}).get("agentId")
        if error.get("code") == AGENT_AUTH_FAILED and isinstance(agent, str):
            self.disabled_agents.add(agent)

    def _load(self, tx: Tx, resumed_failed: bool) -> None:
        self.load_state(tx)
        for attempt in tx.list_attempts(self.run_id):
            key = f"{attempt['node_id']}::{attempt['iteration']}"
            if attempt["state"] == FAILED and not resumed_failed:
                self.failures[key] = self.failures.get(key, 0) + 1
            if attempt["state"] == FAILED and attempt["error_json"] and AGENT_AUTH_FAILED in attempt["error_json"]:
                self._disable_agent_of(attempt)  # the auth circuit breaker holds for the whole run
            if attempt["heartbeat_data_json"] is not None:
                self.last_heartbeat_data[key] = json.loads(attempt["heartbeat_data_json"])
            self.waits.load_attempt(attempt)
            self.agents.load_attempt(attempt)
        self.frame_no = tx.last_frame_no(self.run_id)
        if self.frame_no:
            start = tx.last_keyframe_no(self.run_id, self.frame_no) or 1
            rows = tx.list_frame_rows(self.run_id, since=start)
            docs = [frames.expand_last(rows)] if rows else []
            self.prev_doc = docs[-1] if docs else None
            self.prev_text = frames.canonical(self.prev_doc) if docs else ""
            self.prev_hash = frames.sha256_hex(frames.canonical(self.prev_doc)) if docs else None
