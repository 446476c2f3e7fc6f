"""The issuer survives the broker and the database: a lost control topic comes back while it runs,
readiness says what it can do now, and a database outage is a clear 503 with nothing half-applied."""

from __future__ import annotations

import sqlite3
import subprocess
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
import sqlalchemy as sa

from shared.broker import EmbeddedBroker
from shared.events import decode_event
from shared.kafka import KafkaSettings, ensure_streaming_tokens_topic
from shared.kafka_broker import ApacheKafkaBroker
from tests.conftest import POSTGRES_ADMIN_URL, _postgres_required, _sqlalchemy_url
from tests.integration.issuer.conftest import LogCapture, RunningIssuer, read_topic
from tests.integration.issuer.pg_cut import CommitCutter, Cut

ENV = {"org": "acme", "project": "telemetry"}
# The usage fold is off here: its librdkafka consumer, fetching from a restarted Tansu, is exposed to the
# librdkafka 2.12 segfault the resolver and the notifier work around (docs/broker.md); these tests are about
# the relay, and tests/integration/issuer/test_usage.py covers the fold on Apache Kafka.
FAST_WATCH = {
    "relay_topic_check_interval_s": 0.5,
    "relay_delivery_timeout_s": 3.0,
    "usage_fold_enabled": False,
}


def wait_for(check: Callable[[], Any], what: str, timeout: float = 60.0) -> Any:
    """Poll ``check`` until it returns something truthy (a deadline against hangs, not a speed target)."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, f"never: {what}"
        time.sleep(0.1)


def create(issuer: RunningIssuer, names: list[str]) -> dict[str, int]:
    for name in names:
        assert issuer.admin.post("/v1/environments", json={**ENV, "name": name}).status_code == 201
    return {f"acme-telemetry-{n}": 1 for n in names}


def newest_generations(kafka: KafkaSettings, expected: int) -> dict[str, int]:
    newest: dict[str, int] = {}
    for record in read_topic(kafka, expected=expected, timeout=60):
        event = decode_event(record.value)
        assert record.key is not None
        if event is not None:
            newest[record.key] = max(newest.get(record.key, 0), event.generation)
    return newest


def ready(issuer: RunningIssuer) -> dict[str, Any]:
    body: dict[str, Any] = issuer.anonymous.get("/health/ready").json()
    return body


# --- 1. a recreated or truncated control topic ----------------------------------------------------------


def test_a_restarted_tansu_broker_gets_every_environment_back_without_an_issuer_restart(
    sqlite_url: str,
    topic_name: str,
    embedded_broker_factory: Callable[..., EmbeddedBroker],
    issuer_factory: Callable[..., RunningIssuer],
) -> None:
    broker = embedded_broker_factory()
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic=topic_name, topic_partitions=3)
    issuer = issuer_factory(sqlite_url, kafka, settings=FAST_WATCH)
    expected = create(issuer, ["a", "b", "c"])
    assert issuer.admin.post("/v1/environments/acme-telemetry-b/streaming-tokens/rotate").status_code == 200
    expected["acme-telemetry-b"] = 2
    assert newest_generations(kafka, expected=4) == expected

    broker.stop()
    embedded_broker_factory(port=broker.port)  # memory storage: the topic and its records are gone
    # nothing is rotated: only the relay's own watch can find out, and the issuer is not restarted
    assert newest_generations(kafka, expected=3) == expected
    relay = issuer.app.relay
    assert relay.health().topic_lost in {"missing", "recreated", "empty"}
    wait_for(lambda: ready(issuer)["status"] == "ok", "readiness ok again")


def test_a_control_topic_deleted_and_recreated_on_apache_kafka_is_republished_and_reconciled(
    sqlite_url: str,
    kafka_broker: ApacheKafkaBroker,
    kafka_settings: KafkaSettings,
    issuer_factory: Callable[..., RunningIssuer],
    captured_logs: LogCapture,
) -> None:
    from confluent_kafka.admin import AdminClient

    issuer = issuer_factory(sqlite_url, kafka_settings, settings=FAST_WATCH)
    assert issuer.app.relay.broker_enforced  # SCRAM users and ACLs are managed on this broker
    expected = create(issuer, ["one", "two"])
    assert newest_generations(kafka_settings, expected=2) == expected
    wait_for(lambda: captured_logs.text.count("broker_reconcile_done") >= 1, "the start-up reconcile")
    reconciles = captured_logs.text.count("broker_reconcile_done")

    admin = AdminClient(kafka_broker.admin_settings().librdkafka())
    admin.delete_topics([kafka_settings.topic], operation_timeout=30)[kafka_settings.topic].result(30)
    wait_for(
        lambda: (
            kafka_settings.topic not in admin.list_topics(timeout=10).topics
            or issuer.app.relay.health().topic_lost is not None
        ),
        "the topic deleted",
    )
    ensure_streaming_tokens_topic(kafka_settings)  # by someone else (or by the relay itself): a new id

    assert newest_generations(kafka_settings, expected=2) == expected
    assert issuer.app.relay.health().topic_lost in {"missing", "recreated", "empty"}
    wait_for(
        lambda: captured_logs.text.count("broker_reconcile_done") > reconciles,
        "the broker's users and ACLs reconciled after the loss",
    )
    wait_for(lambda: ready(issuer)["status"] == "ok", "readiness ok again")


# --- 2. honest health ------------------------------------------------------------------------------------


def test_readiness_turns_degraded_when_the_broker_goes_away_and_ok_when_it_is_back(
    sqlite_url: str,
    topic_name: str,
    embedded_broker_factory: Callable[..., EmbeddedBroker],
    issuer_factory: Callable[..., RunningIssuer],
) -> None:
    broker = embedded_broker_factory()
    kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic=topic_name, topic_partitions=3)
    issuer = issuer_factory(sqlite_url, kafka, settings=FAST_WATCH)
    create(issuer, ["h"])
    wait_for(
        lambda: "streamtoken_issuer_outbox_published_total 1.0" in issuer.anonymous.get("/metrics").text,
        "the create published",
    )
    body = wait_for(lambda: (b := ready(issuer))["status"] == "ok" and b["outbox_pending"] == 0 and b, "ok")
    assert body["kafka"] == "ok"
    assert body["kafka_last_success_s_ago"] is not None
    assert body["outbox_oldest_pending_age_s"] is None
    metrics = issuer.anonymous.get("/metrics").text
    assert "streamtoken_issuer_kafka_up 1.0" in metrics
    assert "streamtoken_issuer_last_publish_success_timestamp_seconds 0.0" not in metrics

    broker.stop()  # nothing is published any more: readiness must still notice
    body = wait_for(lambda: (b := ready(issuer))["status"] == "degraded" and b, "degraded without a broker")
    assert body["reason"] == "kafka_unreachable"
    assert body["kafka"] == "retrying"
    assert body["kafka_reason"]  # a Kafka error name, e.g. _TRANSPORT
    metrics = issuer.anonymous.get("/metrics").text
    assert "streamtoken_issuer_kafka_up 0.0" in metrics

    assert issuer.admin.post("/v1/environments/acme-telemetry-h/streaming-tokens/rotate").status_code == 200
    body = wait_for(lambda: (b := ready(issuer))["outbox_pending"] == 1 and b, "the rotation pending")
    assert body["outbox_oldest_pending_age_s"] is not None
    assert "streamtoken_issuer_outbox_depth 1.0" in issuer.anonymous.get("/metrics").text

    embedded_broker_factory(port=broker.port)
    body = wait_for(
        lambda: (b := ready(issuer))["status"] == "ok" and b["outbox_pending"] == 0 and b, "ok again"
    )
    assert body["kafka"] == "ok"
    assert body["kafka_last_error"]  # the last error is remembered after the recovery
    assert "streamtoken_issuer_outbox_oldest_pending_age_seconds 0.0" in issuer.anonymous.get("/metrics").text


# --- 3. the database -------------------------------------------------------------------------------------


def _postgres_admin() -> Any:
    import psycopg

    return psycopg.connect(POSTGRES_ADMIN_URL, autocommit=True, connect_timeout=3)


def _postgres_ready() -> bool:
    import psycopg

    try:
        with _postgres_admin() as connection:
            connection.execute("SELECT 1")
    except psycopg.OperationalError:
        return False
    return True


@pytest.fixture
def restartable_postgres_url() -> Iterator[str]:
    """A database of this test's own like ``postgres_url``, but holding no admin connection across the
    test (the restart would kill it): created and dropped through connections of their own."""
    import psycopg

    try:
        connection = _postgres_admin()
    except psycopg.OperationalError as exc:
        if _postgres_required():
            pytest.fail(f"PostgreSQL unreachable: {exc}")
        pytest.skip(f"PostgreSQL unreachable: {exc}")
    name = "st_" + uuid.uuid4().hex[:12]
    with connection:
        connection.execute(f'CREATE DATABASE "{name}"')
    try:
        yield _sqlalchemy_url(f"{POSTGRES_ADMIN_URL.rsplit('/', 1)[0]}/{name}")
    finally:
        wait_for(_postgres_ready, "PostgreSQL back to drop the test database")
        with _postgres_admin() as connection:
            connection.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _restart_postgres() -> None:
    """Restart the server (shared with other tests: it is back within seconds)."""
    try:
        subprocess.run(
            ["pg_ctlcluster", "--skip-systemctl-redirect", "15", "main", "restart"],
            check=True,
            capture_output=True,
            timeout=120,
        )
    finally:
        wait_for(_postgres_ready, "PostgreSQL accepting connections again")


@pytest.mark.postgres
def test_rotations_across_a_postgres_restart_either_apply_whole_or_fail_with_a_503(
    restartable_postgres_url: str,
    kafka_settings: KafkaSettings,
    issuer_factory: Callable[..., RunningIssuer],
) -> None:
    postgres_url = restartable_postgres_url
    issuer = issuer_factory(postgres_url, kafka_settings)
    env_id = next(iter(create(issuer, ["pg"])))
    rotate = f"/v1/environments/{env_id}/streaming-tokens/rotate"
    answers: list[httpx.Response] = []
    stop = threading.Event()
    headers = dict(issuer.admin.headers)

    def rotate_until_stopped() -> None:
        with httpx.Client(base_url=issuer.url, headers=headers, timeout=60.0) as client:
            while not stop.is_set() and len(answers) < 400:
                answers.append(client.post(rotate))

    worker = threading.Thread(target=rotate_until_stopped)
    worker.start()
    try:
        wait_for(lambda: sum(a.status_code == 200 for a in answers) >= 5, "rotations before the restart")
        _restart_postgres()
        after = len(answers)
        wait_for(
            lambda: sum(a.status_code == 200 for a in answers[after:]) >= 5, "rotations after the restart"
        )
    finally:
        stop.set()
        worker.join(120)

    statuses = [a.status_code for a in answers]
    assert set(statuses) <= {200, 503}, [a.text for a in answers if a.status_code not in {200, 503}][:3]
    unknown = 0  # cut off while committing and not readable back within its wait: may have landed
    for failed in (a for a in answers if a.status_code == 503):
        body = failed.json()
        assert body["error"] in {"database_unavailable", "database_commit_unknown"}, body
        assert "retry" in body["message"]
        unknown += body["error"] == "database_commit_unknown"
    applied = [a.json() for a in answers if a.status_code == 200]
    rotation_ids = {a["rotation_id"] for a in applied}
    generations = sorted(a["generation"] for a in applied)
    assert len(set(generations)) == len(generations)

    # the relay recovered by itself: every change is on the topic, exactly once, and nothing else
    wait_for(lambda: ready(issuer)["outbox_pending"] == 0, "the outbox drained after the restart")
    engine = sa.create_engine(postgres_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text("SELECT generation FROM outbox WHERE environment_id = :e ORDER BY id"), {"e": env_id}
            ).all()
    finally:
        engine.dispose()
    landed = len(rows) - 1  # rotations in the database: each answered 200, or 503 commit-unknown
    assert [r[0] for r in rows] == list(range(1, landed + 2))
    assert len(applied) <= landed <= len(applied) + unknown, (len(applied), landed, unknown)
    assert set(generations) <= set(range(2, landed + 2))  # each 200 names a generation that is there
    records = read_topic(kafka_settings, expected=landed + 1, timeout=60, settle=1.0)
    events = [decode_event(r.value) for r in records if r.key == env_id]
    assert [e.generation for e in events if e] == list(range(1, landed + 2))
    assert rotation_ids <= {e.change.rotation_id for e in events[1:] if e}

    audit = issuer.admin.get("/v1/admin/audit", params={"environment_id": env_id, "limit": 1000}).json()
    rotates = [e for e in audit["entries"] if e["action"] == "rotate"]
    assert len(rotates) == landed  # nothing half-applied: every rotation in the database is audited
    assert rotation_ids <= {e["detail"].get("rotation_id") for e in rotates}


@pytest.mark.postgres
@pytest.mark.parametrize("cut", ["after_commit", "before_commit"])
def test_a_rotation_whose_commit_is_cut_off_is_read_back_and_answered_for_what_happened(
    cut: Cut, postgres_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    """PostgreSQL can commit and lose the connection before it says so: the issuer reads back whether
    the rotation landed and answers 200 with it (after) or a 503 that changed nothing (before), never a
    503 for an applied rotation."""
    with CommitCutter(5432) as cutter:
        issuer = issuer_factory(_through(postgres_url, cutter), kafka_settings, settings=FAST_WATCH)
        env_id = next(iter(create(issuer, ["cut"])))
        tokens = f"/v1/environments/{env_id}/streaming-tokens"
        before = issuer.admin.get(tokens).json()
        cutter.arm(cut)
        answer = issuer.admin.post(f"{tokens}/rotate")
        assert cutter.cuts == [cut]
        now = issuer.admin.get(tokens).json()
        audit = issuer.admin.get("/v1/admin/audit", params={"environment_id": env_id}).json()["entries"]
        rotates = [e for e in audit if e["action"] == "rotate"]
        if cut == "after_commit":
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert body["generation"] == now["generation"] == 2
            assert body["token_2"]["token_id"] == now["token_2"]["token_id"]
            assert body["token_1"]["token_id"] == before["token_2"]["token_id"]
            assert [e["detail"]["rotation_id"] for e in rotates] == [body["rotation_id"]]
        else:
            assert answer.status_code == 503, answer.text
            assert answer.json()["error"] == "database_unavailable"
            assert "changed nothing" in answer.json()["message"]
            assert now["generation"] == 1
            assert now["token_2"]["token_id"] == before["token_2"]["token_id"]
            assert rotates == []
        again = issuer.admin.post(f"{tokens}/rotate")
        assert again.status_code == 200
        assert again.json()["generation"] == now["generation"] + 1
        wait_for(lambda: ready(issuer)["outbox_pending"] == 0, "the outbox drained")
        records = read_topic(kafka_settings, expected=now["generation"] + 1, settle=1.0)
        events = [decode_event(r.value) for r in records]
        generations = [e.generation for e in events if e is not None and e.environment_id == env_id]
        assert generations == list(range(1, now["generation"] + 2))


@pytest.mark.postgres
def test_a_cut_off_commit_the_database_cannot_confirm_says_so_and_the_idempotency_key_settles_it(
    postgres_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    with CommitCutter(5432) as cutter:
        issuer = issuer_factory(
            _through(postgres_url, cutter), kafka_settings, settings={**FAST_WATCH, "commit_read_back_s": 3.0}
        )
        env_id = next(iter(create(issuer, ["unsure"])))
        rotate = f"/v1/environments/{env_id}/streaming-tokens/rotate"
        key = {"Idempotency-Key": "rotate-unsure-1"}
        cutter.refuse_after_cut = True
        cutter.arm("after_commit")
        answer = issuer.admin.post(rotate, headers=key)  # the read-back finds no database for its wait
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "database_commit_unknown"
        assert "whether it was applied is not known" in answer.json()["message"]
        assert "Idempotency-Key" in answer.json()["message"]
        assert answer.headers["Retry-After"]
        cutter.heal()
        retried = wait_for(
            lambda: (r := issuer.admin.post(rotate, headers=key)).status_code == 200 and r,
            "the database back",
        )
        assert retried.json()["generation"] == 2  # the first call had landed: the key replays it, once
        assert issuer.admin.get(f"/v1/environments/{env_id}/streaming-tokens").json()["generation"] == 2


def _through(postgres_url: str, cutter: CommitCutter) -> str:
    """The test database's URL, through ``cutter`` (no TLS, so that it can read the protocol)."""
    assert "@127.0.0.1:5432/" in postgres_url, postgres_url
    return postgres_url.replace("@127.0.0.1:5432/", f"@127.0.0.1:{cutter.port}/") + (
        "?sslmode=disable&gssencmode=disable"
    )


def test_a_locked_sqlite_file_is_a_503_saying_what_to_do_and_changes_nothing(
    sqlite_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(sqlite_url, kafka_settings, settings={"sqlite_busy_timeout_s": 0.5})
    env_id = next(iter(create(issuer, ["locked"])))
    rotate = f"/v1/environments/{env_id}/streaming-tokens/rotate"
    other = sqlite3.connect(sqlite_url.removeprefix("sqlite:///"), isolation_level=None)
    try:
        other.execute("BEGIN EXCLUSIVE")  # another process holds the file past the busy timeout
        answer = issuer.admin.post(rotate, headers={"Idempotency-Key": uuid.uuid4().hex})
        assert answer.status_code == 503, answer.text
        assert answer.json()["error"] == "database_locked"
        assert "STREAMTOKEN_ISSUER_SQLITE_BUSY_TIMEOUT_S" in answer.json()["message"]
        assert answer.headers["Retry-After"]
        body = wait_for(
            lambda: (b := ready(issuer)).get("database_reason") == "database_locked" and b,
            "readiness names the locked database",
        )
        assert body["status"] == "degraded"
        assert body["database"] == "unavailable"
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert issuer.admin.get(f"/v1/environments/{env_id}").json()["generation"] == 1  # nothing applied
    assert issuer.admin.post(rotate).json()["generation"] == 2
    audit = issuer.admin.get("/v1/admin/audit", params={"environment_id": env_id}).json()["entries"]
    assert [e["action"] for e in audit if e["action"] == "rotate"] == ["rotate"]
    wait_for(lambda: ready(issuer)["status"] == "ok", "ok once the lock is gone")


def test_a_full_sqlite_database_is_a_503_saying_what_to_do(
    sqlite_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(sqlite_url, kafka_settings)
    env_id = next(iter(create(issuer, ["full"])))
    engine: sa.Engine = issuer.app.store.engine
    limit = {"pages": 0}  # 0: no limit

    @sa.event.listens_for(engine, "connect")
    def _cap(dbapi_connection: Any, _: Any) -> None:
        if limit["pages"]:
            dbapi_connection.execute(f"PRAGMA max_page_count = {limit['pages']}")

    with engine.connect() as connection:
        limit["pages"] = int(connection.exec_driver_sql("PRAGMA page_count").scalar_one())
    engine.dispose()  # every new connection has a disk that is full now
    answers = []
    for _ in range(50):
        answer = issuer.admin.post(f"/v1/environments/{env_id}/streaming-tokens/rotate")
        answers.append(answer)
        if answer.status_code != 200:
            break
    last = answers[-1]
    assert last.status_code == 503, [a.status_code for a in answers]
    assert last.json()["error"] == "database_full"
    assert "free space" in last.json()["message"]
    applied = sum(a.status_code == 200 for a in answers)

    limit["pages"] = 1_000_000
    engine.dispose()
    assert issuer.admin.get(f"/v1/environments/{env_id}").json()["generation"] == applied + 1
    assert issuer.admin.post(f"/v1/environments/{env_id}/streaming-tokens/rotate").status_code == 200
