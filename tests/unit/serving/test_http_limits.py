"""The ingress's HTTP limits middleware, on a real Starlette app through httpx's ASGI transport."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from llmdeploy.serving.http_limits import HTTPLimits


async def echo(request: Request) -> JSONResponse:
    body = await request.body()
    return JSONResponse({"bytes": len(body)})


async def shed(_: Request) -> JSONResponse:
    return JSONResponse({"error": {"message": "busy"}}, status_code=503)


async def shed_with_header(_: Request) -> JSONResponse:
    return JSONResponse({"error": {"message": "busy"}}, status_code=429, headers={"Retry-After": "7"})


def _client(limit: int = 1024) -> httpx.AsyncClient:
    app = Starlette(
        routes=[
            Route("/echo", echo, methods=["POST"]),
            Route("/shed", shed, methods=["POST"]),
            Route("/shed-header", shed_with_header, methods=["POST"]),
        ]
    )
    wrapped = HTTPLimits(app, max_body_bytes=limit, retry_after_s=2)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=wrapped), base_url="http://test")


async def test_bodies_within_the_limit_pass_untouched() -> None:
    async with _client() as client:
        response = await client.post("/echo", content=b"x" * 1024)
    assert response.status_code == 200
    assert response.json() == {"bytes": 1024}


async def test_a_declared_oversized_body_is_refused_with_an_openai_error() -> None:
    async with _client() as client:
        response = await client.post("/echo", content=b"x" * 1025)
    assert response.status_code == 413
    error = response.json()["error"]
    assert "1024 bytes" in error["message"] and error["type"] == "invalid_request_error"


async def test_a_streamed_body_is_cut_off_at_the_limit() -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"y" * 200

    async with _client() as client:
        response = await client.post("/echo", content=chunks())  # chunked: no Content-Length
    assert response.status_code == 413
    assert response.json()["error"]["code"] == 413


@pytest.mark.parametrize(("path", "retry_after"), [("/shed", "2"), ("/shed-header", "7")])
async def test_shed_answers_carry_retry_after(path: str, retry_after: str) -> None:
    async with _client() as client:
        response = await client.post(path, content=b"{}")
    assert response.status_code in (429, 503)
    assert response.headers["retry-after"] == retry_after


async def test_other_answers_get_no_retry_after() -> None:
    async with _client() as client:
        response = await client.post("/echo", content=b"{}")
    assert "retry-after" not in response.headers


def test_a_non_positive_limit_is_refused() -> None:
    with pytest.raises(ValueError, match="max_body_bytes"):
        HTTPLimits(echo, max_body_bytes=0)  # type: ignore[arg-type]


async def fastapi_style(_: Request) -> JSONResponse:
    return JSONResponse({"detail": "There was an error parsing the body"}, status_code=400)


async def validation_style(_: Request) -> JSONResponse:
    detail = [{"loc": ["body", "messages"], "msg": "Field required", "type": "missing"}]
    return JSONResponse({"detail": detail}, status_code=422)


async def already_openai(_: Request) -> JSONResponse:
    return JSONResponse({"error": {"message": "model x not found", "type": "NotFoundError", "code": 404}}, 404)


@pytest.mark.parametrize(
    ("handler", "status", "message"),
    [
        (fastapi_style, 400, "There was an error parsing the body"),
        (validation_style, 422, "messages: Field required"),
        (already_openai, 404, "model x not found"),
    ],
)
async def test_every_4xx_json_answer_has_the_openai_error_shape(handler: Any, status: int, message: str) -> None:
    app = HTTPLimits(Starlette(routes=[Route("/x", handler, methods=["POST"])]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test") as client:
        response = await client.post("/x", content=b"{")
    assert response.status_code == status
    error = response.json()["error"]
    assert error["message"] == message
    assert int(response.headers["content-length"]) == len(response.content)


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", "multipart/form-data"])
async def test_a_body_that_is_not_json_is_refused_with_415(content_type: str) -> None:
    async with _client() as client:
        response = await client.post("/echo", content=b"{}", headers={"content-type": content_type})
    assert response.status_code == 415
    assert "application/json" in response.json()["error"]["message"]


async def test_json_with_a_charset_is_accepted() -> None:
    async with _client() as client:
        response = await client.post(
            "/echo", content=b"{}", headers={"content-type": "application/json; charset=utf-8"}
        )
    assert response.status_code == 200
