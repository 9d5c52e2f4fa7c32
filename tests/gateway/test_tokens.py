"""Issued tokens (``_smithers_tokens``): issue, list, revoke, and their use over both transports."""

from __future__ import annotations

from typing import Any

import pytest

from smithers.errors import InvalidInputError
from smithers.gateway.auth import hash_token, token_id_for
from smithers.gateway.tokens import issue_token, list_tokens, lookup_token, revoke_token
from smithers.store import schema as t
from smithers.store.rows import now_ms
from smithers.store.store import Store
from tests.databases import Databases
from tests.gateway.support import Live


@pytest.fixture
def store(databases: Databases) -> Any:
    s = Store(databases.new("tokens"))
    yield s
    s.close()


def test_issue_stores_only_the_hash(store: Store) -> None:
    issued = issue_token(store, scopes=["run:read", " run:write "], user_id="user:a", label="ci", ttl_ms=60_000)
    assert issued.token.startswith("smt_") and len(issued.token) > 40
    assert issued.token_id == token_id_for(issued.token)
    assert issued.scopes == ("run:read", "run:write") and issued.expires_at_ms == issued.created_at_ms + 60_000
    with store.read() as tx:
        [row] = tx.select(t.tokens, {"token_id": issued.token_id})
    assert row["token_hash"] == hash_token(issued.token)
    assert issued.token not in [str(v) for v in row.values()]


def test_list_and_revoke(store: Store) -> None:
    first = issue_token(store, scopes=["*"], now_ms=1_000)
    second = issue_token(store, scopes=["run:read"], role="viewer", now_ms=2_000, expires_at_ms=3_000)
    listed = list_tokens(store)
    assert [tok["tokenId"] for tok in listed] == [first.token_id, second.token_id]
    assert "tokenHash" not in listed[0] and listed[1]["role"] == "viewer"
    assert [tok["tokenId"] for tok in list_tokens(store, include_inactive=False, now_ms=5_000)] == [first.token_id]
    assert revoke_token(store, first.token_id, now_ms=6_000) is True
    assert revoke_token(store, first.token_id, now_ms=7_000) is True
    assert list_tokens(store)[0]["revokedAtMs"] == 6_000
    assert revoke_token(store, "missing") is False


def test_lookup_gives_a_grant(store: Store) -> None:
    issued = issue_token(store, scopes=["run:read"], role="viewer", user_id="user:v")
    assert lookup_token(store, issued.token) == {
        "role": "viewer",
        "scopes": ["run:read"],
        "tokenId": issued.token_id,
        "userId": "user:v",
    }
    assert lookup_token(store, issued.token + "x") is None


@pytest.mark.parametrize(
    "bad", [{"scopes": []}, {"scopes": ["  "]}, {"scopes": "run:read"}, {"scopes": ["*"], "role": ""}]
)
def test_issue_refuses_bad_grants(store: Store, bad: dict[str, Any]) -> None:
    with pytest.raises(InvalidInputError):
        issue_token(store, **bad)


def test_stored_tokens_over_http(token_live: Live) -> None:
    store = token_live.gateway.store
    issued = issue_token(store, scopes=["run:read"], user_id="user:ci")
    headers = {"authorization": f"Bearer {issued.token}"}
    assert token_live.http.post("/rpc", json={"method": "listRuns"}, headers=headers).status_code == 200
    denied = token_live.http.post(
        "/rpc", json={"method": "launchRun", "params": {"workflow": "hello"}}, headers=headers
    )
    assert denied.status_code == 403
    revoke_token(store, issued.token_id)
    revoked = token_live.http.post("/rpc", json={"method": "listRuns"}, headers=headers)
    assert revoked.status_code == 401
    assert revoked.json()["error"]["message"] == "Token has been revoked"
    assert revoked.json()["error"]["refresh"] == "smithers token issue"


def test_expired_stored_token_is_refused(token_live: Live) -> None:
    issued = issue_token(token_live.gateway.store, scopes=["*"], expires_at_ms=now_ms() - 1)
    response = token_live.http.post(
        "/rpc", json={"method": "health"}, headers={"authorization": f"Bearer {issued.token}"}
    )
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "Token expired; issue a refreshed token."


def test_stored_tokens_over_websocket_are_rechecked(token_live: Live) -> None:
    store = token_live.gateway.store
    issued = issue_token(store, scopes=["run:read"], user_id="user:ws")
    client = token_live.ws(connect_now=True, token=issued.token)
    assert client.hello["payload"]["auth"]["tokenId"] == issued.token_id
    assert client.hello["payload"]["auth"]["userId"] == "user:ws"
    assert client.request("listRuns")["ok"] is True
    revoke_token(store, issued.token_id)
    refused = client.request("listRuns")
    assert refused["error"]["code"] == "UNAUTHORIZED" and refused["error"]["message"] == "Token has been revoked"
    assert client.request("health")["error"]["message"] == "Connect first"
    client.close()


def test_configured_tokens_need_no_database_lookup(token_live: Live) -> None:
    assert token_live.gateway.is_stored_token("operator-token") is False
    assert token_live.gateway.is_stored_token("smt_anything") is True
