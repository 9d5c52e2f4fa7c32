"""Time travel: a run's state at one of its frames, rewinding a run to it in place (audited), and
forking a new run from it (docs/engine.md#time-travel).

"The state at frame N" is what the database held when frame N was committed: attempts that started
after it (each attempt records the frame it started after) are dropped with their outputs; nodes
they touched go back to ``pending``; loops stand where frame N shows them; approvals requested
later are dropped and decisions made later undone. Signals are facts from outside and are kept.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final

from smithers.engine import events as ev
from smithers.engine.history import read_frames
from smithers.engine.ownership import HOLD_STALE_MS, held_by_rewind, owner_gone
from smithers.engine.states import (
    APPROVAL_REQUESTED,
    FAILED,
    FINISHED,
    PENDING,
    RUNNING,
)
from smithers.engine.vcs import Vcs, vcs_of
from smithers.errors import (
    Busy,
    ConfirmationRequired,
    FrameOutOfRange,
    InvalidFrameNo,
    InvalidRunId,
    RateLimited,
    RewindFailed,
    RunNotFound,
    SmithersError,
    UnsupportedSandbox,
    VcsError,
)
from smithers.store.rows import dumps, loads, now_ms
from smithers.store.store import Row, Store, Tx

log = logging.getLogger(__name__)

RUN_ID_PATTERN: Final = re.compile(r"^[a-z0-9_-]{1,64}$")
MAX_FRAME_NO: Final = 2_147_483_647
REWIND_QUOTA: Final = 10
REWIND_WINDOW_MS: Final = 3_600_000
PAUSE_TIMEOUT_S: Final = 10.0
MAX_CALLER_CHARS: Final = 256
IN_PROGRESS: Final = "in_progress"
SUCCESS: Final = "success"
FAILED_RESULT: Final = "failed"
PARTIAL: Final = "partial"
RALPH_TAG: Final = "smithers:ralph"

Pause = Callable[[str], Awaitable[bool]]
"""Stop the run if it executes (True once it has stopped; False: it did not stop in time)."""
Resume = Callable[[str], Awaitable[None]]


@dataclass
class FrameState:
    """The cut between what a run held at a frame and what came after."""

    frame_no: int
    cutoff_ms: int
    mounted: set[str]
    loops: dict[str, tuple[int, bool]]
    dropped: list[Row] = field(default_factory=list)
    kept: list[Row] = field(default_factory=list)

    @property
    def touched(self) -> set[tuple[str, int]]:
        """(node id, iteration) of every dropped attempt: their outputs go, the nodes run again."""
        return {(a["node_id"], int(a["iteration"])) for a in self.dropped}


def frame_state(tx: Tx, run_id: str, frame_no: int) -> FrameState:
    """The run's state at ``frame_no`` (the frame must exist)."""
    [frame] = read_frames(tx, run_id, frame_no, frame_no)
    state = FrameState(
        frame_no,
        int(frame["created_at_ms"]),
        set(loads(frame["mounted_task_ids_json"]) or []),
        _loops(loads(frame["xml_json"])),
    )
    for attempt in tx.list_attempts(run_id):
        started_after = (loads(attempt["meta_json"]) or {}).get("frameNo") if attempt["meta_json"] else None
        later = (
            started_after >= frame_no if isinstance(started_after, int) else attempt["started_at_ms"] > state.cutoff_ms
        )
        (state.dropped if later else state.kept).append(attempt)
    return state


def _loops(doc: Any) -> dict[str, tuple[int, bool]]:
    """Each loop's (iteration, done) as a frame shows it."""
    found: dict[str, tuple[int, bool]] = {}
    stack = [doc]
    while stack:
        node = stack.pop()
        if not isinstance(node, dict):
            continue
        props = node.get("props") or {}
        if node.get("tag") == RALPH_TAG and isinstance(props.get("id"), str):
            iteration = props.get("iteration", "0")
            found[props.get("ralphId") or props["id"]] = (
                int(iteration) if str(iteration).isdigit() else 0,
                props.get("done") == "true" or props.get("until") == "true",
            )
        stack.extend(node.get("children") or [])
    return found


def _restore_rows(tx: Tx, run_id: str, state: FrameState, into: str | None = None) -> int:
    """Make ``into`` (the run itself, or a fork) hold the rows of ``run_id`` at ``state``.

    In place: drop what came later. Into a fork: copy what was there. Returns invalidated diffs.
    """
    target = into or run_id
    touched = state.touched
    invalidated = 0
    if into is None:
        for node_id, iteration in touched:
            invalidated += tx.delete_node_diffs(run_id, node_id, iteration)
            tx.delete_output(run_id, node_id, iteration)
        for attempt in state.dropped:
            tx.delete_attempt(run_id, attempt["node_id"], int(attempt["iteration"]), int(attempt["attempt"]))
    else:
        kept = set()
        for attempt in state.kept:
            tx.insert_attempt(**{**attempt, "run_id": into})
            kept.add((attempt["node_id"], int(attempt["iteration"]), int(attempt["attempt"])))
        for call in tx.list_tool_calls(run_id):
            if (call["node_id"], int(call["iteration"]), int(call["attempt"])) in kept:
                tx.insert_tool_call(**{**call, "run_id": into})
        for output in tx.list_outputs(run_id):
            if (output["node_id"], int(output["iteration"])) not in touched:
                tx.upsert_output(
                    into,
                    output["node_id"],
                    int(output["iteration"]),
                    output["output_table"],
                    json.loads(output["payload_json"]),
                )
    last_kept: dict[tuple[str, int], int] = {}
    for attempt in state.kept:
        pair = (attempt["node_id"], int(attempt["iteration"]))
        last_kept[pair] = max(last_kept.get(pair, 0), int(attempt["attempt"]))
    with_output = {(o["node_id"], int(o["iteration"])) for o in tx.list_outputs(target)}
    for node in tx.list_nodes(run_id):
        pair = (node["node_id"], int(node["iteration"]))
        later = pair in touched or (
            node["updated_at_ms"] > state.cutoff_ms and not (node["state"] == FINISHED and pair in with_output)
        )
        if not later:
            if into is not None:
                tx.insert_nodes([{**node, "run_id": into}])
            continue
        key = f"{pair[0]}::{pair[1]}"
        if key not in state.mounted:
            if into is None:
                tx.delete_node(run_id, *pair)
            continue
        values = {"state": PENDING, "last_attempt": last_kept.get(pair), "updated_at_ms": now_ms()}
        if into is None:
            tx.update_node(run_id, pair[0], pair[1], **values)
        else:
            tx.insert_nodes([{**node, **values, "run_id": into}])
    for approval in tx.list_approvals(run_id):
        requested = approval["requested_at_ms"]
        if requested is not None and requested > state.cutoff_ms:
            if into is None:
                tx.delete_approval(run_id, approval["node_id"], int(approval["iteration"]))
            continue
        undo = approval["decided_at_ms"] is not None and approval["decided_at_ms"] > state.cutoff_ms
        reverted = {
            "status": APPROVAL_REQUESTED,
            "decided_at_ms": None,
            "note": None,
            "decided_by": None,
            "decision_json": None,
        }
        if into is None:
            if undo:
                tx.update_approval(run_id, approval["node_id"], int(approval["iteration"]), **reverted)
        else:
            tx.insert_approval(**{**approval, **(reverted if undo else {}), "run_id": into})
    if into is None:
        tx.delete_ralph(run_id)
    for ralph_id, (iteration, done) in state.loops.items():
        tx.upsert_ralph(target, ralph_id, iteration, done)
    return invalidated


@dataclass
class JumpResult:
    """What a rewind did (``JumpResult`` on the wire)."""

    new_frame_no: int
    reverted_sandboxes: int = 0
    deleted_frames: int = 0
    deleted_attempts: int = 0
    invalidated_diffs: int = 0
    duration_ms: int = 0

    def to_wire(self) -> dict[str, Any]:
        return {
            "ok": True,
            "newFrameNo": self.new_frame_no,
            "revertedSandboxes": self.reverted_sandboxes,
            "deletedFrames": self.deleted_frames,
            "deletedAttempts": self.deleted_attempts,
            "invalidatedDiffs": self.invalidated_diffs,
            "durationMs": self.duration_ms,
        }


def caller_name(user_id: str | None) -> str:
    """The audit's caller: the user id (``gateway`` without one), trimmed, at most 256 characters."""
    name = (user_id if user_id is not None else "gateway").strip()[:MAX_CALLER_CHARS]
    return name or "unknown"


def _error(code: str, message: str) -> SmithersError:
    return SmithersError(message, code=code)


class Rewinder:
    """Rewinds runs of one database; one rewind per run at a time (in this process by a lock, across
    processes by the run's pause hold)."""

    def __init__(self, store: Store, on_rollback: Callable[[], None] | None = None):
        self.store = store
        self.on_rollback = on_rollback
        """Called each time a failed rewind puts working directories back."""
        self._busy: set[str] = set()

    def audit_refusal(self, run_id: Any, frame_no: Any, caller: str) -> None:
        """A ``failed`` audit row for a call refused before the rewind began (not its owner)."""
        self._write_audit(None, run_id, -1, frame_no, caller, FAILED_RESULT, 0)

    async def jump(
        self,
        run_id: Any,
        frame_no: Any,
        confirm: Any,
        caller: str,
        *,
        pause: Pause | None = None,
        resume: Resume | None = None,
    ) -> JumpResult:
        """Rewind ``run_id`` to ``frame_no`` (docs/engine.md#time-travel); raises the coded refusals."""
        started = time.monotonic()
        audit_id: int | None = None
        result, from_frame = FAILED_RESULT, -1
        locked = False
        try:
            if not isinstance(run_id, str) or not RUN_ID_PATTERN.fullmatch(run_id):
                raise _error(InvalidRunId, "runId must match /^[a-z0-9_-]{1,64}$/.")
            if isinstance(frame_no, bool) or not isinstance(frame_no, int) or not 0 <= frame_no <= MAX_FRAME_NO:
                raise _error(InvalidFrameNo, "frameNo must be a non-negative i32 integer.")
            if confirm is not True:
                raise _error(ConfirmationRequired, "jumpToFrame is destructive; pass confirm: true to proceed.")
            held = self.store.get_run(run_id)
            if run_id in self._busy or (held is not None and held_by_rewind(held["pause_requested_at_ms"], now_ms())):
                raise _error(Busy, f"Another jumpToFrame is already running for {run_id}.")
            self._busy.add(run_id)
            locked = True
            with self.store.write() as tx:
                if tx.count_recent_audits(run_id, caller, now_ms() - REWIND_WINDOW_MS) >= REWIND_QUOTA:
                    raise _error(RateLimited, f"Rewind quota exceeded for {run_id}; max {REWIND_QUOTA} per 60m.")
                audit_id = tx.insert_audit(
                    run_id=run_id,
                    from_frame_no=-1,
                    to_frame_no=frame_no,
                    caller=caller,
                    timestamp_ms=now_ms(),
                    result=IN_PROGRESS,
                )
            jumped, from_frame = await self._rewind(run_id, frame_no, caller, pause, resume)
            jumped.duration_ms = int((time.monotonic() - started) * 1000)
            result = SUCCESS
            if not self._write_audit(audit_id, run_id, from_frame, frame_no, caller, result, jumped.duration_ms):
                raise _error(RewindFailed, "Failed to persist rewind audit row.")
            return jumped
        except _Partial as exc:
            result = PARTIAL
            raise exc.error from None
        finally:
            if result != SUCCESS:
                duration = int((time.monotonic() - started) * 1000)
                self._write_audit(audit_id, run_id, from_frame, frame_no, caller, result, duration)
            if locked:
                self._busy.discard(run_id)

    def _write_audit(
        self, audit_id: int | None, run_id: Any, from_frame: int, frame_no: Any, caller: str, result: str, duration: int
    ) -> bool:
        """Record the attempt's outcome; False when it could not be written (logged)."""
        is_int = isinstance(frame_no, int) and not isinstance(frame_no, bool)
        # -1 also for an integer the audit column cannot hold (an i32, as every frame number is)
        to_frame = frame_no if is_int and -MAX_FRAME_NO - 1 <= frame_no <= MAX_FRAME_NO else -1
        try:
            with self.store.write() as tx:
                if audit_id is not None:
                    tx.update_audit(audit_id, result=result, duration_ms=duration, from_frame_no=from_frame)
                else:
                    tx.insert_audit(
                        run_id=run_id if isinstance(run_id, str) and run_id else "invalid-run-id",
                        from_frame_no=-1,
                        to_frame_no=to_frame,
                        caller=caller,
                        timestamp_ms=now_ms(),
                        result=result,
                        duration_ms=duration,
                    )
        except Exception:
            log.exception("could not write the rewind audit row of run %r", run_id)
            return False
        return True

    async def _rewind(
        self, run_id: str, frame_no: int, caller: str, pause: Pause | None, resume: Resume | None
    ) -> tuple[JumpResult, int]:
        if self._target(run_id, frame_no, load=False) is None:  # (checks only: nothing is held yet)
            return JumpResult(frame_no), frame_no
        with self.store.write() as tx:  # taken in one step: of two processes rewinding at once, one goes on
            if not tx.hold_run(run_id, now_ms(), now_ms() - HOLD_STALE_MS):
                raise _error(Busy, f"Another jumpToFrame is already running for {run_id}.")
        try:
            await self._pause(run_id, pause)
            # Read again under the hold, the run standing still: another process's rewind may have
            # ended between the first read and the hold (docs/engine.md#time-travel).
            found = self._target(run_id, frame_no, load=True)
            if found is None:
                self._release(run_id)
                await self._resume_after_failure(run_id, resume)
                return JumpResult(frame_no), frame_no
        except BaseException:
            self._release(run_id)
            await self._resume_after_failure(run_id, resume)
            raise
        run, latest, state = found
        assert state is not None
        vcs = vcs_of(run)
        plan = _sandbox_plan(run, state, vcs)
        reverted: list[tuple[Vcs, str]] = []
        try:
            for target in plan:
                assert vcs is not None
                current = await asyncio.to_thread(vcs.snapshot, f"smithers: before rewinding {run_id}")
                try:
                    await asyncio.to_thread(vcs.restore, target)
                except SmithersError as exc:
                    raise _error(VcsError, exc.message or f"Failed to revert sandbox cwd {vcs.root}.") from exc
                reverted.append((vcs, current))
            outcome = self._truncate(run_id, state, latest, caller, len(reverted))
        except BaseException as exc:
            await self._roll_back(run_id, reverted, exc, resume)
            raise
        if resume is not None:
            try:
                await resume(run_id)
            except Exception:
                log.exception("rewound run %s could not be resumed", run_id)
        return outcome, latest

    def _target(self, run_id: str, frame_no: int, load: bool) -> tuple[Row, int, FrameState | None] | None:
        """The run, its latest frame and (``load``) the state at ``frame_no``; None when the run is
        at that frame already; the coded refusals when it has no such frame."""
        with self.store.read() as tx:
            run = tx.get_run(run_id)
            if run is None:
                raise _error(RunNotFound, f"Run not found: {run_id}")
            latest = tx.last_frame_no(run_id)
            if latest == 0:
                raise _error(FrameOutOfRange, f"Run {run_id} has no frames.")
            if frame_no > latest:
                raise _error(FrameOutOfRange, f"frameNo must be between 0 and {latest}.")
            if not tx.list_frame_rows(run_id, up_to=frame_no, since=frame_no):
                raise _error(FrameOutOfRange, f"Frame {frame_no} does not exist for run {run_id}.")
            if frame_no == latest:
                return None
            return run, latest, frame_state(tx, run_id, frame_no) if load else None

    async def _pause(self, run_id: str, pause: Pause | None) -> None:
        """Wait for the held run to stand still. The hold (taken before, ``Tx.hold_run``) is a durable
        pause request, which keeps anyone from resuming the run and which its owner in another
        process honours within a quarter of a second; in this process ``pause`` stops it at once.
        The run stays ``running``, without an owner (docs/engine.md#time-travel)."""
        if pause is not None and not await pause(run_id):
            raise _error(
                RewindFailed, f"Run {run_id} did not stop within 10s of abort; refusing to rewind a live task."
            )
        deadline = time.monotonic() + PAUSE_TIMEOUT_S
        while True:
            run = self.store.get_run(run_id)
            if (
                run is None
                or run["status"] != RUNNING
                or owner_gone(run["runtime_owner_id"], run["heartbeat_at_ms"], now_ms())
            ):
                return
            if time.monotonic() > deadline:
                raise _error(
                    RewindFailed, f"Run {run_id} did not stop within 10s of abort; refusing to rewind a live task."
                )
            await asyncio.sleep(0.05)

    def _release(self, run_id: str) -> None:
        """Withdraw the pause request of a rewind that did not happen: the run may go on."""
        try:
            with self.store.write() as tx:
                tx.update_run(run_id, pause_requested_at_ms=None)
        except Exception:
            log.exception("could not withdraw the pause request of run %s", run_id)

    def _truncate(self, run_id: str, state: FrameState, latest: int, caller: str, reverted: int) -> JumpResult:
        with self.store.write() as tx:
            invalidated = _restore_rows(tx, run_id, state)
            deleted_frames = tx.delete_frames_after(run_id, state.frame_no)
            tx.update_run(
                run_id,
                status=RUNNING,
                finished_at_ms=None,
                heartbeat_at_ms=None,
                runtime_owner_id=None,
                cancel_requested_at_ms=None,
                pause_requested_at_ms=None,
                hijack_requested_at_ms=None,
                hijack_target=None,
                error_json=None,
            )
            tx.emit(
                run_id, ev.TIME_TRAVEL_JUMPED, {"fromFrameNo": latest, "toFrameNo": state.frame_no, "caller": caller}
            )
        return JumpResult(
            state.frame_no,
            reverted_sandboxes=reverted,
            deleted_frames=deleted_frames,
            deleted_attempts=len(state.dropped),
            invalidated_diffs=invalidated,
        )

    async def _roll_back(
        self, run_id: str, reverted: list[tuple[Vcs, str]], error: BaseException, resume: Resume | None
    ) -> None:
        failures = 0
        if reverted and self.on_rollback is not None:
            self.on_rollback()
        for vcs, pointer in reversed(reverted):
            try:
                await asyncio.to_thread(vcs.restore, pointer)
            except Exception:
                failures += 1
                log.exception("rolling back %s of run %s failed", vcs.root, run_id)
        if failures:
            message = "Rewind failed and rollback was only partial; run needs attention."
            mark_needs_attention(self.store, run_id, message)
            raise _Partial(_error(RewindFailed, message)) from error
        self._release(run_id)
        await self._resume_after_failure(run_id, resume)

    @staticmethod
    async def _resume_after_failure(run_id: str, resume: Resume | None) -> None:
        """A rewind that did not happen leaves the run as it was: paused runs go on."""
        if resume is not None:
            try:
                await resume(run_id)
            except Exception:
                log.exception("run %s could not be resumed after a failed rewind", run_id)


class _Partial(Exception):
    def __init__(self, error: SmithersError):
        super().__init__(error.message)
        self.error = error


def _sandbox_plan(run: Row, state: FrameState, vcs: Vcs | None) -> list[str]:
    """The pointer to restore each working directory the dropped attempts touched to."""
    cwds = {a["jj_cwd"] for a in state.dropped if a["jj_cwd"]}
    plan = []
    for cwd in sorted(cwds):
        earlier = [a for a in state.kept if a["jj_cwd"] == cwd and a["jj_pointer"]]
        if earlier:
            plan.append(max(earlier, key=lambda a: (a["started_at_ms"], a["attempt"]))["jj_pointer"])
        elif run["vcs_revision"] and run["vcs_root"] == cwd:
            plan.append(run["vcs_revision"])  # the state the run started from
        else:
            raise _error(UnsupportedSandbox, f"Could not resolve a rewind pointer for sandbox cwd {cwd}.")
        if vcs is None or vcs.root != cwd:
            raise _error(UnsupportedSandbox, f"Could not resolve a rewind pointer for sandbox cwd {cwd}.")
    return plan


def mark_needs_attention(store: Store, run_id: str, message: str) -> None:
    """A run a rewind left half done: ``failed`` with ``needsAttention`` in its error (the model's
    ``needs_attention`` status is stored as ``failed``, docs/engine.md#time-travel)."""
    now = now_ms()
    error = {"code": RewindFailed, "needsAttention": True, "message": message, "timestampMs": now}
    with store.write() as tx:
        tx.update_run(
            run_id,
            status=FAILED,
            finished_at_ms=now,
            heartbeat_at_ms=None,
            runtime_owner_id=None,
            pause_requested_at_ms=None,
            error_json=dumps(error),
        )


def recover_rewinds(store: Store, stale_after_ms: int = HOLD_STALE_MS) -> tuple[int, int]:
    """Every audit ``in_progress`` for longer than ``stale_after_ms`` was cut short: it becomes
    ``partial`` and its run needs attention. Returns (recovered, younger ones left for later)."""
    now = now_ms()
    with store.read() as tx:
        stuck = tx.list_audits(result=IN_PROGRESS)
    stale = [a for a in stuck if now - int(a["timestamp_ms"]) >= stale_after_ms]
    for audit in stale:
        with store.write() as tx:
            duration = audit["duration_ms"] if audit["duration_ms"] is not None else now - audit["timestamp_ms"]
            tx.update_audit(int(audit["id"]), result=PARTIAL, duration_ms=duration)
        if store.get_run(audit["run_id"]) is not None:
            mark_needs_attention(
                store, audit["run_id"], f"Rewind audit {audit['id']} was in_progress at startup; marked partial."
            )
    return len(stale), len(stuck) - len(stale)


def fork_run(
    store: Store,
    run_id: str,
    frame_no: int,
    *,
    new_run_id: str,
    auth: dict[str, Any] | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    """A new run whose state is ``run_id``'s at ``frame_no``; the source is left as it is.

    The fork records its parent run and frame (``parent_run_id`` and a ``_smithers_branches`` row)
    and is stored ``running`` without an owner, ready for whoever resumes it. Its working
    directory, if any, is the source's, as it is now (a fork restores no files).
    """
    now = now_ms()
    with store.write() as tx:
        source = tx.get_run(run_id)
        if source is None:
            raise _error(RunNotFound, f"Run not found: {run_id}")
        if tx.get_run(new_run_id) is not None:
            raise SmithersError(f"Run already exists: {new_run_id}", code="INVALID_REQUEST")
        latest = tx.last_frame_no(run_id)
        if latest == 0:
            raise _error(FrameOutOfRange, f"Run {run_id} has no frames.")
        if not 1 <= frame_no <= latest:
            raise _error(FrameOutOfRange, f"frameNo must be between 1 and {latest}.")
        state = frame_state(tx, run_id, frame_no)
        config = loads(source["config_json"]) or {}
        if auth is not None:
            config["auth"] = auth
        tx.insert_run(
            run_id=new_run_id,
            parent_run_id=run_id,
            workflow_name=source["workflow_name"],
            workflow_path=source["workflow_path"],
            workflow_hash=source["workflow_hash"],
            status=RUNNING,
            created_at_ms=now,
            vcs_type=source["vcs_type"],
            vcs_root=source["vcs_root"],
            vcs_revision=source["vcs_revision"],
            config_json=dumps(config),
        )
        tx.insert_input(new_run_id, loads(tx.get_input_json(run_id)) or {})
        tx.copy_frames(run_id, new_run_id, frame_no)
        _restore_rows(tx, run_id, state, into=new_run_id)
        for signal in tx.list_signals(run_id):
            if signal["received_at_ms"] <= state.cutoff_ms:
                tx.insert_signal(
                    new_run_id,
                    signal["signal_name"],
                    signal["correlation_id"],
                    loads(signal["payload_json"]),
                    signal["received_at_ms"],
                    signal["received_by"],
                )
        tx.insert_branch(
            run_id=new_run_id,
            parent_run_id=run_id,
            parent_frame_no=frame_no,
            branch_label=label,
            fork_description=f"fork of {run_id} at frame {frame_no}",
            created_at_ms=now,
        )
        tx.emit(new_run_id, ev.RUN_FORKED, {"parentRunId": run_id, "parentFrameNo": frame_no})
    return {"runId": new_run_id, "parentRunId": run_id, "parentFrameNo": frame_no}


__all__ = [
    "HOLD_STALE_MS",
    "FrameState",
    "JumpResult",
    "Rewinder",
    "caller_name",
    "fork_run",
    "frame_state",
    "mark_needs_attention",
    "recover_rewinds",
]
