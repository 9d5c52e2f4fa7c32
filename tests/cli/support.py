"""The ``smithers`` command line run as a subprocess against one database (shared by the CLI tests)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

SMITHERS = str(Path(sys.executable).parent / "smithers")
TIMEOUT_S = 60.0


class CliOn:
    """``smithers ... --db DB`` in ``cwd``, without ``$SMITHERS_DB`` (plus ``extra_env``)."""

    def __init__(self, cwd: Path, db: str, extra_env: dict[str, str] | None = None):
        self.cwd, self.db = cwd, db
        self.env = {k: v for k, v in os.environ.items() if k != "SMITHERS_DB"} | (extra_env or {})

    def __call__(self, *args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SMITHERS, *args, "--db", self.db],
            cwd=self.cwd,
            capture_output=True,
            text=True,
            timeout=TIMEOUT_S,
            env=self.env,
            stdin=subprocess.DEVNULL,
        )

    def start(self, *args: str) -> subprocess.Popen[str]:
        """A command left running in the background."""
        return subprocess.Popen(
            [SMITHERS, *args, "--db", self.db],
            cwd=self.cwd,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=self.env,
            stdin=subprocess.DEVNULL,
        )

    def ok(self, *args: str) -> subprocess.CompletedProcess[str]:
        proc = self(*args)
        assert proc.returncode == 0, proc.stderr
        return proc
