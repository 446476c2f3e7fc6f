"""Shared helpers of the resolver benchmarks: a dedicated embedded broker and fast record generation."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from shared.events import Change, ChangeType, TokenRef, TokenStateChanged, encode_event
from shared.kafka import KafkaSettings, ensure_streaming_tokens_topic

ROOT = Path(__file__).resolve().parent.parent


def token_for(i: int, slot: int, real: dict[tuple[int, int], str] | None = None) -> str:
    """The token of environment ``i``: a real one where ``real`` has it, else a cheap stand-in string."""
    if real and (i, slot) in real:
        return real[(i, slot)]
    return f"bench-{i}-{slot}"


def environment_id(i: int) -> str:
    return f"org{i % 1000:04d}-project-env{i:07d}"


def record_template() -> bytes:
    """One real ``shared.events`` record whose varying fields are replaced by placeholders."""
    event = TokenStateChanged(
        environment_id="ENVID",
        org="org",
        project="project",
        environment="env",
        generation=1,
        tokens=(
            TokenRef(slot=1, token_id="tid_" + "1" * 16, fingerprint="a" * 64),
            TokenRef(slot=2, token_id="tid_" + "2" * 16, fingerprint="b" * 64),
        ),
        change=Change(type=ChangeType.CREATED, actor="bench", at=datetime.now(UTC)),
    )
    return encode_event(event)


def produce_environments(
    kafka: KafkaSettings, n: int, real: dict[tuple[int, int], str] | None = None
) -> float:
    """Produce ``n`` environments (one created record each); returns seconds taken."""
    from confluent_kafka import Producer

    ensure_streaming_tokens_topic(kafka)
    template = record_template()
    producer = Producer(
        {
            **kafka.librdkafka(),
            "linger.ms": 50,
            "batch.size": 1_000_000,
            "queue.buffering.max.messages": 500_000,
            "enable.idempotence": True,
        }
    )
    start = time.perf_counter()
    for i in range(n):
        env = environment_id(i)
        value = (
            template.replace(b"ENVID", env.encode())
            .replace(b"a" * 64, hashlib.sha256(token_for(i, 1, real).encode()).hexdigest().encode())
            .replace(b"b" * 64, hashlib.sha256(token_for(i, 2, real).encode()).hexdigest().encode())
            .replace(b"1" * 16, f"{i:016x}".encode())
            .replace(b"2" * 16, f"{i + 1 << 32:016x}".encode())
        )
        while True:
            try:
                producer.produce(kafka.topic, key=env.encode(), value=value)
                break
            except BufferError:
                producer.poll(0.05)
        if i % 20000 == 0:
            producer.poll(0)
    remaining = producer.flush(120)
    if remaining:
        raise RuntimeError(f"{remaining} records not delivered")
    return time.perf_counter() - start


def start_resolver_process(
    kafka: KafkaSettings, port: int, log_path: Path, root: Path = ROOT, **env: str
) -> subprocess.Popen[bytes]:
    """``python -m services.resolver`` from the checkout at ``root`` (another commit's, to compare)."""
    environ = {
        **os.environ,
        "STREAMTOKEN_KAFKA_BOOTSTRAP_SERVERS": kafka.bootstrap_servers,
        "STREAMTOKEN_KAFKA_TOPIC": kafka.topic,
        "STREAMTOKEN_RESOLVER_PORT": str(port),
        "STREAMTOKEN_LOG_LEVEL": "WARNING",
        "PYTHONPATH": str(root),
        **env,
    }
    with open(log_path, "wb") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "services.resolver"],
            env=environ,
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=root,
        )


def wait_ready(url: str, timeout: float, interval: float = 0.05) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            r = httpx.get(f"{url}/health/ready", timeout=2)
            if r.status_code == 200:
                body: dict[str, Any] = r.json()
                return body
        except httpx.TransportError:
            pass
        time.sleep(interval)
    raise TimeoutError(f"resolver at {url} not ready within {timeout} s")


def peak_rss_mb(pid: int) -> float:
    """VmHWM: the peak resident set size of a live process, in MB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM")
