"""What the transports (HTTP and WebSocket) use of the running gateway, beyond what handlers see."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, MutableSet
from typing import Any, Protocol

from smithers.gateway.auth import Authenticator
from smithers.gateway.broadcast import Receiver
from smithers.gateway.context import GatewayContext
from smithers.gateway.dispatch import Dispatcher
from smithers.gateway.options import UiMount


class OpenConnection(Receiver, Protocol):
    """An open WebSocket connection as the gateway tracks it."""

    @property
    def authenticated(self) -> bool:
        """Whether it completed ``connect``."""
        ...

    def close(self) -> None:
        """Forget the connection (stop its ticks and streams)."""
        ...

    async def close_socket(self, code: int | None = 1000) -> None:
        """Send a close frame (``None``: without a status code)."""
        ...


class GatewayHost(GatewayContext, Protocol):
    """The running gateway as its transports see it."""

    @property
    def authenticator(self) -> Authenticator: ...

    @property
    def dispatcher(self) -> Dispatcher: ...

    @property
    def connections(self) -> MutableSet[OpenConnection]:
        """The open WebSocket connections (broadcasts go to these)."""
        ...

    @property
    def ui(self) -> UiMount | None:
        """The gateway's own UI mount, if any (docs/protocol.md#ui-mounts)."""
        ...

    def is_stored_token(self, token: str | None) -> bool:
        """Whether ``token`` would be found in the tokens table rather than the configuration."""
        ...

    def spawn(self, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` in the background, keeping a reference until it is done."""
        ...

    async def start(self) -> None:
        """Bind to the running loop and recover interrupted runs (idempotent)."""
        ...

    async def stop_runs_and_sockets(self, abort_runs: bool = True) -> None:
        """Stop executing runs and close every socket (before the HTTP server stops)."""
        ...

    async def close(self, abort_runs: bool = True) -> None:
        """Stop everything."""
        ...
