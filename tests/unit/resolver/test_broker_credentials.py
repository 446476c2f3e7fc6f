"""``broker/librdkafka`` answers the caller's own broker login; the issuer's propagation view. No network."""

from __future__ import annotations

import base64
import json
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from pydantic import SecretStr
from quixstreams.kafka.configuration import ConnectionConfig

from services.resolver.bootstrap import build_app
from services.resolver.credentials import PublicBroker, PublicBrokerError
from services.resolver.replica import Status
from services.resolver.settings import ResolverSettings
from services.resolver.table import TokenTable
from shared.broker_access import broker_password
from shared.kafka import KafkaSettings
from shared.logs import configure_logging
from tests.unit.resolver.factories import Env
from tests.unit.resolver.fakes import FakeAdmin, bearer

DEV, PROD = "acme-telemetry-dev", "acme-telemetry-prod"
PORTAL_KEYS = {
    "bootstrap.servers",
    "security.protocol",
    "sasl.mechanism",
    "sasl.username",
    "sasl.password",
    "client.id",
    "ssl.ca.cert",
}
CA_PEM = b"-----BEGIN CERTIFICATE-----\nMIIBdzCCAR2gAwIBAgIUdGVzdC1jYQ==\n-----END CERTIFICATE-----\n"
RESOLVER_PASSWORD = "resolver-own-secret"


def librdkafka_path(workspace: str) -> str:
    return f"/workspaces/{workspace}/broker/librdkafka"


@pytest.fixture
def ca_file(tmp_path: Path) -> Path:
    path = tmp_path / "ca.pem"
    path.write_bytes(CA_PEM)
    return path


def sasl_ssl(ca_file: Path, **public: Any) -> ResolverSettings:
    """A resolver that itself connects with SASL_SSL as its own SCRAM-SHA-512 service user."""
    kafka = KafkaSettings(
        bootstrap_servers="kafka.internal:9092",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="streamtoken-resolver",
        sasl_password=SecretStr(RESOLVER_PASSWORD),
        ssl_ca_location=str(ca_file),
    )
    return ResolverSettings(
        **{"kafka": kafka, "public_bootstrap_servers": "kafka.example.com:9093", **public}
    )


AppClient = Callable[..., Any]


@pytest.fixture
def table() -> TokenTable:
    return TokenTable()


@pytest.fixture
def dev(table: TokenTable) -> Env:
    env = Env(DEV)
    table.apply_event(env.environment_id, env.event())
    return env


@pytest.fixture
def prod(table: TokenTable) -> Env:
    env = Env(PROD)
    table.apply_event(env.environment_id, env.event())
    return env


@pytest.fixture
def status() -> list[Status]:
    return [Status.READY]


@pytest.fixture
def app_client(table: TokenTable, status: list[Status]) -> AppClient:
    @asynccontextmanager
    async def open_client(settings: ResolverSettings) -> AsyncIterator[httpx.AsyncClient]:
        app = build_app(
            settings, table=table, admin=FakeAdmin(), start_replica=False, status=lambda: status[0]
        )
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://resolver") as client:
            yield client

    return open_client


def as_quixstreams_reads_it(answer: dict[str, str]) -> ConnectionConfig:
    """What quixstreams 3.x does with the answer (QuixKafkaConfigsBuilder): it raises on any other key."""
    config: dict[str, str | bytes] = dict(answer)
    if (cert := config.pop("ssl.ca.cert", None)) is not None:
        config["ssl.ca.pem"] = base64.b64decode(cert)
    return ConnectionConfig.from_librdkafka_dict(config)


async def test_each_slot_gets_its_own_login(
    app_client: AppClient, dev: Env, prod: Env, ca_file: Path
) -> None:
    async with app_client(sasl_ssl(ca_file)) as client:
        answers = []
        for token, token_id in ((dev.token_1, dev.id_1), (dev.token_2, dev.id_2)):
            r = await client.get(librdkafka_path(DEV), headers=bearer(token))
            assert r.status_code == 200
            assert r.headers["cache-control"] == "no-store"
            answer = r.json()
            assert answer == {
                "bootstrap.servers": "kafka.example.com:9093",
                "security.protocol": "SASL_SSL",
                "sasl.mechanism": "SCRAM-SHA-256",
                "sasl.username": token_id,
                "sasl.password": broker_password(token),
                "ssl.ca.cert": base64.b64encode(CA_PEM).decode("ascii"),
            }
            assert set(answer) <= PORTAL_KEYS
            assert token not in r.text  # the password is derived one-way, the token itself never sent back
            assert RESOLVER_PASSWORD not in r.text
            assert "streamtoken-resolver" not in r.text
            assert as_quixstreams_reads_it(answer).sasl_username == token_id
            answers.append(answer)
    one, two = answers
    assert one["sasl.username"] != two["sasl.username"]
    assert one["sasl.password"] != two["sasl.password"]
    assert base64.b64decode(one["ssl.ca.cert"]) == CA_PEM


async def test_another_workspace_is_403_without_credentials(
    app_client: AppClient, dev: Env, prod: Env, ca_file: Path
) -> None:
    async with app_client(sasl_ssl(ca_file)) as client:
        r = await client.get(librdkafka_path(PROD), headers=bearer(dev.token_1))
    assert r.status_code == 403
    assert r.json()["error"] == "forbidden"
    assert "sasl" not in r.text
    for secret in (prod.id_1, prod.id_2, broker_password(dev.token_1), broker_password(prod.token_1)):
        assert secret not in r.text


async def test_a_rotated_out_token_is_401_and_the_new_pair_gets_its_logins(
    app_client: AppClient, table: TokenTable, dev: Env, ca_file: Path
) -> None:
    old_token, old_id = dev.token_1, dev.id_1
    async with app_client(sasl_ssl(ca_file)) as client:
        assert (await client.get(librdkafka_path(DEV), headers=bearer(old_token))).status_code == 200
        table.apply_event(DEV, dev.rotate())
        r = await client.get(librdkafka_path(DEV), headers=bearer(old_token))
        assert r.status_code == 401
        assert r.json()["error"] == "invalid_token"
        assert old_id not in r.text
        assert broker_password(old_token) not in r.text
        for token, token_id in ((dev.token_1, dev.id_1), (dev.token_2, dev.id_2)):
            answer = (await client.get(librdkafka_path(DEV), headers=bearer(token))).json()
            assert (answer["sasl.username"], answer["sasl.password"]) == (token_id, broker_password(token))


async def test_a_grace_token_gets_its_own_login_until_its_grace_ends(
    app_client: AppClient, table: TokenTable, dev: Env, ca_file: Path
) -> None:
    old_token, old_id = dev.token_1, dev.id_1
    table.apply_event(DEV, dev.rotate(grace_until=datetime.now(UTC) + timedelta(hours=1)))
    async with app_client(sasl_ssl(ca_file)) as client:
        answer = (await client.get(librdkafka_path(DEV), headers=bearer(old_token))).json()
    assert (answer["sasl.username"], answer["sasl.password"]) == (old_id, broker_password(old_token))


async def test_plaintext_broker_answers_no_login(app_client: AppClient, dev: Env, ca_file: Path) -> None:
    settings = ResolverSettings(
        kafka=KafkaSettings(bootstrap_servers="127.0.0.1:9092", ssl_ca_location=str(ca_file))
    )
    assert not PublicBroker.from_settings(settings).enforced
    async with app_client(settings) as client:
        r = await client.get(librdkafka_path(DEV), headers=bearer(dev.token_1))
    assert r.json() == {"bootstrap.servers": "127.0.0.1:9092", "security.protocol": "PLAINTEXT"}
    assert r.headers["cache-control"] == "no-store"
    as_quixstreams_reads_it(r.json())


async def test_sasl_plaintext_gets_a_login_and_no_ca(app_client: AppClient, dev: Env, ca_file: Path) -> None:
    settings = sasl_ssl(
        ca_file, public_security_protocol="SASL_PLAINTEXT", public_sasl_mechanism="SCRAM-SHA-512"
    )
    async with app_client(settings) as client:
        answer = (await client.get(librdkafka_path(DEV), headers=bearer(dev.token_2))).json()
    assert answer == {
        "bootstrap.servers": "kafka.example.com:9093",
        "security.protocol": "SASL_PLAINTEXT",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": dev.id_2,
        "sasl.password": broker_password(dev.token_2),
    }


def test_public_settings_come_from_their_variables(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, ca_file: Path
) -> None:
    public_ca = tmp_path / "public-ca.pem"
    public_ca.write_bytes(CA_PEM.replace(b"dGVzdC1jYQ", b"cHVibGljLWNh"))
    for name, value in {
        "STREAMTOKEN_KAFKA_BOOTSTRAP_SERVERS": "kafka.internal:9092",
        "STREAMTOKEN_KAFKA_SECURITY_PROTOCOL": "SASL_PLAINTEXT",
        "STREAMTOKEN_KAFKA_SSL_CA_LOCATION": str(ca_file),
        "STREAMTOKEN_RESOLVER_PUBLIC_BOOTSTRAP_SERVERS": "kafka.example.com:9093",
        "STREAMTOKEN_RESOLVER_PUBLIC_SECURITY_PROTOCOL": "SASL_SSL",
        "STREAMTOKEN_RESOLVER_PUBLIC_SASL_MECHANISM": "SCRAM-SHA-512",
        "STREAMTOKEN_RESOLVER_PUBLIC_CA_LOCATION": str(public_ca),
        # The removed shared login is ignored: no client is ever handed it.
        "STREAMTOKEN_RESOLVER_PUBLIC_SASL_USERNAME": "shared",
        "STREAMTOKEN_RESOLVER_PUBLIC_SASL_PASSWORD": "shared-secret",
    }.items():
        monkeypatch.setenv(name, value)
    broker = PublicBroker.from_settings(ResolverSettings())
    assert broker == PublicBroker(
        "kafka.example.com:9093",
        "SASL_SSL",
        "SCRAM-SHA-512",
        base64.b64encode(public_ca.read_bytes()).decode("ascii"),
    )
    answer = broker.for_token("tid_x", "token")
    assert "shared" not in json.dumps(answer)


def test_defaults_are_the_resolvers_own_connection_with_scram_sha_256(ca_file: Path) -> None:
    broker = PublicBroker.from_settings(sasl_ssl(ca_file, public_bootstrap_servers=None))
    assert broker.bootstrap_servers == "kafka.internal:9092"
    assert broker.security_protocol == "SASL_SSL"
    assert broker.sasl_mechanism == "SCRAM-SHA-256"  # not the resolver's own SCRAM-SHA-512
    assert broker.ca_pem_base64 is not None
    assert base64.b64decode(broker.ca_pem_base64) == CA_PEM


@pytest.mark.parametrize("content", [None, b"not a certificate"])
def test_an_unusable_ca_file_stops_the_start(tmp_path: Path, content: bytes | None) -> None:
    path = tmp_path / "ca.pem"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(PublicBrokerError, match=r"ca\.pem"):
        build_app(sasl_ssl(path), table=TokenTable(), admin=FakeAdmin(), start_replica=False)


async def test_neither_token_nor_password_reaches_the_logs(
    app_client: AppClient,
    table: TokenTable,
    dev: Env,
    prod: Env,
    ca_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    old_token = dev.token_1
    configure_logging("resolver", "DEBUG")
    try:
        async with app_client(sasl_ssl(ca_file)) as client:
            await client.get(librdkafka_path(DEV), headers=bearer(old_token))
            await client.get(librdkafka_path(PROD), headers=bearer(old_token))
            table.apply_event(DEV, dev.rotate())
            await client.get(librdkafka_path(DEV), headers=bearer(old_token))
    finally:
        logging.getLogger().handlers.clear()
    logs = capsys.readouterr().err
    assert "token_refused" in logs
    assert old_token not in logs
    assert broker_password(old_token) not in logs


# --- the issuer's propagation view -----------------------------------------------------------------------


async def test_generation_of_an_environment(
    app_client: AppClient, table: TokenTable, dev: Env, status: list[Status]
) -> None:
    async with app_client(ResolverSettings()) as client:
        r = await client.get(f"/v1/environments/{DEV}/generation")
        assert r.status_code == 200
        assert r.json() == {"environment_id": DEV, "generation": 1, "ready": True}
        table.apply_event(DEV, dev.rotate())
        assert (await client.get(f"/v1/environments/{DEV}/generation")).json()["generation"] == 2
        unknown = (await client.get("/v1/environments/acme-nope-x/generation")).json()
        assert unknown == {"environment_id": "acme-nope-x", "generation": None, "ready": True}
        table.apply(DEV, None)  # tombstone
        assert (await client.get(f"/v1/environments/{DEV}/generation")).json()["generation"] is None
        status[0] = Status.LOADING
        loading = await client.get(f"/v1/environments/{DEV}/generation")
        assert loading.status_code == 200
        assert loading.json()["ready"] is False
        paths = (await client.get("/openapi.json")).json()["paths"]
    described = paths["/v1/environments/{environment_id}/generation"]["get"]["description"]
    assert "propagation" in described
    assert "needs no streaming token" in described


async def test_generation_needs_the_internal_key_when_one_is_set(app_client: AppClient, dev: Env) -> None:
    path = f"/v1/environments/{DEV}/generation"
    async with app_client(ResolverSettings(internal_key=SecretStr("k-123"))) as client:
        for headers in ({}, {"X-Streamtoken-Internal-Key": "wrong"}, bearer(dev.token_1)):
            r = await client.get(path, headers=headers)
            assert r.status_code == 401
            assert "k-123" not in r.text
        r = await client.get(path, headers={"X-Streamtoken-Internal-Key": "k-123"})
        assert r.json()["generation"] == 1


async def test_openapi_says_enforcement_is_off_on_plaintext(app_client: AppClient) -> None:
    async with app_client(ResolverSettings()) as client:
        paths = (await client.get("/openapi.json")).json()["paths"]
    described = paths["/workspaces/{workspace}/broker/librdkafka"]["get"]["description"]
    assert "PLAINTEXT" in described
    assert "enforcement is off" in described
