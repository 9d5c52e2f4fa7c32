"""VCS pointers of a task's working directory: snapshot, diff and restore (git today, jj later).

A run may record, after each task attempt, a *pointer* to the state of the attempt's working
directory (docs/engine.md#working-directory-snapshots). Two features read them:

* ``getNodeDiff`` shows what an attempt changed, as a DiffBundle whose ``patches`` come from
  :meth:`Vcs.diff` between the base pointer and the attempt's pointer;
* ``jumpToFrame`` rewinds a run, putting each working directory back with :meth:`Vcs.restore`.

The JavaScript system does this with jj only. Here :class:`Vcs` is the small interface, and
:class:`GitVcs` implements it with the ``git`` command line. A jj implementation would subclass
:class:`Vcs` with ``kind = "jj"`` (its pointers being jj commit ids) and be tried first by
:func:`detect` (a colocated jj repository is also a git work tree).

Git choices (each is also commented where it is made):

* **Never touch the user's state.** Snapshots are built in a temporary index
  (``GIT_INDEX_FILE``) and written with ``commit-tree``: HEAD, the branch, the user's index and
  the working tree stay as they are. The one thing written to the repository is a ref
  ``refs/smithers/snapshots/<commit>`` per snapshot, so ``git gc`` keeps it (see
  :data:`SNAPSHOT_REF_PREFIX`; ``git for-each-ref refs/smithers/snapshots`` lists them and
  ``git update-ref -d`` drops them).
* **The temporary index starts as a copy of the user's index** (with its timestamps), not as
  ``git read-tree HEAD``: its stat cache lets ``git add -A`` skip re-hashing unchanged files, the
  difference between a few milliseconds and reading every file of a large tree. The content of the
  snapshot is the same either way except for one corner: a file added to the index with
  ``git add -f`` although ignored counts as tracked (as ``git status`` says). Without an index file
  (a fresh repository) it starts from HEAD's tree, or empty.
* **What a snapshot holds:** tracked files as they are on disk (modified, deleted), untracked
  files not ignored by ``.gitignore``/``info/exclude``. Ignored files are never recorded, never
  deleted and never restored. A nested git repository is recorded as a gitlink (its commit),
  and :meth:`GitVcs.restore` leaves gitlinks alone.
* **Binary patches:** ``diff`` is git's per-file patch text, headers included (``diff --git``,
  mode and ``index`` lines, then hunks); for a binary file it is git's ``GIT binary patch``
  (``--binary``), so every patch applies with ``git apply``, and ``binaryContent`` carries the
  base64 of the new content (absent for a deletion). A type change (file <-> symlink) is one
  ``modify`` entry whose ``diff`` is git's two sections (deletion then addition).
* Every call is ``git`` with an argument list (never a shell), a timeout, ``LC_ALL=C``, literal
  pathspecs, no prompts and no optional locks, and with the repository-locating variables
  (``GIT_DIR``, ``GIT_INDEX_FILE`` …) removed from the environment, so the repository is always the
  one containing the working directory. Names are read NUL-separated (``-z``).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
import tempfile
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, ClassVar, Final

from smithers.errors import SmithersError, VcsError

VCS_ERROR: Final = VcsError
"""The code of a VCS failure, ``"VcsError"`` (docs/protocol.md#getnodediff--devtoolsgetnodediff)."""

GIT_TIMEOUT_S: Final = 60.0
SNAPSHOT_REF_PREFIX: Final = "refs/smithers/snapshots/"
SNAPSHOT_AUTHOR: Final = ("smithers", "smithers@localhost")

ADD: Final = "add"
MODIFY: Final = "modify"
DELETE: Final = "delete"

_GITLINK_MODE: Final = "160000"
_OPERATION_BY_STATUS: Final[Mapping[str, str]] = {"A": ADD, "D": DELETE, "M": MODIFY, "T": MODIFY}

# The variables that would point git at another repository, index or object store than the one
# holding the working directory (``git rev-parse --local-env-vars``, minus config ones).
_LOCATING_ENV: Final = (
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_COMMON_DIR",
    "GIT_DIR",
    "GIT_GRAFT_FILE",
    "GIT_IMPLICIT_WORK_TREE",
    "GIT_INDEX_FILE",
    "GIT_NAMESPACE",
    "GIT_NO_REPLACE_OBJECTS",
    "GIT_OBJECT_DIRECTORY",
    "GIT_PREFIX",
    "GIT_REPLACE_REF_BASE",
    "GIT_SHALLOW_FILE",
    "GIT_WORK_TREE",
)


class VcsFailure(SmithersError):
    """A VCS command failed, timed out or is missing; its code is ``VcsError``."""

    default_code = VCS_ERROR


class Vcs(ABC):
    """A working directory under version control, seen through opaque *pointers* (commit ids)."""

    kind: ClassVar[str]
    """The run's ``vcsType``: ``"git"`` (``"jj"`` for a future jj implementation)."""

    root: str
    """The absolute path of the work tree's top level; patch paths are relative to it."""

    @abstractmethod
    def revision(self) -> str | None:
        """The checked-out commit (git: HEAD), None when there is none yet."""

    @abstractmethod
    def snapshot(self, label: str) -> str:
        """Record the whole working tree as it is now and return a pointer to it.

        Must not change what the user sees: checked-out revision, branch, index, files.
        """

    @abstractmethod
    def diff(self, base: str, target: str) -> list[dict[str, Any]]:
        """The DiffBundle ``patches`` from pointer ``base`` to pointer ``target``, sorted by path:
        ``{"path", "operation": "add"|"modify"|"delete", "diff", "binaryContent"?}``."""

    @abstractmethod
    def restore(self, pointer: str) -> None:
        """Make the working tree's (non-ignored) files those of ``pointer``, without moving the
        checked-out revision."""


def detect(cwd: str | os.PathLike[str]) -> Vcs | None:
    """The VCS of the work tree containing ``cwd``, or None (not a work tree, git missing, a bare
    repository or ``.git`` itself, a directory git refuses as unsafe)."""
    # A jj implementation would be tried here first: a colocated jj repository is a git one too.
    try:
        top = _run_git(["rev-parse", "--show-toplevel"], cwd=os.fspath(cwd), timeout=GIT_TIMEOUT_S)
    except VcsFailure:
        return None
    root = os.fsdecode(top.rstrip(b"\n"))
    return GitVcs(root) if root else None


@dataclass(frozen=True)
class _RawChange:
    """One line of ``git diff-tree --raw -z``."""

    old_mode: str
    new_mode: str
    new_blob: str
    status: str
    path: bytes


class GitVcs(Vcs):
    """A git work tree. Pointers are commit ids written by :meth:`snapshot` (any commit works)."""

    kind = "git"

    def __init__(self, root: str | os.PathLike[str], *, timeout: float = GIT_TIMEOUT_S) -> None:
        self.root = os.path.abspath(os.fspath(root))
        self.timeout = timeout

    def __repr__(self) -> str:
        return f"GitVcs({self.root!r})"

    # -- the interface ------------------------------------------------------------------------

    def revision(self) -> str | None:
        out = self._git(["rev-parse", "--verify", "--quiet", "HEAD^{commit}"], ok_codes=(0, 1))
        text = out.decode().strip()
        return text or None

    def snapshot(self, label: str) -> str:
        head = self.revision()
        with tempfile.TemporaryDirectory(prefix="smithers-vcs-") as tmp:
            tree = self._write_tree(os.path.join(tmp, "index"), head)
        parents = ["-p", head] if head else []
        # The message goes through stdin: any label works, even one starting with "-". The identity
        # is fixed so a machine without user.name/user.email config can snapshot; never signed
        # (no passphrase prompt, no key needed).
        message = (label.replace("\0", "") or "smithers snapshot") + "\n"
        commit = self._git(["commit-tree", "--no-gpg-sign", tree, *parents], stdin=message.encode(), env=_IDENTITY_ENV)
        commit_id = commit.decode().strip()
        # A ref per snapshot keeps it (and its objects) from `git gc`.
        self._git(["update-ref", SNAPSHOT_REF_PREFIX + commit_id, commit_id])
        return commit_id

    def diff(self, base: str, target: str) -> list[dict[str, Any]]:
        _check_rev(base)
        _check_rev(target)
        changes = self._raw_changes(base, target)
        if not changes:
            return []
        chunks = _split_patch(self._git(["diff-tree", *_PATCH_OPTIONS, base, target]))
        # diff-tree emits the sections in its raw order, one per path except two for a type change
        # (deletion, then addition); if that ever does not hold, ask path by path.
        expected = sum(2 if c.status == "T" else 1 for c in changes)
        per_change: list[bytes] = []
        if len(chunks) == expected:
            for change in changes:
                take = 2 if change.status == "T" else 1
                per_change.append(b"".join(chunks[:take]))
                chunks = chunks[take:]
        else:
            for change in changes:
                path = os.fsdecode(change.path)
                per_change.append(self._git(["diff-tree", *_PATCH_OPTIONS, base, target, "--", path]))
        binary = [
            change.new_blob
            for change, text in zip(changes, per_change, strict=True)
            if change.status != "D" and _is_binary_patch(text)
        ]
        contents = self._blobs(binary) if binary else {}
        patches: list[dict[str, Any]] = []
        for change, text in zip(changes, per_change, strict=True):
            patch: dict[str, Any] = {
                "path": change.path.decode("utf-8", "replace"),
                "operation": _OPERATION_BY_STATUS.get(change.status, MODIFY),
                "diff": text.decode("utf-8", "replace"),
            }
            if change.new_blob in contents:
                patch["binaryContent"] = base64.b64encode(contents[change.new_blob]).decode("ascii")
            patches.append(patch)
        patches.sort(key=lambda p: p["path"])
        return patches

    def restore(self, pointer: str) -> None:
        _check_rev(pointer)
        target = pointer + "^{commit}"
        with tempfile.TemporaryDirectory(prefix="smithers-vcs-") as tmp:
            # What is on disk now, as a tree, so the paths to delete and to write are a tree diff.
            current = self._write_tree(os.path.join(tmp, "current"), self.revision())
            changes = self._raw_changes(current, target)
            # Gitlinks (nested repositories) are never deleted nor checked out.
            deletions = [c.path for c in changes if c.status == "D" and c.old_mode != _GITLINK_MODE]
            writes = [c.path for c in changes if c.status != "D" and c.new_mode != _GITLINK_MODE]
            # Load the target before the first deletion, so a bad pointer fails with nothing changed.
            index_env = {"GIT_INDEX_FILE": os.path.join(tmp, "target")}
            self._git(["read-tree", target], env=index_env)
            for path in deletions:
                self._delete(path)
            if writes:
                # checkout-index writes each listed path from the temporary index (content, mode,
                # symlink), replacing what is there; its paths are literal, not pathspecs.
                self._git(
                    ["checkout-index", "--force", "-z", "--stdin"],
                    stdin=b"".join(p + b"\0" for p in writes),
                    env=index_env,
                )

    # -- git plumbing -------------------------------------------------------------------------

    def _git(
        self,
        args: Sequence[str],
        *,
        stdin: bytes | None = None,
        env: Mapping[str, str] | None = None,
        ok_codes: Sequence[int] = (0,),
    ) -> bytes:
        return _run_git(args, cwd=self.root, stdin=stdin, env=env, ok_codes=ok_codes, timeout=self.timeout)

    @cached_property
    def _index_path(self) -> str:
        """The user's index file (``.git/index``, or the linked worktree's own)."""
        out = self._git(["rev-parse", "--git-path", "index"]).rstrip(b"\n")
        return os.path.join(self.root, os.fsdecode(out))

    def _write_tree(self, index: str, head: str | None) -> str:
        """The tree of the whole working tree, built in the temporary index file ``index``."""
        env = {"GIT_INDEX_FILE": index}
        if os.path.exists(self._index_path):
            # copy2 keeps the index file's mtime, which git's racy-entry check compares file
            # timestamps against: with a newer copy, a file changed just after the user's last
            # index write could be taken as unchanged.
            shutil.copy2(self._index_path, index)
        elif head:
            self._git(["read-tree", head], env=env)
        # --all without pathspec: modifications, deletions and untracked files that are not
        # ignored, over the whole tree. An unreadable file fails the snapshot rather than being
        # left out (a restore to a snapshot missing a file would delete it).
        self._git(["add", "--all"], env=env)
        return self._git(["write-tree"], env=env).decode().strip()

    def _raw_changes(self, base: str, target: str) -> list[_RawChange]:
        out = self._git(["diff-tree", "-r", "-z", "--raw", "--no-renames", "--no-abbrev", base, target])
        fields = out.split(b"\0")
        changes: list[_RawChange] = []
        i = 0
        while i + 1 < len(fields):
            meta = fields[i].decode()
            if not meta.startswith(":"):
                i += 1
                continue
            old_mode, new_mode, _old_blob, new_blob, status = meta[1:].split(" ")
            changes.append(_RawChange(old_mode, new_mode, new_blob, status[:1], fields[i + 1]))
            i += 2
        return changes

    def _blobs(self, ids: Sequence[str]) -> dict[str, bytes]:
        """The content of each blob, read in one ``git cat-file --batch``."""
        unique = list(dict.fromkeys(ids))
        out = self._git(["cat-file", "--batch"], stdin="".join(f"{i}\n" for i in unique).encode())
        contents: dict[str, bytes] = {}
        pos = 0
        for blob_id in unique:
            end = out.index(b"\n", pos)
            header = out[pos:end].decode().split(" ")
            if len(header) != 3:
                raise VcsFailure(f"git cat-file: cannot read blob {blob_id}", details={"header": header})
            size = int(header[2])
            contents[blob_id] = out[end + 1 : end + 1 + size]
            pos = end + 1 + size + 1
        return contents

    def _delete(self, path: bytes) -> None:
        """Remove a file (or symlink) of the work tree, then the directories it leaves empty."""
        root = os.fsencode(self.root)
        full = os.path.normpath(os.path.join(root, path))
        if os.path.commonpath([root, full]) != root or full == root:
            raise VcsFailure(f"Refusing to delete a path outside the work tree: {os.fsdecode(path)}")
        if os.path.islink(full) or (os.path.lexists(full) and not os.path.isdir(full)):
            os.unlink(full)
        parent = os.path.dirname(full)
        while parent != root and os.path.commonpath([root, parent]) == root:
            try:
                os.rmdir(parent)
            except OSError:
                break
            parent = os.path.dirname(parent)


_IDENTITY_ENV: Final[Mapping[str, str]] = {
    "GIT_AUTHOR_NAME": SNAPSHOT_AUTHOR[0],
    "GIT_AUTHOR_EMAIL": SNAPSHOT_AUTHOR[1],
    "GIT_COMMITTER_NAME": SNAPSHOT_AUTHOR[0],
    "GIT_COMMITTER_EMAIL": SNAPSHOT_AUTHOR[1],
}

# Plumbing (diff-tree) ignores most diff UI config; the rest is pinned: colours, external diff
# drivers and textconv off, standard prefixes and context, binary files as applicable patches.
_PATCH_OPTIONS: Final = (
    "-r",
    "--patch",
    "--no-renames",
    "--binary",
    "--no-color",
    "--no-ext-diff",
    "--no-textconv",
    "--unified=3",
    "--src-prefix=a/",
    "--dst-prefix=b/",
)


def _check_rev(rev: str) -> None:
    """Refuse a pointer git would read as an option."""
    if not rev or rev.startswith("-") or "\0" in rev:
        raise VcsFailure(f"Invalid VCS pointer: {rev!r}")


def _split_patch(patch: bytes) -> list[bytes]:
    """The per-file sections of a patch. A section starts with a ``diff --git`` line: no content
    line can (they start with " ", "+", "-" or "\\", binary data lines with a length letter)."""
    if not patch:
        return []
    starts = [0] + [m.start() + 1 for m in re.finditer(rb"\ndiff --git ", patch)]
    return [patch[a:b] for a, b in zip(starts, [*starts[1:], len(patch)], strict=True)]


def _is_binary_patch(section: bytes) -> bool:
    return b"\nGIT binary patch\n" in section or b"\nBinary files " in section


def _git_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _LOCATING_ENV}
    env.update(
        LC_ALL="C",
        GIT_TERMINAL_PROMPT="0",
        GIT_OPTIONAL_LOCKS="0",  # no index refresh behind the user's back
        GIT_LITERAL_PATHSPECS="1",  # paths given to git are names, never globs
    )
    if extra:
        env.update(extra)
    return env


def _run_git(
    args: Sequence[str],
    *,
    cwd: str,
    timeout: float,
    stdin: bytes | None = None,
    env: Mapping[str, str] | None = None,
    ok_codes: Sequence[int] = (0,),
) -> bytes:
    """Run ``git -c core.quotePath=false <args>`` in ``cwd``; its stdout, or :class:`VcsFailure`."""
    argv = ["git", "-c", "core.quotePath=false", *args]
    try:
        proc = subprocess.run(
            argv,
            cwd=cwd,
            input=stdin if stdin is not None else b"",
            capture_output=True,
            env=_git_env(env),
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        raise VcsFailure(f"git {args[0]} timed out after {timeout:g} s", details={"args": list(args)}) from exc
    except FileNotFoundError as exc:
        # git missing from PATH, or cwd missing
        raise VcsFailure(f"Cannot run git in {cwd}: {exc.strerror}", details={"args": list(args)}) from exc
    except OSError as exc:
        raise VcsFailure(f"Cannot run git in {cwd}: {exc}", details={"args": list(args)}) from exc
    if proc.returncode not in ok_codes:
        stderr = proc.stderr.decode("utf-8", "replace").strip()
        raise VcsFailure(
            f"git {args[0]} failed ({proc.returncode}): {stderr[:2000]}",
            details={"args": list(args), "returncode": proc.returncode},
        )
    return proc.stdout


def vcs_of(run: Mapping[str, Any]) -> Vcs | None:
    """The version control a stored run recorded (``vcs_type``, ``vcs_root``), when it is still there."""
    if run.get("vcs_type") != GitVcs.kind or not run.get("vcs_root"):
        return None
    root = str(run["vcs_root"])
    return GitVcs(root) if os.path.isdir(root) and shutil.which("git") else None
