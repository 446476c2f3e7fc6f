"""The issuer's broker access on the session's real Apache Kafka (SASL_SSL, SCRAM, StandardAuthorizer),
checked with plain confluent-kafka clients logging in as the tokens' own SCRAM users."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest
from confluent_kafka import KafkaError, Producer
from confluent_kafka.admin import (
    AclBinding,
    AclBindingFilter,
    AclOperation,
    AclPermissionType,
    AdminClient,
    NewTopic,
    ResourcePatternType,
    ResourceType,
    ScramCredentialInfo,
    ScramMechanism,
    UserScramCredentialUpsertion,
)
from typer.testing import CliRunner

from cli.main import app as cli_app
from services.issuer.adapters.broker import BrokerAccessError, KafkaBrokerAccess
from shared.broker_access import ISSUER_USER, RESOLVER_USER, broker_password
from shared.kafka import KafkaSettings
from shared.kafka_broker import ApacheKafkaBroker
from tests.integration.issuer.conftest import RunningIssuer
from tests.support import broker_login


def _env_id(tag: str) -> str:
    return f"ba{uuid.uuid4().hex[:6]}-{tag}-prod"


def _token() -> tuple[str, str, str]:
    """(token id, token, broker password): any string works as the token for the broker."""
    token = f"stk_test_{uuid.uuid4().hex}"
    return f"tid_{uuid.uuid4().hex[:16]}", token, broker_password(token)


@pytest.fixture
def admin(kafka_broker: ApacheKafkaBroker) -> AdminClient:
    return AdminClient(kafka_broker.admin_settings().librdkafka())


@pytest.fixture
def issuer_access(kafka_broker: ApacheKafkaBroker, topic_name: str) -> Iterator[KafkaBrokerAccess]:
    """The adapter as the issuer's own least-privilege principal (cluster ALTER + DESCRIBE)."""
    kafka_broker.grant_services(topic_name)
    access = KafkaBrokerAccess(kafka_broker.settings_for(ISSUER_USER, topic=topic_name), timeout_s=15)
    yield access
    access.close()


def create_topics(admin: AdminClient, *names: str) -> None:
    futures = admin.create_topics([NewTopic(n, num_partitions=1, replication_factor=1) for n in names])
    for future in futures.values():
        future.result(30)


def tenant_config(broker: ApacheKafkaBroker, user: str, password: str, mechanism: str) -> dict[str, Any]:
    return {
        "bootstrap.servers": broker.bootstrap_servers,
        "security.protocol": "SASL_SSL",
        "ssl.ca.location": str(broker.ca_path),
        "sasl.mechanism": mechanism,
        "sasl.username": user,
        "sasl.password": password,
    }


def produce_once(config: dict[str, Any], topic: str, timeout: float = 20.0) -> tuple[Any, list[Any]]:
    """Produce one record; (its delivery error or None, client-level errors seen)."""
    client_errors: list[Any] = []
    results: list[Any] = []
    producer = Producer(
        {
            **config,
            "message.timeout.ms": int(timeout * 1000),
            "error_cb": client_errors.append,
            "enable.idempotence": True,
        }
    )
    producer.produce(topic, b"v", on_delivery=lambda err, _msg: results.append(err))
    deadline = time.monotonic() + timeout + 5
    while not results and time.monotonic() < deadline:
        producer.poll(0.1)
        if any(e.code() == KafkaError._AUTHENTICATION for e in client_errors):
            break
    producer.purge()
    producer.flush(1)
    return (results[0] if results else None), client_errors


def tenant_users(admin: AdminClient) -> dict[str, set[tuple[Any, int]]]:
    described = admin.describe_user_scram_credentials().result(30)
    return {
        u: {(i.mechanism, i.iterations) for i in d.scram_credential_infos}
        for u, d in described.items()
        if u.startswith("tid_")
    }


def acls_of(admin: AdminClient, principal: str) -> set[tuple[Any, str, Any, Any]]:
    found = admin.describe_acls(
        AclBindingFilter(
            ResourceType.ANY,
            None,
            ResourcePatternType.ANY,
            principal,
            None,
            AclOperation.ANY,
            AclPermissionType.ANY,
        )
    ).result(30)
    return {(b.restype, b.name, b.resource_pattern_type, b.operation) for b in found}


# -- the adapter ------------------------------------------------------------------------------------------


def test_a_tokens_user_reaches_its_environment_only_and_is_refused_once_removed(
    kafka_broker: ApacheKafkaBroker, admin: AdminClient, issuer_access: KafkaBrokerAccess
) -> None:
    env_a, env_b = _env_id("a"), _env_id("b")
    create_topics(admin, f"{env_a}-x", f"{env_b}-x")
    (tid_a, _, pw_a), (tid_b, _, pw_b) = _token(), _token()
    issuer_access.sync_environment(env_a, [(tid_a, pw_a)])
    issuer_access.sync_environment(env_b, [(tid_b, pw_b)])

    for mechanism in ("SCRAM-SHA-256", "SCRAM-SHA-512"):
        config = tenant_config(kafka_broker, tid_a, pw_a, mechanism)
        error, _ = produce_once(config, f"{env_a}-x")
        assert error is None, (mechanism, error)
        error, _ = produce_once(config, f"{env_b}-x")
        assert error is not None
        assert error.code() == KafkaError.TOPIC_AUTHORIZATION_FAILED, (mechanism, error)

    assert acls_of(admin, f"User:{tid_a}") == {
        (ResourceType.TOPIC, f"{env_a}-", ResourcePatternType.PREFIXED, AclOperation.READ),
        (ResourceType.TOPIC, f"{env_a}-", ResourcePatternType.PREFIXED, AclOperation.WRITE),
        (ResourceType.GROUP, f"{env_a}-", ResourcePatternType.PREFIXED, AclOperation.READ),
        (ResourceType.TRANSACTIONAL_ID, f"{env_a}-", ResourcePatternType.PREFIXED, AclOperation.WRITE),
    }
    assert tenant_users(admin)[tid_a] == {
        (ScramMechanism.SCRAM_SHA_256, 4096),
        (ScramMechanism.SCRAM_SHA_512, 4096),
    }

    # A rotation: tid_a is deactivated, tid_c takes its place.
    tid_c, _, pw_c = _token()
    issuer_access.sync_environment(env_a, [(tid_c, pw_c)])
    issuer_access.sync_environment(env_a, [(tid_c, pw_c)])  # idempotent
    assert acls_of(admin, f"User:{tid_a}") == set()
    assert tid_a not in tenant_users(admin)
    assert broker_login(tenant_config(kafka_broker, tid_a, pw_a, "SCRAM-SHA-256"), 20) == "refused"
    error, _ = produce_once(tenant_config(kafka_broker, tid_c, pw_c, "SCRAM-SHA-256"), f"{env_a}-x")
    assert error is None

    # The environment deleted: nobody reaches it any more; the other environment is untouched.
    issuer_access.sync_environment(env_a, [])
    assert tid_c not in tenant_users(admin)
    assert acls_of(admin, f"User:{tid_c}") == set()
    assert tid_b in tenant_users(admin)


def test_reconcile_all_removes_every_tenant_not_desired(
    kafka_broker: ApacheKafkaBroker, admin: AdminClient, issuer_access: KafkaBrokerAccess
) -> None:
    env = _env_id("r")
    (tid, _, pw), (stray, _, stray_pw) = _token(), _token()
    # A leftover of a lost database: a tid_ user with an ACL on an environment nobody knows any more.
    for future in admin.alter_user_scram_credentials(
        [
            UserScramCredentialUpsertion(
                stray, ScramCredentialInfo(ScramMechanism.SCRAM_SHA_256, 4096), stray_pw.encode()
            )
        ]
    ).values():
        future.result(30)
    binding = AclBinding(
        ResourceType.TOPIC,
        "ghost-env-x-",
        ResourcePatternType.PREFIXED,
        f"User:{stray}",
        "*",
        AclOperation.READ,
        AclPermissionType.ALLOW,
    )
    for future in admin.create_acls([binding]).values():
        future.result(30)

    issuer_access.reconcile_all({env: [(tid, pw)]})
    issuer_access.reconcile_all({env: [(tid, pw)]})  # idempotent
    users = tenant_users(admin)
    assert stray not in users
    assert acls_of(admin, f"User:{stray}") == set()
    assert set(users) == {tid}  # our own principals are not tid_ users and were left alone
    assert len(acls_of(admin, f"User:{tid}")) == 4
    assert admin.describe_user_scram_credentials([ISSUER_USER])[ISSUER_USER].result(30)
    issuer_access.reconcile_all({})


def test_a_refusal_is_an_error_naming_the_call_without_any_password(
    kafka_broker: ApacheKafkaBroker, topic_name: str
) -> None:
    kafka_broker.grant_services(topic_name)
    tid, token, pw = _token()
    unprivileged = KafkaBrokerAccess(kafka_broker.settings_for(RESOLVER_USER), timeout_s=10)
    with pytest.raises(BrokerAccessError) as caught:
        unprivileged.sync_environment(_env_id("n"), [(tid, pw)])
    message = str(caught.value)
    assert "AUTHORIZATION_FAILED" in message
    assert pw not in message
    assert token not in message


# -- the issuer on the broker -----------------------------------------------------------------------------


def _issuer_kafka(kafka_broker: ApacheKafkaBroker, topic_name: str, user: str = ISSUER_USER) -> KafkaSettings:
    kafka_broker.grant_services(topic_name)
    return kafka_broker.settings_for(user, topic=topic_name, topic_partitions=3)


def _wait(predicate: Callable[[], Any], timeout: float = 30.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError("condition not reached in time")


def test_rotation_reaches_the_broker_and_the_answers_say_so(
    kafka_broker: ApacheKafkaBroker,
    admin: AdminClient,
    sqlite_url: str,
    topic_name: str,
    issuer_factory: Callable[..., RunningIssuer],
) -> None:
    issuer = issuer_factory(sqlite_url, _issuer_kafka(kafka_broker, topic_name))
    org = f"ba{uuid.uuid4().hex[:6]}"
    env_id = issuer.admin.post("/v1/environments", json={"org": org, "project": "p", "name": "prod"}).json()[
        "id"
    ]
    create_topics(admin, f"{env_id}-x")
    propagation = f"/v1/environments/{env_id}/streaming-tokens/propagation"
    state = _wait(lambda: (s := issuer.member.get(propagation).json())["broker"] == "applied" and s)
    assert state == {
        "environment_id": env_id,
        "generation": 1,
        "broker": "applied",
        "broker_generation": 1,
        "resolvers": "unknown",  # no resolver configured
        "resolver_detail": [],
    }
    before = issuer.admin.get(f"/v1/environments/{env_id}/streaming-tokens").json()
    assert before["propagation"] == {
        "broker": "applied",
        "broker_generation": 1,
        "resolvers": "unknown",
        "resolver_detail": [],
    }
    old = before["token_1"]

    rotated = issuer.admin.post(f"/v1/environments/{env_id}/streaming-tokens/rotate").json()
    assert rotated["propagation"]["broker"] in {"pending", "applied"}
    _wait(lambda: issuer.member.get(propagation).json()["broker_generation"] == 2)
    assert (
        broker_login(
            tenant_config(kafka_broker, old["token_id"], broker_password(old["token"]), "SCRAM-SHA-256"), 20
        )
        == "refused"
    )
    new = rotated["token_1"]
    error, _ = produce_once(
        tenant_config(kafka_broker, new["token_id"], broker_password(new["token"]), "SCRAM-SHA-256"),
        f"{env_id}-x",
    )
    assert error is None
    ready = issuer.anonymous.get("/health/ready").json()
    assert ready["broker_access"] == "ok"

    # `tokens rotate --wait` waits for the broker and reports it on stderr.
    result = CliRunner().invoke(
        cli_app,
        ["tokens", "rotate", env_id, "--wait", "--wait-timeout", "30", "--json"],
        env={"STREAMTOKEN_ISSUER_URL": issuer.url, "STREAMTOKEN_PAT": issuer.pat_for("admin")},
    )
    assert result.exit_code == 0, result.stderr
    assert "broker: applied (generation 3)" in result.stderr
    assert '"broker": "applied"' in result.stdout


def test_a_broker_that_refuses_keeps_the_batch_pending_and_readiness_degraded(
    kafka_broker: ApacheKafkaBroker,
    sqlite_url: str,
    topic_name: str,
    issuer_factory: Callable[..., RunningIssuer],
    captured_logs: Any,
) -> None:
    # The resolver's principal may not manage users and ACLs: every broker-access call is refused.
    kafka = _issuer_kafka(kafka_broker, topic_name, user=RESOLVER_USER)
    issuer = issuer_factory(sqlite_url, kafka, settings={"broker_access": "scram"})
    org = f"ba{uuid.uuid4().hex[:6]}"
    created = issuer.admin.post("/v1/environments", json={"org": org, "project": "p", "name": "prod"})
    env_id = created.json()["id"]
    ready = _wait(
        lambda: "retrying" in (r := issuer.anonymous.get("/health/ready").json())["broker_access"] and r
    )
    # Public readiness gives the short state only (shared.web.short_reason); the reason, in one line, is in
    # the relay's log.
    assert ready["broker_access"] == "retrying"
    assert ready["broker_access_reason"] == "CLUSTER_AUTHORIZATION_FAILED"  # the Kafka error name, no text
    assert ready["status"] == "degraded"
    retries = [line for line in captured_logs.lines if "outbox_relay_retry" in line]
    assert any("CLUSTER_AUTHORIZATION_FAILED" in line for line in retries), retries[-1:]
    time.sleep(1.0)
    assert issuer.app.relay._store.pending_count() >= 1  # nothing of the batch was published
    state = issuer.member.get(f"/v1/environments/{env_id}/streaming-tokens/propagation").json()
    assert state["broker"] == "pending"
    tokens = issuer.admin.get(f"/v1/environments/{env_id}/streaming-tokens").json()
    for t in ("token_1", "token_2"):
        assert tokens[t]["token"] not in captured_logs.text
        assert broker_password(tokens[t]["token"]) not in captured_logs.text
    result = CliRunner().invoke(
        cli_app,
        ["tokens", "rotate", env_id, "--wait", "--wait-timeout", "1"],
        env={"STREAMTOKEN_ISSUER_URL": issuer.url, "STREAMTOKEN_PAT": issuer.pat_for("admin")},
    )
    assert result.exit_code == 1
    assert "did not apply generation 2" in result.stderr


def test_off_says_so_in_the_answers(
    kafka_settings: KafkaSettings, sqlite_url: str, issuer_factory: Callable[..., RunningIssuer]
) -> None:
    issuer = issuer_factory(sqlite_url, kafka_settings, settings={"broker_access": "off"}, start_relay=False)
    org = f"ba{uuid.uuid4().hex[:6]}"
    env_id = issuer.admin.post("/v1/environments", json={"org": org, "project": "p", "name": "prod"}).json()[
        "id"
    ]
    answer = issuer.admin.post(f"/v1/environments/{env_id}/streaming-tokens/rotate").json()
    assert answer["propagation"] == {
        "broker": "off",
        "broker_generation": None,
        "resolvers": "unknown",
        "resolver_detail": [],
    }
    assert issuer.anonymous.get("/health/ready").json()["broker_access"] == "off"
    missing = issuer.member.get("/v1/environments/no-such-env/streaming-tokens/propagation")
    assert missing.status_code == 404
    assert isinstance(missing, httpx.Response)
