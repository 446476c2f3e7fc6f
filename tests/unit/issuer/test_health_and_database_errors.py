"""Readiness says what the issuer can do now; database outages are named, never a 500."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta

import psycopg
import sqlalchemy as sa

from services.issuer.adapters.db import database_problem
from services.issuer.adapters.relay import RelayHealth
from services.issuer.bootstrap import readiness
from shared.web import short_reason

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


def health(**changes: object) -> RelayHealth:
    values: dict[str, object] = {
        "kafka_error": None,
        "kafka_last_error": None,
        "kafka_last_success_at": NOW - timedelta(seconds=2),
        "database_error": None,
        "broker_error": None,
        "pending": 0,
        "oldest_pending_at": None,
        "topic_lost": None,
    }
    values.update(changes)
    return RelayHealth(**values)  # type: ignore[arg-type]


def ready(h: RelayHealth, relay_state: str = "running") -> dict[str, object]:
    return readiness(h, NOW, migrated=True, relay_state=relay_state, broker_enforced=True, stale_after_s=30.0)


def test_readiness_is_ok_with_its_numbers_when_everything_works() -> None:
    detail = ready(health())
    assert detail["status"] == "ok"
    assert "reason" not in detail
    assert detail["kafka"] == "ok"
    assert detail["broker_access"] == "ok"
    assert detail["kafka_last_success_s_ago"] == 2.0
    assert detail["outbox_pending"] == 0
    assert detail["outbox_oldest_pending_age_s"] is None


def test_each_failure_degrades_readiness_with_a_short_machine_readable_reason() -> None:
    cases = {
        "kafka_unreachable": health(kafka_error="_TRANSPORT", kafka_last_error="_TRANSPORT"),
        "database_unavailable": health(database_error="database_unavailable"),
        "broker_access_failing": health(broker_error="CLUSTER_AUTHORIZATION_FAILED"),
        "outbox_stale": health(pending=3, oldest_pending_at=NOW - timedelta(seconds=31)),
    }
    for reason, h in cases.items():
        detail = ready(h)
        assert (detail["status"], detail["reason"]) == ("degraded", reason), detail
        for value in detail.values():  # shared.web keeps every text as it is: no "(" or ":" in them
            assert not isinstance(value, str) or short_reason(value) == value, value
    kafka = ready(cases["kafka_unreachable"])
    assert (kafka["kafka"], kafka["kafka_reason"], kafka["kafka_last_error"]) == (
        "retrying",
        "_TRANSPORT",
        "_TRANSPORT",
    )
    assert ready(cases["outbox_stale"])["outbox_oldest_pending_age_s"] == 31.0
    assert ready(health(), relay_state="stopped")["reason"] == "relay_stopped"
    young = ready(health(pending=3, oldest_pending_at=NOW - timedelta(seconds=1)))
    assert young["status"] == "ok"
    assert young["outbox_pending"] == 3


def _wrapped(orig: Exception) -> sa.exc.DBAPIError:
    return sa.exc.OperationalError("UPDATE environment SET ...", {"ciphertext": "x"}, orig)


def test_database_errors_are_named_with_what_to_do() -> None:
    locked = database_problem(_wrapped(sqlite3.OperationalError("database is locked")))
    full = database_problem(_wrapped(sqlite3.OperationalError("database or disk is full")))
    down = database_problem(_wrapped(psycopg.OperationalError("connection failed: server closed")))
    assert locked is not None
    assert locked.code == "database_locked"
    assert "BUSY_TIMEOUT" in locked.message
    assert "retry" in locked.message
    assert full is not None
    assert full.code == "database_full"
    assert "free space" in full.message
    assert down is not None
    assert down.code == "database_unavailable"
    assert "retry" in down.message
    for problem in (locked, full, down):
        assert "UPDATE" not in problem.message
        assert "ciphertext" not in problem.message
    # not outages: bugs and constraint violations stay what they are
    assert database_problem(_wrapped(sqlite3.OperationalError("no such table: environment"))) is None
    assert database_problem(ValueError("database is locked")) is None
    assert database_problem(sa.exc.TimeoutError("QueuePool limit reached")) is not None
