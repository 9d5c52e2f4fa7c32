"""Gateway authentication (docs/protocol.md#authentication): who is calling, and with which scopes.

An :class:`Authenticator` is built from the gateway's ``auth`` option (the JavaScript config
shape) and turns a request into a :class:`Principal` or raises ``GatewayError(UNAUTHORIZED)``.
"""

from __future__ import annotations

import base64
import hashlib
import ipaddress
import re
import string
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Final

from jwt.algorithms import HMACAlgorithm
from jwt.exceptions import InvalidKeyError

from smithers.errors import INVALID_REQUEST, UNAUTHORIZED, GatewayError, InvalidInputError
from smithers.gateway.jsvalues import JS_WHITESPACE, loads_strict
from smithers.gateway.protocol import (
    as_number,
)
from smithers.gateway.scopes import WILDCARD

__all__ = [
    "DEFAULT_TRUSTED_HEADERS",
    "HEADER_AUTHORIZATION",
    "HEADER_ORIGIN",
    "HEADER_SMITHERS_KEY",
    "HEADER_TOKEN_ID",
    "MODE_JWT",
    "MODE_NONE",
    "MODE_TOKEN",
    "MODE_TRUSTED_PROXY",
    "OPEN_PRINCIPAL",
    "REFRESH_COMMAND",
    "ROLE_OPERATOR",
    "Authenticator",
    "GrantLookup",
    "Principal",
    "hash_token",
    "header_value",
    "node_headers",
    "peer_address",
    "token_from_connect",
    "token_from_headers",
    "token_id_for",
]

MODE_NONE: Final = "none"
MODE_TOKEN: Final = "token"
MODE_JWT: Final = "jwt"
MODE_TRUSTED_PROXY: Final = "trusted-proxy"
ROLE_OPERATOR: Final = "operator"
REFRESH_COMMAND: Final = "smithers token issue"
HEADER_SMITHERS_KEY: Final = "x-smithers-key"
HEADER_AUTHORIZATION: Final = "authorization"
HEADER_ORIGIN: Final = "origin"
HEADER_TOKEN_ID: Final = "x-smithers-token-id"
DEFAULT_TRUSTED_HEADERS: Final = ("x-user-id", "x-user-scopes", "x-user-role")
_BEARER_PREFIX: Final = "bearer "
_HS256: Final = "HS256"


@dataclass(frozen=True, slots=True)
class Principal:
    """An authenticated caller: role, scopes, optional user and token ids, optional expiry."""

    role: str
    scopes: tuple[str, ...]
    user_id: str | None = None
    token_id: str | None = None
    expires_at_ms: int | None = None


OPEN_PRINCIPAL: Final = Principal(ROLE_OPERATOR, (WILDCARD,))
"""Everyone, when no ``auth`` is configured (docs/protocol.md#no-auth-option-omitted)."""

GrantLookup = Callable[[str], Mapping[str, Any] | None]
"""Finds the grant of a token stored outside the config (by :func:`hash_token`), or ``None``."""


def hash_token(token: str) -> str:
    """SHA-256 hex digest of the UTF-8 token: how stored tokens are kept."""
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).hexdigest()


def token_id_for(token: str) -> str:
    """The derived token id: the first 16 hex characters of :func:`hash_token`."""
    return hash_token(token)[:16]


def _unauthorized(message: str, *, refresh: bool = False) -> GatewayError:
    return GatewayError(UNAUTHORIZED, message, {"refresh": REFRESH_COMMAND} if refresh else None)


def _number(value: Any) -> int | float | None:
    """A JSON number, infinities included (JavaScript ``typeof value === "number"``), else ``None``."""
    return None if isinstance(value, bool) or not isinstance(value, int | float) else value


def _strings(value: Any) -> tuple[str, ...] | None:
    """The string entries of a list, or ``None`` when ``value`` is not a list."""
    return tuple(item for item in value if isinstance(item, str)) if isinstance(value, list | tuple) else None


_SCOPE_SEPARATORS: Final = re.compile(f"[,{re.escape(JS_WHITESPACE)}]+")


def _split_scopes(text: str) -> tuple[str, ...]:
    return tuple(part for part in _SCOPE_SEPARATORS.split(text) if part)


# -- headers -----------------------------------------------------------------------------------
# Node keeps only the first value of these when repeated; it joins other repeats with ", ".
_NODE_SINGLE_VALUE: Final = frozenset(
    {
        "age",
        "authorization",
        "content-length",
        "content-type",
        "etag",
        "expires",
        "from",
        "host",
        "if-modified-since",
        "if-unmodified-since",
        "last-modified",
        "location",
        "max-forwards",
        "proxy-authorization",
        "referer",
        "retry-after",
        "server",
        "user-agent",
    }
)


def node_headers(raw: Iterable[tuple[str | bytes, str | bytes]]) -> dict[str, str]:
    """Header pairs as Node presents them: lower-case names, repeats joined with ``", "``."""
    headers: dict[str, str] = {}
    for raw_name, raw_value in raw:
        name = (raw_name.decode("latin-1") if isinstance(raw_name, bytes) else raw_name).lower()
        value = raw_value.decode("latin-1") if isinstance(raw_value, bytes) else raw_value
        if name not in headers:
            headers[name] = value
        elif name not in _NODE_SINGLE_VALUE:
            headers[name] = f"{headers[name]}, {value}"
    return headers


def peer_address(scope: Mapping[str, Any]) -> str | None:
    """The client's IP address of an ASGI scope (None when the server does not say)."""
    client = scope.get("client")
    return str(client[0]) if client else None


def header_value(headers: Mapping[str, str], name: str) -> str | None:
    """Case-insensitive header lookup (``name`` is lower-case)."""
    value = headers.get(name)
    if value is not None:
        return value
    for key, candidate in headers.items():
        if key.lower() == name:
            return candidate
    return None


def token_from_headers(headers: Mapping[str, str]) -> str | None:
    """The HTTP token: ``x-smithers-key``, else ``Authorization`` minus a ``Bearer `` prefix.

    See docs/protocol.md#where-the-token-comes-from.
    """
    key = header_value(headers, HEADER_SMITHERS_KEY)
    if key:
        return key
    authorization = header_value(headers, HEADER_AUTHORIZATION)
    if not authorization:
        return None
    if authorization[: len(_BEARER_PREFIX)].lower() == _BEARER_PREFIX:
        return authorization[len(_BEARER_PREFIX) :] or None
    return authorization


def token_from_connect(params: Mapping[str, Any]) -> str | None:
    """The WebSocket token: ``params.auth.token`` when it is a string.

    An ``auth`` that is present but not an object (``null``, string, number, boolean) is refused
    as ``INVALID_REQUEST`` (the reference fails without a code, a server error; a bad request is
    not a server fault). An array is a JavaScript object without a ``token``: "no token".
    """
    if "auth" not in params:
        return None
    auth = params["auth"]
    if isinstance(auth, dict):
        token = auth.get("token")
        return token if isinstance(token, str) and token else None
    if isinstance(auth, list):
        return None
    raise GatewayError(INVALID_REQUEST, "connect params.auth must be an object")


# -- token mode --------------------------------------------------------------------------------
def _grant_principal(token: str, grant: Mapping[str, Any], now_ms: int) -> Principal:
    revoked = _number(grant.get("revokedAtMs"))
    if revoked is not None and revoked <= now_ms:
        raise _unauthorized("Token has been revoked", refresh=True)
    expires = _number(grant.get("expiresAtMs"))
    if expires is not None and expires <= now_ms:
        raise _unauthorized("Token expired; issue a refreshed token.", refresh=True)
    role = grant.get("role")
    user_id = grant.get("userId")
    token_id = grant.get("tokenId")
    return Principal(
        # A grant without a string role acts as an operator (what runs record for it anyway).
        role=role if isinstance(role, str) else ROLE_OPERATOR,
        scopes=_strings(grant.get("scopes")) or (),
        user_id=user_id if isinstance(user_id, str) else None,
        # A non-string tokenId (the reference passes it through) is sent as its text.
        token_id=token_id_for(token) if token_id is None else str(token_id),
        expires_at_ms=_ms(as_number(expires), 1),
    )


# -- JWT mode ----------------------------------------------------------------------------------
_URL_ALPHABET: Final = frozenset(string.ascii_letters + string.digits + "-_")
_ANY_ALPHABET: Final = _URL_ALPHABET | {"+", "/"}
_TO_STANDARD: Final = str.maketrans("-_", "+/")


def _b64_decode(segment: str, alphabet: frozenset[str]) -> bytes:
    """Lenient base64url: padding optional, characters outside ``alphabet`` skipped."""
    cleaned = "".join(char for char in segment if char in alphabet).translate(_TO_STANDARD)
    if len(cleaned) % 4 == 1:  # a lone trailing character carries no whole byte
        cleaned = cleaned[:-1]
    return base64.b64decode(cleaned + "=" * (-len(cleaned) % 4))


def _json_object_segment(segment: str) -> dict[str, Any] | None:
    try:
        value = loads_strict(_b64_decode(segment, _ANY_ALPHABET).decode("utf-8", "replace"))
    except ValueError:
        return None
    return value if isinstance(value, dict) else None


class _JwtVerifier:
    """HS256 JWT verification with the rule order and messages of docs/protocol.md#jwt-mode-hs256."""

    def __init__(self, config: Mapping[str, Any]):
        algorithm = HMACAlgorithm(HMACAlgorithm.SHA256)
        secret = config.get("secret")
        # The reference only fails at request time; an unusable secret (empty, or an asymmetric
        # key/JWK that PyJWT refuses as an HMAC secret) is refused here, at construction.
        if not isinstance(secret, str | bytes) or not secret:
            raise InvalidInputError("JWT auth requires a non-empty secret.")
        try:
            self._key = algorithm.prepare_key(secret)
        except InvalidKeyError as exc:
            raise InvalidInputError(f"JWT auth secret is not an HMAC secret: {exc}") from exc
        self._algorithm = algorithm
        issuer = config.get("issuer")
        self._issuer = issuer if isinstance(issuer, str) else None
        audience = config.get("audience")
        self._audiences = frozenset((audience,) if isinstance(audience, str) else _strings(audience) or ())
        self._scopes_claim = _str_option(config, "scopesClaim", "scope")
        self._role_claim = _str_option(config, "roleClaim", "role")
        self._user_claim = _str_option(config, "userClaim", "sub")
        default_role = config.get("defaultRole")
        self._default_role = default_role if isinstance(default_role, str) else ROLE_OPERATOR
        self._default_scopes = _strings(config.get("defaultScopes")) or ()
        # ``max(0, clockSkewSeconds ?? 60)``; a value that is not a finite number also means 60.
        skew = as_number(config.get("clockSkewSeconds"))
        self._skew = 60 if skew is None else max(0, skew)
        # A JWT without a usable exp never expires, so it is refused unless the config says
        # ``requireExp: False`` (only ``False`` opts out; docs/protocol.md#departures-from-0180, P10).
        self._require_exp = config.get("requireExp", True) is not False

    def verify(self, token: str | None, now_ms: int) -> Principal:
        if not token:
            raise _unauthorized("A bearer token is required")
        segments = token.split(".")
        if len(segments) < 3 or not all(segments[:3]):
            raise _unauthorized("JWT must have three segments")
        header = _json_object_segment(segments[0])
        payload = _json_object_segment(segments[1])
        if header is None or payload is None:
            raise _unauthorized("JWT header or payload was not valid JSON")
        if header.get("alg") != _HS256:
            raise _unauthorized("Unsupported JWT algorithm")
        signing_input = f"{segments[0]}.{segments[1]}".encode("utf-8", "surrogatepass")
        # Only segments 0 and 1 may use the standard alphabet; in the signature "+" and "/" are
        # skipped like any other foreign character, so such a signature cannot match.
        signature = _b64_decode(segments[2], _URL_ALPHABET)
        if not self._algorithm.verify(signing_input, self._key, signature):
            raise _unauthorized("JWT signature verification failed")
        self._check_claims(payload, now_ms // 1000)
        return self._principal(token, payload)

    def _check_claims(self, payload: Mapping[str, Any], now: int) -> None:
        issuer = payload.get("iss")
        if self._issuer is None or not isinstance(issuer, str) or issuer != self._issuer:
            raise _unauthorized("JWT issuer did not match")
        audience = payload.get("aud")
        audiences = (audience,) if isinstance(audience, str) else _strings(audience) or ()
        if self._audiences.isdisjoint(audiences):
            raise _unauthorized("JWT audience did not match")
        expires = as_number(payload.get("exp"))
        if expires is not None:
            if now - self._skew >= expires:
                raise _unauthorized("JWT has expired", refresh=True)
        elif self._require_exp:
            # A non-numeric exp is ignored by the reference, i.e. the same as a missing one. The
            # message does not say "expired", so no refresh hint is attached.
            raise _unauthorized("JWT is missing exp")
        not_before = as_number(payload.get("nbf"))
        if not_before is not None and now + self._skew < not_before:
            raise _unauthorized("JWT is not active yet")

    def _principal(self, token: str, payload: Mapping[str, Any]) -> Principal:
        claim = payload.get(self._scopes_claim)
        scopes = _split_scopes(claim) if isinstance(claim, str) else _strings(claim) or ()
        role = payload.get(self._role_claim)
        user_id = payload.get(self._user_claim)
        return Principal(
            role=role if isinstance(role, str) else self._default_role,
            scopes=scopes or self._default_scopes,
            user_id=user_id if isinstance(user_id, str) else None,
            token_id=token_id_for(token),
            expires_at_ms=_ms(as_number(payload.get("exp")), 1000),
        )


def _ms(value: float | None, scale: int) -> int | None:
    return None if value is None else int(value * scale)


def _str_option(config: Mapping[str, Any], key: str, default: str) -> str:
    value = config.get(key)
    return value if isinstance(value, str) else default


# -- trusted-proxy mode ------------------------------------------------------------------------
DEFAULT_TRUSTED_PROXIES: Final = ("127.0.0.0/8", "::1/128")
"""Peers whose identity headers are believed when ``trustedProxies`` is not configured: loopback."""

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def trusted_networks(config: Mapping[str, Any]) -> tuple[Network, ...]:
    """The ``trustedProxies`` of a trusted-proxy config (IP addresses or CIDR blocks)."""
    configured = config.get("trustedProxies", list(DEFAULT_TRUSTED_PROXIES))
    if isinstance(configured, str) or not isinstance(configured, list | tuple):
        raise InvalidInputError("trustedProxies must be a list of IP addresses or CIDR blocks.")
    networks = []
    for entry in configured:
        try:
            networks.append(ipaddress.ip_network(str(entry).strip(), strict=False))
        except ValueError as exc:
            raise InvalidInputError(
                f"trustedProxies has an entry that is not an IP address or CIDR block: {entry!r}"
            ) from exc
    return tuple(networks)


def _trusted(peer: str | None, networks: tuple[Network, ...]) -> bool:
    if peer is None:
        return False
    try:
        address = ipaddress.ip_address(peer)
    except ValueError:
        return False
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return any(address in network for network in networks)


def _proxy_principal(
    config: Mapping[str, Any], headers: Mapping[str, str], peer: str | None, networks: tuple[Network, ...]
) -> Principal:
    # Identity headers anyone can send are believed only from the proxies the operator named
    # (docs/protocol.md#departures-from-0180).
    if not _trusted(peer, networks):
        raise _unauthorized("Request did not come through a trusted proxy")
    origins = _strings(config.get("allowedOrigins")) or ()
    if origins and header_value(headers, HEADER_ORIGIN) not in origins:
        raise _unauthorized("Origin is not allowed")
    names = [
        name.lower() if isinstance(name, str) else default
        for name, default in zip(_positional(config.get("trustedHeaders")), DEFAULT_TRUSTED_HEADERS, strict=True)
    ]
    user_id = header_value(headers, names[0])
    scopes_header = header_value(headers, names[1])
    role = header_value(headers, names[2])
    # No scopes from the proxy: only what the config grants by default (0.18.0 grants "*").
    scopes = _split_scopes(scopes_header) if scopes_header else _strings(config.get("defaultScopes")) or ()
    default_role = config.get("defaultRole")
    if role is None:
        role = default_role if isinstance(default_role, str) else ROLE_OPERATOR
    return Principal(role, scopes, user_id, header_value(headers, HEADER_TOKEN_ID))


def _positional(configured: Any) -> list[Any]:
    """``trustedHeaders`` as ``[user, scopes, role]``, padded with the defaults.

    Entries past the third are ignored; a non-string entry falls back to its default name.
    """
    given = list(configured)[:3] if isinstance(configured, list) else []
    return given + list(DEFAULT_TRUSTED_HEADERS[len(given) :])


# -- the authenticator -------------------------------------------------------------------------
class Authenticator:
    """Authenticates HTTP requests and WebSocket ``connect`` requests for one ``auth`` config.

    ``config`` is the gateway's ``auth`` option (``None`` = open). ``lookup_stored_token``
    resolves tokens issued into the database (token mode only); configured tokens win.
    """

    def __init__(self, config: Mapping[str, Any] | None = None, *, lookup_stored_token: GrantLookup | None = None):
        self._config: Mapping[str, Any] = config or {}
        self._open = config is None
        mode = self._config.get("mode")
        self._mode = MODE_NONE if self._open else mode if isinstance(mode, str) else ""
        tokens = self._config.get("tokens")
        self._tokens: Mapping[str, Any] = tokens if isinstance(tokens, Mapping) else {}
        self._lookup = lookup_stored_token
        self._jwt = _JwtVerifier(self._config) if self._mode == MODE_JWT else None
        self._proxies = trusted_networks(self._config) if self._mode == MODE_TRUSTED_PROXY else ()

    @property
    def mode(self) -> str:
        """``none``, ``token``, ``jwt``, ``trusted-proxy``, or the unsupported configured value."""
        return self._mode

    def authenticate_http(self, headers: Mapping[str, str], now_ms: int, peer: str | None = None) -> Principal:
        """Authenticate an HTTP RPC request from its headers; ``peer`` is the client's IP address."""
        return self._authenticate(token_from_headers(headers), headers, now_ms, peer)

    def authenticate_connect(
        self, params: Mapping[str, Any], headers: Mapping[str, str], now_ms: int, peer: str | None = None
    ) -> Principal:
        """Authenticate a WebSocket ``connect``; ``headers`` are the upgrade request's.

        ``params.auth`` is read in every mode, so a malformed one is an uncoded server error even
        where no token is needed.
        """
        return self._authenticate(token_from_connect(params), headers, now_ms, peer)

    def _authenticate(self, token: str | None, headers: Mapping[str, str], now_ms: int, peer: str | None) -> Principal:
        if self._open:
            return OPEN_PRINCIPAL
        if self._mode == MODE_TRUSTED_PROXY:
            return _proxy_principal(self._config, headers, peer, self._proxies)
        if self._jwt is not None:
            return self._jwt.verify(token, now_ms)
        if self._mode == MODE_TOKEN:
            return self._token_principal(token, now_ms)
        raise _unauthorized("Unsupported auth mode")

    def _token_principal(self, token: str | None, now_ms: int) -> Principal:
        if not token:
            raise _unauthorized("A bearer token is required")
        grant = self._tokens.get(token)
        if grant is None and self._lookup is not None:
            grant = self._lookup(token)
        # A configured grant that is not an object cannot be honoured (the reference crashes).
        if not isinstance(grant, Mapping):
            raise _unauthorized("Invalid token")
        return _grant_principal(token, grant, now_ms)
