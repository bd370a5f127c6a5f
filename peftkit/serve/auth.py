"""Bearer-key check (constant-time) and a request-body size limit (pure ASGI middleware)."""

from __future__ import annotations

import hmac
import json

from starlette.exceptions import HTTPException


def key_matches(header: str | None, api_key: str) -> bool:
    """Whether an ``Authorization`` header carries ``Bearer <api_key>``, compared in constant time."""
    scheme, _, token = (header or "").partition(" ")
    return hmac.compare_digest(token.strip().encode(), api_key.encode()) and scheme.lower() == "bearer"


def error_body(message: str, kind: str) -> dict:
    """The JSON of every error response (OpenAI's shape)."""
    return {"error": {"message": message, "type": kind}}


class BodyLimit:
    """Answer 413 to a body longer than ``max_bytes`` (by Content-Length, or once it streams past it)."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        message = f"Request body over the limit of {self.max_bytes} bytes (--max-body-bytes)."
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.max_bytes):
            return await self._reject(send, message)
        seen, started = 0, False

        async def limited_receive():
            nonlocal seen
            event = await receive()
            if event["type"] == "http.request":
                seen += len(event.get("body", b""))
                if seen > self.max_bytes:
                    raise BodyTooLarge(413, message)
            return event

        async def tracking_send(event):
            nonlocal started
            started = started or event["type"] == "http.response.start"
            await send(event)

        try:
            await self.app(scope, limited_receive, tracking_send)
        except BodyTooLarge:
            if not started:
                await self._reject(send, message)

    @staticmethod
    async def _reject(send, message: str) -> None:
        body = json.dumps(error_body(message, "request_too_large")).encode()
        await send({"type": "http.response.start", "status": 413,
                    "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
        await send({"type": "http.response.body", "body": body})


class BodyTooLarge(HTTPException):
    """Raised while a body streams past the limit; an HTTPException, so the app answers 413 with it
    (FastAPI turns other errors raised while reading a body into a 400)."""
