"""HTTP limits for the OpenAI ingress, as one small ASGI middleware: request-body size and Retry-After.

Neither Ray Serve's proxy nor Starlette bounds a request body: a client can send hundreds of
megabytes that the ingress reads into memory and the engine then tokenizes before refusing the
prompt as too long. `HTTPLimits` refuses a body over `max_body_bytes` with 413 and an OpenAI
error body, from the `Content-Length` header when there is one and by counting the bytes as
they stream in otherwise (chunked uploads). It also adds `Retry-After` to 503 and 429 answers
that lack one (load shedding), so clients back off instead of retrying at once.

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

        async def tagged_send(message: Message) -> None:
            nonlocal started
            if cut:
                return
            if message["type"] == "http.response.start":
                started = True
                if message["status"] in _SHED_STATUSES:
                    headers = list(message.get("headers", []))
                    if not any(name.lower() == b"retry-after" for name, _ in headers):
                        headers.append((b"retry-after", self.retry_after))
                    message["headers"] = headers
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
        body = openai_error(
            f"request body larger than {self.max_body_bytes} bytes; send a shorter prompt",
            type_="invalid_request_error",
            code=413,
        )
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        await send({"type": "http.response.start", "status": 413, "headers": headers})
        await send({"type": "http.response.body", "body": body})


def _content_length(scope: Scope) -> int | None:
    for name, value in scope.get("headers", []):
        if name.lower() == b"content-length":
            try:
                return int(value)
            except ValueError:
                return None
    return None
