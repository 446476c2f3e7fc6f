"""Shared helpers of the Apache Kafka benchmarks: load average, percentiles, a broker in a temporary
directory, the Portal answer as a confluent-kafka configuration, and an open consumer that records the first
error the broker sends it."""

from __future__ import annotations

import base64
import contextlib
import math
import os
import threading
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("STREAMTOKEN_ENV", "test")  # local brokers and services with dev TLS and secrets

AUTH_ERRORS = {
    "TOPIC_AUTHORIZATION_FAILED",
    "GROUP_AUTHORIZATION_FAILED",
    "SASL_AUTHENTICATION_FAILED",
    "_AUTHENTICATION",
    "CLUSTER_AUTHORIZATION_FAILED",
}


def load_average() -> str:
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f} {five:.2f} {fifteen:.2f}"


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (the value at rank ceil(q/100 * n))."""
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[min(len(ordered), rank) - 1]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def client_config(portal: dict[str, Any]) -> dict[str, Any]:
    """The Portal API's ``broker/librdkafka`` answer as confluent-kafka takes it (``ssl.ca.cert`` is base64
    PEM, as quixstreams decodes it)."""
    config = {k: v for k, v in portal.items() if k != "ssl.ca.cert"}
    config["ssl.ca.pem"] = base64.b64decode(portal["ssl.ca.cert"]).decode("ascii")
    return {**config, "socket.timeout.ms": 10000, "log_level": 0}


class OpenConsumer:
    """A consumer in a group, reading ``topic`` in its own thread (poll every 50 ms), that records when it
    got its first record and its first error (the broker refusing it)."""

    def __init__(self, config: dict[str, Any], topic: str, group: str, max_seconds: float = 120.0) -> None:
        from confluent_kafka import Consumer

        self._consumer = Consumer(
            {
                **config,
                "group.id": group,
                "auto.offset.reset": "latest",
                "enable.auto.commit": False,
                "session.timeout.ms": 10000,
                "heartbeat.interval.ms": 1000,
            }
        )
        self._consumer.subscribe([topic])
        self.first_record: float | None = None
        self.records = 0
        self.error_at: float | None = None
        self.error_name: str | None = None
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        from confluent_kafka import KafkaException

        while not self._stop.is_set() and time.monotonic() < self._deadline:
            try:
                message = self._consumer.poll(0.05)
            except KafkaException as exc:
                self._error(exc.args[0])
                return
            if message is None:
                continue
            if message.error() is not None:
                if message.error().name() in AUTH_ERRORS:
                    self._error(message.error())
                    return
                continue
            self.records += 1
            if self.first_record is None:
                self.first_record = time.monotonic()

    def _error(self, error: Any) -> None:
        self.error_at = time.monotonic()
        self.error_name = error.name()

    def wait_reading(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while self.first_record is None and time.monotonic() < deadline and self.error_at is None:
            time.sleep(0.02)
        if self.first_record is None:
            raise TimeoutError(f"the consumer read nothing in {timeout} s (error: {self.error_name})")

    def wait_refused(self, timeout: float = 30.0) -> float | None:
        """The monotonic time of the first authorization error, or None within ``timeout``."""
        deadline = time.monotonic() + timeout
        while self.error_at is None and time.monotonic() < deadline and self._thread.is_alive():
            time.sleep(0.005)
        return self.error_at

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        closer = threading.Thread(target=self._consumer.close, daemon=True)
        closer.start()
        closer.join(10)


class Trickle:
    """A producer (as the broker's admin) writing one small record to each topic every ``interval`` s, in its
    own thread, so the consumers under test are reading, not idle in a long poll."""

    def __init__(self, config: dict[str, Any], interval: float = 0.02, max_seconds: float = 1800.0) -> None:
        from confluent_kafka import Producer

        self._producer = Producer({**config, "linger.ms": 0, "log_level": 0})
        self.topics: list[str] = []
        self._interval = interval
        self._stop = threading.Event()
        self._deadline = time.monotonic() + max_seconds
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set() and time.monotonic() < self._deadline:
            for topic in list(self.topics):
                with contextlib.suppress(BufferError):
                    self._producer.produce(topic, value=b"tick")
            self._producer.poll(0)
            self._stop.wait(self._interval)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._producer.flush(5)


def jvm_heap_mb(pid: int) -> tuple[float, float] | None:
    """(used, committed) MB of a JVM's heap from ``jcmd <pid> GC.heap_info`` (the JDK's jcmd), or None."""
    import re
    import shutil
    import subprocess

    jcmd = shutil.which("jcmd")
    if jcmd is None:
        found = sorted(Path("/usr/lib/jvm").glob("*/bin/jcmd"))
        if not found:
            return None
        jcmd = str(found[0])
    out = subprocess.run(
        [jcmd, str(pid), "GC.heap_info"], capture_output=True, text=True, timeout=30, check=False
    ).stdout
    match = re.search(r"heap\s+total (\d+)K, used (\d+)K", out)
    if match is None:
        return None
    return int(match.group(2)) / 1024, int(match.group(1)) / 1024


def jvm_gc(pid: int) -> None:
    """A full GC (``jcmd <pid> GC.run``), so the heap used afterwards is what is live."""
    import shutil
    import subprocess

    jcmd = shutil.which("jcmd") or "jcmd"
    subprocess.run([jcmd, str(pid), "GC.run"], capture_output=True, timeout=60, check=False)
