"""Issued gateway tokens, kept in ``_smithers_tokens`` (only their SHA-256 hash is stored).

:func:`issue_token` returns the plaintext once. :func:`stored_token_lookup` plugs the table into
the token-mode :class:`~smithers.gateway.auth.Authenticator`, so a stored grant works on the next
request and a revoked or expired one is refused on the next request.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Final

from smithers.errors import InvalidInputError
from smithers.gateway.auth import GrantLookup, hash_token, token_id_for
from smithers.store.rows import now_ms as clock_ms
from smithers.store.store import Row, Store

TOKEN_PREFIX: Final = "smt_"
DEFAULT_ROLE: Final = "operator"


@dataclass(frozen=True, slots=True)
class IssuedToken:
    """A freshly issued token; ``token`` is the plaintext and is never stored."""

    token: str
    token_id: str
    role: str
    scopes: tuple[str, ...]
    user_id: str | None
    label: str | None
    created_at_ms: int
    expires_at_ms: int | None


def _clean_scopes(scopes: Sequence[str]) -> tuple[str, ...]:
    if isinstance(scopes, str) or not all(isinstance(s, str) for s in scopes):
        raise InvalidInputError("scopes must be a list of strings.")
    cleaned = tuple(s.strip() for s in scopes if s.strip())
    if not cleaned:
        raise InvalidInputError("a token needs at least one scope.")
    return cleaned


def issue_token(
    store: Store,
    *,
    scopes: Sequence[str],
    role: str = DEFAULT_ROLE,
    user_id: str | None = None,
    label: str | None = None,
    expires_at_ms: int | None = None,
    ttl_ms: int | None = None,
    now_ms: int | None = None,
) -> IssuedToken:
    """Create a token; returns its plaintext (shown once). ``ttl_ms`` sets the expiry from now."""
    now = clock_ms() if now_ms is None else now_ms
    if ttl_ms is not None:
        if ttl_ms <= 0:
            raise InvalidInputError("ttl must be greater than 0.")
        expires_at_ms = now + ttl_ms
    if not role or not role.strip():
        raise InvalidInputError("role must be a non-empty string.")
    cleaned = _clean_scopes(scopes)
    token = TOKEN_PREFIX + secrets.token_urlsafe(32)
    issued = IssuedToken(token, token_id_for(token), role, cleaned, user_id, label, now, expires_at_ms)
    with store.write() as tx:
        tx.insert_token(
            token_id=issued.token_id,
            token_hash=hash_token(token),
            role=role,
            scopes_json=json.dumps(list(cleaned)),
            user_id=user_id,
            label=label,
            created_at_ms=now,
            expires_at_ms=expires_at_ms,
            revoked_at_ms=None,
        )
    return issued


def _public(row: Row) -> dict[str, Any]:
    return {
        "tokenId": row["token_id"],
        "role": row["role"],
        "scopes": json.loads(row["scopes_json"]),
        "userId": row["user_id"],
        "label": row["label"],
        "createdAtMs": row["created_at_ms"],
        "expiresAtMs": row["expires_at_ms"],
        "revokedAtMs": row["revoked_at_ms"],
    }


def list_tokens(store: Store, *, include_inactive: bool = True, now_ms: int | None = None) -> list[dict[str, Any]]:
    """Every stored token without its hash, oldest first; optionally only the usable ones."""
    now = clock_ms() if now_ms is None else now_ms
    with store.read() as tx:
        out = [_public(row) for row in tx.list_tokens()]
    if include_inactive:
        return out
    return [
        tok
        for tok in out
        if (tok["revokedAtMs"] is None or tok["revokedAtMs"] > now)
        and (tok["expiresAtMs"] is None or tok["expiresAtMs"] > now)
    ]


def revoke_token(store: Store, token_id: str, *, now_ms: int | None = None) -> bool:
    """Revoke a token by id; False when there is no such token. Revoking twice keeps the first time."""
    now = clock_ms() if now_ms is None else now_ms
    with store.write() as tx:
        row = tx.get_token(token_id)
        if row is None:
            return False
        if row["revoked_at_ms"] is None:
            tx.revoke_token(token_id, now)
    return True


def lookup_token(store: Store, token: str) -> dict[str, Any] | None:
    """The grant of a stored token, in the shape of a configured token grant (docs/protocol.md#token-mode), or None."""
    with store.read() as tx:
        row = tx.find_token(hash_token(token))
    if row is None:
        return None
    grant: dict[str, Any] = {
        "role": row["role"],
        "scopes": json.loads(row["scopes_json"]),
        "tokenId": row["token_id"],
    }
    if row["user_id"] is not None:
        grant["userId"] = row["user_id"]
    if row["expires_at_ms"] is not None:
        grant["expiresAtMs"] = row["expires_at_ms"]
    if row["revoked_at_ms"] is not None:
        grant["revokedAtMs"] = row["revoked_at_ms"]
    return grant


def stored_token_lookup(store: Store) -> GrantLookup:
    """A ``lookup_stored_token`` hook for :class:`~smithers.gateway.auth.Authenticator`."""

    def lookup(token: str) -> dict[str, Any] | None:
        return lookup_token(store, token)

    return lookup
