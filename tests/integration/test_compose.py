import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from shared.broker_access import ISSUER_USER, NOTIFIER_USER, RESOLVER_USER
from shared.kafka_broker import KAFKA_VERSION, ApacheKafkaBroker, render_compose_config

ROOT = Path(__file__).resolve().parents[2]


def _properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line.strip() and not line.startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def test_compose_file_declares_kafka_postgres_and_the_three_services_with_health_checks() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka-config", "kafka", "kafka-acls", "postgres", "issuer", "resolver", "notifier"} <= set(
        services
    )
    for name in ("kafka", "postgres", "issuer", "resolver", "notifier"):
        assert "healthcheck" in services[name], name
    kafka = services["kafka"]
    assert kafka["image"] == f"apache/kafka:{KAFKA_VERSION}"  # the version the tests run
    assert "/kafka-config/server.properties" in " ".join(kafka["command"])
    assert services["kafka-config"]["command"][:3] == ["streamtoken", "broker", "render"]
    assert services["kafka-acls"]["command"][:3] == ["streamtoken", "broker", "grant"]
    users = {"issuer": ISSUER_USER, "resolver": RESOLVER_USER, "notifier": NOTIFIER_USER}
    for name, user in users.items():
        env = services[name]["environment"]
        assert env["STREAMTOKEN_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        assert env["STREAMTOKEN_KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
        assert env["STREAMTOKEN_KAFKA_SASL_USERNAME"] == user  # each service as its own principal
        assert env["STREAMTOKEN_KAFKA_SSL_CA_LOCATION"] == "/kafka-config/tls/ca.pem"
        assert services[name]["build"] == "."


def test_compose_runs_the_broker_configuration_the_tests_run(
    kafka_broker: ApacheKafkaBroker, tmp_path: Path
) -> None:
    """One template: what ``streamtoken broker render`` writes for compose has the same settings as the
    session's broker, differing only in host names, paths and secrets."""
    rendered = _properties(render_compose_config(tmp_path, host="kafka").read_text())
    tested = _properties((kafka_broker.data_dir / "server.properties").read_text())
    assert set(rendered) == set(tested)
    local_only = {"listeners", "advertised.listeners", "controller.quorum.bootstrap.servers", "log.dirs",
                  "ssl.keystore.location", "ssl.truststore.location",
                  "listener.name.controller.plain.sasl.jaas.config",
                  "listener.name.client.scram-sha-256.sasl.jaas.config",
                  "listener.name.client.scram-sha-512.sasl.jaas.config"}  # fmt: skip
    assert {k: v for k, v in rendered.items() if k not in local_only} == {
        k: v for k, v in tested.items() if k not in local_only
    }
    assert rendered["listener.security.protocol.map"] == "CLIENT:SASL_SSL,CONTROLLER:SASL_PLAINTEXT"
    assert rendered["allow.everyone.if.no.acl.found"] == "false"
    assert rendered["authorizer.class.name"].endswith("StandardAuthorizer")
    assert rendered["advertised.listeners"] == "CLIENT://kafka:9092"
    for secret in ("server.properties", "scram-args", "admin.properties", "credentials.json"):
        assert (tmp_path / secret).stat().st_mode & 0o077 == 0, secret
    assert "name=streamtoken-issuer" in (tmp_path / "scram-args").read_text()


def _compose_available() -> bool:
    if shutil.which("docker") is None:
        return False
    return subprocess.run(["docker", "compose", "version"], capture_output=True).returncode == 0


@pytest.mark.skipif(not _compose_available(), reason="the docker client with the compose plugin is absent")
def test_docker_compose_config_accepts_the_file() -> None:
    result = subprocess.run(
        ["docker", "compose", "config", "--quiet"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={
            "STREAMTOKEN_ISSUER_ENCRYPTION_KEY": "x",
            "STREAMTOKEN_ISSUER_JWT_SECRET": "y",
            **{
                f"STREAMTOKEN_BROKER_PASSWORD_{user}": "z"
                for user in ("ADMIN", "BROKER", "CONTROLLER", "ISSUER", "RESOLVER", "NOTIFIER")
            },
            "PATH": "/usr/bin:/bin",
        },
    )
    assert result.returncode == 0, result.stderr
