"""The Apache Kafka launcher's pure parts: the template, the one-sentence errors, TLS material."""

from __future__ import annotations

from pathlib import Path

import pytest

from shared.broker import BrokerError
from shared.broker_access import SERVICE_USERS
from shared.kafka_broker import (
    TEMPLATE,
    BrokerCredentials,
    broker_tls,
    config_values,
    ensure_jars,
    java_binary,
    render_config,
    scram_arguments,
)
from shared.settings import RuntimeSettings
from shared.tls import ensure_dev_tls


def test_every_placeholder_of_the_template_must_be_given(tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="template values missing"):
        render_config({"node_id": 1})
    credentials = BrokerCredentials.load_or_create(tmp_path / "credentials.json")
    tls = ensure_dev_tls(tmp_path / "tls")
    text = render_config(config_values(credentials, tls, tmp_path / "logs", port=9092, controller_port=9093))
    assert "{{" not in text
    assert "allow.everyone.if.no.acl.found=false" in text
    assert "listeners=CLIENT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093" in text
    assert "{{" in TEMPLATE.read_text()


def test_extra_properties_come_last_and_must_be_plain_keys(tmp_path: Path) -> None:
    credentials = BrokerCredentials.load_or_create(tmp_path / "credentials.json")
    values = config_values(
        credentials, ensure_dev_tls(tmp_path / "tls"), tmp_path / "logs", port=1, controller_port=2
    )
    text = render_config(values, properties={"broker.session.timeout.ms": "15000"})
    assert text.rstrip().endswith("broker.session.timeout.ms=15000")  # a later key wins in Java properties
    assert "metadata.log.max.snapshot.interval.ms=" in text  # restarts load a snapshot (docs/broker.md)
    for bad in ({"a=b": "1"}, {"x": "1\nsuper.users=User:eve"}):
        with pytest.raises(ValueError):
            render_config(values, properties=bad)


def test_credentials_are_generated_once_and_kept_private(tmp_path: Path) -> None:
    path = tmp_path / "credentials.json"
    first = BrokerCredentials.load_or_create(path)
    again = BrokerCredentials.load_or_create(path)
    assert first.passwords == again.passwords
    assert set(SERVICE_USERS) <= set(first.passwords)
    assert path.stat().st_mode & 0o077 == 0
    arguments = scram_arguments(first)
    assert arguments.count("--add-scram") == 2 * len(SERVICE_USERS)


def test_dev_tls_is_a_ca_and_a_broker_certificate_for_loopback(tmp_path: Path) -> None:
    from cryptography import x509

    tls = ensure_dev_tls(tmp_path / "tls", ("localhost", "127.0.0.1"))
    ca = x509.load_pem_x509_certificate(tls.ca_cert.read_bytes())
    chain = x509.load_pem_x509_certificates(tls.keystore.read_bytes())
    assert chain[0].issuer == ca.subject
    names = chain[0].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "localhost" in names.get_values_for_type(x509.DNSName)
    assert b"PRIVATE KEY" in tls.keystore.read_bytes()
    assert tls.keystore.stat().st_mode & 0o077 == 0
    assert ensure_dev_tls(tmp_path / "tls") == tls  # kept, not regenerated


def test_outside_dev_the_broker_refuses_to_generate_certificates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("STREAMTOKEN_BROKER_TLS_CA", raising=False)
    monkeypatch.delenv("STREAMTOKEN_BROKER_TLS_KEYSTORE", raising=False)
    with pytest.raises(BrokerError, match="STREAMTOKEN_BROKER_TLS_CA"):
        broker_tls(tmp_path / "tls", ("localhost",), RuntimeSettings(env="prod"))
    given = ensure_dev_tls(tmp_path / "given")
    monkeypatch.setenv("STREAMTOKEN_BROKER_TLS_CA", str(given.ca_cert))
    monkeypatch.setenv("STREAMTOKEN_BROKER_TLS_KEYSTORE", str(given.keystore))
    assert broker_tls(tmp_path / "tls", ("localhost",), RuntimeSettings(env="prod")) == given


def test_missing_java_and_missing_maven_say_what_to_install(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "no-jdk"))
    with pytest.raises(BrokerError, match=r"Java 17 or newer .* install it") as java:
        java_binary()
    assert str(java.value).count(". ") == 0  # one sentence
    monkeypatch.setenv("STREAMTOKEN_KAFKA_CACHE", str(tmp_path / "cache"))
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(BrokerError, match=r"Maven is missing .* \(apt-get install maven\)"):
        ensure_jars()


def test_cluster_ids_never_start_with_a_dash() -> None:
    from shared.kafka_broker import _random_cluster_id

    ids = [_random_cluster_id() for _ in range(2000)]  # about 1 in 64 would start with "-" otherwise
    assert not [i for i in ids if i.startswith("-")]
    assert all(len(i) == 22 for i in ids)
