"""Scratch PostgreSQL databases for the benches: each bench gets fresh ones and drops them at the end."""

from __future__ import annotations

import contextlib
import uuid

import psycopg

CREATED: list[tuple[str, str]] = []
"""(admin URL, name) of the databases made so far, dropped by :func:`drop_created`."""


def _libpq(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def fresh_pg(admin: str) -> str:
    """A new empty database on the server of ``admin`` (a URL with the right to create one)."""
    name = f"bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(_libpq(admin), autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    CREATED.append((admin, name))
    return admin.rsplit("/", 1)[0] + "/" + name


def drop_created() -> None:
    """Drop every database :func:`fresh_pg` made (closing what still uses them)."""
    while CREATED:
        admin, name = CREATED.pop()
        with contextlib.suppress(psycopg.Error), psycopg.connect(_libpq(admin), autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
