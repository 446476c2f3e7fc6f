"""The HTTP conventions in shared.web: JSON errors that never echo a token, a body-size cap, and the
operational endpoints (a local docs page, an ops token or port, short readiness reasons)."""

from collections.abc import AsyncIterator

import httpx
import pytest
from fastapi import FastAPI
from prometheus_client import CollectorRegistry
from pydantic import BaseModel, SecretStr

from shared.errors import ApiError
from shared.ids import environment_id
from shared.tokens import generate_token
from shared.web import (
    OpsSettings,
    error_responses,
    health_router,
    install_error_handlers,
    short_reason,
)

TOKEN = generate_token()


class Body(BaseModel):
    name: str


def make_app() -> FastAPI:
    app = FastAPI()
    install_error_handlers(app, max_body_bytes=1000)

    @app.post("/things")
    async def create(body: Body) -> dict[str, str]:
        return {"name": body.name}

    @app.get("/things/{thing_id}")
    async def show(thing_id: str) -> dict[str, str]:
        raise ApiError(404, "not_found", f"no thing {thing_id!r}")

    @app.get("/envs/{org}")
    async def env(org: str) -> dict[str, str]:
        try:
            return {"id": environment_id(org, "p", "e")}
        except ValueError as exc:
            raise ApiError(422, "invalid_id", str(exc)) from None

    return app


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=make_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        yield client


async def test_a_token_used_as_a_field_name_is_not_echoed(client: httpx.AsyncClient) -> None:
    response = await client.post("/things", json={TOKEN: 1})
    assert response.status_code == 422
    assert response.json()["error"] == "invalid_request"
    assert TOKEN not in response.text
    assert TOKEN[10:30] not in response.text


async def test_a_token_quoted_in_an_api_error_is_redacted(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/things/{TOKEN}")
    assert response.status_code == 404
    assert response.json()["message"] == "no thing 'stk_[REDACTED]'"
    org = await client.get(f"/envs/{TOKEN[:32]}")
    assert org.status_code == 422
    assert TOKEN[:32] not in org.text


async def test_a_declared_oversized_body_is_413_before_it_is_read(client: httpx.AsyncClient) -> None:
    response = await client.post("/things", content=b"x" * 5000, headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json() == {
        "error": "payload_too_large",
        "message": "request body is larger than 1000 bytes",
    }


async def test_a_streamed_oversized_body_is_413(client: httpx.AsyncClient) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        for _ in range(10):
            yield b"x" * 500

    response = await client.post("/things", content=chunks(), headers={"content-type": "application/json"})
    assert response.status_code == 413
    assert response.json()["error"] == "payload_too_large"


async def test_a_small_valid_body_still_works(client: httpx.AsyncClient) -> None:
    response = await client.post("/things", json={"name": "ok"})
    assert response.status_code == 200
    assert response.json() == {"name": "ok"}


# --- operational endpoints (SECURITY_REVIEW finding 15) ---------------------------------------------------


def ops_app(ops: OpsSettings | None = None, title: str = "streamtoken thing") -> FastAPI:
    app = FastAPI(title=title)
    install_error_handlers(app, ops=ops)
    app.include_router(health_router(lambda: (True, {"status": "ok"}), CollectorRegistry()))

    @app.get("/things", summary="List things")
    async def things() -> list[str]:
        return []

    return app


def client_for(app: FastAPI, base_url: str = "http://svc") -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url=base_url)


async def test_docs_is_a_local_page_without_third_party_scripts() -> None:
    async with client_for(ops_app()) as c:
        page = await c.get("/docs")
        assert page.status_code == 200
        assert page.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in page.headers["content-security-policy"]
        assert "<script" not in page.text.lower()
        assert "http://" not in page.text
        assert "https://" not in page.text
        assert "/things" in page.text
        assert "List things" in page.text
        assert (await c.get("/redoc")).status_code == 404
        assert (await c.get("/docs/oauth2-redirect")).status_code == 404
        assert (await c.get("/openapi.json")).json()["info"]["title"] == "streamtoken thing"


async def test_an_ops_token_closes_metrics_docs_and_openapi() -> None:
    app = ops_app(OpsSettings(ops_token=SecretStr("ops-secret-1")))
    async with client_for(app) as c:
        for path in ("/metrics", "/docs", "/openapi.json"):
            for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic ops-secret-1"}):
                r = await c.get(path, headers=headers)
                assert r.status_code == 401, (path, headers)
                assert r.json()["error"] == "unauthorized"
                assert r.headers["www-authenticate"].startswith("Bearer")
            ok = await c.get(path, headers={"Authorization": "Bearer ops-secret-1"})
            assert ok.status_code == 200, path
        # the service itself and the health probes stay as they were
        assert (await c.get("/things")).status_code == 200
        assert (await c.get("/health/live")).status_code == 200
        assert (await c.get("/health/ready")).status_code == 200


async def test_an_ops_port_serves_them_there_only() -> None:
    app = ops_app(OpsSettings(ops_port=9464))
    async with client_for(app, "http://svc:8001") as main, client_for(app, "http://svc:9464") as ops:
        for path in ("/metrics", "/docs", "/openapi.json"):
            r = await main.get(path)
            assert r.status_code == 404, path
            assert r.json()["error"] == "not_found"
            assert (await ops.get(path)).status_code == 200, path
        assert (await main.get("/things")).status_code == 200


async def test_each_service_reads_its_own_ops_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMTOKEN_ISSUER_OPS_TOKEN", "issuer-ops")
    monkeypatch.setenv("STREAMTOKEN_NOTIFIER_OPS_PORT", "9465")
    issuer = ops_app(title="streamtoken issuer")
    assert issuer.state.ops == OpsSettings(ops_token=SecretStr("issuer-ops"))
    async with client_for(issuer) as c:
        assert (await c.get("/metrics")).status_code == 401
        assert (await c.get("/metrics", headers={"Authorization": "Bearer issuer-ops"})).status_code == 200
    assert ops_app(title="streamtoken notifier").state.ops.ops_port == 9465
    assert not ops_app(title="streamtoken resolver").state.ops.closed
    assert not ops_app(title="FastAPI").state.ops.closed


async def test_readiness_tells_a_short_reason_not_the_error() -> None:
    detail = {
        "status": "degraded",
        "kafka": 'retrying (KafkaError{code=_TRANSPORT,val=-195,str="10.1.2.3:9092/1: Connect refused"})',
        "consumer_error": "KafkaException: SASL authentication error: user streamtoken-notifier",
        "problem": "could not connect; postgresql://streamtoken:pw@db/notifier",
        "lag": 3,
        "database": True,
    }
    app = FastAPI()
    install_error_handlers(app)
    app.include_router(health_router(lambda: (False, detail), CollectorRegistry()))
    async with client_for(app) as c:
        r = await c.get("/health/ready")
    assert r.status_code == 503
    assert r.json() == {
        "status": "degraded",
        "kafka": "retrying",
        "consumer_error": "KafkaException",
        "problem": "could not connect",
        "lag": 3,
        "database": True,
    }
    assert short_reason("x" * 500) == "x" * 48
    assert short_reason(": nothing before") == "error"


def test_openapi_documents_the_error_bodies_and_readiness_codes() -> None:
    app = ops_app()

    @app.get("/guarded", responses=error_responses(401, 404))
    async def guarded() -> dict[str, str]:
        return {}

    spec = app.openapi()
    responses = spec["paths"]["/guarded"]["get"]["responses"]
    assert {"200", "401", "404"} <= set(responses)
    assert responses["401"]["content"]["application/json"]["schema"]["$ref"].endswith("/ErrorBody")
    assert {"200", "503"} <= set(spec["paths"]["/health/ready"]["get"]["responses"])
    assert "/metrics" not in spec["paths"]
    assert "/docs" not in spec["paths"]


async def test_the_version_is_pyprojects_everywhere() -> None:
    from importlib.metadata import version

    import shared

    assert shared.__version__ == version("streamtoken")
    app = FastAPI(version=shared.__version__)
    install_error_handlers(app)
    app.include_router(health_router(lambda: (True, {}), CollectorRegistry()))
    async with client_for(app) as c:
        live = await c.get("/health/live")
    assert live.json() == {"status": "live", "version": shared.__version__}


def test_every_service_exports_its_process_metrics_under_its_own_names() -> None:
    from prometheus_client import generate_latest

    from services.issuer.metrics import IssuerMetrics
    from services.resolver.metrics import ResolverMetrics

    for service, metrics in (("issuer", IssuerMetrics()), ("resolver", ResolverMetrics())):
        text = generate_latest(metrics.registry).decode()
        assert "process_resident_memory_bytes" in text, service
        assert "python_info" in text, service
        own = [
            line.split()[2]
            for line in text.splitlines()
            if line.startswith("# TYPE") and not line.split()[2].startswith(("process_", "python_"))
        ]
        assert own, service
        assert all(name.startswith(f"streamtoken_{service}_") for name in own), own
