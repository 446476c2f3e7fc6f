"""Why the replay reads with librdkafka: records/s of the candidate readers on the same topic.

    .venv/bin/python benchmarks/resolver_replay_consumers.py [--records 200000]

Produces N records (the issuer's format) to a dedicated embedded broker, then reads them all with
(1) a faust agent (stream of events, consumer group), (2) a raw aiokafka consumer (what faust runs on),
(3) a confluent-kafka (librdkafka) consumer — touching key and value only, no decoding.
"""

from __future__ import annotations

import argparse
import asyncio
import re
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from resolver_common import produce_environments

from shared.broker import EmbeddedBroker, free_port
from shared.kafka import KafkaSettings


async def read_aiokafka(bootstrap: str, topic: str, n: int) -> float:
    from aiokafka import AIOKafkaConsumer, TopicPartition

    consumer = AIOKafkaConsumer(
        bootstrap_servers=bootstrap,
        group_id=None,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        fetch_max_bytes=8 << 20,
        max_partition_fetch_bytes=4 << 20,
    )
    await consumer.start()
    partitions = [TopicPartition(topic, p) for p in consumer.partitions_for_topic(topic) or ()]
    consumer.assign(partitions)
    await consumer.seek_to_beginning(*partitions)
    started, seen = time.perf_counter(), 0
    while seen < n:
        for records in (await consumer.getmany(timeout_ms=200)).values():
            for record in records:
                _ = record.key, record.value
            seen += len(records)
    elapsed = time.perf_counter() - started
    await consumer.stop()
    return elapsed


def read_confluent(kafka: KafkaSettings, n: int) -> float:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({**kafka.librdkafka(), "group.id": uuid.uuid4().hex, "enable.auto.commit": False})
    partitions = consumer.list_topics(kafka.topic, timeout=10).topics[kafka.topic].partitions
    consumer.assign([TopicPartition(kafka.topic, p, -2) for p in partitions])
    started, seen = time.perf_counter(), 0
    while seen < n:
        for message in consumer.consume(5000, 0.2):
            _ = message.key(), message.value()
            seen += 1
    elapsed = time.perf_counter() - started
    consumer.close()
    return elapsed


def faust_child(bootstrap: str, topic: str, n: int) -> None:
    """In a child process: a faust worker whose agent counts records and prints its rate."""
    import os

    import faust

    app = faust.App(
        f"bench-{uuid.uuid4().hex[:6]}",
        broker=f"kafka://{bootstrap}",
        broker_session_timeout=6.0,
        broker_heartbeat_interval=1.0,
        consumer_auto_offset_reset="earliest",
        topic_partitions=3,
        web_enabled=False,
    )
    source = app.topic(topic, key_type=bytes, value_type=bytes, value_serializer="raw")
    state: dict[str, Any] = {"seen": 0, "first": 0.0}

    async def count(stream: Any) -> None:
        async for _ in stream:
            if state["seen"] == 0:
                state["first"] = time.perf_counter()
            state["seen"] += 1
            if state["seen"] >= n:
                seconds = time.perf_counter() - state["first"]
                print(f"FAUST {seconds}", flush=True)
                os._exit(0)

    app.agent(source)(count)  # faust is untyped: applied as a call, not as a decorator mypy cannot type
    faust.Worker(app, loglevel="WARNING", quiet=True).execute_from_commandline()


def read_faust(kafka: KafkaSettings, n: int, timeout: float) -> float | None:
    import subprocess
    import sys

    child = subprocess.Popen(
        [
            sys.executable,
            __file__,
            "--faust-child",
            kafka.bootstrap_servers,
            kafka.topic,
            "--records",
            str(n),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        out, _ = child.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        child.kill()
        child.communicate()
        print(f"faust agent: did not read {n:,} records within {timeout:.0f} s")
        return None
    found = re.search(r"FAUST ([\d.]+)", out)  # faust routes the child's stdout through its logging
    return float(found.group(1)) if found else None


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--faust-timeout", type=float, default=90.0)
    parser.add_argument("--faust-child", nargs=2, metavar=("BOOTSTRAP", "TOPIC"))
    args = parser.parse_args()
    n = args.records
    if args.faust_child:
        bootstrap, topic = args.faust_child
        faust_child(bootstrap, topic, n)
        return
    with (
        tempfile.TemporaryDirectory() as tmp,
        EmbeddedBroker(port=free_port(), log_path=Path(tmp) / "broker.log") as broker,
    ):
        kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic="streaming-tokens")
        produce_environments(kafka, n)

        def report(name: str, seconds: float | None) -> None:
            if seconds is not None:
                print(f"{name}: {n / seconds:,.0f} records/s ({seconds * 1e6 / n:.1f} us/record)", flush=True)

        report("confluent-kafka (librdkafka) consumer", read_confluent(kafka, n))
        report("aiokafka consumer", asyncio.run(read_aiokafka(broker.bootstrap_servers, kafka.topic, n)))
        report("faust agent (from its first event)", read_faust(kafka, n, args.faust_timeout))


if __name__ == "__main__":
    main()
