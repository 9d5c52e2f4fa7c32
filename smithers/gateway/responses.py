"""HTTP response and request-body helpers shared by the routes (docs/protocol.md#http-routes)."""

from __future__ import annotations

from typing import Any

from starlette.responses import Response
from starlette.types import Receive

from smithers.gateway.jsvalues import encode_json
from smithers.gateway.protocol import COMMON_HEADERS, JSON_CONTENT_TYPE


def json_response(body: Any, status: int = 200) -> Response:
    """A JSON response with the common headers (compact, as the reference writes it)."""
    return Response(encode_json(body).encode("utf-8"), status, dict(COMMON_HEADERS), JSON_CONTENT_TYPE)


class BodyTooLarge(Exception):
    """The request body is larger than the route allows."""


async def read_body(receive: Receive, limit: int) -> bytes | None:
    """The request body, or None if the client went away; raises :class:`BodyTooLarge` past ``limit``."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge
        chunks.append(chunk)
        if not message.get("more_body", False):
            return b"".join(chunks)
