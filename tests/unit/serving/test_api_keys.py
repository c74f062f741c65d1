"""API-key authentication: parsing, comparison, and the 401 the middleware answers."""

from __future__ import annotations

import json
from typing import Any

import pytest

from llmdeploy.serving.auth import (
    ApiKeyMiddleware,
    ApiKeys,
    ApiKeysError,
    bearer_token,
    parse_api_keys,
)
from llmdeploy.serving.config import API_KEYS_ENV


def test_keys_are_comma_or_newline_separated() -> None:
    assert parse_api_keys("a, b\nc\r\n\n,a") == ("a", "b", "c")
    assert parse_api_keys("") == ()
    assert parse_api_keys(None) == ()


def test_every_configured_key_is_accepted_and_nothing_else() -> None:
    keys = ApiKeys(("sk-one", "sk-two"))
    assert keys.check("sk-one")
    assert keys.check("sk-two")
    for wrong in ("sk-three", "sk-on", "sk-one ", "SK-ONE", "", None):
        assert not keys.check(wrong)


def test_an_empty_key_never_matches_even_if_configured_blank() -> None:
    keys = ApiKeys.from_env(API_KEYS_ENV, {API_KEYS_ENV: "sk-one,"})
    assert len(keys) == 1
    assert not keys.check("")


def test_auth_on_without_keys_is_refused_with_what_to_set() -> None:
    with pytest.raises(ApiKeysError, match=API_KEYS_ENV):
        ApiKeys.from_env(API_KEYS_ENV, {API_KEYS_ENV: " ,\n"})
    with pytest.raises(ApiKeysError, match="apiKeysSecret"):
        ApiKeys.from_env(API_KEYS_ENV, {})


@pytest.mark.parametrize(
    ("header", "token"),
    [("Bearer sk-1", "sk-1"), ("bearer  sk-1 ", "sk-1"), ("Basic abc", None), ("Bearer", None), (None, None)],
)
def test_bearer_token(header: str | None, token: str | None) -> None:
    assert bearer_token(header) == token


async def call(app: Any, headers: list[tuple[bytes, bytes]]) -> tuple[int, dict[bytes, bytes], bytes]:
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    await app({"type": "http", "method": "GET", "path": "/v1/models", "headers": headers}, receive, send)
    start, body = sent[0], b"".join(m.get("body", b"") for m in sent[1:])
    return start["status"], dict(start["headers"]), body


async def inner(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def test_the_middleware_answers_401_with_an_openai_error_body() -> None:
    app = ApiKeyMiddleware(inner, ApiKeys(("sk-one",)))
    assert await call(app, [(b"authorization", b"Bearer sk-one")]) == (200, {}, b"ok")

    status, headers, body = await call(app, [(b"authorization", b"Bearer sk-wrong")])
    assert status == 401
    assert headers[b"www-authenticate"].startswith(b"Bearer")
    error = json.loads(body)["error"]
    assert error["type"] == "invalid_request_error"
    assert error["code"] == "invalid_api_key"
    assert b"sk-wrong" not in body

    status, _, body = await call(app, [])
    assert status == 401
    assert json.loads(body)["error"]["code"] == "missing_api_key"


async def test_the_middleware_passes_non_http_scopes_and_exposes_the_apps_routes() -> None:
    class App:
        routes = ["r"]

        async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
            scope["seen"] = True

    app = ApiKeyMiddleware(App(), ApiKeys(("k",)))
    scope: dict[str, Any] = {"type": "lifespan"}
    await app(scope, None, None)  # type: ignore[arg-type]
    assert scope["seen"]
    assert app.routes == ["r"]
