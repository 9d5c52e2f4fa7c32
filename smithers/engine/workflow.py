"""Workflow definitions: ``@workflow("key")`` over a render function."""

from __future__ import annotations

import hashlib
import inspect
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, overload

from pydantic import BaseModel, ValidationError

from smithers.engine.context import Ctx
from smithers.engine.dsl import Node
from smithers.engine.usage import check_budget
from smithers.errors import InvalidInputError

RenderFn = Callable[[Ctx], Node | None]


class Workflow:
    """A render function plus its key, optional input model and descriptive metadata."""

    def __init__(
        self,
        key: str,
        render: RenderFn,
        *,
        input: type[BaseModel] | None = None,
        name: str | None = None,
        description: str | None = None,
        workdir: str | os.PathLike[str] | None = None,
        token_budget: int | None = None,
    ):
        if not key or not isinstance(key, str):
            raise ValueError("a workflow needs a non-empty string key")
        self.key = key
        self.render = render
        self.input_model = input
        self.readable_name = name
        self.description = description or (inspect.getdoc(render) or "").split("\n\n")[0] or None
        self.path = _source_path(render)
        self._source_hash: str | None = None
        self.workdir = None if workdir is None else str(workdir)
        """The directory its tasks change. When it is a git repository, every compute attempt records a
        snapshot of it, so node diffs can be shown and a rewind restores it
        (docs/engine.md#working-directory-snapshots)."""
        self.token_budget = check_budget(token_budget)
        """Input plus output tokens the agent tasks of one run may use (docs/engine.md#cost-and-limits)."""

    def validate_input(self, data: Any) -> dict[str, Any]:
        """The run input as a plain dict, checked against the input model if there is one."""
        if data is None:
            data = {}
        if not isinstance(data, dict):
            raise InvalidInputError("workflow input must be a JSON object")
        if self.input_model is None:
            return data
        try:
            return self.input_model.model_validate(data).model_dump(mode="json")
        except ValidationError as exc:
            raise InvalidInputError(
                f"invalid input for workflow {self.key!r}: {_first_error(exc)}",
                details={"errors": exc.errors(include_url=False, include_context=False, include_input=False)},
            ) from exc

    def source_hash(self) -> str | None:
        """sha256 of the file that defines the render function (recorded on runs; read once)."""
        if self._source_hash is None and self.path is not None:
            try:
                self._source_hash = hashlib.sha256(Path(self.path).read_bytes()).hexdigest()
            except OSError:
                return None
        return self._source_hash

    def __call__(self, ctx: Ctx) -> Node | None:
        return self.render(ctx)

    def __repr__(self) -> str:
        return f"Workflow({self.key!r})"


def _source_path(fn: Callable[..., Any]) -> str | None:
    try:
        path = inspect.getsourcefile(fn)
    except TypeError:
        return None
    return str(Path(path).resolve()) if path else None


def _first_error(exc: ValidationError) -> str:
    err = exc.errors()[0]
    where = ".".join(str(p) for p in err.get("loc", ())) or "input"
    return f"{where}: {err.get('msg', 'invalid')}"


@overload
def workflow(key: RenderFn) -> Workflow: ...
@overload
def workflow(
    key: str,
    *,
    input: type[BaseModel] | None = None,
    name: str | None = None,
    description: str | None = None,
    workdir: str | os.PathLike[str] | None = None,
    token_budget: int | None = None,
) -> Callable[[RenderFn], Workflow]: ...


def workflow(
    key: Any,
    *,
    input: type[BaseModel] | None = None,
    name: str | None = None,
    description: str | None = None,
    workdir: str | os.PathLike[str] | None = None,
    token_budget: int | None = None,
) -> Any:
    """Declare a workflow: ``@workflow("hello")`` (or bare ``@workflow``, keyed by function name)."""
    if callable(key) and not isinstance(key, str):
        return Workflow(key.__name__, key)

    def decorate(fn: RenderFn) -> Workflow:
        return Workflow(
            key, fn, input=input, name=name, description=description, workdir=workdir, token_budget=token_budget
        )

    return decorate
