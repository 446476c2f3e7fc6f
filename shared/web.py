"""HTTP conventions every service follows: JSON errors, health endpoints, Prometheus metrics, serving.

Errors are ``{"error": <code>, "message": <sentence>}``; bad input is a 4xx, never a 5xx, and never echoes
the input back (it may hold a token).
"""

from __future__ import annotations

from collections.abc import Callable
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from starlette.exceptions import HTTPException as StarletteHTTPException

from shared.logs import get_logger, scrub

log = get_logger(__name__)


class ApiError(Exception):
    """Raise from a handler or route to answer ``status`` with a JSON error body."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    return {"error": code, "message": message, **extra}


def _code_for(status: int) -> str:
    try:
        return HTTPStatus(status).phrase.lower().replace(" ", "_").replace("-", "_")
    except ValueError:
        return "error"


def _describe_validation(exc: RequestValidationError) -> tuple[str, list[dict[str, Any]]]:
    details = []
    for err in exc.errors():
        loc = [str(p) for p in err.get("loc", ())]
        details.append({"field": ".".join(loc), "problem": scrub(str(err.get("msg", "")))})
    summary = "; ".join(f"{d['field']}: {d['problem']}" for d in details[:5]) or "malformed request"
    return f"invalid request - {summary}", details


def install_error_handlers(app: FastAPI) -> None:
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
            error_body(_code_for(exc.status_code), scrub(message)),
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
