"""Usage per token at the resolver: every authenticated use is counted per (token, client), throttled,
and turned into ``shared.usage`` records (published here to a list; the Kafka path is in the integration
tests). The heartbeat route and the notifier's forwarded whoami."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from pydantic import SecretStr

from services.resolver.bootstrap import build_app
from services.resolver.replica import Status
from services.resolver.settings import ResolverSettings
from services.resolver.table import Match, TokenTable
from services.resolver.usage import UsageTracker, build_records
from shared.kafka import KafkaSettings
from shared.tokens import fingerprint, generate_token
from shared.usage import TokenUsage, UsageDecodeError, decode_usage, encode_usage
from tests.unit.resolver.factories import Env
from tests.unit.resolver.fakes import FakeAdmin, bearer


class ListPublisher:
    def __init__(self) -> None:
        self.records: list[TokenUsage] = []
        self.fail = False

    def publish(self, records: Sequence[TokenUsage]) -> None:
        if self.fail:
            raise RuntimeError("broker down")
        # What goes to the topic: encoded and decoded again, strictly.
        self.records.extend(decode_usage(encode_usage(r)) for r in records)  # type: ignore[misc]

    def close(self) -> None:
        return None


@pytest.fixture
def dev() -> Env:
    return Env("acme-telemetry-dev")


@pytest.fixture
def publisher() -> ListPublisher:
    return ListPublisher()


def _app(dev: Env, publisher: ListPublisher, **settings: Any) -> Any:
    table = TokenTable()
    table.apply_event(dev.environment_id, dev.event())
    return build_app(
        ResolverSettings(kafka=KafkaSettings(bootstrap_servers="kafka.internal:9092"), **settings),
        table=table,
        admin=FakeAdmin(),
        start_replica=False,
        status=lambda: Status.READY,
        usage_publisher=publisher,
    )


@pytest.fixture
async def app(dev: Env, publisher: ListPublisher) -> Any:
    return _app(dev, publisher)


@pytest.fixture
async def client(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 4567))
    async with httpx.AsyncClient(transport=transport, base_url="http://resolver") as c:
        yield c


def _ua(value: str) -> dict[str, str]:
    return {"User-Agent": value}


async def test_lookups_portal_and_whoami_are_counted_per_client_and_throttled(
    app: Any, client: httpx.AsyncClient, dev: Env, publisher: ListPublisher
) -> None:
    for _ in range(50):  # the fast path
        r = await client.get("/v1/topics/f1-data", headers={**bearer(dev.token_1), **_ua("quixstreams/3")})
        assert r.status_code == 200
    r = await client.get("/workspaces", headers={**bearer(dev.token_1), **_ua("telegraf/1.30")})
    assert r.status_code == 200
    r = await client.get("/v1/whoami", headers={**bearer(dev.token_2), **_ua("curl/8")})
    assert r.status_code == 200
    r = await client.get("/v1/whoami", headers=bearer(generate_token()))  # refused: no usage
    assert r.status_code == 401

    flusher = app.state.usage_flusher
    assert await flusher.flush() == 2  # one record per token
    by_token = {r.token_id: r for r in publisher.records}
    assert set(by_token) == {dev.id_1, dev.id_2}
    first = by_token[dev.id_1]
    assert (first.environment_id, first.slot, first.fingerprint) == (
        dev.environment_id,
        1,
        fingerprint(dev.token_1),
    )
    clients = {(c.user_agent, c.source): c for c in first.clients}
    assert set(clients) == {("quixstreams/3", "lookup"), ("telegraf/1.30", "portal")}
    assert clients[("quixstreams/3", "lookup")].uses == 50
    assert clients[("quixstreams/3", "lookup")].address == "10.1.2.3"
    assert [(c.user_agent, c.source) for c in by_token[dev.id_2].clients] == [("curl/8", "whoami")]

    # Used again at once: counted, but not published before the interval has passed for that client.
    for _ in range(20):
        await client.get("/v1/topics/f1-data", headers={**bearer(dev.token_1), **_ua("quixstreams/3")})
    assert await flusher.flush() == 0
    assert len(app.state.resolver.usage.pending) == 1
    # A new client of the same token is published at the next tick.
    await client.get("/v1/topics/f1-data", headers={**bearer(dev.token_1), **_ua("another-app/1")})
    assert await flusher.flush() == 1
    assert [c.user_agent for c in publisher.records[-1].clients] == ["another-app/1"]
    # At shutdown everything still counted goes out.
    assert await flusher.flush(everything=True) == 1
    assert publisher.records[-1].clients[0].uses == 20


async def test_a_failed_publish_is_sent_again_with_its_counts(
    app: Any, client: httpx.AsyncClient, dev: Env, publisher: ListPublisher
) -> None:
    publisher.fail = True
    for _ in range(3):
        await client.get("/v1/topics/a", headers=bearer(dev.token_1))
    assert await app.state.usage_flusher.flush() == 0
    await client.get("/v1/topics/a", headers=bearer(dev.token_1))
    publisher.fail = False
    assert await app.state.usage_flusher.flush() == 1
    assert publisher.records[0].clients[0].uses == 4


class GatedPublisher(ListPublisher):
    """A broker that answers a publish only once ``gate`` is set (a slow or absent broker)."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()

    def publish(self, records: Sequence[TokenUsage]) -> None:
        if not self.gate.wait(5):
            raise RuntimeError("no answer")
        super().publish(records)


async def test_a_healthy_stop_sends_what_is_still_counted(
    app: Any, client: httpx.AsyncClient, dev: Env, publisher: ListPublisher
) -> None:
    flusher = app.state.usage_flusher
    await client.get("/v1/topics/a", headers=bearer(dev.token_1))
    assert await flusher.flush() == 1
    await client.get("/v1/topics/a", headers=bearer(dev.token_1))  # throttled: still pending
    await flusher.stop()
    assert len(publisher.records) == 2
    assert not app.state.resolver.usage.pending


async def test_a_stop_while_the_broker_refuses_tries_once_briefly_and_keeps_nothing_waiting(
    app: Any, client: httpx.AsyncClient, dev: Env, publisher: ListPublisher
) -> None:
    flusher = app.state.usage_flusher
    flusher.stop_wait = 0.1
    publisher.fail = True
    await client.get("/v1/topics/a", headers=bearer(dev.token_2))
    assert await flusher.flush() == 0  # refused: counted as a failure, the counts put back
    await flusher.stop()  # one short last try, refused too: dropped (and logged), not waited for
    assert publisher.records == []
    assert len(app.state.resolver.usage.pending) == 1

    publisher.fail = False  # a broker back by the stop: the short last try sends it
    await flusher.stop()
    assert len(publisher.records) == 1


@pytest.mark.parametrize("answered", [True, False])
async def test_a_stop_during_a_tick_waits_briefly_for_its_answer(dev: Env, answered: bool) -> None:
    publisher = GatedPublisher()
    app = _app(dev, publisher)
    flusher = app.state.usage_flusher
    flusher.stop_wait = 1.0 if answered else 0.1
    transport = httpx.ASGITransport(app=app, client=("10.1.2.3", 4567))
    async with httpx.AsyncClient(transport=transport, base_url="http://resolver") as client:
        await client.get("/v1/topics/a", headers={**bearer(dev.token_1), **_ua("first/1")})
        tick = asyncio.create_task(flusher.flush())  # the tick's publish, in flight
        await asyncio.sleep(0.05)
        await client.get("/v1/topics/a", headers={**bearer(dev.token_1), **_ua("second/1")})
        if answered:
            threading.Timer(0.05, publisher.gate.set).start()
        await flusher.stop()
        if answered:  # the tick's record, then the rest at the last flush: nothing lost
            assert [[c.user_agent for c in r.clients] for r in publisher.records] == [
                ["first/1"],
                ["second/1"],
            ]
            assert await tick == 1
        else:  # no answer in stop_wait: the stop does not wait longer, nor try again
            assert publisher.records == []
            assert len(app.state.resolver.usage.pending) == 1
            publisher.gate.set()
            tick.cancel()


async def test_usage_off_counts_nothing(dev: Env, publisher: ListPublisher) -> None:
    app = _app(dev, publisher, usage_enabled=False)
    assert app.state.usage_flusher is None
    assert app.state.resolver.usage is None
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://resolver") as client:
        assert (await client.get("/v1/topics/a", headers=bearer(dev.token_1))).status_code == 200


def test_the_tracker_bounds_its_memory_and_never_loses_a_tokens_use() -> None:
    tracker = UsageTracker(interval=30, max_keys=3)
    match = Match("env-a-b", 1, "tid_1", 1)
    for i in range(10):
        tracker.seen(match, b"\x01" * 32, 1000.0 + i, f"10.0.0.{i}", "ua", "lookup")
    assert len(tracker.pending) == 4  # three clients and the token's "(more clients)" entry
    records = build_records(tracker.take_due(5.0), "r1", datetime.now(UTC))
    assert len(records) == 1
    assert sum(c.uses for c in records[0].clients) == 10
    assert records[0].clients[-1].address == "*"


def test_free_texts_are_cleaned_of_token_shapes_and_decoding_is_strict() -> None:
    tracker = UsageTracker()
    token = generate_token()
    tracker.seen(Match("e-a-b", 2, "tid_9", 3), b"\x02" * 32, 1000.0, "1.2.3.4", f"app {token}\x00", "portal")
    (record,) = build_records(tracker.take_due(0.0), "r1", datetime.now(UTC))
    encoded = encode_usage(record)
    assert token.encode() not in encoded
    assert record.clients[0].user_agent == "app stk_[REDACTED]?"
    with pytest.raises(UsageDecodeError, match="schema_version"):
        decode_usage(encoded.replace(b'"schema_version":1', b'"schema_version":2'))
    data = orjson.loads(encoded)
    data["token"] = token
    with pytest.raises(UsageDecodeError, match="token"):
        decode_usage(orjson.dumps(data))
    data.pop("token")
    data["clients"][0]["user_agent"] = token
    with pytest.raises(UsageDecodeError):
        decode_usage(orjson.dumps(data))
    assert decode_usage(None) is None


async def test_heartbeat_answers_the_slot_and_counts_the_deployment(
    app: Any, client: httpx.AsyncClient, dev: Env, publisher: ListPublisher
) -> None:
    r = await client.post(
        "/v1/heartbeat",
        json={"deployment_id": "f1-producer:eu-1"},
        headers={**bearer(dev.token_2), **_ua("streamtoken-agent/0.1")},
    )
    assert r.status_code == 200, r.text
    assert r.json() == {
        "environment_id": dev.environment_id,
        "token_id": dev.id_2,
        "slot": 2,
        "generation": 1,
    }
    await app.state.usage_flusher.flush()
    (record,) = publisher.records
    (seen,) = record.clients
    assert (seen.source, seen.deployment_id, seen.user_agent) == (
        "heartbeat",
        "f1-producer:eu-1",
        "streamtoken-agent/0.1",
    )


async def test_heartbeat_of_a_grace_token_has_no_slot(dev: Env, publisher: ListPublisher) -> None:
    app = _app(dev, publisher)
    old = dev.token_1
    app.state.resolver.table.apply_event(
        dev.environment_id, dev.rotate(grace_until=datetime.now(UTC) + timedelta(hours=1))
    )
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://resolver") as client:
        r = await client.post("/v1/heartbeat", json={"deployment_id": "d1"}, headers=bearer(old))
        assert r.status_code == 200, r.text
        assert r.json()["slot"] is None
        r = await client.post("/v1/heartbeat", json={"deployment_id": "d1"}, headers=bearer(dev.token_1))
        assert r.json()["slot"] == 1


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"not json",
        b"[]",
        b'{"deployment_id": ""}',
        b'{"deployment_id": 5}',
        b'{"deployment_id": "has space"}',
        b'{"deployment_id": "<script>"}',
        orjson.dumps({"deployment_id": "x" * 101}),
        b'{"deployment_id": "d1", "token": "x"}',
        b'{"deployment_id": "d1\\n"}',
    ],
)
async def test_heartbeat_refuses_bad_bodies_with_422_json(
    client: httpx.AsyncClient, dev: Env, body: bytes
) -> None:
    r = await client.post(
        "/v1/heartbeat", content=body, headers={**bearer(dev.token_1), "content-type": "application/json"}
    )
    assert r.status_code == 422
    assert r.json()["error"] == "invalid_request"


async def test_heartbeat_with_an_unknown_token_is_401(client: httpx.AsyncClient) -> None:
    r = await client.post("/v1/heartbeat", json={"deployment_id": "d1"}, headers=bearer(generate_token()))
    assert r.status_code == 401
    assert r.json()["error"] == "invalid_token"
    r = await client.post("/v1/heartbeat", json={"deployment_id": "d1"})
    assert r.status_code == 401


async def test_the_notifiers_whoami_counts_its_caller_only_with_the_internal_key(
    dev: Env, publisher: ListPublisher
) -> None:
    app = _app(dev, publisher, internal_key=SecretStr("k-1"))
    transport = httpx.ASGITransport(app=app, client=("10.9.9.9", 1))
    forwarded = {
        "X-Streamtoken-Forwarded-For": "192.0.2.7",
        "X-Streamtoken-Forwarded-User-Agent": "my-deployment/2",
        "User-Agent": "python-httpx (the notifier)",
    }
    async with httpx.AsyncClient(transport=transport, base_url="http://resolver") as client:
        keyed = {**forwarded, **bearer(dev.token_1), "X-Streamtoken-Internal-Key": "k-1"}
        assert (await client.get("/v1/whoami", headers=keyed)).status_code == 200
        # Without the key the headers are ignored: the caller itself is the client.
        unkeyed = {**forwarded, **bearer(dev.token_1)}
        assert (await client.get("/v1/whoami", headers=unkeyed)).status_code == 200
    await app.state.usage_flusher.flush()
    seen = {(c.address, c.user_agent, c.source) for c in publisher.records[0].clients}
    assert seen == {
        ("192.0.2.7", "my-deployment/2", "notifier"),
        ("10.9.9.9", "python-httpx (the notifier)", "whoami"),
    }


async def test_the_heartbeat_is_in_the_openapi_document(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    operation = spec["paths"]["/v1/heartbeat"]["post"]
    assert {"401", "422"} <= set(operation["responses"])
    assert operation["requestBody"]["content"]["application/json"]["schema"]["required"] == ["deployment_id"]
