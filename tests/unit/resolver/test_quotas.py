"""Portal API quotas (SECURITY_REVIEW finding 6): one environment cannot fill the shared broker. Topics
(count) and partitions (total) per environment are bounded, counted from the broker's metadata, and
retention is bounded with "infinite" (-1) refused unless allowed. Over quota is a clear JSON 4xx."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import httpx
import pytest
from pydantic import ValidationError

from services.resolver.admin import TopicInfo
from services.resolver.bootstrap import build_app
from services.resolver.replica import Status
from services.resolver.settings import ResolverSettings
from services.resolver.table import TokenTable
from tests.unit.resolver.factories import Env
from tests.unit.resolver.fakes import FakeAdmin, bearer

DEV = Env("acme-telemetry-dev")
PROD = Env("acme-telemetry-prod")


@asynccontextmanager
async def portal(admin: FakeAdmin, **settings: Any) -> AsyncIterator[httpx.AsyncClient]:
    table = TokenTable()
    for env in (DEV, PROD):
        table.apply_event(env.environment_id, env.event())
    app = build_app(
        ResolverSettings(**settings),
        table=table,
        admin=admin,
        start_replica=False,
        status=lambda: Status.READY,
    )
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://resolver") as c:
        yield c


def topic(name: str, partitions: int | None = None, **configuration: Any) -> dict[str, Any]:
    return {"name": name, "configuration": {"partitions": partitions, **configuration}}


async def create(c: httpx.AsyncClient, env: Env, body: dict[str, Any]) -> httpx.Response:
    return await c.post(f"/{env.environment_id}/topics", headers=bearer(env.token_1), json=body)


async def test_the_reviewed_flood_is_refused_at_the_first_request() -> None:
    """The repro of the review: POST 256-partition topics with infinite retention, in a loop."""
    admin = FakeAdmin()
    async with portal(admin) as c:
        for i in range(5):
            r = await create(c, DEV, topic(f"t{i}", 256, retentionInMinutes=-1, retentionInBytes=-1))
            assert r.status_code == 400, r.text
            assert r.json()["error"] == "invalid_request"
            assert "unlimited" in r.json()["message"]
    assert admin.created == []


async def test_topics_per_environment_are_bounded() -> None:
    admin = FakeAdmin()
    async with portal(admin, max_topics_per_environment=3) as c:
        for i in range(3):
            assert (await create(c, DEV, topic(f"t{i}", 1))).status_code == 201
        r = await create(c, DEV, topic("t3", 1))
        assert r.status_code == 403
        assert r.headers["content-type"].startswith("application/json")
        assert r.json()["error"] == "quota_exceeded"
        assert "3 topics" in r.json()["message"]
        assert "STREAMTOKEN_RESOLVER_MAX_TOPICS_PER_ENVIRONMENT" in r.json()["message"]
        # An existing topic is still answered (a client's create-if-missing stays idempotent)...
        assert (await create(c, DEV, topic("t1", 1))).status_code == 200
        # ...and another environment has its own quota.
        assert (await create(c, PROD, topic("t0", 1))).status_code == 201
    assert [name for name, *_ in admin.created].count("acme-telemetry-dev-t3") == 0
    assert len(admin.created) == 4


async def test_topics_made_without_the_portal_count_too() -> None:
    """The count comes from the broker's metadata, not from what this replica created."""
    admin = FakeAdmin()
    for i in range(2):
        name = f"acme-telemetry-dev-direct{i}"
        admin.topics_[name] = TopicInfo(name, 4, 1, True, {})
    # Another environment's topics (a longer id sharing the start) are not counted.
    admin.topics_["acme-telemetry-devx-other"] = TopicInfo("acme-telemetry-devx-other", 100, 1, True, {})
    async with portal(admin, max_topics_per_environment=3, max_partitions_per_environment=10) as c:
        r = await create(c, DEV, topic("third", 2))
        assert r.status_code == 201, r.text
        r = await create(c, DEV, topic("fourth", 1))
        assert r.status_code == 403
        assert "3 topics" in r.json()["message"]


async def test_partitions_per_environment_are_bounded_in_total() -> None:
    admin = FakeAdmin()
    async with portal(admin, max_partitions_per_environment=10) as c:
        assert (await create(c, DEV, topic("a", 6))).status_code == 201
        r = await create(c, DEV, topic("b", 5))
        assert r.status_code == 403
        body = r.json()
        assert body["error"] == "quota_exceeded"
        assert "6 of 10 partitions" in body["message"]
        assert "STREAMTOKEN_RESOLVER_MAX_PARTITIONS_PER_ENVIRONMENT" in body["message"]
        assert (await create(c, DEV, topic("b", 4))).status_code == 201
        assert (await create(c, DEV, topic("c", 1))).status_code == 403
        # null partitions take the default (2), which must fit too
        assert (await create(c, PROD, topic("x"))).json()["configuration"]["partitions"] == 2


@pytest.mark.parametrize(
    ("key", "value", "fragment"),
    [
        ("retentionInMinutes", -1, "unlimited"),
        ("retentionInBytes", -1, "unlimited"),
        ("retentionInMinutes", 43201, "between 0 and 43200"),
        ("retentionInBytes", 2**30 + 1, f"between 0 and {2**30}"),
        ("retentionInMinutes", -2, "between 0 and 43200"),
    ],
)
async def test_retention_is_bounded(key: str, value: int, fragment: str) -> None:
    admin = FakeAdmin()
    async with portal(admin) as c:
        r = await create(c, DEV, topic("r", 1, **{key: value}))
        assert r.status_code == 400
        assert r.json()["error"] == "invalid_request"
        assert fragment in r.json()["message"]
        assert key in r.json()["message"]
    assert admin.created == []


async def test_retention_at_the_bounds_and_infinite_when_allowed() -> None:
    admin = FakeAdmin()
    async with portal(admin) as c:
        r = await create(c, DEV, topic("edge", 1, retentionInMinutes=43200, retentionInBytes=2**30))
        assert r.status_code == 201
        assert r.json()["configuration"]["retentionInMinutes"] == 43200
    async with portal(
        FakeAdmin(),
        allow_infinite_retention=True,
        max_retention_minutes=60,
        default_retention_minutes=30,
        max_retention_bytes=1000,
        default_retention_bytes=500,
    ) as c:
        r = await create(c, DEV, topic("forever", 1, retentionInMinutes=-1, retentionInBytes=-1))
        assert r.status_code == 201, r.text
        assert r.json()["configuration"]["retentionInMinutes"] == -1
        assert r.json()["configuration"]["retentionInBytes"] == -1
        assert (await create(c, DEV, topic("long", 1, retentionInMinutes=61))).status_code == 400


@pytest.mark.parametrize(
    "values",
    [
        {"default_retention_minutes": 100, "max_retention_minutes": 99},
        {"default_retention_bytes": -1},
        {"default_retention_bytes": 2000, "max_retention_bytes": 1000},
        {"default_partitions": 9, "max_partitions": 8},
    ],
)
def test_defaults_outside_the_bounds_are_refused_at_start(values: dict[str, Any]) -> None:
    with pytest.raises(ValidationError):
        ResolverSettings(**values)


def test_infinite_default_bytes_is_fine_when_infinite_is_allowed() -> None:
    settings = ResolverSettings(default_retention_bytes=-1, allow_infinite_retention=True)
    assert settings.default_retention_bytes == -1
