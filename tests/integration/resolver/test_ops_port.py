"""``python -m services.resolver`` with an ops port and token (SECURITY_REVIEW finding 15): one server
listens on both ports; /metrics, /docs and /openapi.json answer only on the ops port, only with the token."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import httpx

from shared.broker import free_port
from shared.kafka import KafkaSettings
from tests.integration.resolver.conftest import produce, wait_ready
from tests.unit.resolver.factories import Env


def test_ops_endpoints_on_their_own_port_behind_a_token(
    kafka_settings: KafkaSettings, tmp_path: Path
) -> None:
    env = Env("acme-telemetry-dev")
    produce(kafka_settings, [(env.environment_id, env.event())])
    port, ops_port = free_port(), free_port()
    log_path = tmp_path / "resolver.log"
    environ = {
        **os.environ,
        **kafka_settings.environment(),
        "STREAMTOKEN_RESOLVER_PORT": str(port),
        "STREAMTOKEN_RESOLVER_OPS_PORT": str(ops_port),
        "STREAMTOKEN_RESOLVER_OPS_TOKEN": "ops-token-for-prometheus",
    }
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.resolver"], env=environ, stdout=log, stderr=subprocess.STDOUT
        )
    try:
        url, ops = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ops_port}"
        try:
            wait_ready(url, 60)
        except Exception:
            raise AssertionError(log_path.read_text()) from None
        token = {"Authorization": "Bearer ops-token-for-prometheus"}
        for path in ("/metrics", "/docs", "/openapi.json"):
            assert httpx.get(url + path, headers=token).status_code == 404, path
            assert httpx.get(ops + path).status_code == 401, path
            assert httpx.get(ops + path, headers=token).status_code == 200, path
        assert "streamtoken_resolver_lookups_total" in httpx.get(ops + "/metrics", headers=token).text
        whoami = httpx.get(url + "/v1/whoami", headers={"Authorization": f"Bearer {env.token_1}"})
        assert whoami.json()["environment_id"] == "acme-telemetry-dev"
    finally:
        process.terminate()
        process.wait(15)
    assert "ops-token-for-prometheus" not in log_path.read_text()
