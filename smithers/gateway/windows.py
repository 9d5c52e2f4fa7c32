"""Per-run replay windows of ``run.event`` frames (docs/protocol.md#run-event-streams)."""

from __future__ import annotations

from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Final

from smithers.gateway.protocol import API_VERSION

MAX_RUN_WINDOWS: Final = 1_000
"""Windows kept in memory, least recently appended dropped first (the reference never drops any)."""


@dataclass
class _Window:
    next_seq: int = 0
    frames: deque[dict[str, Any]] = field(default_factory=deque)


class RunWindows:
    """Per-run ``{nextSeq, window}`` of the last ``size`` RunEvent frames."""

    def __init__(self, size: int, max_runs: int = MAX_RUN_WINDOWS):
        self.size = size
        self.max_runs = max_runs
        self._windows: OrderedDict[str, _Window] = OrderedDict()

    def append(self, run_id: str, event: str, payload: dict[str, Any], state_version: int) -> dict[str, Any]:
        """Store one broadcast as the run's next RunEvent frame and return the frame."""
        window = self._windows.get(run_id)
        if window is None:
            window = self._windows[run_id] = _Window(frames=deque(maxlen=self.size))
            while len(self._windows) > self.max_runs:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(run_id)
        window.next_seq += 1
        frame = {
            "apiVersion": API_VERSION,
            "type": "RunEvent",
            "runId": run_id,
            "event": event,
            "payload": payload,
            "seq": window.next_seq,
            "stateVersion": state_version,
        }
        window.frames.append(frame)
        return frame

    def current_seq(self, run_id: str) -> int:
        window = self._windows.get(run_id)
        return 0 if window is None else window.next_seq

    def frames(self, run_id: str) -> list[dict[str, Any]]:
        """A copy of the run's window, oldest first."""
        window = self._windows.get(run_id)
        return [] if window is None else list(window.frames)
