"""Authentication: token sources, token/JWT/trusted-proxy/open modes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from collections.abc import Callable, Mapping
from typing import Any

import jwt
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from smithers.errors import GatewayError, InvalidInputError
from smithers.gateway import auth as a
from smithers.gateway.auth import Authenticator, Principal
from smithers.gateway.jsvalues import encode_json, js_trim
from smithers.gateway.protocol import (
    error_frame,
)

REFRESH = {"refresh": "smithers token issue"}
NOW_MS = 1_710_000_000_000
NOW = NOW_MS // 1000
SECRET = "test-secret-that-is-long-enough-for-hs512-keys-0123456789abcdef!"
ISSUER = "https://auth.example"
CLAIMS: dict[str, Any] = {
    "iss": ISSUER,
    "aud": "smithers",
    "sub": "user:will",
    "scope": "run:read run:write",
    "exp": NOW + 3600,
}
JWT_CONFIG: dict[str, Any] = {"mode": "jwt", "issuer": ISSUER, "audience": "smithers", "secret": SECRET}


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def segment(value: Any) -> str:
    return b64url(json.dumps(value, separators=(",", ":")).encode())


def sign(signing_input: str, secret: str = SECRET) -> str:
    return b64url(hmac.new(secret.encode(), signing_input.encode(), hashlib.sha256).digest())


HS256_HEADER = {"alg": "HS256", "typ": "JWT"}


def mint(payload: Any, *, header: Any = HS256_HEADER, secret: str = SECRET) -> str:
    signing_input = f"{segment(header)}.{segment(payload)}"
    return f"{signing_input}.{sign(signing_input, secret)}"


def claims(**changes: Any) -> dict[str, Any]:
    out = {**CLAIMS, **changes}
    return {key: value for key, value in out.items() if value is not ...}


def bearer(token: str) -> dict[str, str]:
    return {"authorization": f"Bearer {token}"}


def unauthorized(action: Callable[[], object], message: str, details: dict[str, Any] | None = None) -> None:
    with pytest.raises(GatewayError) as info:
        action()
    assert (info.value.code, info.value.message, info.value.details) == ("UNAUTHORIZED", message, details)
    assert info.value.http_status == 401


def jwt_auth(**config: Any) -> Authenticator:
    return Authenticator({**JWT_CONFIG, **config})


def verify(token: str, now_ms: int = NOW_MS, **config: Any) -> Principal:
    return jwt_auth(**config).authenticate_http(bearer(token), now_ms)


# -- token ids ---------------------------------------------------------------------------------
def test_conformance_token_id() -> None:
    assert a.token_id_for("operator-token") == "0850123315d21ab9"
    assert a.hash_token("operator-token") == hashlib.sha256(b"operator-token").hexdigest()
    assert a.hash_token("operator-token").startswith("0850123315d21ab9")


# -- token sources ------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("headers", "token"),
    [
        ({"authorization": "Bearer abc"}, "abc"),
        ({"authorization": "bearer abc"}, "abc"),
        ({"authorization": "BEARER abc"}, "abc"),
        ({"authorization": "BeArEr abc"}, "abc"),
        ({"authorization": "Bearer  abc"}, " abc"),
        ({"authorization": "Basic abc"}, "Basic abc"),
        ({"authorization": "raw-token"}, "raw-token"),
        ({"authorization": "Bearer"}, "Bearer"),
        ({"authorization": "Bearer "}, None),
        ({"authorization": ""}, None),
        ({}, None),
        ({"x-smithers-key": "key", "authorization": "Bearer abc"}, "key"),
        ({"x-smithers-key": "", "authorization": "Bearer abc"}, "abc"),
        ({"X-Smithers-Key": "key"}, "key"),
        ({"Authorization": "Bearer abc"}, "abc"),
        ({"AUTHORIZATION": "bearer xyz"}, "xyz"),
    ],
)
def test_http_token_sources(headers: dict[str, str], token: str | None) -> None:
    assert a.token_from_headers(headers) == token


@pytest.mark.parametrize(
    ("params", "token"),
    [
        ({}, None),
        ({"auth": {}}, None),
        ({"auth": {"token": "t"}}, "t"),
        ({"auth": {"token": ""}}, None),
        ({"auth": {"token": 5}}, None),
        ({"auth": {"password": "p"}}, None),
        ({"auth": []}, None),
    ],
)
def test_connect_token_source(params: dict[str, Any], token: str | None) -> None:
    assert a.token_from_connect(params) == token


@pytest.mark.parametrize("auth", [None, "t", 5, True])
def test_connect_auth_that_is_not_an_object_is_a_bad_request(auth: Any) -> None:
    with pytest.raises(GatewayError, match=r"connect params\.auth must be an object"):
        a.token_from_connect({"auth": auth})
    with pytest.raises(GatewayError, match=r"connect params\.auth must be an object"):
        Authenticator(None).authenticate_connect({"auth": auth}, {}, NOW_MS)


def test_node_headers() -> None:
    headers = a.node_headers(
        [
            (b"X-User-Scopes", b"run:read"),
            ("x-user-scopes", "run:write"),
            ("Authorization", "Bearer first"),
            ("authorization", "Bearer second"),
            (b"Origin", b"https://a"),
        ]
    )
    assert headers == {
        "x-user-scopes": "run:read, run:write",
        "authorization": "Bearer first",
        "origin": "https://a",
    }


def test_header_value_is_case_insensitive() -> None:
    assert a.header_value({"X-User-Id": "u"}, "x-user-id") == "u"
    assert a.header_value({"x-user-id": ""}, "x-user-id") == ""
    assert a.header_value({}, "x-user-id") is None


# -- no auth ------------------------------------------------------------------------------
def test_no_auth_lets_everyone_in() -> None:
    auth = Authenticator(None)
    expected = Principal("operator", ("*",), None, None)
    assert auth.mode == "none"
    assert auth.authenticate_http({}, NOW_MS) == expected
    assert auth.authenticate_http(bearer("anything"), NOW_MS) == expected
    assert auth.authenticate_connect({"auth": {"token": "x"}}, {}, NOW_MS) == expected
    assert expected == a.OPEN_PRINCIPAL


@pytest.mark.parametrize("config", [{}, {"mode": "ldap"}, {"mode": None}, {"mode": "TOKEN"}])
def test_unsupported_modes_refuse_everyone(config: dict[str, Any]) -> None:
    auth = Authenticator(config)
    unauthorized(lambda: auth.authenticate_http(bearer("t"), NOW_MS), "Unsupported auth mode")
    unauthorized(lambda: auth.authenticate_connect({"auth": {"token": "t"}}, {}, NOW_MS), "Unsupported auth mode")


# -- token mode ---------------------------------------------------------------------------
TOKENS: dict[str, Any] = {
    "operator-token": {"role": "operator", "scopes": ["run:read", "run:write"], "userId": "user:will"},
    "named": {"role": "admin", "scopes": ["*"], "tokenId": "tok-1"},
    "expired": {"role": "operator", "scopes": ["run:read"], "expiresAtMs": NOW_MS},
    "revoked": {"role": "operator", "scopes": [], "revokedAtMs": NOW_MS, "expiresAtMs": NOW_MS - 1},
    "later": {
        "role": "operator",
        "scopes": ["run:read"],
        "revokedAtMs": NOW_MS + 1,
        "expiresAtMs": NOW_MS + 1,
    },
    "odd": {"scopes": ["run:read", 5, None], "role": 7, "userId": 9, "tokenId": 42},
    "broken": None,
}
TOKEN_CONFIG = {"mode": "token", "tokens": TOKENS}


def test_token_grant() -> None:
    auth = Authenticator(TOKEN_CONFIG)
    assert auth.mode == "token"
    assert auth.authenticate_http(bearer("operator-token"), NOW_MS) == Principal(
        "operator", ("run:read", "run:write"), "user:will", "0850123315d21ab9"
    )
    assert auth.authenticate_http({"x-smithers-key": "named"}, NOW_MS) == Principal("admin", ("*",), None, "tok-1")


def test_token_grant_boundaries() -> None:
    auth = Authenticator(TOKEN_CONFIG)
    principal = auth.authenticate_http(bearer("later"), NOW_MS)
    assert principal.expires_at_ms == NOW_MS + 1
    unauthorized(lambda: auth.authenticate_http(bearer("later"), NOW_MS + 1), "Token has been revoked", REFRESH)


def test_token_grant_with_odd_types() -> None:
    principal = Authenticator(TOKEN_CONFIG).authenticate_http(bearer("odd"), NOW_MS)
    assert principal == Principal("operator", ("run:read",), None, "42")


@pytest.mark.parametrize(
    ("headers", "message", "details"),
    [
        ({}, "A bearer token is required", None),
        (bearer(""), "A bearer token is required", None),
        (bearer("nope"), "Invalid token", None),
        (bearer("broken"), "Invalid token", None),
        (bearer("__proto__"), "Invalid token", None),
        (bearer("constructor"), "Invalid token", None),
        (bearer("toString"), "Invalid token", None),
        (bearer("OPERATOR-TOKEN"), "Invalid token", None),
        (bearer("revoked"), "Token has been revoked", REFRESH),
        (bearer("expired"), "Token expired; issue a refreshed token.", REFRESH),
    ],
)
def test_token_failures(headers: dict[str, str], message: str, details: dict[str, Any] | None) -> None:
    auth = Authenticator(TOKEN_CONFIG)
    unauthorized(lambda: auth.authenticate_http(headers, NOW_MS), message, details)


def test_conformance_expired_token_wire_body() -> None:
    with pytest.raises(GatewayError) as info:
        Authenticator(TOKEN_CONFIG).authenticate_http(bearer("expired"), NOW_MS)
    assert info.value.http_status == 401
    assert encode_json(error_frame("req-1", info.value)) == (
        '{"type":"res","id":"req-1","ok":false,"apiVersion":"v1",'
        '"error":{"version":"v1","code":"UNAUTHORIZED","message":"Token expired; issue a refreshed token.",'
        '"refresh":"smithers token issue"}}'
    )


def test_token_mode_over_websocket_ignores_upgrade_headers() -> None:
    auth = Authenticator(TOKEN_CONFIG)
    principal = auth.authenticate_connect({"auth": {"token": "operator-token"}}, bearer("named"), NOW_MS)
    assert principal.user_id == "user:will"
    unauthorized(
        lambda: auth.authenticate_connect({"client": {}}, bearer("named"), NOW_MS),
        "A bearer token is required",
    )


def test_stored_tokens() -> None:
    stored: dict[str, dict[str, Any]] = {
        a.hash_token("db-token"): {"role": "operator", "scopes": ["run:read"], "userId": "u"}
    }
    stored[a.hash_token("db-expired")] = {"role": "operator", "scopes": [], "expiresAtMs": 1}
    stored[a.hash_token("named")] = {"role": "hacker", "scopes": ["*"]}
    seen: list[str] = []

    def lookup(token: str) -> Mapping[str, Any] | None:
        seen.append(token)
        return stored.get(a.hash_token(token))

    auth = Authenticator(TOKEN_CONFIG, lookup_stored_token=lookup)
    assert auth.authenticate_http(bearer("db-token"), NOW_MS) == Principal(
        "operator", ("run:read",), "u", a.token_id_for("db-token")
    )
    assert auth.authenticate_http(bearer("named"), NOW_MS).role == "admin"  # configured grants win
    assert seen == ["db-token"]
    unauthorized(
        lambda: auth.authenticate_http(bearer("db-expired"), NOW_MS),
        "Token expired; issue a refreshed token.",
        REFRESH,
    )
    unauthorized(lambda: auth.authenticate_http(bearer("unknown"), NOW_MS), "Invalid token")
    only_stored = Authenticator({"mode": "token"}, lookup_stored_token=lookup)
    assert only_stored.authenticate_http(bearer("db-token"), NOW_MS).user_id == "u"


def test_stored_tokens_are_not_consulted_in_other_modes() -> None:
    def lookup(token: str) -> Mapping[str, Any] | None:
        raise AssertionError("not expected")

    Authenticator(None, lookup_stored_token=lookup).authenticate_http(bearer("x"), NOW_MS)
    Authenticator({"mode": "trusted-proxy"}, lookup_stored_token=lookup).authenticate_http(bearer("x"), NOW_MS, "::1")
    jwt_mode = Authenticator(JWT_CONFIG, lookup_stored_token=lookup)
    unauthorized(lambda: jwt_mode.authenticate_http(bearer("x"), NOW_MS), "JWT must have three segments")


@settings(max_examples=200)
@given(st.dictionaries(st.sampled_from(["authorization", "x-smithers-key", "origin", "x-user-id"]), st.text()))
def test_token_mode_only_raises_unauthorized(headers: dict[str, str]) -> None:
    try:
        principal = Authenticator(TOKEN_CONFIG).authenticate_http(headers, NOW_MS)
    except GatewayError as error:
        assert error.code == "UNAUTHORIZED"
    else:
        assert a.token_from_headers(headers) in {"operator-token", "named", "odd", "later"}
        assert principal.token_id is not None


# -- JWT mode -----------------------------------------------------------------------------
def test_valid_jwt() -> None:
    token = mint(CLAIMS)
    assert verify(token) == Principal(
        "operator", ("run:read", "run:write"), "user:will", a.token_id_for(token), (NOW + 3600) * 1000
    )


def test_jwt_minted_by_pyjwt_is_accepted() -> None:
    token = jwt.encode(CLAIMS, SECRET, algorithm="HS256")
    assert verify(token).user_id == "user:will"
    assert jwt_auth().authenticate_connect({"auth": {"token": token}}, {}, NOW_MS).user_id == "user:will"


def test_missing_jwt() -> None:
    unauthorized(lambda: jwt_auth().authenticate_http({}, NOW_MS), "A bearer token is required")
    unauthorized(lambda: jwt_auth().authenticate_connect({}, {}, NOW_MS), "A bearer token is required")


@pytest.mark.parametrize("token", ["abc", "a.b", "a..c", ".b.c", "a.b.", "..", "...", "a.b..d"])
def test_jwt_segments(token: str) -> None:
    unauthorized(lambda: verify(token), "JWT must have three segments")


def test_extra_segments_are_ignored_and_hashed() -> None:
    token = mint(CLAIMS) + ".extra.stuff"
    assert verify(token).token_id == a.token_id_for(token)


NAN_PAYLOAD = b64url(b'{"a":NaN}')
TRUNCATED_HEADER = b64url(b'{"alg":"HS256"')


@pytest.mark.parametrize(
    "token",
    [
        "!!!.e30.sig",
        f"{segment({'alg': 'HS256'})}.{b64url(b'not json')}.sig",
        f"{segment([1])}.{segment(CLAIMS)}.sig",
        f"{segment({'alg': 'HS256'})}.{segment(None)}.sig",
        f"{segment({'alg': 'HS256'})}.{segment('x')}.sig",
        f"{segment({'alg': 'HS256'})}.{NAN_PAYLOAD}.sig",
        f"{TRUNCATED_HEADER}.{segment(CLAIMS)}.sig",
        f"{segment({'alg': 'HS256'})}.{b64url(b'[' * 5000)}.sig",
    ],
)
def test_jwt_json(token: str) -> None:
    unauthorized(lambda: verify(token), "JWT header or payload was not valid JSON")


@pytest.mark.parametrize(
    "header",
    [
        {"alg": "HS512"},
        {"alg": "HS384"},
        {"alg": "RS256"},
        {"alg": "ES256"},
        {"alg": "none"},
        {"alg": "None"},
        {"alg": "hs256"},
        {"alg": "HS256 "},
        {"alg": ["HS256"]},
        {"typ": "JWT"},
        {},
    ],
)
def test_jwt_algorithms_other_than_hs256(header: dict[str, Any]) -> None:
    # Signed with the right secret over the right input: only the algorithm is wrong.
    unauthorized(lambda: verify(mint(CLAIMS, header=header)), "Unsupported JWT algorithm")


def test_pyjwt_tokens_with_other_algorithms() -> None:
    unauthorized(lambda: verify(jwt.encode(CLAIMS, SECRET, algorithm="HS512")), "Unsupported JWT algorithm")
    unsigned = jwt.encode(CLAIMS, None, algorithm="none")
    assert unsigned.endswith(".")
    unauthorized(lambda: verify(unsigned), "JWT must have three segments")
    unauthorized(lambda: verify(unsigned + "c2ln"), "Unsupported JWT algorithm")
    forged_rs = f"{segment({'alg': 'RS256', 'typ': 'JWT'})}.{segment(CLAIMS)}.{b64url(b'x' * 256)}"
    unauthorized(lambda: verify(forged_rs), "Unsupported JWT algorithm")


def test_jwt_signature() -> None:
    good = mint(CLAIMS)
    head, body, sig = good.split(".")
    unauthorized(lambda: verify(mint(CLAIMS, secret=SECRET + "x")), "JWT signature verification failed")
    unauthorized(lambda: verify(f"{head}.{segment(claims(sub='admin'))}.{sig}"), "JWT signature verification failed")
    unauthorized(lambda: verify(f"{head}.{body}.{sig[:-2]}"), "JWT signature verification failed")
    unauthorized(lambda: verify(f"{head}.{body}.{sig}AAAA"), "JWT signature verification failed")
    unauthorized(lambda: verify(f"{head}.{body}.x"), "JWT signature verification failed")
    assert verify(f"{head}.{body}.{sig}=").user_id == "user:will"  # padding is optional and skipped


def test_jwt_base64_leniency() -> None:
    # A payload whose base64url text has "-" or "_", re-encoded in standard base64 ("+", "/").
    payload = next(claims(note="?" * n) for n in range(1, 50) if "_" in segment(claims(note="?" * n)))
    url_body = segment(payload)
    std_body = url_body.replace("-", "+").replace("_", "/")
    assert std_body != url_body
    head = segment({"alg": "HS256"})
    assert verify(f"{head}.{std_body}.{sign(f'{head}.{std_body}')}").user_id == "user:will"
    padded = url_body + "=" * (-len(url_body) % 4)
    assert verify(f"{head}.{padded}.{sign(f'{head}.{padded}')}").user_id == "user:will"
    noisy = url_body[:4] + "!*" + url_body[4:]  # characters outside the alphabet are skipped
    assert verify(f"{head}.{noisy}.{sign(f'{head}.{noisy}')}").user_id == "user:will"


def test_jwt_signature_segment_is_base64url_only() -> None:
    tokens = (mint(claims(n=n)) for n in range(200))
    token = next(t for t in tokens if set(t.split(".")[2]) & {"-", "_"})
    head, body, sig = token.split(".")
    assert verify(token).user_id == "user:will"
    standard = sig.replace("-", "+").replace("_", "/")
    unauthorized(lambda: verify(f"{head}.{body}.{standard}"), "JWT signature verification failed")


@pytest.mark.parametrize("iss", [..., "https://other", ISSUER + "/", ISSUER.upper(), 5, None, [ISSUER]])
def test_jwt_issuer(iss: Any) -> None:
    unauthorized(lambda: verify(mint(claims(iss=iss))), "JWT issuer did not match")


def test_jwt_issuer_must_be_configured() -> None:
    config = {key: value for key, value in JWT_CONFIG.items() if key != "issuer"}
    unauthorized(
        lambda: Authenticator(config).authenticate_http(bearer(mint(CLAIMS)), NOW_MS),
        "JWT issuer did not match",
    )


@pytest.mark.parametrize(
    ("token_aud", "configured", "ok"),
    [
        ("smithers", "smithers", True),
        (["x", "smithers"], "smithers", True),
        (["x", 5, None], "smithers", False),
        ("smithers", ["a", "smithers"], True),
        (["b", "a"], ["a", "c"], True),
        ("other", ["a", "smithers"], False),
        (..., "smithers", False),
        (None, "smithers", False),
        (5, "smithers", False),
        ("SMITHERS", "smithers", False),
        ([], "smithers", False),
        ("smithers", None, False),
        ("smithers", [], False),
    ],
)
def test_jwt_audience(token_aud: Any, configured: Any, ok: bool) -> None:
    token = mint(claims(aud=token_aud))
    if ok:
        assert verify(token, audience=configured).user_id == "user:will"
    else:
        unauthorized(lambda: verify(token, audience=configured), "JWT audience did not match")


def test_jwt_expiry_with_default_skew() -> None:
    assert verify(mint(claims(exp=NOW - 59))).user_id == "user:will"
    unauthorized(lambda: verify(mint(claims(exp=NOW - 60))), "JWT has expired", REFRESH)
    unauthorized(lambda: verify(mint(claims(exp=0))), "JWT has expired", REFRESH)


def test_jwt_expiry_uses_whole_seconds() -> None:
    token = mint(claims(exp=NOW))
    assert verify(token, now_ms=NOW * 1000 - 1, clockSkewSeconds=0).user_id == "user:will"
    unauthorized(lambda: verify(token, now_ms=NOW * 1000, clockSkewSeconds=0), "JWT has expired", REFRESH)
    unauthorized(lambda: verify(token, now_ms=NOW * 1000 + 999, clockSkewSeconds=0), "JWT has expired", REFRESH)


@pytest.mark.parametrize(("skew", "effective"), [(0, 0), (10, 10), (-5, 0), (2.5, 2.5), ("30", 60), (None, 60)])
def test_jwt_clock_skew(skew: Any, effective: float) -> None:
    edge = NOW - effective
    unauthorized(lambda: verify(mint(claims(exp=edge)), clockSkewSeconds=skew), "JWT has expired", REFRESH)
    assert verify(mint(claims(exp=edge + 1)), clockSkewSeconds=skew).user_id == "user:will"


@pytest.mark.parametrize("exp", [..., "tomorrow", None, True, [NOW + 10], {"at": NOW + 10}])
def test_jwt_without_usable_exp_is_refused(exp: Any) -> None:
    unauthorized(lambda: verify(mint(claims(exp=exp))), "JWT is missing exp")
    principal = verify(mint(claims(exp=exp)), requireExp=False)
    assert principal.user_id == "user:will"
    assert principal.expires_at_ms is None


def test_require_exp_only_opts_out_with_false() -> None:
    token = mint(claims(exp=...))
    for value in (0, None, "false", True):
        with pytest.raises(GatewayError) as info:
            verify(token, requireExp=value)
        assert info.value.message == "JWT is missing exp"


def test_jwt_not_before() -> None:
    assert verify(mint(claims(nbf=NOW + 60))).user_id == "user:will"
    unauthorized(lambda: verify(mint(claims(nbf=NOW + 61))), "JWT is not active yet")
    unauthorized(lambda: verify(mint(claims(nbf=NOW + 1)), clockSkewSeconds=0), "JWT is not active yet")
    assert verify(mint(claims(nbf="later"))).user_id == "user:will"


def test_jwt_rule_order() -> None:
    everything_wrong = claims(iss="x", aud="x", exp=1, nbf=NOW + 10_000)
    unauthorized(lambda: verify(mint(everything_wrong, secret="wrong" * 10)), "JWT signature verification failed")
    unauthorized(lambda: verify(mint(everything_wrong)), "JWT issuer did not match")
    unauthorized(lambda: verify(mint(claims(aud="x", exp=1, nbf=NOW + 10_000))), "JWT audience did not match")
    unauthorized(lambda: verify(mint(claims(exp=1, nbf=NOW + 10_000))), "JWT has expired", REFRESH)
    unauthorized(lambda: verify(mint(claims(exp=..., nbf=NOW + 10_000))), "JWT is missing exp")
    bad_alg = mint(everything_wrong, header={"alg": "HS512"}, secret="wrong" * 10)
    unauthorized(lambda: verify(bad_alg), "Unsupported JWT algorithm")


@pytest.mark.parametrize(
    ("scope_claim", "default_scopes", "scopes"),
    [
        ("run:read run:write", None, ("run:read", "run:write")),
        (
            " run:read,run:write ,, cron:read\tx\u3000y ",
            None,
            ("run:read", "run:write", "cron:read", "x", "y"),
        ),
        (["run:read", 5, "", " a "], None, ("run:read", "", " a ")),
        ("", ["read"], ("read",)),
        (" , ", ["read"], ("read",)),
        ([], ["read"], ("read",)),
        (5, ["read"], ("read",)),
        (..., ["read", 7], ("read",)),
        (..., None, ()),
        ("run:admin", ["read"], ("run:admin",)),
    ],
)
def test_jwt_scopes(scope_claim: Any, default_scopes: Any, scopes: tuple[str, ...]) -> None:
    assert verify(mint(claims(scope=scope_claim)), defaultScopes=default_scopes).scopes == scopes


def test_jwt_role_and_user_claims() -> None:
    assert verify(mint(claims(role="admin"))).role == "admin"
    assert verify(mint(claims(role=""))).role == ""
    assert verify(mint(claims(role=5))).role == "operator"
    assert verify(mint(claims(role=5)), defaultRole="viewer").role == "viewer"
    assert verify(mint(CLAIMS), defaultRole="viewer").role == "viewer"
    assert verify(mint(claims(sub=""))).user_id == ""
    assert verify(mint(claims(sub=5))).user_id is None
    assert verify(mint(claims(sub=...))).user_id is None


def test_jwt_custom_claim_names() -> None:
    token = mint(claims(scp=["cron:read"], groups="admin", email="w@example.com"))
    principal = verify(token, scopesClaim="scp", roleClaim="groups", userClaim="email")
    assert principal == Principal("admin", ("cron:read",), "w@example.com", a.token_id_for(token), (NOW + 3600) * 1000)


@pytest.mark.parametrize(
    "secret",
    [None, "", 5, "-----BEGIN PUBLIC KEY-----\nabc\n-----END PUBLIC KEY-----", '{"kty":"oct","k":"x"}'],
)
def test_jwt_secret_must_be_an_hmac_secret(secret: Any) -> None:
    with pytest.raises(InvalidInputError) as info:
        Authenticator({**JWT_CONFIG, "secret": secret})
    assert info.value.code == "INVALID_INPUT"


def test_jwt_secret_may_be_bytes() -> None:
    auth = Authenticator({**JWT_CONFIG, "secret": SECRET.encode()})
    assert auth.authenticate_http(bearer(mint(CLAIMS)), NOW_MS).user_id == "user:will"
    assert auth.mode == "jwt"


TEXTISH = st.text(alphabet=st.sampled_from("abcAB01-_+/=.!é "), max_size=60)


@settings(max_examples=300)
@given(st.one_of(st.text(max_size=80), TEXTISH, st.builds(lambda a, b, c: f"{a}.{b}.{c}", TEXTISH, TEXTISH, TEXTISH)))
def test_random_jwts_are_refused_with_unauthorized(token: str) -> None:
    with pytest.raises(GatewayError) as info:
        verify(token)
    assert info.value.code == "UNAUTHORIZED"


JSON_VALUES = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False), st.text(max_size=8)),
    lambda children: st.one_of(
        st.lists(children, max_size=3), st.dictionaries(st.text(max_size=4), children, max_size=3)
    ),
    max_leaves=8,
)


@settings(max_examples=300)
@given(JSON_VALUES, JSON_VALUES, st.text(max_size=10))
def test_forged_jwts_are_refused(header: Any, payload: Any, secret: str) -> None:
    try:
        token = mint(payload, header=header, secret=SECRET + secret + "!")
    except (ValueError, TypeError):
        return
    with pytest.raises(GatewayError) as info:
        verify(token)
    assert info.value.code == "UNAUTHORIZED"
    assert info.value.message in {
        "JWT header or payload was not valid JSON",
        "Unsupported JWT algorithm",
        "JWT signature verification failed",
        "JWT must have three segments",
    }


@settings(max_examples=300)
@given(
    exp=st.one_of(st.none(), st.integers(NOW - 200, NOW + 200)),
    nbf=st.one_of(st.none(), st.integers(NOW - 200, NOW + 200)),
    skew=st.integers(-10, 120),
    offset_ms=st.integers(-100_000, 100_000),
    aud=st.sampled_from(["smithers", "other", ["other", "smithers"]]),
)
def test_signed_jwt_claims_against_the_rules(
    exp: int | None, nbf: int | None, skew: int, offset_ms: int, aud: Any
) -> None:
    now_ms = NOW_MS + offset_ms
    now = now_ms // 1000
    effective = max(0, skew)
    payload = claims(aud=aud, exp=... if exp is None else exp, nbf=... if nbf is None else nbf)
    expected: str | None = None
    if aud == "other":
        expected = "JWT audience did not match"
    elif exp is None:
        expected = "JWT is missing exp"
    elif now - effective >= exp:
        expected = "JWT has expired"
    elif nbf is not None and now + effective < nbf:
        expected = "JWT is not active yet"
    token = mint(payload)
    if expected is None:
        assert verify(token, now_ms, clockSkewSeconds=skew).token_id == a.token_id_for(token)
    else:
        with pytest.raises(GatewayError) as info:
            verify(token, now_ms, clockSkewSeconds=skew)
        assert info.value.message == expected
        assert info.value.details == (REFRESH if expected == "JWT has expired" else None)


# -- trusted proxy ------------------------------------------------------------------------
PROXY = {"mode": "trusted-proxy"}
LOOPBACK = "127.0.0.1"


def test_proxy_defaults() -> None:
    auth = Authenticator(PROXY)
    assert auth.mode == "trusted-proxy"
    # no scopes header and no defaultScopes: no scopes (0.18.0 grants "*")
    assert auth.authenticate_http({}, NOW_MS, LOOPBACK) == Principal("operator", (), None, None)
    headers = {"X-User-Id": "user:will", "x-user-scopes": "run:read, run:write", "x-user-role": "admin"}
    assert auth.authenticate_http({**headers, "x-smithers-token-id": "tid"}, NOW_MS, LOOPBACK) == Principal(
        "admin", ("run:read", "run:write"), "user:will", "tid"
    )


def test_proxy_headers_are_believed_only_from_trusted_peers() -> None:
    forged = {"x-user-id": "root", "x-user-scopes": "*", "x-user-role": "admin"}
    loopback_only = Authenticator(PROXY)
    for peer in ("10.0.0.5", "192.168.1.20", "2001:db8::1", None, "not-an-address"):
        unauthorized(
            lambda peer=peer: loopback_only.authenticate_http(forged, NOW_MS, peer),
            "Request did not come through a trusted proxy",
        )
        unauthorized(
            lambda peer=peer: loopback_only.authenticate_connect({}, forged, NOW_MS, peer),
            "Request did not come through a trusted proxy",
        )
    for peer in ("127.0.0.1", "127.8.9.10", "::1", "::ffff:127.0.0.1"):
        assert loopback_only.authenticate_http(forged, NOW_MS, peer).scopes == ("*",)
    named = Authenticator({**PROXY, "trustedProxies": ["10.0.0.0/8", "192.168.1.20"]})
    assert named.authenticate_http(forged, NOW_MS, "10.1.2.3").user_id == "root"
    assert named.authenticate_http(forged, NOW_MS, "192.168.1.20").user_id == "root"
    for peer in ("127.0.0.1", "192.168.1.21", "11.0.0.1"):
        unauthorized(
            lambda peer=peer: named.authenticate_http(forged, NOW_MS, peer),
            "Request did not come through a trusted proxy",
        )


@pytest.mark.parametrize("proxies", ["10.0.0.0/8", ["not an address"], ["10.0.0.0/33"], 5])
def test_trusted_proxies_must_be_addresses(proxies: Any) -> None:
    with pytest.raises(InvalidInputError):
        Authenticator({**PROXY, "trustedProxies": proxies})


def test_proxy_empty_headers() -> None:
    auth = Authenticator({**PROXY, "defaultRole": "viewer", "defaultScopes": ["read"]})
    assert auth.authenticate_http({}, NOW_MS, LOOPBACK) == Principal("viewer", ("read",), None, None)
    empty = {"x-user-id": "", "x-user-role": "", "x-user-scopes": ""}
    assert auth.authenticate_http(empty, NOW_MS, LOOPBACK) == Principal("", ("read",), "", None)
    assert auth.authenticate_http({"x-user-scopes": " \t "}, NOW_MS, LOOPBACK).scopes == ()
    assert Authenticator({**PROXY, "defaultScopes": []}).authenticate_http({}, NOW_MS, LOOPBACK).scopes == ()


def test_proxy_custom_headers_are_positional_and_lower_cased() -> None:
    auth = Authenticator({**PROXY, "trustedHeaders": ["X-Remote-User", "X-Remote-Groups"]})
    headers = {
        "x-remote-user": "u",
        "x-remote-groups": "cron:read",
        "x-user-role": "admin",
        "x-user-id": "no",
    }
    assert auth.authenticate_http(headers, NOW_MS, LOOPBACK) == Principal("admin", ("cron:read",), "u", None)
    four = Authenticator({**PROXY, "trustedHeaders": ["a", "b", "c", "d"]})
    principal = four.authenticate_http({"a": "u", "b": "s", "c": "r", "d": "x"}, NOW_MS, LOOPBACK)
    assert principal == Principal("r", ("s",), "u", None)


def test_proxy_origins() -> None:
    auth = Authenticator(
        {**PROXY, "allowedOrigins": ["https://ui.example", "https://b.example"], "defaultScopes": ["*"]}
    )
    assert auth.authenticate_http({"origin": "https://b.example"}, NOW_MS, LOOPBACK).role == "operator"
    unauthorized(lambda: auth.authenticate_http({}, NOW_MS, LOOPBACK), "Origin is not allowed")
    unauthorized(
        lambda: auth.authenticate_http({"Origin": "https://evil.example"}, NOW_MS, LOOPBACK), "Origin is not allowed"
    )
    unauthorized(
        lambda: auth.authenticate_http({"origin": "https://ui.example/"}, NOW_MS, LOOPBACK), "Origin is not allowed"
    )
    joined = a.node_headers([("origin", "https://ui.example"), ("origin", "https://b.example")])
    unauthorized(lambda: auth.authenticate_http(joined, NOW_MS, LOOPBACK), "Origin is not allowed")
    open_origins = Authenticator({**PROXY, "allowedOrigins": [], "defaultScopes": ["*"]})
    assert open_origins.authenticate_http({}, NOW_MS, LOOPBACK).scopes == ("*",)


def test_proxy_over_websocket_reads_the_upgrade_headers() -> None:
    auth = Authenticator(PROXY)
    principal = auth.authenticate_connect({"auth": {"token": "ignored"}}, {"x-user-id": "ws-user"}, NOW_MS, LOOPBACK)
    assert principal.user_id == "ws-user"


@given(st.dictionaries(st.sampled_from(["x-user-id", "x-user-scopes", "x-user-role", "origin"]), st.text()))
def test_proxy_never_fails_without_an_origin_list(headers: dict[str, str]) -> None:
    principal = Authenticator(PROXY).authenticate_http(headers, NOW_MS, LOOPBACK)
    assert principal.user_id == headers.get("x-user-id")
    assert all(scope and scope == js_trim(scope) and "," not in scope for scope in principal.scopes)


def test_a_direct_client_cannot_claim_an_identity_with_headers(start_gateway: Any) -> None:
    """A gateway behind a proxy at 10.0.0.0/8: a client reaching it directly (here from loopback) is refused."""
    live = start_gateway(auth={"mode": "trusted-proxy", "trustedProxies": ["10.0.0.0/8"]})
    forged = {"x-user-id": "root", "x-user-scopes": "*", "x-user-role": "admin"}
    response = live.http.post(
        "/rpc", json={"method": "cron.add", "params": {"workflow": "hello", "pattern": "* * * * *"}}, headers=forged
    )
    assert response.status_code == 401
    assert response.json()["error"]["message"] == "Request did not come through a trusted proxy"
    # X-Forwarded-For naming a trusted address does not make the sender one
    spoofed = live.http.post("/rpc", json={"method": "health"}, headers={**forged, "x-forwarded-for": "10.1.2.3"})
    assert spoofed.status_code == 401
    assert live.gateway.store.get_run("x") is None
    with live.gateway.store.read() as tx:
        assert tx.list_crons() == []
    ws = live.ws()
    try:
        refused = ws.request("connect", live.connect_params())
        assert refused["ok"] is False and refused["error"]["code"] == "UNAUTHORIZED"
    finally:
        ws.close()
    # from a trusted address (loopback by default) the same headers are believed
    trusting = start_gateway(auth={"mode": "trusted-proxy"})
    assert trusting.http.post("/rpc", json={"method": "health"}, headers=forged).status_code == 200
    # ... also when the proxy says whom it forwards for (the peer is still the proxy)
    forwarded = {**forged, "x-forwarded-for": "203.0.113.9"}
    assert trusting.http.post("/rpc", json={"method": "health"}, headers=forwarded).status_code == 200
