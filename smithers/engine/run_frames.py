"""Rendering the tree and recording frames (keyframes and deltas), node rows and unmounted tasks."""

from __future__ import annotations

from smithers.engine import events as ev
from smithers.engine import frames
from smithers.engine.context import ReadLog
from smithers.engine.extract import Descriptor, Graph
from smithers.engine.run_core import RunCore
from smithers.engine.states import (
    CANCELLED,
    PENDING,
    SKIPPED,
    UNMOUNTED,
)
from smithers.store.rows import dumps, now_ms
from smithers.store.store import Tx


class RunFrames(RunCore):
    """Rendering the tree and recording frames (keyframes and deltas), node rows and unmounted tasks."""

    def _render(self) -> Graph:
        if self._first_render is not None:  # the check in create() already rendered the first frame
            (graph, reads), self._first_render = self._first_render, None
        else:
            reads = ReadLog()
            graph = self._render_graph(reads)
        self.graph, self.render_reads, self.needs_render = graph, reads, False
        if self.in_flight:
            self._cancel_unmounted(graph)
        dropped = [key for key in self.waiting if key not in graph.by_key]
        if dropped:  # a wait, timer or approval the tree no longer mounts waits for nothing
            with self.store.write() as tx:
                self.waits.cancel_waiting(tx, UNMOUNTED, dropped)
        doc = graph.xml
        text = frames.canonical(doc)
        self.frame_no += 1
        encoded = frames.encode(self.frame_no, doc, text, self.prev_doc, self.prev_hash)
        self.mounted_json = dumps([d.key for d in graph.descriptors])
        self.task_index_json = dumps(
            [{"nodeId": d.node_id, "ordinal": d.ordinal, "iteration": d.iteration} for d in graph.descriptors]
        )
        now = now_ms()
        with self.store.write() as tx:
            self._insert_frame(tx, encoded, now)
            for ralph_id, info in graph.loops.items():
                if ralph_id not in self.loop_state:
                    self.loop_state[ralph_id] = (info.iteration, info.until)
                    tx.upsert_ralph(self.run_id, ralph_id, info.iteration, info.until)
                elif info.until and not self.loop_state[ralph_id][1]:
                    self.loop_state[ralph_id] = (info.iteration, True)
                    tx.upsert_ralph(self.run_id, ralph_id, info.iteration, True)
            self._seed_nodes(tx, graph.descriptors, now)
        self.prev_doc, self.prev_text, self.prev_hash = doc, text, encoded.xml_hash
        return graph

    def _insert_frame(self, tx: Tx, encoded: frames.EncodedFrame, now: int) -> None:
        # The mounted-task lists are O(tree) text: store them on keyframes and when they change;
        # NULL on a delta frame means "the same as the previous frame".
        fresh = encoded.encoding != frames.DELTA or self.mounted_json != self._stored_mounted_json
        self._stored_mounted_json = self.mounted_json
        tx.insert_frame(
            run_id=self.run_id,
            frame_no=self.frame_no,
            created_at_ms=now,
            xml_json=encoded.xml_json,
            xml_hash=encoded.xml_hash,
            encoding=encoded.encoding,
            mounted_task_ids_json=self.mounted_json if fresh else None,
            task_index_json=self.task_index_json if fresh else None,
            note="python-engine",
        )
        tx.emit(self.run_id, ev.FRAME_COMMITTED, {"frameNo": self.frame_no, "xmlHash": encoded.xml_hash})
        if encoded.encoding == frames.KEYFRAME and self.frame_no > 1:
            # Snapshots are taken at keyframes and when the run settles; the first frame's state
            # (the input, nothing run yet) needs none.
            self._snapshot(tx, now)

    def _unchanged_frame(self, tx: Tx) -> None:
        """Record a frame for a state change that cannot alter the tree (the render read nothing it changed).

        The tree is a pure function of what the render read; when none of that changed, rendering
        again would give the same document, so the frame is stored as an empty delta (or a
        keyframe every 50 frames) without calling the render function.
        """
        self.frame_no += 1
        assert self.prev_hash is not None
        self._insert_frame(tx, frames.encode_unchanged(self.frame_no, self.prev_text, self.prev_hash), now_ms())

    def _seed_nodes(self, tx: Tx, descriptors: list[Descriptor], now: int) -> None:
        rows = []
        for d in descriptors:
            if d.key in self.states:
                continue
            state = SKIPPED if d.skip_if else PENDING
            self.states[d.key] = state
            rows.append(
                {
                    "run_id": self.run_id,
                    "node_id": d.node_id,
                    "iteration": d.iteration,
                    "state": state,
                    "last_attempt": None,
                    "updated_at_ms": now,
                    "output_table": d.output_table,
                    "label": d.label,
                }
            )
        tx.insert_nodes(rows)
        for row in rows:
            kind = ev.NODE_SKIPPED if row["state"] == SKIPPED else ev.NODE_PENDING
            tx.emit(self.run_id, kind, {"nodeId": row["node_id"], "iteration": row["iteration"]})

    def _cancel_unmounted(self, graph: Graph) -> None:
        """A re-render that no longer mounts an in-flight task cancels it (docs/engine.md#the-run-loop)."""
        for key in [k for k in self.in_flight if k not in graph.by_key]:
            self.in_flight.pop(key).cancel()
            d = self.in_flight_desc.pop(key)
            runtime = self.in_flight_runtime.pop(key)
            self.linger(key, runtime)
            attempt = self.last_attempt[key]
            with self.store.write() as tx:
                tx.update_attempt(
                    self.run_id,
                    d.node_id,
                    d.iteration,
                    attempt,
                    state=CANCELLED,
                    finished_at_ms=now_ms(),
                    **self.agent_columns(runtime),
                )
                self.set_state(tx, d, CANCELLED, ev.NODE_CANCELLED, attempt=attempt, reason=UNMOUNTED)
