import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def test_compose_file_declares_kafka_postgres_and_the_three_services_with_health_checks() -> None:
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    services = compose["services"]
    assert {"kafka", "postgres", "issuer", "resolver", "notifier"} <= set(services)
    for name in ("kafka", "postgres", "issuer", "resolver", "notifier"):
        assert "healthcheck" in services[name], name
    listeners = services["kafka"]["environment"]["KAFKA_ADVERTISED_LISTENERS"]
    assert "INTERNAL://kafka:29092" in listeners
    assert "EXTERNAL://127.0.0.1:9092" in listeners
    for name in ("issuer", "resolver", "notifier"):
        assert services[name]["environment"]["STREAMTOKEN_KAFKA_BOOTSTRAP_SERVERS"] == "kafka:29092"
        assert services[name]["build"] == "."


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
            "PATH": "/usr/bin:/bin",
        },
    )
    assert result.returncode == 0, result.stderr
