"""The HTTP API over a filled table and a hand-written fake topic admin (no network)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from services.resolver.admin import TopicAdminError, TopicInfo
from services.resolver.bootstrap import build_app
from services.resolver.replica import Status
from services.resolver.settings import ResolverSettings
from services.resolver.table import TokenTable
from shared.kafka import KafkaSettings
from shared.tokens import generate_token
from tests.unit.resolver.factories import Env
from tests.unit.resolver.fakes import FakeAdmin, bearer


@pytest.fixture
def dev() -> Env:
    return Env("acme-telemetry-dev")


@pytest.fixture
def prod() -> Env:
    return Env("acme-telemetry-prod")


@pytest.fixture
def admin() -> FakeAdmin:
    return FakeAdmin()


@pytest.fixture
def status() -> list[Status]:
    return [Status.READY]


@pytest.fixture
async def client(
    dev: Env, prod: Env, admin: FakeAdmin, status: list[Status]
) -> AsyncIterator[httpx.AsyncClient]:
    table = TokenTable()
    for env in (dev, prod):
        table.apply_event(env.environment_id, env.event())
    settings = ResolverSettings(
        kafka=KafkaSettings(bootstrap_servers="kafka.internal:9092"),
        public_bootstrap_servers="kafka.example.com:9093",
    )
    app = build_app(settings, table=table, admin=admin, start_replica=False, status=lambda: status[0])
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://resolver") as c:
        yield c


async def test_resolve_topic_and_whoami(client: httpx.AsyncClient, dev: Env, prod: Env) -> None:
    r = await client.get("/v1/topics/f1-data", headers=bearer(dev.token_1))
    assert r.status_code == 200
    assert r.json() == {"topic_id": "acme-telemetry-dev-f1-data", "environment_id": "acme-telemetry-dev"}
    r = await client.get("/v1/topics/f1-data", headers=bearer(prod.token_2))
    assert r.json()["topic_id"] == "acme-telemetry-prod-f1-data"
    r = await client.get("/v1/whoami", headers=bearer(prod.token_2))
    assert r.json() == {
        "environment_id": "acme-telemetry-prod",
        "slot": 2,
        "token_id": prod.id_2,
        "generation": 1,
    }


async def test_already_prefixed_name_is_accepted(client: httpx.AsyncClient, dev: Env) -> None:
    r = await client.get("/v1/topics/acme-telemetry-dev-f1-data", headers=bearer(dev.token_1))
    assert r.json()["topic_id"] == "acme-telemetry-dev-f1-data"


@pytest.mark.parametrize("headers", [{}, {"Authorization": "Basic abc"}, {"Authorization": "Bearer "}])
async def test_missing_token_is_401_json(client: httpx.AsyncClient, headers: dict[str, str]) -> None:
    r = await client.get("/v1/whoami", headers=headers)
    assert r.status_code == 401
    assert r.json()["error"] == "missing_token"
    assert r.headers["www-authenticate"].startswith("Bearer")


async def test_unknown_and_malformed_tokens(client: httpx.AsyncClient, dev: Env) -> None:
    r = await client.get("/v1/whoami", headers=bearer(generate_token()))
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_token"
    typo = dev.token_1[:-1] + ("a" if dev.token_1[-1] != "a" else "b")
    r = await client.get("/v1/whoami", headers=bearer(typo))
    assert r.status_code == 401
    assert "well-formed" in r.json()["message"]
    assert typo not in r.text
    metrics = (await client.get("/metrics")).text
    assert 'streamtoken_resolver_lookups_total{result="malformed"} 1.0' in metrics
    assert 'streamtoken_resolver_lookups_total{result="miss"} 1.0' in metrics


@pytest.mark.parametrize("name", ["bad name", "a" * 240, "x:y", "a*b", "caf\u00e9"])
async def test_illegal_topic_names_are_400(client: httpx.AsyncClient, dev: Env, name: str) -> None:
    r = await client.get(f"/v1/topics/{name}", headers=bearer(dev.token_1))
    assert r.status_code == 400
    assert r.json()["error"] == "invalid_topic_name"


async def test_loading_is_503_everywhere(client: httpx.AsyncClient, dev: Env, status: list[Status]) -> None:
    status[0] = Status.LOADING
    assert (await client.get("/v1/whoami", headers=bearer(dev.token_1))).status_code == 503
    r = await client.get("/health/ready")
    assert r.status_code == 503
    assert r.json()["status"] == "loading"
    status[0] = Status.READY
    assert (await client.get("/health/ready")).status_code == 200


async def test_portal_workspaces_and_broker_settings(client: httpx.AsyncClient, dev: Env) -> None:
    r = await client.get("/workspaces", headers=bearer(dev.token_1))
    [ws] = r.json()
    assert ws["workspaceId"] == "acme-telemetry-dev"
    assert "brokerSettings" in ws
    r = await client.get("/workspaces/acme-telemetry-dev/broker/librdkafka", headers=bearer(dev.token_1))
    assert r.json() == {"bootstrap.servers": "kafka.example.com:9093", "security.protocol": "PLAINTEXT"}
    r = await client.get("/workspaces/acme-telemetry-prod/broker/librdkafka", headers=bearer(dev.token_1))
    assert r.status_code == 403
    assert r.json()["error"] == "forbidden"


async def test_portal_topic_lifecycle(client: httpx.AsyncClient, dev: Env, admin: FakeAdmin) -> None:
    h = bearer(dev.token_1)
    r = await client.get("/acme-telemetry-dev/topics/f1-data", headers=h)
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"
    body = {
        "name": "f1-data",
        "configuration": {
            "partitions": 3,
            "replicationFactor": None,
            "retentionInMinutes": None,
            "retentionInBytes": None,
            "cleanupPolicy": "delete,compact",
        },
    }
    r = await client.post("/acme-telemetry-dev/topics", headers=h, json=body)
    assert r.status_code == 201
    topic = r.json()
    assert topic["id"] == "acme-telemetry-dev-f1-data"
    assert topic["name"] == "f1-data"
    assert topic["status"] == "Ready"
    assert topic["workspaceId"] == "acme-telemetry-dev"
    assert topic["configuration"] == {
        "partitions": 3,
        "replicationFactor": 1,
        "retentionInMinutes": 10080,
        "retentionInBytes": 52428800,
        "cleanupPolicy": "DeleteAndCompact",
    }
    assert admin.created == [
        (
            "acme-telemetry-dev-f1-data",
            3,
            1,
            {"cleanup.policy": "compact,delete", "retention.ms": "604800000", "retention.bytes": "52428800"},
        )
    ]
    again = await client.post("/acme-telemetry-dev/topics", headers=h, json=body)
    assert again.status_code == 200
    assert again.json() == topic
    assert (await client.get("/acme-telemetry-dev/topics/f1-data", headers=h)).json() == topic
    assert (
        await client.get("/acme-telemetry-dev/topics/acme-telemetry-dev-f1-data", headers=h)
    ).json() == topic
    listed = (await client.get("/acme-telemetry-dev/topics", headers=h)).json()
    assert listed == [topic]


async def test_portal_internal_topic_names_are_prefixed(client: httpx.AsyncClient, dev: Env) -> None:
    name = "changelog__app-group--f1-data--default"
    body = {"name": name, "configuration": {"partitions": 2, "cleanupPolicy": "compact"}}
    r = await client.post("/acme-telemetry-dev/topics", headers=bearer(dev.token_1), json=body)
    assert r.json()["id"] == f"acme-telemetry-dev-{name}"
    assert r.json()["configuration"]["cleanupPolicy"] == "Compact"


async def test_portal_forbidden_and_bad_input(client: httpx.AsyncClient, dev: Env, prod: Env) -> None:
    h = bearer(dev.token_1)
    assert (await client.get("/acme-telemetry-prod/topics/f1-data", headers=h)).status_code == 403
    assert (
        await client.post("/acme-telemetry-prod/topics", headers=h, json={"name": "x"})
    ).status_code == 403
    for body in (b"nope", b"[]", b'{"name": 3}', b'{"name": "x", "configuration": {"partitions": 0}}'):
        r = await client.post("/acme-telemetry-dev/topics", headers=h, content=body)
        assert r.status_code == 400
        assert r.json()["error"] == "invalid_request"
    r = await client.post("/acme-telemetry-dev/topics", headers=h, json={"name": "x" * 240})
    assert r.status_code == 400
    assert "249" in r.json()["message"]


async def test_kafka_down_is_a_json_error(client: httpx.AsyncClient, dev: Env, admin: FakeAdmin) -> None:
    admin.fail = True
    r = await client.get("/acme-telemetry-dev/topics/f1-data", headers=bearer(dev.token_1))
    assert r.status_code == 503
    assert r.json()["error"] == "kafka_unavailable"


async def test_unknown_route_is_json_404(client: httpx.AsyncClient) -> None:
    r = await client.get("/nope")
    assert r.status_code == 404
    assert r.headers["content-type"].startswith("application/json")


async def test_openapi_documents_native_and_portal_routes(client: httpx.AsyncClient) -> None:
    paths = (await client.get("/openapi.json")).json()["paths"]
    assert {"/v1/topics/{name}", "/v1/whoami", "/workspaces", "/{workspace}/topics"} <= set(paths)


async def test_fast_path_leaves_other_shapes_to_the_router(client: httpx.AsyncClient, dev: Env) -> None:
    r = await client.get("/v1/topics/a/b", headers=bearer(dev.token_1))
    assert r.status_code == 404
    assert r.json()["error"] == "not_found"
    r = await client.post("/v1/topics/f1-data", headers=bearer(dev.token_1))
    assert r.status_code == 405


async def test_nested_environment_topics_stay_with_their_environment(admin: FakeAdmin) -> None:
    outer, inner = Env("acme-tel-prod"), Env("acme-tel-prod-x")
    table = TokenTable()
    for env in (outer, inner):
        table.apply_event(env.environment_id, env.event())
    admin.topics_["acme-tel-prod-x-data"] = TopicInfo("acme-tel-prod-x-data", 1, 1, True, {})
    admin.topics_["acme-tel-prod-own"] = TopicInfo("acme-tel-prod-own", 1, 1, True, {})
    app = build_app(
        ResolverSettings(), table=table, admin=admin, start_replica=False, status=lambda: Status.READY
    )
    h = bearer(outer.token_1)
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://resolver") as c:
        for path in (
            "/acme-tel-prod/topics/x-data",
            "/acme-tel-prod/topics/acme-tel-prod-x-data",
            "/v1/topics/x-data",
        ):
            assert (await c.get(path, headers=h)).status_code == 403, path
        created = await c.post("/acme-tel-prod/topics", headers=h, json={"name": "x-secret"})
        assert created.status_code == 403
        assert "acme-tel-prod-x-secret" not in admin.topics_
        listed = await c.get("/acme-tel-prod/topics", headers=h)
        assert [t["id"] for t in listed.json()] == ["acme-tel-prod-own"]
        inner_view = await c.get("/acme-tel-prod-x/topics/data", headers=bearer(inner.token_1))
        assert inner_view.status_code == 200


async def test_hostile_topic_requests_are_clean_4xx(
    client: httpx.AsyncClient, dev: Env, admin: FakeAdmin
) -> None:
    h = bearer(dev.token_1)
    token = dev.token_2
    bodies: list[object] = [
        {"name": "r1", "configuration": {"retentionInMinutes": 99999999999999999999}},
        {"name": "r2", "configuration": {"retentionInMinutes": 1e300}},
        {"name": "r3", "configuration": {"retentionInBytes": 9223372036854775808}},
        {"name": "r4", "configuration": []},
        {"name": "r5", "configuration": 0},
        {"name": f"zz{token}"},
    ]
    for body in bodies:
        r = await client.post("/acme-telemetry-dev/topics", headers=h, json=body)
        assert r.status_code == 400, (body, r.text)
        assert r.json()["error"] in {"invalid_request", "invalid_topic_name"}
        assert token not in r.text
    assert admin.created == []
    for path in (f"/v1/topics/{token}", f"/acme-telemetry-dev/topics/{'x' * 62}{token}"):
        r = await client.get(path, headers=h)
        assert 400 <= r.status_code < 500
        assert token[4:20] not in r.text
    for path in ("/acme-telemetry-dev/topics/", "/workspaces/"):
        r = await client.get(path, headers=h)
        assert r.status_code == 404
        assert r.json()["error"] == "not_found"


async def test_a_failed_create_is_503_and_a_huge_stored_retention_still_lists(
    client: httpx.AsyncClient, dev: Env, admin: FakeAdmin, monkeypatch: pytest.MonkeyPatch
) -> None:
    h = bearer(dev.token_1)
    admin.topics_["acme-telemetry-dev-odd"] = TopicInfo(
        "acme-telemetry-dev-odd", 1, 1, True, {"retention.ms": str(10**30), "retention.bytes": str(10**30)}
    )
    listed = await client.get("/acme-telemetry-dev/topics", headers=h)
    assert listed.status_code == 200
    assert listed.json()[0]["configuration"]["retentionInBytes"] == 2**63 - 1

    async def refuse(*_: object) -> None:
        raise TopicAdminError("broker down")

    monkeypatch.setattr(admin, "create", refuse)
    r = await client.post("/acme-telemetry-dev/topics", headers=h, json={"name": "new"})
    assert r.status_code == 503


async def test_a_topic_just_created_reads_creating_until_the_broker_lists_it(
    client: httpx.AsyncClient, dev: Env, admin: FakeAdmin
) -> None:
    """Kafka's metadata can lag a create; quixstreams polls the topic right after creating it."""
    created = await client.post(
        "/acme-telemetry-dev/topics", json={"name": "laps"}, headers=bearer(dev.token_1)
    )
    assert created.status_code == 201
    admin.topics_.pop("acme-telemetry-dev-laps")  # the broker's metadata does not list it yet
    r = await client.get("/acme-telemetry-dev/topics/laps", headers=bearer(dev.token_1))
    assert r.status_code == 200, r.text
    assert (r.json()["id"], r.json()["status"]) == ("acme-telemetry-dev-laps", "Creating")
    r = await client.get("/acme-telemetry-dev/topics/never-made", headers=bearer(dev.token_1))
    assert r.status_code == 404
