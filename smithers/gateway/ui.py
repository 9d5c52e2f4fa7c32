"""UI mounts: match a ``GET``/``HEAD`` to a mounted UI and answer it (docs/protocol.md#ui-mounts).

The mounts are the gateway's UI (kind ``gateway``), then every registered workflow with a UI (kind
``workflow``) in registration order, stable-sorted by mount path length, longest first. A request
path (raw, still percent-encoded) under a mount gets the mount's index HTML (client-side routing),
except under its asset base ``<mountPath>/__smithers_ui/``: ``client.js`` is the mount's browser
module, the built-in console also serves the files of its directory there, and any other asset is
a plain-text 404. UI responses carry their own headers, without ``X-Smithers-API-Version``.
"""

from __future__ import annotations

import html
import logging
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Final

from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from smithers.gateway import assets
from smithers.gateway.jsvalues import encode_json
from smithers.gateway.options import Registration, UiMount
from smithers.gateway.protocol import API_VERSION

log = logging.getLogger(__name__)

ASSET_PREFIX: Final = "__smithers_ui"
CLIENT_JS: Final = "client.js"
RPC_PATH: Final = "/v1/rpc"
WS_PATH: Final = "/"
KIND_GATEWAY: Final = "gateway"
KIND_WORKFLOW: Final = "workflow"
BOOT_GLOBAL: Final = "globalThis.__SMITHERS_GATEWAY_UI__"

NO_STORE: Final[Mapping[str, str]] = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
HTML_TYPE: Final = "text/html; charset=UTF-8"
JS_TYPE: Final = "text/javascript; charset=utf-8"
TEXT_TYPE: Final = "text/plain; charset=UTF-8"

_INDEX: Final = """<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>{title}</title>
  </head>
  <body>
    <div id="root"></div>
    <script>{boot_global}={boot};</script>
    <script type="module" src="{src}"></script>
  </body>
</html>"""


@dataclass(frozen=True)
class Mount:
    """A UI mount: who it belongs to and its resolved config."""

    kind: str
    workflow_key: str | None
    ui: UiMount

    @property
    def asset_base(self) -> str:
        """``<mountPath>/__smithers_ui/`` (``/__smithers_ui/`` for the mount ``/``)."""
        return ("" if self.ui.path == "/" else self.ui.path) + f"/{ASSET_PREFIX}/"


def mounts(gateway_ui: UiMount | None, registrations: Iterable[Registration]) -> list[Mount]:
    """The mounts in matching order: longest path first, ties in list order (gateway first)."""
    found = [] if gateway_ui is None else [Mount(KIND_GATEWAY, None, gateway_ui)]
    found.extend(Mount(KIND_WORKFLOW, reg.key, reg.ui) for reg in registrations if reg.ui is not None)
    found.sort(key=lambda mount: -len(mount.ui.path))  # sort is stable
    return found


def match(candidates: Iterable[Mount], pathname: str) -> tuple[Mount, str | None] | None:
    """The first mount the raw pathname falls under, with its asset path (None outside the asset base)."""
    for mount in candidates:
        path = mount.ui.path
        if path == "/" or pathname == path or pathname.startswith(path + "/"):
            base = mount.asset_base
            return mount, pathname[len(base) :] if pathname.startswith(base) else None
    return None


def boot_config(mount: Mount) -> dict[str, object]:
    """``globalThis.__SMITHERS_GATEWAY_UI__``, keys in the reference's order."""
    return {
        "apiVersion": API_VERSION,
        "kind": mount.kind,
        "workflowKey": mount.workflow_key,
        "mountPath": mount.ui.path,
        "rpcPath": RPC_PATH,
        "wsPath": WS_PATH,
        "assetBasePath": mount.asset_base,
        "props": dict(mount.ui.props),
    }


def _escape(text: str) -> str:
    """``&``, ``<``, ``>`` and ``"`` as entities; single quotes stay."""
    return html.escape(text, quote=False).replace('"', "&quot;")


def render_index(mount: Mount) -> str:
    """The index page: title, boot config (``<`` written ``\\u003c``) and the module script."""
    title = mount.ui.title
    if title is None:
        title = "Smithers" if mount.workflow_key is None else f"{mount.workflow_key} | Smithers"
    return _INDEX.format(
        title=_escape(title),
        boot_global=BOOT_GLOBAL,
        boot=encode_json(boot_config(mount)).replace("<", "\\u003c"),
        src=_escape(mount.asset_base + CLIENT_JS),
    )


class UiResponse(Response):
    """A UI answer; to ``HEAD`` the same status and headers (``Content-Length`` too) without the body."""

    def __init__(self, body: bytes, status: int, headers: Mapping[str, str], head: bool):
        super().__init__(body, status, dict(headers))
        self.head = head

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": b"" if self.head else self.body})


def _text(status: int, body: str, head: bool) -> UiResponse:
    return UiResponse(body.encode("utf-8"), status, {"Content-Type": TEXT_TYPE}, head)


def _ok(body: bytes, content_type: str, head: bool) -> UiResponse:
    return UiResponse(body, 200, {"Content-Type": content_type, **NO_STORE}, head)


async def answer(
    gateway_ui: UiMount | None, registrations: Iterable[Registration], method: str, pathname: str
) -> Response | None:
    """The UI's answer to ``method pathname``, or None when no mount takes it (then the JSON 404)."""
    if method not in ("GET", "HEAD"):
        return None
    found = match(mounts(gateway_ui, registrations), pathname)
    if found is None:
        return None
    mount, asset_path = found
    head = method == "HEAD"
    if not asset_path:
        try:
            page = render_index(mount)
        except (TypeError, ValueError):
            log.exception("UI mount %s: its props cannot be written as JSON", mount.ui.path)
            return _text(500, "Internal Server Error", head)
        return _ok(page.encode("utf-8"), HTML_TYPE, head)
    if asset_path == CLIENT_JS:
        try:
            return _ok(await assets.client_js(mount.ui.entry), JS_TYPE, head)
        except assets.AssetError as exc:
            log.error("UI mount %s cannot serve %s: %s", mount.ui.path, CLIENT_JS, exc)
            return _text(500, "Internal Server Error", head)
    if mount.ui.files is not None:
        file = await assets.directory_file(mount.ui.files, asset_path)
        if file is not None:
            return _ok(file[0], file[1], head)
    return _text(404, "Not Found", head)
