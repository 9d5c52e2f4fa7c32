"""The browser code of UI mounts: ``client.js`` (an entry served as it is, or bundled with esbuild)
and the files of the built-in console (docs/protocol.md#ui-mounts).

Nothing here runs on the event loop for long: files are read and entries bundled in worker threads.

* An entry ending ``.js`` or ``.mjs`` is served as it is. It is read again only when its
  modification time or size changed, so edits show on the next load.
* Any other entry (``.jsx``, ``.ts``, ``.tsx``, …) is bundled by an ``esbuild`` binary
  (``$SMITHERS_ESBUILD``, else ``esbuild`` on ``PATH``): browser platform, ESM, inline source map,
  the automatic JSX runtime (docs/protocol.md#departures-from-0180, P62). A bundle is kept for the
  life of the process, per absolute entry path; a failure is not kept, so the next request tries
  again.
* Console files are named by a strict pattern per path segment, so a request can never leave the
  console's directory.
"""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Final

ESBUILD_ENV: Final = "SMITHERS_ESBUILD"
"""Path (or command name) of the esbuild binary; overrides the one found on ``PATH``."""
SERVED_AS_IS: Final = (".js", ".mjs")
BUNDLE_TIMEOUT_S: Final = 120.0
ESBUILD_ARGS: Final = (
    "--bundle",
    "--format=esm",
    "--platform=browser",
    "--sourcemap=inline",
    "--jsx=automatic",
    "--log-level=error",
)
INSTALL_HINT: Final = (
    f"install esbuild (apt-get install esbuild, or npm install --global esbuild) or set {ESBUILD_ENV} to its path"
)

_DIRECTORY: Final = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*")
_FILE: Final = re.compile(r"[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*\.(js|css|svg|png|json)")
MAX_SEGMENTS: Final = 8
FILE_TYPES: Final = {
    "js": "text/javascript; charset=utf-8",
    "css": "text/css; charset=utf-8",
    "svg": "image/svg+xml",
    "png": "image/png",
    "json": "application/json; charset=utf-8",
}


class AssetError(Exception):
    """``client.js`` cannot be served; the message names the entry and what to do (for the log)."""


@dataclass(frozen=True)
class _Cached:
    mtime_ns: int
    size: int
    body: bytes


class _FileCache:
    """File contents, read again when the file's modification time or size changes."""

    def __init__(self) -> None:
        self._files: dict[str, _Cached] = {}
        self._lock = threading.Lock()

    def read(self, path: str) -> bytes:
        """The file's bytes (raises OSError); call from a worker thread."""
        stat = os.stat(path)
        with self._lock:
            cached = self._files.get(path)
        if cached is not None and (cached.mtime_ns, cached.size) == (stat.st_mtime_ns, stat.st_size):
            return cached.body
        body = Path(path).read_bytes()
        with self._lock:
            self._files[path] = _Cached(stat.st_mtime_ns, stat.st_size, body)
        return body


_files = _FileCache()
_bundles: dict[str, bytes] = {}
_bundle_locks: dict[str, threading.Lock] = {}
_bundles_guard = threading.Lock()


def esbuild_binary() -> str | None:
    """The esbuild to run: ``$SMITHERS_ESBUILD`` when set (None if it is not an executable), else ``PATH``'s."""
    configured = os.environ.get(ESBUILD_ENV)
    return shutil.which(configured) if configured else shutil.which("esbuild")


def bundle(entry: str) -> bytes:
    """The entry bundled by esbuild, once per process (blocking: call from a worker thread)."""
    with _bundles_guard:
        lock = _bundle_locks.setdefault(entry, threading.Lock())
    with lock:  # concurrent requests for one entry share one build
        cached = _bundles.get(entry)
        if cached is not None:
            return cached
        binary = esbuild_binary()
        if binary is None:
            configured = os.environ.get(ESBUILD_ENV)
            where = f"{ESBUILD_ENV}={configured!r} is not an executable" if configured else "no esbuild is on PATH"
            raise AssetError(f"UI entry {entry} must be bundled, but {where}: {INSTALL_HINT}")
        try:
            done = subprocess.run(
                [binary, entry, *ESBUILD_ARGS],
                capture_output=True,
                timeout=BUNDLE_TIMEOUT_S,
                cwd=os.path.dirname(entry) or None,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise AssetError(f"esbuild ({binary}) could not bundle UI entry {entry}: {exc}") from exc
        if done.returncode != 0 or not done.stdout:
            log_lines = done.stderr.decode("utf-8", "replace").strip() or f"exit status {done.returncode}"
            raise AssetError(f"esbuild ({binary}) could not bundle UI entry {entry}:\n{log_lines}")
        _bundles[entry] = done.stdout
        return done.stdout


def _client_js(entry: str) -> bytes:
    if entry.endswith(SERVED_AS_IS):
        try:
            return _files.read(entry)
        except OSError as exc:
            raise AssetError(f"cannot read UI entry {entry}: {exc.strerror or exc}") from exc
    return bundle(entry)


async def client_js(entry: str) -> bytes:
    """The browser module of ``entry`` (raises :class:`AssetError`)."""
    return await asyncio.to_thread(_client_js, entry)


def _directory_file(directory: str, asset_path: str) -> tuple[bytes, str] | None:
    segments = asset_path.split("/")
    if len(segments) > MAX_SEGMENTS or not all(_DIRECTORY.fullmatch(part) for part in segments[:-1]):
        return None
    found = _FILE.fullmatch(segments[-1])
    if found is None:
        return None
    root = Path(directory).resolve()
    path = root.joinpath(*segments).resolve()
    if not path.is_relative_to(root) or not path.is_file():  # a link pointing elsewhere is not served
        return None
    try:
        body = _files.read(str(path))
    except OSError:
        return None
    return body, FILE_TYPES[found.group(2)]


async def directory_file(directory: str, asset_path: str) -> tuple[bytes, str] | None:
    """A file of ``directory`` named by ``asset_path`` (``app.css``, ``views/runs.js``) with its content
    type, or None when the name breaks the pattern or no such file exists."""
    return await asyncio.to_thread(_directory_file, directory, asset_path)
