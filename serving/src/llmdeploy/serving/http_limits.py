"""HTTP limits for the OpenAI ingress, as one small ASGI middleware: request-body size and Retry-After.

Neither Ray Serve's proxy nor Starlette bounds a request body: a client can send hundreds of
megabytes that the ingress reads into memory and the engine then tokenizes before refusing the
prompt as too long. `HTTPLimits` refuses a body over `max_body_bytes` with 413 and an OpenAI
error body, from the `Content-Length` header when there is one and by counting the bytes as
they stream in otherwise (chunked uploads). It adds `Retry-After` to 503 and 429 answers that
lack one (load shedding), so clients back off instead of retrying at once. And it gives every
4xx JSON answer OpenAI's error shape: FastAPI's own answer to a body it cannot parse
(malformed JSON, invalid UTF-8, a wrong content type) is `{"detail": ...}`, which OpenAI
clients do not read.

Wiring (the ingress owns it): wrap the ingress's FastAPI app, e.g.
`app.add_middleware(HTTPLimits, max_body_bytes=DEFAULT_MAX_BODY_BYTES)`.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, Final

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# 8 MiB: a maximal prompt of a 1M-token context is about 4 MiB of text; images travel as URLs.
DEFAULT_MAX_BODY_BYTES: Final = 8 * 2**20
DEFAULT_RETRY_AFTER_S: Final = 1
_SHED_STATUSES: Final = frozenset({429, 503})


def openai_error(message: str, *, type_: str, code: int) -> bytes:
    """An OpenAI error body."""
    return json.dumps({"error": {"message": message, "type": type_, "param": None, "code": code}}).encode()


class HTTPLimits:
    """ASGI middleware: 413 for bodies over `max_body_bytes`; Retry-After on 503/429 answers."""

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
        retry_after_s: int = DEFAULT_RETRY_AFTER_S,
    ) -> None:
        if max_body_bytes < 1:
            raise ValueError("max_body_bytes must be positive")
        self.app = app
        self.max_body_bytes = max_body_bytes
        self.retry_after = str(max(0, retry_after_s)).encode()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = _content_length(scope)
        if declared is not None and declared > self.max_body_bytes:
            await self._too_large(send)
            return
        kind = _header(scope, b"content-type")
        if scope.get("method") == "POST" and kind is not None and not _is_json_type(kind):
            # The OpenAI endpoints read JSON only; the ingress would fail on anything else (500).
            await self._refuse(
                send, 415, f"content type {kind.decode(errors='replace')!r} is not supported; send application/json"
            )
            return
        seen = 0
        started = False
        cut = False

        async def limited_receive() -> Message:
            # Past the limit the app sees the client go away: it stops reading and its own
            # answer is replaced by the 413 below.
            nonlocal seen, cut
            if cut:
                return {"type": "http.disconnect"}
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_body_bytes:
                    cut = True
                    return {"type": "http.disconnect"}
            return message

        held: Message | None = None  # the start of a 4xx answer whose body may need rewriting
        chunks: list[bytes] = []

        async def tagged_send(message: Message) -> None:
            nonlocal started, held
            if cut:
                return
            if message["type"] == "http.response.start":
                started = True
                if message["status"] in _SHED_STATUSES:
                    headers = list(message.get("headers", []))
                    if not any(name.lower() == b"retry-after" for name, _ in headers):
                        headers.append((b"retry-after", self.retry_after))
                    message["headers"] = headers
                if 400 <= message["status"] < 500 and _is_json(message):
                    held = message
                    return
            elif message["type"] == "http.response.body" and held is not None:
                chunks.append(message.get("body", b""))
                if message.get("more_body", False):
                    return
                start, held = held, None
                body = as_openai_error(b"".join(chunks), start["status"])
                start["headers"] = [
                    (k, str(len(body)).encode() if k.lower() == b"content-length" else v) for k, v in start["headers"]
                ]
                await send(start)
                await send({"type": "http.response.body", "body": body})
                return
            await send(message)

        try:
            await self.app(scope, limited_receive, tagged_send)
        except Exception:
            # However the app fails on a body it was cut off from, the answer is the 413.
            if not cut:
                raise
        if cut and not started:
            await self._too_large(send)

    async def _too_large(self, send: Send) -> None:
        await self._refuse(send, 413, f"request body larger than {self.max_body_bytes} bytes; send a shorter prompt")

    @staticmethod
    async def _refuse(send: Send, status: int, message: str) -> None:
        body = openai_error(message, type_="invalid_request_error", code=status)
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def as_openai_error(body: bytes, status: int) -> bytes:
    """A 4xx JSON body in OpenAI's error shape: kept if it is one, else its detail wrapped.

    FastAPI answers a body it cannot parse (malformed JSON, invalid UTF-8, a wrong content
    type) with `{"detail": ...}`; OpenAI clients look for `error.message`.
    """
    try:
        parsed: Any = json.loads(body)
    except ValueError:
        parsed = body.decode("utf-8", errors="replace")
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), dict):
        return body
    detail = parsed.get("detail", parsed) if isinstance(parsed, dict) else parsed
    if isinstance(detail, list):  # pydantic's list of problems, one line each
        detail = "; ".join(_problem_text(item) for item in detail)
    message = detail if isinstance(detail, str) else json.dumps(detail)
    return openai_error(message or f"HTTP {status}", type_="invalid_request_error", code=status)


def _problem_text(item: Any) -> str:
    if not isinstance(item, dict):
        return str(item)
    where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
    return f"{where}: {item.get('msg', '')}" if where else str(item.get("msg", item))


def _is_json_type(value: bytes) -> bool:
    return value.split(b";")[0].strip().lower() == b"application/json"


def _is_json(start: Message) -> bool:
    return any(name.lower() == b"content-type" and _is_json_type(value) for name, value in start.get("headers", []))


def _header(scope: Scope, wanted: bytes) -> bytes | None:
    for name, value in scope.get("headers", []):
        if name.lower() == wanted:
            return bytes(value)
    return None


def _content_length(scope: Scope) -> int | None:
    value = _header(scope, b"content-length")
    try:
        return None if value is None else int(value)
    except ValueError:
        return None
