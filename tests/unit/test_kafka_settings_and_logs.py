import json
import logging

import pytest
from pydantic import SecretStr

from shared.kafka import KafkaSettings
from shared.logs import configure_logging, get_logger, scrub
from shared.tokens import generate_token


def test_librdkafka_dict_from_settings() -> None:
    settings = KafkaSettings(
        bootstrap_servers="k1:9092,k2:9092",
        security_protocol="SASL_SSL",
        sasl_mechanism="SCRAM-SHA-512",
        sasl_username="svc",
        sasl_password=SecretStr("s3cret"),
    )
    assert settings.librdkafka() == {
        "bootstrap.servers": "k1:9092,k2:9092",
        "security.protocol": "SASL_SSL",
        "sasl.mechanism": "SCRAM-SHA-512",
        "sasl.username": "svc",
        "sasl.password": "s3cret",
    }
    assert "s3cret" not in repr(settings)


def test_settings_come_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("STREAMTOKEN_KAFKA_BOOTSTRAP_SERVERS", "broker:29092")
    monkeypatch.setenv("STREAMTOKEN_KAFKA_TOPIC", "tokens-x")
    settings = KafkaSettings()
    assert settings.bootstrap_servers == "broker:29092"
    assert settings.topic == "tokens-x"


def test_scrub_removes_broker_passwords_from_text() -> None:
    from shared.broker_access import broker_password

    password = broker_password(generate_token())
    assert password not in scrub(f"sasl.password={password}")
    assert "bkp_[REDACTED]" in scrub(password)


def test_environment_round_trips_the_connection_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = KafkaSettings(
        bootstrap_servers="k:1", security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
        sasl_username="u", sasl_password="p", ssl_ca_location="/ca.pem", topic="t",
    )  # fmt: skip
    env = settings.environment()
    assert env["STREAMTOKEN_KAFKA_SASL_PASSWORD"] == "p"
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert KafkaSettings().librdkafka() == settings.librdkafka()


def test_scrub_removes_tokens_from_text() -> None:
    token = generate_token()
    assert token not in scrub(f"bad token {token} seen")
    assert "stk_[REDACTED]" in scrub(token)


def test_log_lines_are_json_and_never_carry_a_token(capsys: pytest.CaptureFixture[str]) -> None:
    token = generate_token()
    configure_logging("test")
    try:
        get_logger("t").info("rotated", environment_id="a-b-c", oops=token, nested={"t": [token]})
        logging.getLogger("stdlib").warning("stdlib saw %s", token)
    finally:
        logging.getLogger().handlers.clear()
    lines = [json.loads(line) for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert [line["event"] for line in lines] == ["rotated", f"stdlib saw {scrub(token)}"]
    assert lines[0]["environment_id"] == "a-b-c"
    assert all(token not in json.dumps(line) for line in lines)


def test_backoff_doubles_to_its_cap_and_jitter_keeps_half() -> None:
    from shared.backoff import equal_jitter, exponential

    assert [exponential(n, 0.5, 4.0) for n in range(6)] == [0.0, 0.5, 1.0, 2.0, 4.0, 4.0]
    assert exponential(10_000, 1.0, 30.0) == 30.0
    assert equal_jitter(8.0, lambda: 0.0) == 4.0
    assert equal_jitter(8.0, lambda: 1.0) == 8.0
