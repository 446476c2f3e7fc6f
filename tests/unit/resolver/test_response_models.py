"""Every JSON route of the resolver declares its answer's model in OpenAPI, and real answers (the lookup's
fast path included) validate against the document and the model.

The routes return the orjson bytes they build themselves (FastAPI validates nothing it is handed as a
Response), so these checks are what keeps the documented models and the answers together.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import jsonschema
import pytest
from pydantic import BaseModel, TypeAdapter

from services.resolver.admin import TopicInfo
from services.resolver.api import answer_topic_lookup
from services.resolver.bootstrap import build_app
from services.resolver.models import LibrdkafkaSettings, Topic, Workspace
from services.resolver.replica import Status
from services.resolver.settings import ResolverSettings
from services.resolver.table import TokenTable
from shared.kafka import KafkaSettings
from shared.models.resolver import GenerationAnswer, HeartbeatAnswer, TopicLookup, WhoamiAnswer
from tests.unit.resolver.factories import Env
from tests.unit.resolver.fakes import FakeAdmin, bearer

DEV = "acme-telemetry-dev"
CA_PEM = b"-----BEGIN CERTIFICATE-----\nMIIBdzCCAR2gAwIBAgIUdGVzdC1jYQ==\n-----END CERTIFICATE-----\n"

# (method, path, status) -> the model OpenAPI must name for that answer (a list: an array of it).
DECLARED: dict[tuple[str, str, str], type[BaseModel] | list[type[BaseModel]]] = {
    ("get", "/v1/topics/{name}", "200"): TopicLookup,
    ("get", "/v1/environments/{environment_id}/generation", "200"): GenerationAnswer,
    ("get", "/v1/whoami", "200"): WhoamiAnswer,
    ("post", "/v1/heartbeat", "200"): HeartbeatAnswer,
    ("get", "/workspaces", "200"): [Workspace],
    ("get", "/workspaces/{workspace}", "200"): Workspace,
    ("get", "/workspaces/{workspace}/broker/librdkafka", "200"): LibrdkafkaSettings,
    ("get", "/{workspace}/topics/{name}", "200"): Topic,
    ("get", "/{workspace}/topics", "200"): [Topic],
    ("post", "/{workspace}/topics", "200"): Topic,
    ("post", "/{workspace}/topics", "201"): Topic,
}
HEALTH = {"/health/live", "/health/ready"}  # shared.web's, the same in every service


def _ref(model: type[BaseModel]) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{model.__name__}"}


@pytest.fixture
def dev() -> Env:
    return Env(DEV)


@pytest.fixture
def app(dev: Env, tmp_path: Path) -> Any:
    """A resolver on SASL_SSL with a CA, so the librdkafka answer carries every key it can."""
    ca = tmp_path / "ca.pem"
    ca.write_bytes(CA_PEM)
    table = TokenTable()
    table.apply_event(DEV, dev.event())
    admin = FakeAdmin()
    admin.topics_[f"{DEV}-f1-data"] = TopicInfo(
        f"{DEV}-f1-data", 3, 1, True, {"cleanup.policy": "compact,delete", "retention.ms": "-1"}
    )
    settings = ResolverSettings(
        kafka=KafkaSettings(
            bootstrap_servers="kafka.internal:9092", security_protocol="SASL_SSL", ssl_ca_location=str(ca)
        )
    )
    return build_app(settings, table=table, admin=admin, start_replica=False, status=lambda: Status.READY)


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://resolver") as c:
        yield c


def test_every_json_route_declares_its_model(app: Any) -> None:
    spec = app.openapi()
    declared = {}
    for path, operations in spec["paths"].items():
        for method, operation in operations.items():
            for status, answer in operation["responses"].items():
                if status.startswith("2") and path not in HEALTH:
                    declared[(method, path, status)] = answer["content"]["application/json"]["schema"]
    assert set(declared) == set(DECLARED)
    for key, model in DECLARED.items():
        schema = declared[key]
        if isinstance(model, list):
            assert (schema["type"], schema["items"]) == ("array", _ref(model[0])), key
        else:
            assert schema == _ref(model), key


def _check(spec: dict[str, Any], method: str, path: str, response: httpx.Response) -> None:
    """``response`` is an answer of the route as OpenAPI documents it, and parses into its model."""
    status = str(response.status_code)
    schema = spec["paths"][path][method]["responses"][status]["content"]["application/json"]["schema"]
    body = response.json()
    jsonschema.validate(body, {**schema, "components": spec["components"]})
    model = DECLARED[(method, path, status)]
    if isinstance(model, list):
        TypeAdapter(list[model[0]]).validate_python(body)  # type: ignore[valid-type]
    else:
        model.model_validate(body)


async def test_real_answers_validate_against_the_document(
    app: Any, client: httpx.AsyncClient, dev: Env
) -> None:
    spec = app.openapi()
    auth = bearer(dev.token_1)
    native = [
        ("get", "/v1/topics/{name}", "/v1/topics/f1-data"),
        ("get", "/v1/environments/{environment_id}/generation", f"/v1/environments/{DEV}/generation"),
        ("get", "/v1/environments/{environment_id}/generation", "/v1/environments/nobody-x-y/generation"),
        ("get", "/v1/whoami", "/v1/whoami"),
        ("get", "/workspaces", "/workspaces"),
        ("get", "/workspaces/{workspace}", f"/workspaces/{DEV}"),
        ("get", "/workspaces/{workspace}/broker/librdkafka", f"/workspaces/{DEV}/broker/librdkafka"),
        ("get", "/{workspace}/topics/{name}", f"/{DEV}/topics/f1-data"),
        ("get", "/{workspace}/topics", f"/{DEV}/topics"),
    ]
    for method, path, url in native:
        response = await client.get(url, headers=auth)
        assert response.status_code == 200, (url, response.text)
        _check(spec, method, path, response)
    librdkafka = (await client.get(f"/workspaces/{DEV}/broker/librdkafka", headers=auth)).json()
    assert {"sasl.mechanism", "sasl.username", "sasl.password", "ssl.ca.cert"} <= set(librdkafka)

    heartbeat = await client.post("/v1/heartbeat", headers=auth, json={"deployment_id": "dep-1"})
    _check(spec, "post", "/v1/heartbeat", heartbeat)
    new = {"name": "laps", "configuration": {"partitions": 2, "cleanupPolicy": "compact"}}
    created = await client.post(f"/{DEV}/topics", headers=auth, json=new)
    assert created.status_code == 201, created.text
    _check(spec, "post", "/{workspace}/topics", created)
    again = await client.post(f"/{DEV}/topics", headers=auth, json=new)
    assert again.status_code == 200, again.text
    _check(spec, "post", "/{workspace}/topics", again)


async def test_a_grace_tokens_heartbeat_validates(app: Any, client: httpx.AsyncClient, dev: Env) -> None:
    old = dev.token_1
    app.state.resolver.table.apply_event(DEV, dev.rotate(grace_until=datetime.now(UTC) + timedelta(hours=1)))
    response = await client.post("/v1/heartbeat", headers=bearer(old), json={"deployment_id": "dep-1"})
    assert response.json()["slot"] is None
    _check(app.openapi(), "post", "/v1/heartbeat", response)


async def test_the_fast_lookup_answers_the_documented_model(
    app: Any, client: httpx.AsyncClient, dev: Env
) -> None:
    """The lookup is answered by ``answer_topic_lookup`` ahead of FastAPI; its bytes are the route's
    (the reference the document describes), and both validate."""
    resolver = app.state.resolver
    scope = {
        "type": "http",
        "method": "GET",
        "path": "/v1/topics/f1-data",
        "headers": [(b"authorization", f"Bearer {dev.token_1}".encode())],
        "client": ("127.0.0.1", 5000),
    }
    answer = answer_topic_lookup(resolver, scope)
    assert answer is not None
    status, _, fast_body = answer
    assert status == 200
    fast = await client.get("/v1/topics/f1-data", headers=bearer(dev.token_1))
    assert fast.content == fast_body
    app.resolver = None  # the FastAPI route itself, the fast path off
    try:
        routed = await client.get("/v1/topics/f1-data", headers=bearer(dev.token_1))
    finally:
        app.resolver = resolver
    assert routed.content == fast_body
    spec = app.openapi()
    for response in (fast, routed):
        _check(spec, "get", "/v1/topics/{name}", response)
    assert TopicLookup.model_validate_json(fast_body).topic_id == f"{DEV}-f1-data"
