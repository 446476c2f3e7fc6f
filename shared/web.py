"""HTTP conventions every service follows: JSON errors, health endpoints, Prometheus metrics, the
operational endpoints (``/metrics``, ``/docs``, ``/openapi.json``) and serving.

Errors are ``{"error": <code>, "message": <sentence>}``; bad input is a 4xx, never a 5xx, and never echoes
the input back (it may hold a token).

The operational endpoints can be closed per service (:class:`OpsSettings`):
``STREAMTOKEN_<SERVICE>_OPS_TOKEN`` requires ``Authorization: Bearer <ops token>`` for them, and
``STREAMTOKEN_<SERVICE>_OPS_PORT`` serves them on a port of their own only. ``/docs`` is a page rendered
here from the OpenAPI document: no script, no CDN.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import html
import json
import re
import socket
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any

from fastapi import APIRouter, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from pydantic import BaseModel, ConfigDict, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from shared import __version__
from shared.errors import ApiError, error_body
from shared.logs import get_logger

log = get_logger(__name__)


class ErrorBody(BaseModel):
    """Every error answer (4xx and 5xx): a stable code and one sentence; some codes add fields of their
    own (``details`` of ``invalid_request``, ``clients`` of ``token_1_in_use``)."""

    model_config = ConfigDict(extra="allow", title="ErrorBody")

    error: str = Field(description="a stable, machine-readable code, e.g. invalid_token")
    message: str = Field(description="one sentence for a person")
    details: list[dict[str, str]] | None = Field(
        None,
        description="invalid_request (422): each offending field ('body.name', 'query.limit', ...) and its "
        "problem; the input itself is never echoed",
    )


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each status documented with the JSON error body (the statuses every
    route can answer are added by :func:`document_errors`; list a route's own ones here)."""
    return {
        status: {"model": ErrorBody, "description": HTTPStatus(status).phrase} for status in sorted(statuses)
    }


MAX_BODY_BYTES = 1024 * 1024
ERROR_SCHEMA_REF = "#/components/schemas/ErrorBody"
_METHODS = frozenset({"get", "put", "post", "delete", "patch", "head", "options", "trace"})
_FRAMEWORK_VALIDATION = ("HTTPValidationError", "ValidationError")
ALWAYS_500 = "internal_error: the service failed to handle this request (the reason is in its log)"


def _error_answer(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": ERROR_SCHEMA_REF}}},
    }


def document_errors(
    spec: dict[str, Any],
    api_errors: Mapping[int, str] | None = None,
    max_body_bytes: int = MAX_BODY_BYTES,
) -> dict[str, Any]:
    """The error model of an OpenAPI document made true, in place (and idempotent): one ``ErrorBody``
    component; every 422 answer refers to it (FastAPI's ``HTTPValidationError`` is never sent: the handler
    of :func:`install_error_handlers` answers ``invalid_request`` with ``details``); and each operation
    documents what any route can answer: 401 and 403 where it declares security, 400 and 413 where it
    takes a body (unparsable; over :class:`BodySizeLimit`), 422 where it takes parameters or a body,
    ``api_errors`` (status →
    description, e.g. the issuer's 503 for a database outage) on every operation but the health ones, and
    500. What a route documents itself stays (its own descriptions, 404, 409, 429, ...)."""
    components = spec.setdefault("components", {}).setdefault("schemas", {})
    components["ErrorBody"] = ErrorBody.model_json_schema(mode="serialization")
    for operations in spec.get("paths", {}).values():
        for method, operation in operations.items():
            if method not in _METHODS or not isinstance(operation, dict):
                continue
            responses: dict[str, Any] = operation.setdefault("responses", {})
            wanted: dict[int, str] = {}
            if operation.get("security"):
                wanted[401] = "no, an unknown or an expired credential"
                wanted[403] = "the credential does not allow this"
            if "requestBody" in operation:
                wanted[400] = (
                    "bad_request: the body could not be parsed (e.g. not JSON in the declared encoding)"
                )
                wanted[413] = "payload_too_large: the request body is over the service's cap"
            if "requestBody" in operation or operation.get("parameters"):
                wanted[422] = "invalid_request: a parameter or the body is invalid (see details)"
            if "health" not in operation.get("tags", ()):
                wanted.update(api_errors or {})
            wanted[500] = ALWAYS_500
            for status, description in wanted.items():
                responses.setdefault(str(status), _error_answer(description))
            if "422" in responses:
                description = responses["422"].get("description") or "invalid_request"
                if description == "Validation Error":  # FastAPI's default text
                    description = wanted.get(422, "invalid_request")
                responses["422"] = _error_answer(description)
            operation["responses"] = dict(sorted(responses.items(), key=lambda item: item[0]))
    text = json.dumps(spec.get("paths", {}))
    for name in _FRAMEWORK_VALIDATION:
        if f"/schemas/{name}" not in text:
            components.pop(name, None)
    return spec


def install_error_contract(
    app: FastAPI, api_errors: Mapping[int, str] | None = None, max_body_bytes: int = MAX_BODY_BYTES
) -> None:
    """``app.openapi()`` (and ``/openapi.json``, ``/docs``) post-processed by :func:`document_errors`."""
    build = app.openapi
    done: list[int] = []

    def openapi() -> dict[str, Any]:
        spec = build()  # FastAPI's, cached on the app
        if done != [id(spec)]:
            document_errors(spec, api_errors, max_body_bytes)
            done[:] = [id(spec)]
        return spec

    app.openapi = openapi  # type: ignore[method-assign]


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


def install_error_handlers(
    app: FastAPI,
    max_body_bytes: int = MAX_BODY_BYTES,
    *,
    service: str | None = None,
    ops: OpsSettings | None = None,
    api_errors: Mapping[int, str] | None = None,
) -> None:
    """JSON errors for every failure, a cap on request bodies (413 above ``max_body_bytes``), and the
    operational endpoints of :func:`install_ops` (``service`` defaults to the name in a title
    ``streamtoken <service>``; ``ops`` to that service's :class:`OpsSettings`), and the OpenAPI document's
    error model made true by :func:`document_errors` (``api_errors``: statuses every API operation can
    answer besides 500, with their description)."""
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    install_error_contract(app, api_errors, max_body_bytes)
    install_ops(app, service or _service_of(app), ops)

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        return JSONResponse(
            error_body(exc.code, exc.message, **(exc.extra or {})),
            status_code=exc.status,
            headers=exc.headers,
        )

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


_REASON_END = re.compile(r"[(:;\n\[{]")
MAX_REASON = 48


def short_reason(value: str) -> str:
    """A state or error text cut to its leading words (``"retrying (KafkaError{...})"`` → ``"retrying"``):
    readiness is public, exception texts (addresses, principals, SQL) are for the log."""
    head = _REASON_END.split(value, maxsplit=1)[0].strip()
    return head[:MAX_REASON].rstrip() or "error"


def _short_values(detail: Any) -> Any:
    if isinstance(detail, str):
        return short_reason(detail)
    if isinstance(detail, dict):
        return {str(k): _short_values(v) for k, v in detail.items()}
    if isinstance(detail, list | tuple):
        return [_short_values(v) for v in detail]
    return detail


def register_process_collectors(registry: CollectorRegistry) -> CollectorRegistry:
    """The process, platform and garbage-collector collectors (``process_resident_memory_bytes``,
    ``python_info``, ``python_gc_*``) on a service's own registry, as on prometheus_client's default one."""
    from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

    ProcessCollector(registry=registry)
    PlatformCollector(registry=registry)
    GCCollector(registry=registry)
    return registry


_HEALTH_DETAIL = {
    "content": {"application/json": {"schema": {"type": "object", "additionalProperties": True}}}
}


def health_router(
    ready: Callable[[], tuple[bool, dict[str, Any]]],
    registry: CollectorRegistry | None = None,
) -> APIRouter:
    """``/health/live``, ``/health/ready`` (503 until ``ready()`` says so; every text in its detail cut
    to a short reason) and Prometheus ``/metrics``."""
    router = APIRouter(tags=["health"])

    @router.get("/health/live")
    async def live() -> dict[str, str]:
        return {"status": "live", "version": __version__}

    @router.get(
        "/health/ready",
        response_class=JSONResponse,
        responses={
            200: {"description": "ready: the detail of each part", **_HEALTH_DETAIL},
            503: {"description": "not ready (yet): the same detail", **_HEALTH_DETAIL},
        },
    )
    async def is_ready() -> JSONResponse:
        ok, detail = ready()
        return JSONResponse(_short_values(detail), status_code=200 if ok else 503)

    @router.get("/metrics", include_in_schema=False)
    async def metrics() -> Response:
        from prometheus_client import REGISTRY

        return Response(generate_latest(registry or REGISTRY), media_type=CONTENT_TYPE_LATEST)

    return router


# --- operational endpoints -------------------------------------------------------------------------------

OPS_PATHS = frozenset({"/metrics", "/docs", "/openapi.json"})
_FRAMEWORK_DOCS = frozenset({"/docs", "/docs/oauth2-redirect", "/redoc"})


class OpsSettings(BaseSettings):
    """``STREAMTOKEN_<SERVICE>_OPS_TOKEN``, ``..._OPS_PORT`` and ``..._OPS_HOST`` of one service
    (:meth:`for_service`). Unset, the operational endpoints are open on the service's port."""

    model_config = SettingsConfigDict(extra="ignore")

    ops_token: SecretStr | None = Field(
        None,
        description="STREAMTOKEN_<SERVICE>_OPS_TOKEN: when set, /metrics, /docs and /openapi.json need "
        "'Authorization: Bearer <it>'",
    )
    ops_port: int | None = Field(
        None,
        ge=1,
        le=65535,
        description="STREAMTOKEN_<SERVICE>_OPS_PORT: when set, /metrics, /docs and /openapi.json are served "
        "on this port only (404 on the service's port)",
    )
    ops_host: str = Field("127.0.0.1", description="STREAMTOKEN_<SERVICE>_OPS_HOST: address of the ops port")

    @classmethod
    def for_service(cls, service: str) -> OpsSettings:
        """The settings read from ``STREAMTOKEN_<SERVICE>_OPS_*``."""
        return cls(_env_prefix=f"STREAMTOKEN_{service.upper()}_")

    @property
    def closed(self) -> bool:
        return self.ops_token is not None or self.ops_port is not None


def _service_of(app: FastAPI) -> str | None:
    prefix, _, name = app.title.partition(" ")
    return name if prefix == "streamtoken" and name.isidentifier() else None


class OpsGuard:
    """ASGI middleware in front of the operational endpoints: with a port, they are answered on that port
    only (404 elsewhere); with a token, only to ``Authorization: Bearer <token>`` (401 else)."""

    def __init__(self, app: ASGIApp, ops: OpsSettings) -> None:
        self.app = app
        self.port = ops.ops_port
        self.token = ops.ops_token.get_secret_value().encode() if ops.ops_token is not None else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["path"] not in OPS_PATHS:
            await self.app(scope, receive, send)
            return
        refusal: tuple[int, str, str, dict[str, str] | None] | None = None
        server = scope.get("server") or (None, None)
        if self.port is not None and server[1] != self.port:
            refusal = (404, "not_found", "Not Found", None)
        elif self.token is not None:
            given = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, value = given.partition(b" ")
            if scheme.lower() != b"bearer" or not hmac.compare_digest(value.strip(), self.token):
                challenge = {"WWW-Authenticate": 'Bearer realm="streamtoken-ops"'}
                refusal = (401, "unauthorized", "send the service's ops token as a Bearer token", challenge)
        if refusal is None:
            await self.app(scope, receive, send)
            return
        status, code, message, headers = refusal
        response = JSONResponse(error_body(code, message), status_code=status, headers=headers)
        await response(scope, receive, send)


def _docs_page(spec: dict[str, Any]) -> str:
    """The API reference as one static HTML page: no script, no stylesheet or font from elsewhere."""
    info = spec.get("info", {})
    e = html.escape
    rows = []
    for path, operations in spec.get("paths", {}).items():
        for method, op in operations.items():
            if not isinstance(op, dict):
                continue
            codes = ", ".join(str(c) for c in op.get("responses", {}))
            rows.append(
                f"<tr><td><code>{e(method.upper())}</code></td><td><code>{e(path)}</code></td>"
                f"<td>{e(op.get('summary', ''))}<br><small>{e(op.get('description', ''))}</small></td>"
                f"<td>{e(codes)}</td></tr>"
            )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{e(str(info.get('title', 'API')))}</title>"
        "<style>body{font-family:sans-serif;margin:2em}td{border-top:1px solid #ccc;padding:.3em;"
        "vertical-align:top}small{color:#555;white-space:pre-wrap}</style></head><body>"
        f"<h1>{e(str(info.get('title', 'API')))} <small>{e(str(info.get('version', '')))}</small></h1>"
        f"<p>{e(str(info.get('description', '')))}</p>"
        "<p>The OpenAPI document: <a href='openapi.json'>openapi.json</a>.</p>"
        "<table><tr><th>method</th><th>path</th><th>what</th><th>answers</th></tr>"
        + "".join(rows)
        + "</table></body></html>"
    )


DOCS_HEADERS = {"Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'"}


def install_ops(app: FastAPI, service: str | None, ops: OpsSettings | None = None) -> OpsSettings:
    """Replace FastAPI's CDN-loaded Swagger UI and ReDoc by :func:`_docs_page` at ``/docs`` and put
    :class:`OpsGuard` in front of ``/metrics``, ``/docs`` and ``/openapi.json``. ``ops`` defaults to
    ``OpsSettings.for_service(service)`` (open when ``service`` is ``None``); kept as ``app.state.ops``
    for :func:`serve`."""
    if ops is None:
        ops = OpsSettings.for_service(service) if service else OpsSettings()
    if app.docs_url is not None or app.redoc_url is not None:
        kept: list[BaseRoute] = [
            r for r in app.router.routes if getattr(r, "path", None) not in _FRAMEWORK_DOCS
        ]
        app.router.routes[:] = kept
        app.docs_url = app.redoc_url = None

        @app.get("/docs", include_in_schema=False, response_class=HTMLResponse)
        async def docs() -> HTMLResponse:
            return HTMLResponse(_docs_page(app.openapi()), headers=DOCS_HEADERS)

    app.add_middleware(OpsGuard, ops=ops)
    app.state.ops = ops
    if not ops.closed and service:
        log.debug("ops_endpoints_open", service=service, detail="set the OPS_TOKEN or OPS_PORT to close them")
    return ops


def _listen(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(2048)
    sock.set_inheritable(True)
    return sock


def serve(app: Any, host: str, port: int, *, access_log: bool = False, log_level: str = "info") -> None:
    """Run an ASGI app with uvicorn in the foreground, leaving logging to :mod:`shared.logs`; with an ops
    port (``app.state.ops``), the same server listens there too."""
    import uvicorn

    state = getattr(app, "state", None)
    ops: OpsSettings | None = getattr(state, "ops", None) if state is not None else None
    if ops is None or ops.ops_port is None:
        uvicorn.run(app, host=host, port=port, access_log=access_log, log_level=log_level, log_config=None)
        return
    config = uvicorn.Config(
        app, host=host, port=port, access_log=access_log, log_level=log_level, log_config=None
    )
    sockets = [_listen(host, port), _listen(ops.ops_host, ops.ops_port)]
    log.info("ops_port", host=ops.ops_host, port=ops.ops_port)
    asyncio.run(uvicorn.Server(config).serve(sockets=sockets))
