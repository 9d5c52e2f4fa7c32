"""The curated public surface: ``smithers.__all__`` is sorted, complete and importable."""

from __future__ import annotations

import ast
import importlib.util
import inspect
from pathlib import Path

import smithers

INIT = Path(smithers.__file__)

# The names the design document promises users (design.md, "Public Python API").
CONTRACT = [
    "workflow",
    "Sequence",
    "Parallel",
    "Branch",
    "Loop",
    "Task",
    "Approval",
    "WaitForEvent",
    "Timer",
    "run",
    "run_async",
]


def _imported_names() -> dict[str, str]:
    """Every name bound by an import statement in smithers/__init__.py → the module it comes from."""
    tree = ast.parse(INIT.read_text())
    names: dict[str, str] = {}
    # Imports under ``if TYPE_CHECKING:`` count: they name what ``__getattr__`` imports lazily.
    body = [n for node in tree.body for n in (node.body if isinstance(node, ast.If) else [node])]
    for node in body:
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                names[alias.asname or alias.name] = node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = alias.name
    return names


def test_all_is_a_sorted_list_of_unique_strings() -> None:
    names = smithers.__all__
    assert isinstance(names, list)
    assert all(isinstance(n, str) for n in names)
    assert names == sorted(names)
    assert len(set(names)) == len(names)


def test_every_name_in_all_is_importable() -> None:
    missing = [name for name in smithers.__all__ if not hasattr(smithers, name)]
    assert missing == []
    namespace: dict[str, object] = {}
    exec("from smithers import *", namespace)
    assert sorted(n for n in namespace if n != "__builtins__") == sorted(smithers.__all__)


def test_every_public_class_and_function_imported_by_init_is_listed() -> None:
    imported = _imported_names()
    assert imported, "smithers/__init__.py imports nothing"
    public = {
        name
        for name, module in imported.items()
        if not name.startswith("_")
        and module != "typing"
        and (inspect.isclass(getattr(smithers, name)) or inspect.isfunction(getattr(smithers, name)))
    }
    assert sorted(public - set(smithers.__all__)) == []


def test_all_lists_only_what_init_imports_or_defines() -> None:
    tree = ast.parse(INIT.read_text())
    defined = {
        node.name for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
    }
    known = set(_imported_names()) | defined
    assert sorted(set(smithers.__all__) - known) == []


def test_exported_objects_come_from_the_package() -> None:
    for name in smithers.__all__:
        obj = getattr(smithers, name)
        module = getattr(obj, "__module__", None)
        if module is not None and (inspect.isclass(obj) or inspect.isfunction(obj)):
            assert module.split(".")[0] == "smithers", (name, module)


def test_design_contract_names_exist() -> None:
    expected = list(CONTRACT)
    if importlib.util.find_spec("smithers.gateway.server") is not None:
        expected.append("Gateway")
    missing = [name for name in expected if not hasattr(smithers, name)]
    assert missing == []
    assert [name for name in expected if name not in smithers.__all__] == []


def test_contract_callables_and_node_types() -> None:
    for name in ("workflow", "run", "run_async"):
        assert callable(getattr(smithers, name)), name
    assert inspect.iscoroutinefunction(smithers.run_async)
    assert not inspect.iscoroutinefunction(smithers.run)
    from smithers.engine.dsl import Node

    for name in ("Sequence", "Parallel", "Branch", "Loop", "Task", "Approval", "WaitForEvent", "Timer"):
        cls = getattr(smithers, name)
        assert inspect.isclass(cls) and issubclass(cls, Node), name
