"""shared.client's IssuerClient against a real issuer on loopback (SQLite, no relay): typed answers, and
each refusal as one ApiCallError carrying the issuer's status, code, message and body."""

from __future__ import annotations

import uuid
from collections.abc import Callable

import pytest

from shared.client import ApiCallError, IssuerClient
from shared.kafka import KafkaSettings
from shared.models.issuer import StreamingTokens
from tests.integration.issuer.conftest import RunningIssuer


def test_issuer_client_answers_and_error_mapping(
    sqlite_url: str, kafka_settings: KafkaSettings, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(sqlite_url, kafka_settings, start_relay=False)
    with (
        IssuerClient(issuer.url, bearer=issuer.pat_for("admin")) as admin,
        IssuerClient(issuer.url, bearer=issuer.pat_for("member")) as member,
    ):
        created = admin.create_environment("acme", "telemetry", "prod")
        assert (created.id, created.generation) == ("acme-telemetry-prod", 1)
        again = admin.ensure_environment("acme", "telemetry", "prod")  # 409 read back
        assert again.id == created.id
        with pytest.raises(ApiCallError) as exists:
            admin.create_environment("acme", "telemetry", "prod")
        assert (exists.value.status, exists.value.code) == (409, "conflict")
        assert "already exists" in exists.value.message

        tokens = member.streaming_tokens(created.id)
        assert isinstance(tokens, StreamingTokens)
        assert tokens.token_1 is not None
        with pytest.raises(ApiCallError) as forbidden:
            member.rotate(created.id, {}, idempotency_key=uuid.uuid4().hex)
        assert forbidden.value.status == 403
        assert forbidden.value.refused

        key = uuid.uuid4().hex
        rotated = admin.rotate(created.id, {}, idempotency_key=key, expected_generation=1)
        assert rotated.generation == 2
        assert admin.rotate(created.id, {}, idempotency_key=key, expected_generation=1).generation == 2
        with pytest.raises(ApiCallError) as stale:
            admin.rotate(created.id, {}, idempotency_key=uuid.uuid4().hex, expected_generation=1)
        assert (stale.value.status, stale.value.code) == (412, "precondition_failed")

        with pytest.raises(ApiCallError) as missing:
            admin.environment("acme-telemetry-nope")
        assert (missing.value.status, missing.value.code) == (404, "not_found")
        with pytest.raises(ApiCallError) as invalid:
            admin.create_pat({"subject": "x", "role": "root"})
        assert invalid.value.status == 422
        assert invalid.value.body.get("details")

    with IssuerClient(issuer.url, bearer="garbage") as anonymous, pytest.raises(ApiCallError) as exc:
        anonymous.environments()
    assert (exc.value.status, exc.value.code) == (401, "unauthorized")
    assert "garbage" not in str(exc.value)
