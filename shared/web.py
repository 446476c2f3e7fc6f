"""HTTP conventions every service follows: JSON errors, health endpoints, Prometheus metrics, serving.

Errors are ``{"error": <code>, "message": <sentence>}``; bad input is a 4xx, never a 5xx, and never echoes
the input back (it may hold a token).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared.errors import ApiError, error_body
from shared.logs import get_logger

log = get_logger(__name__)


def _code_for(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def _describe_validation(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    details = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        details.append({"field": ".".join(loc), "problem": str(err.get("msg", ""))})
    summary = "; ".join(f"{d['field']}: {d['problem']}" for d in details[:5]) or "malformed request"
    return f"invalid request - {summary}", details


MAX_BODY_BYTES = 1024 * 1024


class _BodyTooLarge(Exception):
    pass


class BodySizeLimit:
    """ASGI middleware: a request body over ``max_bytes`` is a 413, before it is read into memory."""

    def __init__(self, app: ASGIApp, max_bytes: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        declared = dict(scope["headers"]).get(b"content-length")
        if declared is not None and (not declared.isdigit() or int(declared) > self.max_bytes):
            await self._too_large(send)
            return
        received = 0
        exceeded = False

        async def limited() -> Message:
            nonlocal received, exceeded
            message = await receive()
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_bytes:
                    exceeded = True
                    raise _BodyTooLarge
            return message

        async def unless_exceeded(message: Message) -> None:
            if not exceeded:  # the app's own answer to the interrupted read is replaced by the 413
                await send(message)

        with contextlib.suppress(_BodyTooLarge):
            await self.app(scope, limited, unless_exceeded)
        if exceeded:
            await self._too_large(send)

    def _message(self) -> str:
        return f"request body is larger than {self.max_bytes} bytes"

    async def _too_large(self, send: Send) -> None:
        response = JSONResponse(error_body("payload_too_large", self._message()), status_code=413)
        await response({"type": "http"}, _no_receive, send)


async def _no_receive() -> Message:
    return {"type": "http.disconnect"}


def install_error_handlers(app: FastAPI, max_body_bytes: int = MAX_BODY_BYTES) -> None:
    """JSON errors for every failure, and a cap on request bodies (413 above ``max_body_bytes``)."""
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(error_body(exc.code, exc.message), status_code=exc.status, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        message, details = _describe_validation(exc)
        return JSONResponse(error_body("invalid_request", message, details=details), status_code=422)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        message = exc.detail if isinstance(exc.detail, str) else _code_for(exc.status_code)
        return JSONResponse(
            error_body(_code_for(exc.status_code), message),
            status_code=exc.status_code,
            headers=exc.headers,
        )

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.error("unhandled_error", path=request.url.path, error=type(exc).__name__, detail=str(exc))
        return JSONResponse(
            error_body("internal_error", "the service failed to handle this request; see its log"),
            status_code=500,
        )


def health_router(
    ready: Callable[[], tuple[bool, dict[str, Any]]],
    registry: CollectorRegistry | None = None,
) -> APIRouter:
    """``/health/live``, ``/health/ready`` (503 until ``ready()`` says so) and Prometheus ``/metrics``."""
    router = APIRouter(tags=["health"])

    @router.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "live"}

    @router.get("/health/ready")
    async def is_ready() -> JSONResponse:
        ok, detail = ready()
        return JSONResponse(detail, status_code=200 if ok else 503)

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        from prometheus_client import REGISTRY

        return Response(generate_latest(registry or REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return router


def serve(app: Any, host: str, port: int, *, access_log: bool = False, log_level: str = "info") -> None:
    """Run an ASGI app with uvicorn in the foreground, leaving logging to :mod:`shared.logs`."""
    import uvicorn

    uvicorn.run(app, host=host, port=port, access_log=access_log, log_level=log_level, log_config=None)
