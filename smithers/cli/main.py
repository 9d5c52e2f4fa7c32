"""``smithers``: the command line. Thin: parse arguments, call the layers below, print.

Importing this module registers every command on :data:`app`.
"""

from __future__ import annotations

import sys

from smithers.cli import chat_cmds, gateway_cmds, history_cmds, run_cmds
from smithers.cli.app import app

__all__ = ["app", "chat_cmds", "gateway_cmds", "history_cmds", "main", "run_cmds"]


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # python -m smithers.cli.main (the workers of smithers serve --workers N)
    main()
