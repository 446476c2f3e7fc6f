"""Propagation: from a rotate event being produced to the old Token 1 being refused by the resolver.

    .venv/bin/python benchmarks/resolver_propagation.py [--rotations 200]

A dedicated embedded broker and `python -m services.resolver` as a process. For each rotation: the
clock starts just before the record is handed to the producer (linger.ms=0, as the issuer's relay
publishes right after commit) and stops at the first `GET /v1/whoami` with the old Token 1 answering
401 (polled back-to-back over one keep-alive connection). Target: p99 <= 100 ms.
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time
from pathlib import Path

import httpx
from resolver_common import start_resolver_process, wait_ready

from shared.broker import EmbeddedBroker, free_port
from shared.events import encode_event, encode_key
from shared.kafka import KafkaSettings, ensure_streaming_tokens_topic


def main() -> None:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from tests.unit.resolver.factories import Env

    parser = argparse.ArgumentParser()
    parser.add_argument("--rotations", type=int, default=200)
    parser.add_argument("--environments", type=int, default=20)
    args = parser.parse_args()
    from confluent_kafka import Producer

    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(port=free_port(), log_path=Path(tmp) / "broker.log") as broker,
    ):
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic="streaming-tokens")
        ensure_streaming_tokens_topic(kafka)
        producer = Producer({**kafka.librdkafka(), "linger.ms": 0, "enable.idempotence": True})
        envs = [Env(f"acme-telemetry-env{i}") for i in range(args.environments)]
        for env in envs:
            producer.produce(kafka.topic, key=encode_key(env.environment_id), value=encode_event(env.event()))
        producer.flush(30)
        port = free_port()
        url = f"http://127.0.0.1:{port}"
        process = start_resolver_process(kafka, port, Path(tmp) / "resolver.log")
        samples: list[float] = []
        try:
            wait_ready(url, 60)
            with httpx.Client(base_url=url) as client:
                for n in range(args.rotations):
                    env = envs[n % len(envs)]
                    old = env.token_1
                    assert (
                        client.get("/v1/whoami", headers={"Authorization": f"Bearer {old}"}).status_code
                        == 200
                    )
                    value = encode_event(env.rotate())
                    started = time.perf_counter()
                    producer.produce(kafka.topic, key=encode_key(env.environment_id), value=value)
                    producer.poll(0)
                    deadline = started + 10
                    while True:
                        r = client.get("/v1/whoami", headers={"Authorization": f"Bearer {old}"})
                        if r.status_code == 401:
                            samples.append((time.perf_counter() - started) * 1000)
                            break
                        if time.perf_counter() > deadline:
                            raise TimeoutError(f"rotation {n} not applied within 10 s")
                    producer.flush(10)
                    promoted = client.get("/v1/whoami", headers={"Authorization": f"Bearer {env.token_1}"})
                    assert promoted.json()["slot"] == 1
        finally:
            process.terminate()
            process.wait(30)
    samples.sort()
    p99 = samples[max(math.ceil(0.99 * len(samples)) - 1, 0)]
    print(
        f"{len(samples)} rotations: p50 {statistics.median(samples):.1f} ms, p99 {p99:.1f} ms, "
        f"max {samples[-1]:.1f} ms (rotate event produced -> old Token 1 refused)"
    )


if __name__ == "__main__":
    main()
