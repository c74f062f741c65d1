"""Optional API-key authentication of the OpenAI endpoint.

Keys reach the serving processes only through an environment variable (`API_KEYS_ENV`, filled
from a Kubernetes Secret by the operator, or from the shell by `llmdeploy serve`), one key per
line or comma-separated. Clients send `Authorization: Bearer <key>` (what the `openai` client
sends for `api_key=`). A request without a valid key gets 401, an OpenAI error body and
`WWW-Authenticate: Bearer`, before any route runs.

The comparison is constant-time in the presented key: both sides are SHA-256 digests (equal
lengths, so the key length does not leak) compared with `hmac.compare_digest`, against every
configured key without stopping at a match. No key, and no part of one, is ever logged.

`ApiKeyMiddleware` is a plain ASGI middleware (Starlette's `Request` is not needed), so it wraps
the ingress's FastAPI application as a whole: `/v1/models` is protected like the completions.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import re
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

_SEPARATORS: Final = re.compile(r"[,\n\r]+")


class ApiKeysError(ValueError):
    """Authentication is on but no usable key is configured; the message says what to set."""


def parse_api_keys(raw: str | None) -> tuple[str, ...]:
    """Keys from the environment variable's value: comma- or newline-separated, blanks ignored."""
    if not raw:
        return ()
    return tuple(dict.fromkeys(key.strip() for key in _SEPARATORS.split(raw) if key.strip()))


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


class ApiKeys:
    """The configured keys, kept only as digests."""

    def __init__(self, keys: tuple[str, ...]) -> None:
        if not keys:
            raise ApiKeysError("API-key authentication is on but no key is configured")
        self._digests = tuple(_digest(key) for key in keys)

    @classmethod
    def from_env(cls, name: str, environ: MutableMapping[str, str] | None = None) -> ApiKeys:
        env = os.environ if environ is None else environ
        keys = parse_api_keys(env.get(name))
        if not keys:
            raise ApiKeysError(
                f"API-key authentication is on but ${name} holds no key; set it to the keys "
                "(comma- or newline-separated), from the Secret named in spec.auth.apiKeysSecret"
            )
        return cls(keys)

    def __len__(self) -> int:
        return len(self._digests)

    def check(self, presented: str | None) -> bool:
        """Whether `presented` is one of the keys; the same work for every key and every answer."""
        candidate = _digest(presented or "")
        matched = False
        for digest in self._digests:
            matched |= hmac.compare_digest(digest, candidate)
        return matched and bool(presented)


def bearer_token(authorization: str | None) -> str | None:
    """The token of an `Authorization: Bearer <token>` header, None when there is none."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        return None
    return token.strip()


def _header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers") or ():
        if key.lower() == name:
            return bytes(value).decode("latin-1")
    return None


def request_api_key(scope: Scope) -> str | None:
    return bearer_token(_header(scope, b"authorization"))


def unauthorized_body(missing: bool) -> dict[str, Any]:
    """OpenAI's error body for a missing or wrong key (the key itself is never echoed)."""
    if missing:
        message = "Missing API key: send it as the header `Authorization: Bearer <key>`."
        code = "missing_api_key"
    else:
        message = "Incorrect API key provided."
        code = "invalid_api_key"
    return {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": code}}


class ApiKeyMiddleware:
    """Answers HTTP requests without a valid bearer key with 401; passes the rest to `app`."""

    def __init__(self, app: ASGIApp, keys: ApiKeys) -> None:
        self.app = app
        self.keys = keys

    def __getattr__(self, name: str) -> Any:
        # Ray Serve reads the wrapped app's `routes` and `router` to label its HTTP metrics by route.
        return getattr(self.app, name)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        presented = request_api_key(scope)
        if self.keys.check(presented):
            await self.app(scope, receive, send)
            return
        body = json.dumps(unauthorized_body(missing=presented is None)).encode()
        headers = [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
            (b"www-authenticate", b'Bearer realm="llmdeploy"'),
        ]
        await send({"type": "http.response.start", "status": 401, "headers": headers})
        await send({"type": "http.response.body", "body": body})
