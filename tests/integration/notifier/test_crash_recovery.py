"""SIGKILL the notifier (a real ``python -m services.notifier`` process) in the middle of a fan-out."""

import os
import signal
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest

from shared.broker import free_port
from shared.kafka import KafkaSettings
from tests.integration.notifier.support import (
    Receiver,
    Resolver,
    new_environment,
    produce,
)
from tests.support import wait_until

ROOT = Path(__file__).resolve().parents[3]
SUBSCRIPTIONS = 500


@pytest.fixture
def processes() -> Iterator[list[subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []
    yield started
    for process in started:
        if process.poll() is None:
            process.kill()
            process.wait(10)


def test_a_killed_notifier_resumes_and_every_subscription_gets_the_rotation_exactly_once(
    serve_app: Callable[..., str],
    resolver_url: str,
    resolver: Resolver,
    kafka_settings: KafkaSettings,
    tmp_path: Path,
    processes: list[subprocess.Popen[bytes]],
) -> None:
    receiver = Receiver(delay=0.04)
    receiver_url = serve_app(receiver)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env_vars = {
        **os.environ,
        "STREAMTOKEN_ENV": "test",
        "STREAMTOKEN_DATA_DIR": str(tmp_path),
        "STREAMTOKEN_LOG_LEVEL": "WARNING",
        **kafka_settings.environment(),
        "STREAMTOKEN_KAFKA_SESSION_TIMEOUT_MS": "2000",
        "STREAMTOKEN_NOTIFIER_PORT": str(port),
        "STREAMTOKEN_NOTIFIER_RESOLVER_URL": resolver_url,
        "STREAMTOKEN_NOTIFIER_CONSUMER_GROUP": f"notifier-{kafka_settings.topic}",
        "STREAMTOKEN_NOTIFIER_WORKERS": "4",
        "STREAMTOKEN_NOTIFIER_LEASE_SECONDS": "3",
        "STREAMTOKEN_NOTIFIER_REQUEST_TIMEOUT_SECONDS": "2",
        "STREAMTOKEN_NOTIFIER_POLL_INTERVAL_SECONDS": "0.1",
        "STREAMTOKEN_NOTIFIER_RESTART_CONCURRENCY": "0",
    }

    def start() -> None:
        process = subprocess.Popen(
            [sys.executable, "-m", "services.notifier"],
            cwd=ROOT,
            env=env_vars,
            stdout=subprocess.DEVNULL,
            stderr=open(tmp_path / f"notifier-{len(processes)}.log", "wb"),  # noqa: SIM115
        )
        processes.append(process)

        def ready() -> bool:
            assert process.poll() is None, "the notifier exited while starting"
            try:
                return httpx.get(f"{base}/health/ready", timeout=1).status_code == 200
            except httpx.HTTPError:
                return False

        wait_until(ready, 60, "the notifier process to be ready", interval=0.2)

    start()
    env = new_environment(resolver)
    with httpx.Client(base_url=base, headers=env.auth(), timeout=10) as api:
        for i in range(SUBSCRIPTIONS):
            body = {"deployment_id": f"d{i}", "url": f"{receiver_url}/d{i}", "action": "reload"}
            assert api.post("/v1/subscriptions", json=body).status_code == 201
    produce(kafka_settings, env.rotate())

    wait_until(lambda: len(receiver.requests) >= 40, 60, "the fan-out to start")
    processes[0].send_signal(signal.SIGKILL)
    processes[0].wait(10)
    reached_before_kill = len({r.path for r in receiver.requests})
    assert 0 < reached_before_kill < SUBSCRIPTIONS, "the kill did not land in the middle of the fan-out"

    start()
    paths = [f"/d{i}" for i in range(SUBSCRIPTIONS)]
    wait_until(lambda: all(receiver.at(p) for p in paths), 120, "every subscription after the restart", 0.2)
    with httpx.Client(base_url=base, headers=env.auth(), timeout=10) as api:

        def all_recorded() -> bool:
            (rotation,) = api.get("/v1/rotations").json()["rotations"]
            return bool(rotation["notified"] == SUBSCRIPTIONS)

        wait_until(all_recorded, 30, "all deliveries to be recorded as delivered", 0.2)
        (rotation,) = api.get("/v1/rotations").json()["rotations"]
    assert (rotation["pending"], rotation["dead"]) == (0, 0)
    # Receivers deduplicating on webhook-id see each notification exactly once.
    ids_per_subscription = {p: receiver.ids(p) for p in paths}
    assert all(len(ids) == 1 for ids in ids_per_subscription.values())
    assert len(set().union(*ids_per_subscription.values())) == SUBSCRIPTIONS
    # At-least-once underneath: only deliveries in flight at the kill may have been sent twice.
    assert len(receiver.requests) - SUBSCRIPTIONS <= 50
