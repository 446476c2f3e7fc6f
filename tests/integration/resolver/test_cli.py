"""`python -m services.resolver` as a process, `streamtoken topics resolve`, and logs that hold no token."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx
from typer.testing import CliRunner

from cli.main import app
from shared.broker import free_port
from shared.kafka import KafkaSettings
from shared.tokens import fingerprint, generate_token
from tests.integration.resolver.conftest import produce, wait_ready
from tests.unit.resolver.factories import Env


def test_service_process_cli_and_token_free_logs(kafka_settings: KafkaSettings, tmp_path: Path) -> None:
    env = Env("acme-telemetry-dev")
    produce(kafka_settings, [(env.environment_id, env.event())])
    port = free_port()
    log_path = tmp_path / "resolver.log"
    environ = {
        **os.environ,
        **kafka_settings.environment(),
        "STREAMTOKEN_RESOLVER_PORT": str(port),
        "STREAMTOKEN_RESOLVER_PUBLIC_BOOTSTRAP_SERVERS": "kafka.example.com:9093",
        "STREAMTOKEN_DATA_DIR": str(tmp_path),
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.resolver"], env=environ, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        url = f"http://127.0.0.1:{port}"
        try:
            wait_ready(url, 30)
        except Exception:
            raise AssertionError(log_path.read_text()) from None
        runner = CliRunner()
        result = runner.invoke(
            app,
            ["topics", "resolve", "f1-data", "--resolver-url", url],
            env={"Quix__Sdk__Token": env.token_1},
        )
        assert result.exit_code == 0, result.output
        assert result.output.strip() == "acme-telemetry-dev-f1-data"
        unknown = generate_token()
        result = runner.invoke(
            app, ["topics", "resolve", "f1-data", "--resolver-url", url, "--token", unknown]
        )
        assert result.exit_code == 3
        assert "401" in result.output
        broker = httpx.get(
            f"{url}/workspaces/acme-telemetry-dev/broker/librdkafka",
            headers={"Authorization": f"Bearer {env.token_1}"},
        ).json()
        assert broker["bootstrap.servers"] == "kafka.example.com:9093"
    finally:
        process.terminate()
        process.wait(15)
    logs = log_path.read_text()
    assert "replica_ready" in logs
    assert fingerprint(unknown) in logs  # refusals are logged by fingerprint...
    assert unknown not in logs  # ...never by token
    assert env.token_1 not in logs
