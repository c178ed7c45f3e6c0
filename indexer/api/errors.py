"""Error answers: field-level 422s that never echo values, and the IndexerError tree."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse

from ..errors import IndexerError, InvalidRecord, Unauthenticated


def _field_errors(exc: RequestValidationError) -> list[dict[str, object]]:
    out = []
    for error in exc.errors():
        # FastAPI's default answer echoes the input: not with ID and phone numbers in it. The
        # error type (a fixed name, no value) stays: the OpenAPI description promises it.
        out.append(
            {
                "loc": list(error.get("loc", ())),
                "msg": error.get("msg", "invalid"),
                "type": error.get("type", "value_error"),
            }
        )
    return out


def install(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return JSONResponse(status_code=422, content={"detail": _field_errors(exc)})

    @app.exception_handler(IndexerError)
    async def _indexer(_request: Request, exc: IndexerError) -> JSONResponse:
        if isinstance(exc, InvalidRecord):
            detail: object = [{"loc": ["body", exc.field], "msg": str(exc), "type": "value_error"}]
        else:
            detail = str(exc)
        headers = {"WWW-Authenticate": "Bearer"} if isinstance(exc, Unauthenticated) else None
        return JSONResponse(status_code=exc.status, content={"detail": detail}, headers=headers)


class BodyLimit:
    """ASGI middleware: refuse request bodies over a size (413), counted as they arrive."""

    def __init__(self, app, max_bytes: int, unlimited: tuple[str, ...] = ()) -> None:  # type: ignore[no-untyped-def]
        self.app = app
        self.max_bytes = max_bytes
        self.unlimited = unlimited

    async def __call__(self, scope, receive, send):  # type: ignore[no-untyped-def]
        if scope["type"] != "http" or scope.get("path") in self.unlimited:
            await self.app(scope, receive, send)
            return
        declared = dict(scope.get("headers") or []).get(b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > self.max_bytes:
            await self._refuse(send)
            return
        seen = 0

        async def limited():  # type: ignore[no-untyped-def]
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    raise _TooLarge
            return message

        try:
            await self.app(scope, limited, send)
        except _TooLarge:
            await self._refuse(send)

    async def _refuse(self, send) -> None:  # type: ignore[no-untyped-def]
        body = b'{"detail":"request body too large"}'
        await send(
            {
                "type": "http.response.start",
                "status": 413,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


class _TooLarge(Exception):
    pass
