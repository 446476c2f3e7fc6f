"""Fan-out of one rotation to 10,000 subscriptions: deliveries per second and the notifier's peak memory.

Runs, all on loopback: the embedded broker (or ``STREAMTOKEN_KAFKA_BOOTSTRAP_SERVERS`` if set), a fast ASGI
webhook receiver in its own process (uvicorn), and the notifier as ``python -m services.notifier`` on SQLite.
The subscriptions are written straight into the notifier's database (registration is not what is measured);
then one ``rotated`` event is produced and the clock runs until the receiver has seen every webhook-id.

    .venv/bin/python benchmarks/notifier_fanout.py [--subscriptions 10000] [--workers 128]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import psutil

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from shared.broker import EmbeddedBroker, free_port  # noqa: E402
from shared.events import Change, ChangeType, TokenRef, TokenStateChanged, encode_event, encode_key  # noqa: E402
from shared.kafka import KafkaSettings, ensure_streaming_tokens_topic  # noqa: E402
from shared.tokens import fingerprint, generate_token, new_token_id  # noqa: E402

TIME_LIMIT = 240.0


# --- the receiver process ---------------------------------------------------------------------------------


def run_receiver(port: int) -> None:
    """A minimal ASGI receiver: 200 for every webhook, GET /count answers what it has seen."""
    import uvicorn

    seen: set[str] = set()
    stats = {"requests": 0, "first": 0.0, "last": 0.0}

    async def app(scope: dict[str, Any], receive: Callable[[], Awaitable[Any]], send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        if scope["method"] == "GET":
            body = json.dumps({"distinct": len(seen), **stats}).encode()
        else:
            now = time.time()
            stats["requests"] += 1
            stats["first"] = stats["first"] or now
            stats["last"] = now
            for key, value in scope["headers"]:
                if key == b"webhook-id":
                    seen.add(value.decode())
            body = b'{"ok":true}'
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})

    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        log_level="warning",
        access_log=False,
        http="httptools",
        loop="uvloop",
    )


# --- the benchmark ----------------------------------------------------------------------------------------


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.05)
    raise SystemExit(f"timed out after {timeout:g} s waiting for {what}")


def _http_ok(url: str) -> bool:
    try:
        return httpx.get(url, timeout=1).status_code == 200
    except httpx.HTTPError:
        return False


def _seed_subscriptions(database_url: str, environment_id: str, receiver_url: str, count: int) -> None:
    from sqlalchemy import insert

    from services.notifier.store import S, Store, new_secret

    store = Store.from_url(database_url)
    store.create_tables()
    now = time.time()
    secret = new_secret()
    rows = [
        {
            "id": f"sub_bench{i:06d}",
            "environment_id": environment_id,
            "deployment_id": f"deployment-{i}",
            "url": f"{receiver_url}/hooks/{i}",
            "action": "reload",
            "secret": secret,
            "enabled": True,
            "last_notified_generation": 1,
            "acked_generation": 1,
            "created_at": now,
            "updated_at": now,
        }
        for i in range(count)
    ]
    with store.engine.begin() as conn:
        conn.execute(insert(S), rows)
    store.dispose()


def _rotation(environment_id: str) -> TokenStateChanged:
    org, project, name = environment_id.split("-")
    return TokenStateChanged(
        environment_id=environment_id,
        org=org,
        project=project,
        environment=name,
        generation=2,
        tokens=tuple(
            TokenRef(slot=slot, token_id=new_token_id(), fingerprint=fingerprint(generate_token()))
            for slot in (1, 2)
        ),
        change=Change(type=ChangeType.ROTATED, actor="bench", at=datetime.now(UTC), rotation_id="rot_bench"),
    )


def _produce(kafka: KafkaSettings, event: TokenStateChanged) -> None:
    from confluent_kafka import Producer

    producer = Producer(kafka.librdkafka())
    producer.produce(kafka.topic, key=encode_key(event.environment_id), value=encode_event(event))
    producer.flush(10)


def _delivered(database_url: str) -> int:
    from services.notifier.store import Store

    store = Store.from_url(database_url)
    try:
        return store.count_by_status().get("delivered", 0)
    finally:
        store.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--subscriptions", type=int, default=10_000)
    parser.add_argument("--workers", type=int, default=128, help="STREAMTOKEN_NOTIFIER_WORKERS")
    parser.add_argument("--receiver", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.receiver:
        run_receiver(args.receiver)
        return

    started = time.monotonic()
    children: list[subprocess.Popen[bytes]] = []
    broker: EmbeddedBroker | None = None
    with tempfile.TemporaryDirectory(prefix="notifier-bench-") as tmp:
        try:
            bootstrap = os.environ.get("STREAMTOKEN_KAFKA_BOOTSTRAP_SERVERS")
            if not bootstrap:
                broker = EmbeddedBroker(port=free_port()).start()
                bootstrap = broker.bootstrap_servers
            kafka = KafkaSettings(
                bootstrap_servers=bootstrap, topic=f"bench-{int(time.time())}", session_timeout_ms=3000
            )
            ensure_streaming_tokens_topic(kafka)

            receiver_port = free_port()
            receiver_url = f"http://127.0.0.1:{receiver_port}"
            children.append(subprocess.Popen([sys.executable, __file__, "--receiver", str(receiver_port)]))
            _wait(lambda: _http_ok(f"{receiver_url}/count"), 30, "the receiver")

            environment_id = "bench-fanout-prod"
            database_url = f"sqlite:///{tmp}/notifier.db"
            _seed_subscriptions(database_url, environment_id, receiver_url, args.subscriptions)

            port = free_port()
            env = {
                **os.environ,
                "STREAMTOKEN_ENV": "test",
                "STREAMTOKEN_DATA_DIR": tmp,
                "STREAMTOKEN_LOG_LEVEL": "WARNING",
                "STREAMTOKEN_KAFKA_BOOTSTRAP_SERVERS": bootstrap,
                "STREAMTOKEN_KAFKA_TOPIC": kafka.topic,
                "STREAMTOKEN_KAFKA_SESSION_TIMEOUT_MS": "3000",
                "STREAMTOKEN_NOTIFIER_PORT": str(port),
                "STREAMTOKEN_NOTIFIER_DATABASE_URL": database_url,
                "STREAMTOKEN_NOTIFIER_WORKERS": str(args.workers),
                "STREAMTOKEN_NOTIFIER_RESTART_CONCURRENCY": "0",
            }
            notifier = subprocess.Popen([sys.executable, "-m", "services.notifier"], cwd=ROOT, env=env)
            children.append(notifier)
            _wait(lambda: _http_ok(f"http://127.0.0.1:{port}/health/ready"), 60, "the notifier")
            process = psutil.Process(notifier.pid)
            peak_rss = process.memory_info().rss
            idle_rss = peak_rss

            produced_at = time.time()
            _produce(kafka, _rotation(environment_id))
            stats: dict[str, Any] = {}

            def all_received() -> bool:
                nonlocal peak_rss, stats
                peak_rss = max(peak_rss, process.memory_info().rss)
                stats = httpx.get(f"{receiver_url}/count", timeout=5).json()
                return bool(stats["distinct"] >= args.subscriptions)

            _wait(all_received, TIME_LIMIT - (time.monotonic() - started), "every webhook")
            _wait(lambda: _delivered(database_url) >= args.subscriptions, 60, "the results to be recorded")
            recorded_at = time.time()
            peak_rss = max(peak_rss, process.memory_info().rss)
        finally:
            for child in children:
                child.terminate()
            for child in children:
                try:
                    child.wait(10)
                except subprocess.TimeoutExpired:
                    child.kill()
            if broker is not None:
                broker.stop()

    sending = stats["last"] - stats["first"]
    print(f"subscriptions                  {args.subscriptions}")
    print(f"webhook requests received      {stats['requests']} ({stats['distinct']} distinct webhook-ids)")
    print(f"produce -> first webhook       {stats['first'] - produced_at:.2f} s")
    print(f"first -> last webhook          {sending:.2f} s")
    print(f"deliveries per second (send)   {args.subscriptions / sending:,.0f} /s")
    print(f"produce -> last webhook        {stats['last'] - produced_at:.2f} s")
    print(f"end to end incl. recording     {args.subscriptions / (recorded_at - produced_at):,.0f} /s")
    print(f"notifier RSS idle / peak       {idle_rss / 2**20:.0f} MiB / {peak_rss / 2**20:.0f} MiB")
    print(f"cpu cores                      {psutil.cpu_count()} ; workers {args.workers}")


if __name__ == "__main__":
    main()
