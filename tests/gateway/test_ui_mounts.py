"""UI mounts (docs/protocol.md#ui-mounts): configuration, matching, the index page, client.js
(as it is, or bundled by esbuild), HEAD, and the built-in console with its files."""

from __future__ import annotations

import json
import logging
import os
import shutil
import socket
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from smithers import Task, workflow
from smithers.errors import InvalidInputError
from smithers.gateway.assets import ESBUILD_ENV
from smithers.gateway.options import CONSOLE_DIR_ENV, console_dir
from smithers.gateway.server import Gateway
from tests.databases import Databases
from tests.gateway.support import Live

flow = workflow("ui-flow")(lambda ctx: Task("t", value={"ok": True}))

DEPLOY_INDEX = """<!doctype html>
<html lang="en">
  <head>
    <meta charset="utf-8">
    <meta name="viewport" content="width=device-width, initial-scale=1">
    <title>deploy | Smithers</title>
  </head>
  <body>
    <div id="root"></div>
    <script>globalThis.__SMITHERS_GATEWAY_UI__={"apiVersion":"v1","kind":"workflow","workflowKey":"deploy","mountPath":"/workflows/deploy","rpcPath":"/v1/rpc","wsPath":"/","assetBasePath":"/workflows/deploy/__smithers_ui/","props":{}};</script>
    <script type="module" src="/workflows/deploy/__smithers_ui/client.js"></script>
  </body>
</html>"""

HTML_HEADERS = {
    "content-type": "text/html; charset=UTF-8",
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
}
JS_HEADERS = {**HTML_HEADERS, "content-type": "text/javascript; charset=utf-8"}
JSON_404 = {"error": {"code": "NOT_FOUND", "message": "Route not found"}}


pytestmark = pytest.mark.sqlite_only(reason="serving UI files and pages: nothing here reads or writes the store")


@pytest.fixture
def new_gateway(databases: Databases) -> Iterator[Callable[..., Gateway]]:
    """Gateways on new databases (closed at the end if never served)."""
    made: list[Gateway] = []

    def make(**options: Any) -> Gateway:
        gateway = Gateway(databases.new("ui"), **options)
        made.append(gateway)
        return gateway

    yield make
    for gateway in made:
        if gateway.port is None:
            gateway.store.close()


@pytest.fixture
def serve() -> Iterator[Callable[[Gateway], Live]]:
    started: list[Live] = []

    def start(gateway: Gateway) -> Live:
        live = Live(gateway)
        started.append(live)
        return live

    yield start
    for live in started:
        live.stop()


def boot(page: str) -> dict[str, Any]:
    """The boot config written into an index page."""
    line = next(line for line in page.splitlines() if "__SMITHERS_GATEWAY_UI__=" in line)
    text = line.split("__SMITHERS_GATEWAY_UI__=", 1)[1].removesuffix(";</script>")
    value: dict[str, Any] = json.loads(text)
    return value


def assert_headers(response: httpx.Response, expected: dict[str, str]) -> None:
    for name, value in expected.items():
        assert response.headers[name] == value, name
    assert "x-smithers-api-version" not in response.headers


def raw_get(live: Live, target: str, method: str = "GET") -> tuple[int, bytes]:
    """Status and body of a request sent byte for byte (no client-side path normalisation)."""
    assert live.gateway.port is not None
    request = f"{method} {target} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode("latin-1")
    with socket.create_connection(("127.0.0.1", live.gateway.port), timeout=10) as sock:
        sock.sendall(request)
        chunks = []
        while data := sock.recv(65536):
            chunks.append(data)
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    return int(head.split(b" ", 2)[1]), body


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


# -- configuration ---------------------------------------------------------------------------------
def test_config_validation_messages(new_gateway: Callable[..., Gateway]) -> None:
    gateway = new_gateway()
    entry_message = "Gateway UI config requires a non-empty entry path."
    for bad in ({}, {"entry": ""}, {"entry": " \t "}, {"entry": 3}, {"path": "/x"}, True):
        with pytest.raises(InvalidInputError) as refused:
            gateway.register("bad", flow, ui=bad)  # type: ignore[arg-type]
        assert refused.value.message == entry_message
    for path, shown in (("/a b", "/a b"), ("//", ""), ("///", ""), ("/a%20b", "/a%20b"), ("x?y", "/x?y"), ("/é", "/é")):
        with pytest.raises(InvalidInputError) as refused:
            gateway.register("bad", flow, ui={"entry": "e.js", "path": path})
        assert refused.value.message == f"Gateway UI path is invalid: {shown}"
    for key, shown in (
        ("has space", "has%20space"),
        ("100%", "100%25"),
        ("a:b", "a%3Ab"),
        ("ü", "%C3%BC"),
        ("a~b", "a~b"),
    ):
        with pytest.raises(InvalidInputError) as refused:
            gateway.register(key, flow, ui={"entry": "e.js"})
        assert refused.value.message == f"Gateway UI path is invalid: /workflows/{shown}"
    assert "bad" not in gateway.workflows and "has space" not in gateway.workflows
    with pytest.raises(InvalidInputError, match="non-empty entry path"):
        new_gateway(ui={"entry": "  "})
    with pytest.raises(InvalidInputError, match="Gateway UI path is invalid: "):
        new_gateway(ui={"entry": "e.js", "path": "//"})


def test_mount_paths_are_normalised(new_gateway: Callable[..., Gateway], tmp_path: Path) -> None:
    gateway = new_gateway(ui={"entry": "ui/app.tsx", "title": 7, "props": [1]})
    assert gateway.ui is not None and gateway.ui.path == "/"
    assert gateway.ui.entry == os.path.abspath("ui/app.tsx")
    assert gateway.ui.title is None and gateway.ui.props == {}
    cases = {
        "plain": (None, "/workflows/plain"),
        "blank": ("   ", "/workflows/blank"),
        "spaced": (" custom/ ", "/custom"),
        "trailing": ("a/b///", "/a/b"),
        "root": ("/", "/"),
        "chars": ("/A-z_0.9:x/", "/A-z_0.9:x"),
        "Key_1.x-y": (None, "/workflows/Key_1.x-y"),
    }
    for key, (path, expected) in cases.items():
        config: dict[str, Any] = {"entry": str(tmp_path / "e.js")}
        if path is not None:
            config["path"] = path
        gateway.register(key, flow, ui=config)
        registered = gateway.workflows[key].ui
        assert registered is not None and registered.path == expected, key
    assert new_gateway(ui=False).ui is None and new_gateway().ui is None
    assert new_gateway(ui={"entry": "e.js", "path": "tools"}).ui.path == "/tools"  # type: ignore[union-attr]


# -- matching --------------------------------------------------------------------------------------
def test_longest_path_first_and_ties_in_list_order(
    new_gateway: Callable[..., Gateway], serve: Callable[[Gateway], Live]
) -> None:
    gateway = new_gateway(ui={"entry": "g.js", "path": "/same"})
    gateway.register("short", flow, ui={"entry": "s.js", "path": "/apps"})
    gateway.register("long", flow, ui={"entry": "l.js", "path": "/apps/inner"})
    gateway.register("same-1", flow, ui={"entry": "1.js", "path": "/same"})
    gateway.register("tie-a", flow, ui={"entry": "a.js", "path": "/tie"})
    gateway.register("tie-b", flow, ui={"entry": "b.js", "path": "/tie/"})
    gateway.register("plain", flow)
    live = serve(gateway)

    def owner(path: str) -> str | None:
        response = live.http.get(path)
        assert response.status_code == 200, path
        config = boot(response.text)
        assert config["kind"] == ("gateway" if config["workflowKey"] is None else "workflow")
        key: str | None = config["workflowKey"]
        return key

    assert owner("/apps") == "short" and owner("/apps/x/y") == "short" and owner("/apps/") == "short"
    assert owner("/apps/inner") == "long" and owner("/apps/inner/deep") == "long"
    assert owner("/apps/innerx") == "short"  # a prefix only counts at a segment boundary
    assert owner("/same") is None and owner("/same/x") is None  # the gateway UI comes first in a tie
    assert owner("/tie") == "tie-a" and owner("/tie/x") == "tie-a"  # then registration order
    for path in ("/", "/appsx", "/tiez", "/workflows/plain", "/sam"):
        response = live.http.get(path)
        assert response.status_code == 404 and response.json() == JSON_404, path
        assert response.headers["x-smithers-api-version"] == "v1"


def test_a_gateway_ui_at_root_swallows_unmatched_gets_only(
    new_gateway: Callable[..., Gateway], serve: Callable[[Gateway], Live]
) -> None:
    live = serve(new_gateway(ui={"entry": "app.js"}))
    for path in ("/", "/nowhere", "/a/b/c", "/health?x=1", "/rpc", "/v1/rpc/health", "/webhooks/x", "/metrics?x"):
        response = live.http.get(path)
        assert response.status_code == 200 and boot(response.text)["mountPath"] == "/", path
        assert_headers(response, HTML_HEADERS)
    head = live.http.head("/health")  # rule 1 is GET only
    assert head.status_code == 200 and head.headers["content-type"] == HTML_HEADERS["content-type"]
    assert live.http.get("/health").json()["ok"] is True
    assert live.http.get("/metrics").headers["content-type"].startswith("text/plain; version=0.0.4")
    for method in ("POST", "PUT", "DELETE", "OPTIONS", "PATCH"):
        response = live.http.request(method, "/nowhere")
        assert response.status_code == 404 and response.json() == JSON_404, method
    assert live.http.post("/rpc", json={"method": "health"}).json()["ok"] is True


def test_matching_uses_the_raw_percent_encoded_path(
    new_gateway: Callable[..., Gateway], serve: Callable[[Gateway], Live], tmp_path: Path
) -> None:
    entry = write(tmp_path / "colon.js", "export const colon = 1;\n")
    gateway = new_gateway()
    gateway.register("colon", flow, ui={"entry": str(entry), "path": "/w/a:b"})
    live = serve(gateway)
    assert live.http.get("/w/a:b/%7Ex/%20y").status_code == 200
    encoded = live.http.get("/w/a%3Ab")  # the same path once decoded, but not as sent
    assert encoded.status_code == 404 and encoded.json() == JSON_404
    asset = live.http.get("/w/a:b/%5F_smithers_ui/client.js")  # not the asset base as sent: the index
    assert asset.status_code == 200 and asset.headers["content-type"] == HTML_HEADERS["content-type"]
    assert live.http.get("/w/a:b/__smithers_ui/client.js").content == entry.read_bytes()
    assert live.http.get("/w/a:b/__smithers_ui/client%2Ejs").text == "Not Found"


# -- the index page --------------------------------------------------------------------------------
def test_index_html_of_the_deploy_example_exactly(
    new_gateway: Callable[..., Gateway], serve: Callable[[Gateway], Live]
) -> None:
    gateway = new_gateway()
    gateway.register("deploy", flow, ui={"entry": "ui/deploy.tsx"})
    live = serve(gateway)
    for path in ("/workflows/deploy", "/workflows/deploy/", "/workflows/deploy/runs/abc?tab=1"):
        response = live.http.get(path)
        assert response.status_code == 200
        assert response.content == DEPLOY_INDEX.encode("utf-8"), path
        assert_headers(response, HTML_HEADERS)
        assert response.headers["content-length"] == str(len(DEPLOY_INDEX))
    for path in ("/workflows/deploy/__smithers_ui/", "/workflows/deploy/__smithers_ui"):
        assert live.http.get(path).text == DEPLOY_INDEX, path  # an empty or absent asset path: the index


def test_index_escapes_title_and_boot_json(
    new_gateway: Callable[..., Gateway], serve: Callable[[Gateway], Live]
) -> None:
    props = {"note": "</script><b>&'\"", "nested": {"list": [1, "<"]}, "ü": "日本"}
    live = serve(new_gateway(ui={"entry": "app.tsx", "path": "/ops/", "title": '<T> & "Q" \'s', "props": props}))
    page = live.http.get("/ops").text
    assert "    <title>&lt;T&gt; &amp; &quot;Q&quot; 's</title>\n" in page
    script = (
        '    <script>globalThis.__SMITHERS_GATEWAY_UI__={"apiVersion":"v1","kind":"gateway","workflowKey":null,'
        '"mountPath":"/ops","rpcPath":"/v1/rpc","wsPath":"/","assetBasePath":"/ops/__smithers_ui/",'
        '"props":{"note":"\\u003c/script>\\u003cb>&\'\\"","nested":{"list":[1,"\\u003c"]},"ü":"日本"}};</script>\n'
    )
    assert script in page
    assert '    <script type="module" src="/ops/__smithers_ui/client.js"></script>\n' in page
    assert boot(page)["props"] == props
    assert page.count("<script") == 2 and "</script><b>" not in page

    root = serve(new_gateway(ui={"entry": "app.js"}))
    page = root.http.get("/anything").text
    assert "<title>Smithers</title>" in page and 'src="/__smithers_ui/client.js"' in page
    assert boot(page)["assetBasePath"] == "/__smithers_ui/" and boot(page)["props"] == {}


def test_head_has_the_get_status_and_headers_without_a_body(
    new_gateway: Callable[..., Gateway],
    serve: Callable[[Gateway], Live],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(ESBUILD_ENV, "/nonexistent/esbuild")
    entry = write(tmp_path / "head.js", "console.log('head');\n")
    gateway = new_gateway()
    gateway.register("deploy", flow, ui={"entry": str(entry)})
    gateway.register("broken", flow, ui={"entry": str(tmp_path / "broken.tsx")})
    live = serve(gateway)
    for path, status in (
        ("/workflows/deploy/x", 200),
        ("/workflows/deploy/__smithers_ui/client.js", 200),
        ("/workflows/deploy/__smithers_ui/other.js", 404),
        ("/workflows/broken/__smithers_ui/client.js", 500),
    ):
        got = live.http.get(path)
        head = live.http.head(path)
        assert got.status_code == head.status_code == status, path
        assert head.content == b"" and got.content != b""
        assert dict(head.headers) == {**dict(got.headers), "date": head.headers["date"]}, path
        assert raw_get(live, path, "HEAD") == (status, b"")


# -- client.js and other assets --------------------------------------------------------------------
def test_a_js_entry_is_served_as_it_is(
    new_gateway: Callable[..., Gateway], serve: Callable[[Gateway], Live], tmp_path: Path
) -> None:
    entry = write(tmp_path / "ui" / "main.mjs", "export const greeting = 'héllo';\n// </script>\n")
    plain = write(tmp_path / "ui" / "plain.js", "document.title = 'x';\n")
    gateway = new_gateway(ui={"entry": str(plain)})
    gateway.register("deploy", flow, ui={"entry": str(entry)})
    live = serve(gateway)
    response = live.http.get("/workflows/deploy/__smithers_ui/client.js")
    assert response.status_code == 200 and response.content == entry.read_bytes()
    assert_headers(response, JS_HEADERS)
    assert live.http.get("/__smithers_ui/client.js").content == plain.read_bytes()
    entry.write_text("export const greeting = 'changed, and longer than before';\n")  # read again once changed
    assert live.http.get("/workflows/deploy/__smithers_ui/client.js").content == entry.read_bytes()
    for asset in ("main.mjs", "plain.js", "client.js.map", "x/client.js", "CLIENT.JS", "client.js/"):
        missing = live.http.get(f"/workflows/deploy/__smithers_ui/{asset}")
        assert missing.status_code == 404 and missing.text == "Not Found", asset
        assert missing.headers["content-type"] == "text/plain; charset=UTF-8"
        assert "x-smithers-api-version" not in missing.headers


def test_a_missing_js_entry_is_a_plain_500(
    new_gateway: Callable[..., Gateway],
    serve: Callable[[Gateway], Live],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    gateway = new_gateway()
    gateway.register("gone", flow, ui={"entry": str(tmp_path / "gone.js")})
    live = serve(gateway)
    with caplog.at_level(logging.ERROR, logger="smithers.gateway.ui"):
        response = live.http.get("/workflows/gone/__smithers_ui/client.js")
    assert response.status_code == 500 and response.text == "Internal Server Error"
    assert response.headers["content-type"] == "text/plain; charset=UTF-8"
    assert f"cannot read UI entry {tmp_path / 'gone.js'}" in caplog.text


def esbuild_or_skip() -> str:
    found = shutil.which("esbuild")
    if found is None:
        if os.geteuid() == 0:
            pytest.fail("esbuild is missing: scripts/ensure-tools.sh installs it")
        pytest.skip("esbuild is not installed (scripts/ensure-tools.sh installs it as root)")
    return found


def tsx_app(directory: Path) -> Path:
    """A TSX entry using the automatic JSX runtime (a stand-in react/jsx-runtime beside it)."""
    write(directory / "node_modules" / "react" / "jsx-runtime.js", "export const jsx = (t, p) => ({ t, p });\n")
    write(directory / "greet.ts", "export function greet(name: string): string { return `hi ${name}`; }\n")
    return write(
        directory / "app.tsx",
        "import { greet } from './greet';\n"
        "interface Props { who: string }\n"
        "const view = (props: Props) => <h1 title={greet(props.who)}>Hello</h1>;\n"
        "(globalThis as any).SMITHERS_TEST_VIEW = view({ who: 'ada' });\n",
    )


def test_a_tsx_entry_is_bundled_by_esbuild_once(
    new_gateway: Callable[..., Gateway],
    serve: Callable[[Gateway], Live],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    esbuild_or_skip()
    entry = tsx_app(tmp_path / "tsx")
    gateway = new_gateway()
    gateway.register("deploy", flow, ui={"entry": str(entry)})
    live = serve(gateway)
    response = live.http.get("/workflows/deploy/__smithers_ui/client.js")
    assert response.status_code == 200, response.text
    assert_headers(response, JS_HEADERS)
    bundle = response.text
    assert "function greet(name)" in bundle and "interface" not in bundle and ": string" not in bundle
    assert 'jsx("h1"' in bundle and "SMITHERS_TEST_VIEW" in bundle  # the automatic runtime, bundled in
    assert "import " not in bundle  # one self-contained ES module
    assert "//# sourceMappingURL=data:application/json;base64," in bundle
    monkeypatch.setenv(ESBUILD_ENV, "/nonexistent/esbuild")
    entry.write_text("this is no longer TypeScript <")
    again = live.http.get("/workflows/deploy/__smithers_ui/client.js")  # kept per entry for the process
    assert again.status_code == 200 and again.text == bundle


def test_bundling_failures_are_a_plain_500_with_a_clear_log(
    new_gateway: Callable[..., Gateway],
    serve: Callable[[Gateway], Live],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    entry = tsx_app(tmp_path / "nobundler")
    broken = write(tmp_path / "broken" / "app.ts", "export const x: number = ;\n")
    gateway = new_gateway()
    gateway.register("deploy", flow, ui={"entry": str(entry)})
    gateway.register("broken", flow, ui={"entry": str(broken)})
    live = serve(gateway)
    monkeypatch.setenv(ESBUILD_ENV, "/nonexistent/esbuild")
    with caplog.at_level(logging.ERROR, logger="smithers.gateway.ui"):
        response = live.http.get("/workflows/deploy/__smithers_ui/client.js")
    assert response.status_code == 500 and response.text == "Internal Server Error"
    assert response.headers["content-type"] == "text/plain; charset=UTF-8"
    assert f"UI entry {entry} must be bundled" in caplog.text
    assert "install esbuild" in caplog.text and ESBUILD_ENV in caplog.text
    monkeypatch.setenv("PATH", str(tmp_path / "empty-bin"))
    monkeypatch.delenv(ESBUILD_ENV)
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="smithers.gateway.ui"):
        assert live.http.get("/workflows/deploy/__smithers_ui/client.js").status_code == 500
    assert "no esbuild is on PATH" in caplog.text
    monkeypatch.undo()

    esbuild_or_skip()
    recovered = live.http.get("/workflows/deploy/__smithers_ui/client.js")  # a failure is not kept
    assert recovered.status_code == 200 and 'jsx("h1"' in recovered.text
    caplog.clear()
    with caplog.at_level(logging.ERROR, logger="smithers.gateway.ui"):
        failed = live.http.get("/workflows/broken/__smithers_ui/client.js")
    assert failed.status_code == 500 and failed.text == "Internal Server Error"
    assert f"could not bundle UI entry {broken}" in caplog.text and "app.ts:1" in caplog.text


# -- the built-in console --------------------------------------------------------------------------
@pytest.fixture
def console(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A console directory standing in for the package's ``smithers/console``."""
    directory = tmp_path / "console"
    write(directory / "app.js", "import './views/runs.js';\n")
    write(directory / "app.css", "body { margin: 0 }\n")
    write(directory / "views" / "runs.js", "export const runs = [];\n")
    write(directory / "views" / "run-detail.view.js", "export {};\n")
    write(directory / "logo.svg", "<svg xmlns='http://www.w3.org/2000/svg'/>")
    (directory / "icon.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    write(directory / "strings.json", '{"a": 1}')
    write(directory / "notes.txt", "not served")
    write(directory / ".hidden.js", "hidden")
    write(tmp_path / "secret.js", "secret")
    (directory / "linked.js").symlink_to(tmp_path / "secret.js")
    monkeypatch.setenv(CONSOLE_DIR_ENV, str(directory))
    return directory


def test_the_console_is_served_at_console(
    new_gateway: Callable[..., Gateway], serve: Callable[[Gateway], Live], console: Path
) -> None:
    gateway = new_gateway(ui=True)
    assert gateway.ui is not None and gateway.ui.path == "/console" and gateway.ui.files == str(console)
    live = serve(gateway)
    assert gateway.console_url == f"{live.url}/console"
    for path in ("/console", "/console/", "/console/runs/abc", "/console/runs/abc?x=1", "/console/__smithers_ui/"):
        response = live.http.get(path)
        assert response.status_code == 200, path
        assert_headers(response, HTML_HEADERS)
        assert "<title>Smithers console</title>" in response.text
        assert boot(response.text) == {
            "apiVersion": "v1",
            "kind": "gateway",
            "workflowKey": None,
            "mountPath": "/console",
            "rpcPath": "/v1/rpc",
            "wsPath": "/",
            "assetBasePath": "/console/__smithers_ui/",
            "props": {},
        }
    for path in ("/", "/consoles", "/index.html"):
        response = live.http.get(path)
        assert response.status_code == 404 and response.json() == JSON_404, path
    client = live.http.get("/console/__smithers_ui/client.js")
    assert client.status_code == 200 and client.content == (console / "app.js").read_bytes()
    assert_headers(client, JS_HEADERS)
    for name, content_type in (
        ("app.js", "text/javascript; charset=utf-8"),
        ("app.css", "text/css; charset=utf-8"),
        ("views/runs.js", "text/javascript; charset=utf-8"),
        ("views/run-detail.view.js", "text/javascript; charset=utf-8"),
        ("logo.svg", "image/svg+xml"),
        ("icon.png", "image/png"),
        ("strings.json", "application/json; charset=utf-8"),
    ):
        response = live.http.get(f"/console/__smithers_ui/{name}")
        assert response.status_code == 200, name
        assert response.content == (console / name).read_bytes()
        assert_headers(response, {**HTML_HEADERS, "content-type": content_type})
        assert live.http.head(f"/console/__smithers_ui/{name}").content == b""


def test_the_console_never_serves_outside_its_directory(
    new_gateway: Callable[..., Gateway], serve: Callable[[Gateway], Live], console: Path
) -> None:
    live = serve(new_gateway(ui=True))
    refused = [
        "missing.js",
        "views/missing.js",
        "notes.txt",
        ".hidden.js",
        "linked.js",  # a link out of the directory
        "views",
        "views/",
        "APP.JS",
        "app.js.map",
        "../secret.js",
        "views/../app.js",
        "./app.js",
        "%2e%2e/secret.js",
        "..%2fsecret.js",
        "%2E%2E%2Fsecret.js",
        "views%2fruns.js",
        "views//runs.js",
        "/app.js",
        "a/b/c/d/e/f/g/h/i.js",
        "app%2ejs",
        "app.js%00.png",
    ]
    for asset in refused:
        status, body = raw_get(live, f"/console/__smithers_ui/{asset}")
        assert (status, body) == (404, b"Not Found"), asset
    status, body = raw_get(live, "/console/../secret.js")  # not under the asset base: the index
    assert status == 200 and b"<title>Smithers console</title>" in body
    assert raw_get(live, "/console/__smithers_ui/views/runs.js")[0] == 200


def test_the_console_without_its_front_end(
    new_gateway: Callable[..., Gateway],
    serve: Callable[[Gateway], Live],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    monkeypatch.setenv(CONSOLE_DIR_ENV, str(tmp_path / "empty"))
    live = serve(new_gateway(ui=True))
    assert live.http.get("/console").status_code == 200
    with caplog.at_level(logging.ERROR, logger="smithers.gateway.ui"):
        response = live.http.get("/console/__smithers_ui/client.js")
    assert response.status_code == 500 and response.text == "Internal Server Error"
    assert str(tmp_path / "empty" / "app.js") in caplog.text
    monkeypatch.delenv(CONSOLE_DIR_ENV)
    packaged = Path(console_dir())
    assert packaged == Path(__file__).resolve().parents[2] / "smithers" / "console"


def test_mount_console_replaces_the_gateway_ui(new_gateway: Callable[..., Gateway], console: Path) -> None:
    gateway = new_gateway(ui={"entry": "own.js"})
    gateway.register("deploy", flow, ui={"entry": "d.js"})
    gateway.mount_console()
    assert gateway.ui is not None and gateway.ui.path == "/console" and gateway.options.ui is True
    assert gateway.workflows["deploy"].ui is not None
    assert gateway.console_url is None  # not listening yet
