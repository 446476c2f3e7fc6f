"""The notifier and its database: a PostgreSQL restart while it records and delivers, a database that
refuses connections, a locked SQLite file and a full SQLite disk. The store recovers by itself, nothing is
lost or sent twice, and the API answers a clear 503 JSON error meanwhile, never a 500.

Nothing waits for a fixed time: every wait polls for a state, with a generous bound."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import psycopg
import pytest
from sqlalchemy import event

from services.notifier.bootstrap import build_app
from services.notifier.store import Store
from shared.kafka import KafkaSettings
from tests.conftest import POSTGRES_ADMIN_URL
from tests.factories import Environment
from tests.integration.notifier.conftest import fast_settings
from tests.integration.notifier.support import Receiver, Resolver, new_environment, produce, rotate
from tests.support import wait_until

SUBSCRIPTIONS = 60
PG_CLUSTER = ["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main"]


def _subscribe(api: httpx.Client, env: Environment, receiver_url: str, name: str) -> httpx.Response:
    body = {"deployment_id": name, "url": f"{receiver_url}/{name}", "action": "reload"}
    return api.post("/v1/subscriptions", json=body, headers=env.auth(slot=2))


def _generations(receiver: Receiver, path: str) -> list[int]:
    return sorted(json.loads(r.body)["generation"] for r in receiver.at(path))


def _assert_unavailable(response: httpx.Response, word: str) -> None:
    assert response.status_code == 503, response.text
    body = response.json()
    assert body["error"] == "database_unavailable"
    assert word in body["message"]
    assert "Traceback" not in response.text
    assert "sqlite" not in body["message"].lower()
    assert "psycopg" not in body["message"].lower()
    assert response.headers["retry-after"] == "1"


def _postgres_ready() -> bool:
    try:
        with psycopg.connect(POSTGRES_ADMIN_URL, connect_timeout=2) as conn:
            conn.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


def _restart_postgres() -> None:
    """Restart the whole server (other tests may use it too: it is back within seconds)."""
    try:
        subprocess.run([*PG_CLUSTER, "restart"], check=True, capture_output=True, timeout=60)
    finally:
        wait_until(_postgres_ready, 60, "PostgreSQL to accept connections again", interval=0.1)


@contextmanager
def _database_refusing(url: str) -> Iterator[None]:
    """Only this test's database stops accepting connections (and loses its open ones), then comes back."""
    name = url.rsplit("/", 1)[1]
    with psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=5) as admin:
        admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS false')
        admin.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s", (name,))
        try:
            yield
        finally:
            admin.execute(f'ALTER DATABASE "{name}" ALLOW_CONNECTIONS true')


class Prober:
    """Calls the API in a loop from a thread, keeping every status code and error body."""

    def __init__(self, api: httpx.Client, env: Environment) -> None:
        self.api = api
        self.env = env
        self.answers: list[tuple[int, dict[str, Any]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                response = self.api.get("/v1/subscriptions", headers=self.env.auth(slot=2))
            except httpx.HTTPError:
                continue
            body = response.json() if response.status_code >= 400 else {}
            self.answers.append((response.status_code, body))
            self._stop.wait(0.02)

    def __enter__(self) -> Prober:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(10)


@pytest.mark.postgres
def test_a_postgres_restart_while_recording_and_delivering_loses_nothing_and_sends_nothing_twice(
    start_notifier: Callable[..., httpx.Client],
    serve_app: Callable[..., str],
    restartable_postgres_url: str,
    kafka_settings: KafkaSettings,
    resolver: Resolver,
) -> None:
    receiver = Receiver(delay=0.05)
    receiver_url = serve_app(receiver)
    # A lease far longer than the outage: a delivery is only sent again if its lease ran out.
    api = start_notifier(restartable_postgres_url, kafka_settings, lease_seconds=60, workers=2)
    wait_until(lambda: api.get("/health/ready").status_code == 200, 90, "the notifier to be ready", 0.2)
    env = new_environment(resolver)
    names = [f"d{i}" for i in range(SUBSCRIPTIONS)]
    for name in names:
        assert _subscribe(api, env, receiver_url, name).status_code == 201

    with Prober(api, env) as prober:
        produce(kafka_settings, rotate(resolver, env))
        wait_until(lambda: len(receiver.requests) >= 3, 60, "the fan-out of rotation 2 to start")
        _restart_postgres()  # in the middle of delivering rotation 2
        produce(kafka_settings, rotate(resolver, env))  # recorded once the store is back
        wait_until(
            lambda: all(_generations(receiver, f"/{n}") == [2, 3] for n in names),
            120,
            "both rotations at every subscription after the restart",
            interval=0.2,
        )

    # The API answered during the restart: 200, or a clear 503; never a 500.
    assert {status for status, _ in prober.answers} <= {200, 503}, prober.answers
    for status, body in prober.answers:
        if status == 503:
            assert body["error"] == "database_unavailable", body

    def all_delivered() -> bool:
        response = api.get("/v1/rotations", headers=env.auth(slot=2))
        if response.status_code != 200:
            return False
        rows = [
            (r["generation"], r["notified"], r["pending"], r["dead"]) for r in response.json()["rotations"]
        ]
        return rows == [(3, SUBSCRIPTIONS, 0, 0), (2, SUBSCRIPTIONS, 0, 0)]

    wait_until(all_delivered, 60, "every delivery recorded as delivered", interval=0.2)
    # Nothing lost, nothing sent twice: exactly one request per subscription and rotation.
    assert len(receiver.requests) == 2 * SUBSCRIPTIONS
    assert len({r.headers["webhook-id"] for r in receiver.requests}) == 2 * SUBSCRIPTIONS


@pytest.mark.postgres
def test_while_postgres_refuses_the_api_answers_503_and_readiness_says_why_then_both_recover(
    start_notifier: Callable[..., httpx.Client],
    serve_app: Callable[..., str],
    postgres_url: str,
    resolver: Resolver,
) -> None:
    receiver_url = serve_app(Receiver())
    api = start_notifier(postgres_url, None)
    env = new_environment(resolver)
    created = _subscribe(api, env, receiver_url, "d0")
    assert created.status_code == 201
    sub = created.json()

    with _database_refusing(postgres_url):
        _assert_unavailable(_subscribe(api, env, receiver_url, "d1"), "unreachable")
        _assert_unavailable(api.get("/v1/subscriptions", headers=env.auth(slot=2)), "unreachable")
        _assert_unavailable(
            api.post(
                f"/v1/subscriptions/{sub['id']}/acks",
                json={"generation": 1},
                headers=env.auth(slot=2, key=sub["management_key"]),
            ),
            "unreachable",
        )
        ready = api.get("/health/ready")
        assert ready.status_code == 503
        assert ready.json() == {
            "status": "degraded",
            "reason": "database unreachable",
            "database": "unreachable",
            "consumer": "disabled",
        }

    # The pool replaces its dead connections by itself (pre-ping): no restart of the notifier.
    wait_until(lambda: api.get("/health/ready").status_code == 200, 30, "readiness to recover", 0.1)
    assert _subscribe(api, env, receiver_url, "d1").status_code == 201
    listed = api.get("/v1/subscriptions", headers=env.auth(slot=2))
    assert [s["deployment_id"] for s in listed.json()] == ["d0", "d1"]


def test_a_locked_sqlite_database_answers_503_with_a_message_not_a_500(
    start_notifier: Callable[..., httpx.Client],
    serve_app: Callable[..., str],
    sqlite_url: str,
    resolver: Resolver,
) -> None:
    receiver_url = serve_app(Receiver())
    api = start_notifier(sqlite_url, None, database_busy_timeout_seconds=0.2)
    env = new_environment(resolver)
    sub = _subscribe(api, env, receiver_url, "d0").json()

    holder = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None, timeout=5)
    try:
        holder.execute("BEGIN EXCLUSIVE")
        _assert_unavailable(_subscribe(api, env, receiver_url, "d1"), "locked")
        _assert_unavailable(
            api.patch(
                f"/v1/subscriptions/{sub['id']}",
                json={"action": "restart"},
                headers=env.auth(slot=2, key=sub["management_key"]),
            ),
            "locked",
        )
        _assert_unavailable(
            api.delete(f"/v1/subscriptions/{sub['id']}", headers=env.auth(slot=2, key=sub["management_key"])),
            "locked",
        )
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    assert _subscribe(api, env, receiver_url, "d1").status_code == 201
    patched = api.patch(
        f"/v1/subscriptions/{sub['id']}",
        json={"action": "restart"},
        headers=env.auth(slot=2, key=sub["management_key"]),
    )
    assert patched.status_code == 200
    assert patched.json()["action"] == "restart"


def test_a_full_sqlite_disk_answers_503_with_a_message_not_a_500(
    serve_app: Callable[..., str],
    resolver_url: str,
    sqlite_url: str,
    resolver: Resolver,
) -> None:
    receiver_url = serve_app(Receiver())
    store = Store.from_url(sqlite_url, busy_timeout_seconds=1)
    store.create_tables()
    full = {"on": False}

    @event.listens_for(store.engine, "connect")
    def _no_more_pages(dbapi_connection: Any, _: Any) -> None:
        if full["on"]:  # the file may not grow: SQLite answers SQLITE_FULL, as on a full disk
            pages = dbapi_connection.execute("PRAGMA page_count").fetchone()[0]
            dbapi_connection.execute(f"PRAGMA max_page_count = {pages}")

    settings = fast_settings(sqlite_url, resolver_url, consume=False)
    api = httpx.Client(base_url=serve_app(build_app(settings, store=store)), timeout=10)
    env = new_environment(resolver)
    assert _subscribe(api, env, receiver_url, "d0").status_code == 201

    full["on"] = True
    store.engine.dispose()  # new connections, each limited to the file's current size
    long_url = f"{receiver_url}/{'x' * 1900}"
    answers = []
    for i in range(300):
        body = {"deployment_id": f"big{i}", "url": long_url, "action": "reload"}
        response = api.post("/v1/subscriptions", json=body, headers=env.auth(slot=2))
        answers.append(response.status_code)
        if response.status_code != 201:
            _assert_unavailable(response, "disk is full")
            break
    assert answers[-1] == 503, "the database never filled up"
    assert set(answers) <= {201, 503}
    assert api.get("/health/ready").status_code == 200  # reads still work: the API is up
    api.close()
