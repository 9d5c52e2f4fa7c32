"""Loading workflows from files: ``path/to/file.py[:ATTR]``."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

from smithers.engine.workflow import Workflow
from smithers.errors import WORKFLOW_NOT_FOUND, SmithersError

_loaded: dict[str, ModuleType] = {}


def split_target(target: str) -> tuple[str, str | None]:
    """``file.py:attr`` → (``file.py``, ``attr``); a Windows drive letter is not an attribute."""
    path, sep, attr = target.rpartition(":")
    if not sep or not path or "/" in attr or attr.endswith(".py"):
        return target, None
    return path, attr


def load_module(path: str) -> ModuleType:
    """Import a Python file by path (once per process)."""
    file = Path(path).expanduser().resolve()
    if not file.is_file():
        raise SmithersError(f"workflow file not found: {path}", code=WORKFLOW_NOT_FOUND)
    key = str(file)
    if key in _loaded:
        return _loaded[key]
    name = "smithers_user_" + str(abs(hash(key)))
    spec = importlib.util.spec_from_file_location(name, file)
    if spec is None or spec.loader is None:
        raise SmithersError(f"cannot import {path}", code=WORKFLOW_NOT_FOUND)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    sys.path.insert(0, str(file.parent))
    try:
        spec.loader.exec_module(module)
    except SmithersError:
        raise
    except Exception as exc:
        sys.modules.pop(name, None)
        raise SmithersError(f"cannot import {path}: {type(exc).__name__}: {exc}", code=WORKFLOW_NOT_FOUND) from exc
    finally:
        sys.path.remove(str(file.parent))
    _loaded[key] = module
    return module


def workflows_in(module: ModuleType) -> dict[str, Workflow]:
    """Every ``@workflow`` defined at the top level of a module, by key."""
    return {v.key: v for v in vars(module).values() if isinstance(v, Workflow)}


def load_workflow(target: str, key: str | None = None) -> Workflow:
    """The workflow named by ``file.py:ATTR`` (an attribute name or a workflow key), or the only one."""
    path, attr = split_target(target)
    module = load_module(path)
    found = workflows_in(module)
    wanted = attr or key
    if wanted is not None:
        value: Any = getattr(module, wanted, None)
        if isinstance(value, Workflow):
            return value
        if wanted in found:
            return found[wanted]
        raise SmithersError(
            f"{path} has no workflow {wanted!r} (it has: {', '.join(sorted(found)) or 'none'})", code=WORKFLOW_NOT_FOUND
        )
    if len(found) == 1:
        return next(iter(found.values()))
    if not found:
        raise SmithersError(f"{path} defines no @workflow", code=WORKFLOW_NOT_FOUND)
    raise SmithersError(
        f"{path} defines several workflows ({', '.join(sorted(found))}); name one as {path}:NAME",
        code=WORKFLOW_NOT_FOUND,
    )
