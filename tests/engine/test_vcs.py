"""Working-directory pointers on git: snapshot, diff and restore leave the user's HEAD, branch,
index and status alone, and handle adds, deletions, binaries and awkward names."""

from __future__ import annotations

import base64
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from smithers.engine.vcs import SNAPSHOT_REF_PREFIX, VCS_ERROR, GitVcs, VcsFailure, detect

pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed (CI installs it)")

SPACED = "dir with space/naïve café.txt"
UNICODE = "ü-日本.md"


@pytest.fixture(autouse=True)
def _hermetic_git(monkeypatch: pytest.MonkeyPatch) -> None:
    """No user or system git config (signing, hooks, default branch …) and no inherited repository."""
    monkeypatch.setenv("GIT_CONFIG_GLOBAL", os.devnull)
    monkeypatch.setenv("GIT_CONFIG_NOSYSTEM", "1")
    for name in ("GIT_DIR", "GIT_WORK_TREE", "GIT_INDEX_FILE", "GIT_OBJECT_DIRECTORY", "GIT_COMMON_DIR"):
        monkeypatch.delenv(name, raising=False)


def git(repo: Path, *args: str) -> str:
    proc = subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", "-c", "core.quotePath=false", *args],
        cwd=repo,
        capture_output=True,
        check=True,
        timeout=60,
    )
    return proc.stdout.decode()


def init(repo: Path) -> Path:
    repo.mkdir(parents=True, exist_ok=True)
    git(repo, "init", "-q")
    git(repo, "symbolic-ref", "HEAD", "refs/heads/main")
    return repo


def write(repo: Path, name: str, content: str | bytes) -> None:
    path = repo / name
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)


def files(repo: Path) -> dict[str, bytes]:
    """Every file under ``repo`` outside ``.git``, by POSIX path."""
    out: dict[str, bytes] = {}
    for path in repo.rglob("*"):
        rel = path.relative_to(repo).as_posix()
        if rel == ".git" or rel.startswith(".git/") or path.is_dir():
            continue
        out[rel] = path.read_bytes()
    return out


def user_state(repo: Path) -> dict[str, str]:
    """What the user sees of their repository (status first: it may refresh the index file)."""
    return {
        "status": git(repo, "status", "--porcelain=v1", "-z", "--untracked-files=all"),
        "head": git(repo, "rev-parse", "--verify", "-q", "HEAD") if _has_head(repo) else "",
        "branch": git(repo, "symbolic-ref", "HEAD"),
        "cached": git(repo, "diff", "--cached", "--binary"),
        "index": git(repo, "ls-files", "-s", "-z"),
        "refs": git(repo, "for-each-ref", "refs/heads", "refs/tags"),
    }


def _has_head(repo: Path) -> bool:
    return subprocess.run(["git", "rev-parse", "--verify", "-q", "HEAD"], cwd=repo, capture_output=True).returncode == 0


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A repository on ``main`` with one commit: a.txt, b.txt, c.txt and a .gitignore for *.log."""
    repo = init(tmp_path / "repo")
    write(repo, "a.txt", "one\ntwo\nthree\n")
    write(repo, "b.txt", "bee\n")
    write(repo, "c.txt", "sea\n")
    write(repo, ".gitignore", "*.log\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "initial")
    return repo


def test_snapshot_records_the_whole_tree_and_leaves_the_user_state_alone(repo: Path) -> None:
    write(repo, "a.txt", "one\nTWO\nthree\n")  # modified
    (repo / "b.txt").unlink()  # deleted
    write(repo, "new/d.txt", "dee\n")  # untracked
    write(repo, "c.txt", "sea, staged\n")
    git(repo, "add", "c.txt")  # a staged change the snapshot must not disturb
    write(repo, "c.txt", "sea, staged then edited\n")
    write(repo, "debug.log", "ignored\n")
    vcs = detect(repo / "new")
    assert isinstance(vcs, GitVcs)
    assert vcs.kind == "git"
    assert Path(vcs.root) == repo.resolve()
    before = user_state(repo)
    index_file = (repo / ".git" / "index").read_bytes()
    disk = files(repo)

    commit = vcs.snapshot("after task t1")

    assert (repo / ".git" / "index").read_bytes() == index_file
    assert user_state(repo) == before
    assert files(repo) == disk
    assert git(repo, "ls-tree", "-r", "--name-only", commit).split() == [".gitignore", "a.txt", "c.txt", "new/d.txt"]
    assert git(repo, "show", f"{commit}:a.txt") == "one\nTWO\nthree\n"
    assert git(repo, "show", f"{commit}:c.txt") == "sea, staged then edited\n"
    assert git(repo, "rev-parse", f"{commit}^") == before["head"]
    assert git(repo, "log", "-1", "--format=%an <%ae>|%cn|%s", commit).strip() == (
        "smithers <smithers@localhost>|smithers|after task t1"
    )
    assert git(repo, "rev-parse", SNAPSHOT_REF_PREFIX + commit).strip() == commit
    assert vcs.revision() == before["head"].strip()


def test_diff_between_two_snapshots(repo: Path) -> None:
    vcs = GitVcs(repo)
    base = vcs.snapshot("before")
    write(repo, "a.txt", "one\nTWO\nthree\n")
    (repo / "b.txt").unlink()
    write(repo, "new/d.txt", "dee\n")
    write(repo, "debug.log", "ignored\n")
    target = vcs.snapshot("after")

    patches = vcs.diff(base, target)

    assert [(p["path"], p["operation"]) for p in patches] == [
        ("a.txt", "modify"),
        ("b.txt", "delete"),
        ("new/d.txt", "add"),
    ]
    modify, delete, add = (p["diff"] for p in patches)
    assert modify.startswith("diff --git a/a.txt b/a.txt\n")
    assert "--- a/a.txt\n+++ b/a.txt\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n" in modify
    assert "deleted file mode 100644" in delete
    assert delete.endswith("--- a/b.txt\n+++ /dev/null\n@@ -1 +0,0 @@\n-bee\n")
    assert "new file mode 100644" in add
    assert add.endswith("--- /dev/null\n+++ b/new/d.txt\n@@ -0,0 +1 @@\n+dee\n")
    assert all("binaryContent" not in p for p in patches)
    assert vcs.diff(target, target) == []
    # The other way round swaps adds and deletes.
    assert [p["operation"] for p in vcs.diff(target, base)] == ["modify", "add", "delete"]


def test_restore_brings_back_an_earlier_snapshot_without_moving_head(repo: Path) -> None:
    vcs = GitVcs(repo)
    write(repo, "keep.log", "ignored, never touched\n")
    early = vcs.snapshot("early")
    early_files = files(repo)
    state = user_state(repo)

    write(repo, "a.txt", "rewritten\n")
    (repo / "b.txt").unlink()
    write(repo, "deep/er/new.txt", "new\n")
    write(repo, "keep.log", "ignored, changed by the task\n")
    if sys.platform != "win32":
        os.chmod(repo / "c.txt", 0o755)
    late = vcs.snapshot("late")
    late_files = files(repo)

    vcs.restore(early)

    assert files(repo) == {**early_files, "keep.log": b"ignored, changed by the task\n"}
    assert not (repo / "deep").exists()  # directories emptied by the restore are removed
    if sys.platform != "win32":
        assert not os.stat(repo / "c.txt").st_mode & stat.S_IXUSR
    assert user_state(repo) == state

    vcs.restore(late)  # and forward again
    assert files(repo) == late_files
    if sys.platform != "win32":
        assert os.stat(repo / "c.txt").st_mode & stat.S_IXUSR
    assert user_state(repo)["head"] == state["head"]
    assert user_state(repo)["branch"] == state["branch"]
    assert user_state(repo)["index"] == state["index"]


def test_a_repository_without_commits(tmp_path: Path) -> None:
    repo = init(tmp_path / "fresh")
    vcs = detect(repo)
    assert vcs is not None
    assert vcs.revision() is None
    empty = vcs.snapshot("empty")
    write(repo, "x.txt", "x\n")
    first = vcs.snapshot("first")
    assert git(repo, "rev-list", "--parents", "-1", first).split() == [first]  # no parent
    assert [(p["path"], p["operation"]) for p in vcs.diff(empty, first)] == [("x.txt", "add")]
    assert not _has_head(repo)
    assert git(repo, "status", "--porcelain") == "?? x.txt\n"

    write(repo, "x.txt", "changed\n")
    write(repo, "y.txt", "y\n")
    vcs.restore(first)
    assert files(repo) == {"x.txt": b"x\n"}
    vcs.restore(empty)
    assert files(repo) == {}
    assert not _has_head(repo)


def test_binary_files(repo: Path) -> None:
    vcs = GitVcs(repo)
    old = bytes(range(256)) * 4
    new = b"\x00\x01PNG" + bytes(reversed(range(256))) * 4
    write(repo, "img.bin", old)
    s1 = vcs.snapshot("one")
    write(repo, "img.bin", new)
    s2 = vcs.snapshot("two")
    (repo / "img.bin").unlink()
    s3 = vcs.snapshot("three")

    [added] = vcs.diff(vcs.revision() or "", s1)
    assert added["operation"] == "add"
    assert base64.b64decode(added["binaryContent"]) == old
    [modified] = vcs.diff(s1, s2)
    assert modified["path"] == "img.bin"
    assert modified["operation"] == "modify"
    assert "GIT binary patch" in modified["diff"]
    assert base64.b64decode(modified["binaryContent"]) == new
    [deleted] = vcs.diff(s2, s3)
    assert deleted["operation"] == "delete"
    assert "binaryContent" not in deleted

    vcs.restore(s1)
    assert (repo / "img.bin").read_bytes() == old
    vcs.restore(s2)
    assert (repo / "img.bin").read_bytes() == new


def test_names_with_spaces_and_non_ascii(repo: Path) -> None:
    vcs = GitVcs(repo)
    s1 = vcs.snapshot("one")
    write(repo, SPACED, "spaced\n")
    write(repo, UNICODE, "unicode\n")
    s2 = vcs.snapshot("two")
    write(repo, SPACED, "spaced, changed\n")
    (repo / UNICODE).unlink()
    s3 = vcs.snapshot("three")

    assert [(p["path"], p["operation"]) for p in vcs.diff(s1, s2)] == [(SPACED, "add"), (UNICODE, "add")]
    patches = vcs.diff(s2, s3)
    assert [(p["path"], p["operation"]) for p in patches] == [(SPACED, "modify"), (UNICODE, "delete")]
    assert "-spaced\n+spaced, changed\n" in patches[0]["diff"]

    vcs.restore(s2)
    assert (repo / SPACED).read_text() == "spaced\n"
    assert (repo / UNICODE).read_text() == "unicode\n"
    vcs.restore(s1)
    assert not (repo / SPACED).exists()
    assert not (repo / "dir with space").exists()
    assert not (repo / UNICODE).exists()


@pytest.mark.skipif(sys.platform == "win32", reason="symlinks")
def test_a_type_change_is_one_modify_entry(repo: Path) -> None:
    vcs = GitVcs(repo)
    s1 = vcs.snapshot("file")
    (repo / "a.txt").unlink()
    (repo / "a.txt").symlink_to("c.txt")
    s2 = vcs.snapshot("symlink")
    [patch] = vcs.diff(s1, s2)
    assert patch["operation"] == "modify"
    assert "deleted file mode 100644" in patch["diff"]
    assert "new file mode 120000" in patch["diff"]
    vcs.restore(s1)
    assert not (repo / "a.txt").is_symlink()
    assert (repo / "a.txt").read_text() == "one\ntwo\nthree\n"
    vcs.restore(s2)
    assert os.readlink(repo / "a.txt") == "c.txt"


def test_detect_outside_a_repository_or_without_git(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    plain = tmp_path / "plain"
    plain.mkdir()
    assert detect(plain) is None
    assert detect(tmp_path / "missing") is None
    repo = init(tmp_path / "repo")
    assert detect(repo / ".git") is None  # inside the git directory, not a work tree
    assert detect(repo) is not None
    monkeypatch.setenv("PATH", str(plain))
    assert detect(repo) is None


def test_failures_are_vcs_errors_and_change_nothing(repo: Path) -> None:
    vcs = GitVcs(repo)
    write(repo, "a.txt", "work in progress\n")
    disk = files(repo)
    for pointer in ("0" * 40, "no-such-ref", "--output=/tmp/x", ""):
        with pytest.raises(VcsFailure) as info:
            vcs.restore(pointer)
        assert info.value.code == VCS_ERROR == "VcsError"
        assert files(repo) == disk
    with pytest.raises(VcsFailure):
        vcs.diff("-R", "HEAD")


def test_a_snapshot_without_an_index_file_starts_from_head(repo: Path) -> None:
    (repo / ".git" / "index").unlink()  # e.g. a clone made with --no-checkout, then files written
    write(repo, "b.txt", "bee, changed\n")
    commit = GitVcs(repo).snapshot("no index")
    assert git(repo, "ls-tree", "-r", "--name-only", commit).split() == [".gitignore", "a.txt", "b.txt", "c.txt"]
    assert git(repo, "show", f"{commit}:b.txt") == "bee, changed\n"
    assert not (repo / ".git" / "index").exists()
