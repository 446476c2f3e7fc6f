"""Rotation cut-off at the broker: from the rotate call to the deactivated token's OPEN consumer refused.

    .venv/bin/python benchmarks/broker_cutoff.py [--rotations 100] [--max-seconds 600]

Starts Apache Kafka (``shared.kafka_broker``, SASL_SSL + SCRAM + StandardAuthorizer, fresh data dir) and the
real stack on it (``tests.e2e.harness.running_stack``: issuer, resolver and notifier as processes, each as its
own principal; the issuer's relay reconciles the broker's users and ACLs, ``BROKER_ACCESS=auto``). One
environment, one topic ``{env}-f1-data`` created through the Portal API, and a trickle producer (the broker's
admin) writing a record to it every 20 ms, so consumers are reading rather than idle in a long poll.

For each rotation: a plain confluent-kafka consumer is configured with the Portal API's answer for the
current Token 1 (its own SCRAM login + CA), joins a group ``{env}-readers-N`` and reads at least one record;
then the clock starts just before ``POST …/streaming-tokens/rotate`` and stops at the first authorization
error that consumer's ``poll`` reports (``TOPIC_/GROUP_AUTHORIZATION_FAILED``: its ACLs were deleted, which
the broker checks on every request). Beside it, the time until ``GET …/propagation`` says ``applied``
(polled every 10 ms) and the rotate call's own latency. Target: rotate → refused p99 <= 1 s.
"""

from __future__ import annotations

import argparse
import collections
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from broker_common import OpenConsumer, Trickle, client_config, load_average, percentile  # noqa: E402

from shared.broker import free_port  # noqa: E402
from shared.kafka_broker import ApacheKafkaBroker  # noqa: E402
from tests.e2e.harness import RunningStack, running_stack, wait_for  # noqa: E402


def portal_settings(stack: RunningStack, token: str, environment_id: str) -> dict[str, Any]:
    response = stack.client("resolver", token).get(
        f"/workspaces/{environment_id}/broker/librdkafka", headers={"X-Version": "2.0"}
    )
    response.raise_for_status()
    return dict(response.json())


def applied(stack: RunningStack, environment_id: str) -> bool:
    response = stack.issuer.get(f"/v1/environments/{environment_id}/streaming-tokens/propagation")
    return response.status_code == 200 and response.json()["broker"] == "applied"


def create_topic(stack: RunningStack, token: str, environment_id: str, name: str) -> str:
    response = stack.client("resolver", token).post(
        f"/{environment_id}/topics",
        headers={"X-Version": "2.0"},
        json={
            "name": name,
            "configuration": {
                "partitions": 1,
                "replicationFactor": None,
                "retentionInMinutes": None,
                "retentionInBytes": None,
                "cleanupPolicy": None,
            },
        },
    )
    response.raise_for_status()
    return str(response.json()["id"])


def summary(name: str, values: list[float]) -> str:
    ms = [v * 1000 for v in values]
    return (
        f"{name:<37} n={len(ms):>4}  p50={statistics.median(ms):8.1f} ms  p99={percentile(ms, 99):8.1f} ms  "
        f"max={max(ms):8.1f} ms"
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rotations", type=int, default=100)
    parser.add_argument("--max-seconds", type=float, default=600.0, help="stop rotating after this long")
    args = parser.parse_args()
    print(f"broker cut-off on Apache Kafka: {load_average()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp_dir:
        tmp = Path(tmp_dir)
        broker = ApacheKafkaBroker(tmp / "kafka", port=free_port()).start()
        try:
            print(f"Apache Kafka ready after {broker.ready_after_s:.1f} s (pid {broker.pid})", flush=True)
            (tmp / "stack").mkdir()
            with running_stack(broker, tmp / "stack") as stack:
                run(stack, broker, args)
        finally:
            broker.stop()
    print(f"done: {load_average()}")


def resolves(stack: RunningStack, token: str) -> Callable[[], bool]:
    return lambda: stack.whoami(token) == 200


def run(stack: RunningStack, broker: ApacheKafkaBroker, args: argparse.Namespace) -> None:
    env_id = stack.create_environment("cutoff")
    wait_for("the environment applied at the broker", lambda: applied(stack, env_id), timeout=60)
    tokens = stack.tokens(env_id)
    for slot in ("token_1", "token_2"):
        wait_for("the resolver to learn the tokens", resolves(stack, tokens[slot]["token"]))
    topic = create_topic(stack, tokens["token_1"]["token"], env_id, "f1-data")
    trickle = Trickle(broker.admin_settings().librdkafka())
    trickle.topics.append(topic)
    refused: list[float] = []
    propagated: list[float] = []
    api: list[float] = []
    errors: collections.Counter[str] = collections.Counter()
    missed = 0
    stop_at = time.monotonic() + args.max_seconds
    try:
        for i in range(args.rotations):
            if time.monotonic() > stop_at:
                print(f"stopped after {i} rotations (--max-seconds {args.max_seconds:.0f})")
                break
            old = tokens["token_1"]
            consumer = OpenConsumer(
                client_config(portal_settings(stack, old["token"], env_id)), topic, f"{env_id}-readers-{i}"
            )
            try:
                consumer.wait_reading()
                started = time.monotonic()
                response = stack.issuer.post(f"/v1/environments/{env_id}/streaming-tokens/rotate")
                answered = time.monotonic()
                response.raise_for_status()
                tokens = response.json()
                deadline = answered + 30
                while not applied(stack, env_id) and time.monotonic() < deadline:
                    time.sleep(0.01)
                applied_at = time.monotonic()
                refused_at = consumer.wait_refused(30)
            finally:
                consumer.close()
            api.append(answered - started)
            propagated.append(applied_at - started)
            if refused_at is None:
                missed += 1
            else:
                refused.append(refused_at - started)
                errors[str(consumer.error_name)] += 1
            if (i + 1) % 10 == 0:
                print(
                    f"  {i + 1} rotations: last refused after {(refused[-1] if refused else 0) * 1000:.0f}"
                    " ms, "
                    f"{load_average()}",
                    flush=True,
                )
            new_1 = tokens["token_1"]["token"]
            wait_for("the resolver to learn the new Token 1", resolves(stack, new_1), timeout=30)
    finally:
        trickle.close()
    print(summary("rotate call (API answer)", api))
    print(summary("rotate call -> propagation applied", propagated))
    if refused:
        print(summary("rotate call -> open consumer refused", refused))
    print(f"first errors seen: {dict(errors)}; consumers never refused within 30 s: {missed}")
    if refused:
        met = percentile([v * 1000 for v in refused], 99) <= 1000 and not missed
        print(f"target p99 <= 1 s: {'met' if met else 'NOT met'}")


if __name__ == "__main__":
    main()
