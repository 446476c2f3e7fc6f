"""Lookup throughput and latency of `GET /v1/topics/{name}` against a bare ASGI hello-world app.

    .venv/bin/python benchmarks/resolver_lookup.py [--duration 10] [--connections 32] [--rounds 2]
        [--broker kafka|embedded|none]

Both apps run in their own process under uvicorn with the same settings (one worker, uvloop, httptools,
no access log) on loopback, one after the other, loaded by `wrk` (apt-get install wrk). The resolver's
table holds 100,000 environments and the request carries a real streaming token (so each request does
the checksum check, a SHA-256 and the table lookup). Target: resolver >= 0.5x the bare app's requests/s.

Where the table comes from (``--broker``): ``kafka`` (default) starts Apache Kafka (SASL_SSL + SCRAM),
produces the 100,000 environments to its control topic as the broker's admin, and the resolver process
runs its real replica on it as its own principal (``streamtoken-resolver``), caught up before the load;
``embedded`` does the same on the Tansu fallback (PLAINTEXT); ``none`` fills the table in-process with no
replica (how the figures before issue 9 were taken). The request path is the same in all three.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from broker_common import load_average

from shared.broker import EmbeddedBroker, free_port

ENVIRONMENTS = 100_000
TOPIC = "streaming-tokens"


async def hello_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """The bare ASGI baseline: a fixed small JSON body."""
    if scope["type"] != "http":
        return
    await send(
        {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]}
    )
    await send({"type": "http.response.body", "body": b'{"hello":"world"}'})


def resolver_app(token: str) -> Any:
    from services.resolver.bootstrap import build_app
    from services.resolver.replica import Status
    from services.resolver.settings import ResolverSettings
    from services.resolver.table import TokenTable
    from shared.tokens import fingerprint

    table = TokenTable()
    for i in range(ENVIRONMENTS):
        table.apply(
            f"org{i % 100}-project-env{i}",
            1,
            (
                (1, f"tid_{i:016x}", fingerprint(f"a{i}"), None),
                (2, f"tid_{i:015x}b", fingerprint(f"b{i}"), None),
            ),
        )
    table.apply(
        "acme-telemetry-prod",
        1,
        ((1, "tid_bench1", fingerprint(token), None), (2, "tid_bench2", "0" * 64, None)),
    )
    return build_app(ResolverSettings(), table=table, start_replica=False, status=lambda: Status.READY)


def replica_app() -> Any:
    """The resolver as ``python -m services.resolver`` builds it: its replica reads the broker named by the
    ``STREAMTOKEN_KAFKA_*`` variables."""
    from services.resolver.bootstrap import build_app
    from services.resolver.settings import ResolverSettings

    return build_app(ResolverSettings())


def serve(kind: str, port: int, token: str) -> None:
    import uvicorn

    app = hello_app if kind == "hello" else replica_app() if kind == "replica" else resolver_app(token)
    uvicorn.run(
        app,
        host="127.0.0.1",
        port=port,
        workers=1,
        loop="uvloop",
        http="httptools",
        access_log=False,
        log_level="warning",
        lifespan="on",
    )


def _wait(url: str, headers: dict[str, str]) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            if httpx.get(url, headers=headers).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.1)
    raise TimeoutError(url)


def _wrk(url: str, token: str, duration: int, connections: int) -> dict[str, float]:
    out = subprocess.run(
        [
            "wrk",
            "-t2",
            f"-c{connections}",
            f"-d{duration}s",
            "--latency",
            "-H",
            f"Authorization: Bearer {token}",
            url,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=duration + 60,
    ).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"{errors.group(1)} failed responses:\n{out}")

    def ms(label: str) -> float:
        value, unit = re.search(rf"{label}%\s+([\d.]+)(us|ms|s)", out).groups()  # type: ignore[union-attr]
        return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]

    return {"rps": rps, "p50": ms("50"), "p99": ms("99")}


def run(
    kind: str,
    token: str,
    duration: int,
    connections: int,
    env: dict[str, str] | None = None,
    environment: str = "acme-telemetry-prod",
) -> dict[str, float]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--port", str(port), "--token", token],
        env={**os.environ, "STREAMTOKEN_LOG_LEVEL": "WARNING", **(env or {})},
    )
    try:
        path = "/" if kind == "hello" else "/v1/topics/f1-data"
        url = f"http://127.0.0.1:{port}{path}"
        _wait(url, {"Authorization": f"Bearer {token}"})
        if kind != "hello":
            body = httpx.get(url, headers={"Authorization": f"Bearer {token}"}).json()
            assert body == {"topic_id": f"{environment}-f1-data", "environment_id": environment}, body
        _wrk(url, token, 2, connections)  # warm-up
        return _wrk(url, token, duration, connections)
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", choices=["hello", "resolver", "replica"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--token")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--broker", choices=["kafka", "embedded", "none"], default="kafka")
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.token)
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    from shared.tokens import generate_token

    token = generate_token()
    print(f"resolver lookup, table from broker {args.broker}: {load_average()}", flush=True)
    with tempfile.TemporaryDirectory() as tmp:
        if args.broker == "none":
            rounds(args, token, "resolver", {}, "acme-telemetry-prod")
            return
        from resolver_common import environment_id, produce_environments

        from shared.broker_access import RESOLVER_USER
        from shared.kafka import KafkaSettings
        from shared.kafka_broker import ApacheKafkaBroker

        index = ENVIRONMENTS // 2
        broker: EmbeddedBroker | ApacheKafkaBroker
        if args.broker == "kafka":
            broker = ApacheKafkaBroker(Path(tmp) / "kafka", port=free_port())
        else:
            broker = EmbeddedBroker(port=free_port())
        with broker:
            if isinstance(broker, ApacheKafkaBroker):
                broker.grant_services(TOPIC)
                kafka = broker.admin_settings(topic=TOPIC)
                env = broker.environment_for(RESOLVER_USER, topic=TOPIC)
            else:
                kafka = KafkaSettings(bootstrap_servers=broker.bootstrap_servers, topic=TOPIC)
                env = {
                    "STREAMTOKEN_KAFKA_BOOTSTRAP_SERVERS": broker.bootstrap_servers,
                    "STREAMTOKEN_KAFKA_TOPIC": TOPIC,
                }
            seconds = produce_environments(kafka, ENVIRONMENTS, {(index, 1): token})
            print(f"produced {ENVIRONMENTS:,} environments to {args.broker} in {seconds:.1f} s", flush=True)
            rounds(args, token, "replica", env, environment_id(index))


def rounds(args: argparse.Namespace, token: str, kind: str, env: dict[str, str], environment: str) -> None:
    ratios: list[float] = []
    totals = {"hello": 0.0, "resolver": 0.0}
    for round_ in range(1, args.rounds + 1):
        hello = run("hello", token, args.duration, args.connections)
        resolver = run(kind, token, args.duration, args.connections, env, environment)
        print(
            f"round {round_}: bare ASGI {hello['rps']:,.0f} req/s (p50 {hello['p50']:.2f} ms,"
            f" p99 {hello['p99']:.2f} ms)"
            f" | resolver GET /v1/topics/{{name}} {resolver['rps']:,.0f} req/s (p50 {resolver['p50']:.2f} ms,"
            f" p99 {resolver['p99']:.2f} ms) | ratio {resolver['rps'] / hello['rps']:.2f}x"
            f" [{load_average()}]",
            flush=True,
        )
        ratios.append(resolver["rps"] / hello["rps"])
        totals["hello"] += hello["rps"]
        totals["resolver"] += resolver["rps"]
    print(
        f"median ratio {statistics.median(ratios):.2f}x over {len(ratios)} rounds; ratio of the mean rates "
        f"{totals['resolver'] / totals['hello']:.2f}x (target >= 0.5x)"
    )


if __name__ == "__main__":
    main()
