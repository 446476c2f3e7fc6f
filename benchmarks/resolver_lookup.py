"""Lookup throughput and latency of `GET /v1/topics/{name}` against a bare ASGI hello-world app.

    .venv/bin/python benchmarks/resolver_lookup.py [--duration 10] [--connections 32] [--rounds 2]

Both apps run in their own process under uvicorn with the same settings (one worker, uvloop, httptools,
no access log) on loopback, one after the other, loaded by `wrk` (apt-get install wrk). The resolver's
table holds 100,000 environments and the request carries a real streaming token (so each request does
the checksum check, a SHA-256 and the table lookup). Target: resolver >= 0.5x the bare app's requests/s.
"""

from __future__ import annotations

import argparse
import re
import shutil
import statistics
import subprocess
import sys
import time
from typing import Any

import httpx

from shared.broker import free_port

ENVIRONMENTS = 100_000


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


def serve(kind: str, port: int, token: str) -> None:
    import uvicorn

    app = hello_app if kind == "hello" else resolver_app(token)
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


def run(kind: str, token: str, duration: int, connections: int) -> dict[str, float]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, __file__, "--serve", kind, "--port", str(port), "--token", token]
    )
    try:
        path = "/v1/topics/f1-data" if kind == "resolver" else "/"
        url = f"http://127.0.0.1:{port}{path}"
        _wait(url, {"Authorization": f"Bearer {token}"})
        if kind == "resolver":
            body = httpx.get(url, headers={"Authorization": f"Bearer {token}"}).json()
            assert body == {
                "topic_id": "acme-telemetry-prod-f1-data",
                "environment_id": "acme-telemetry-prod",
            }
        _wrk(url, token, 2, connections)  # warm-up
        return _wrk(url, token, duration, connections)
    finally:
        process.terminate()
        process.wait(30)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--serve", choices=["hello", "resolver"])
    parser.add_argument("--port", type=int)
    parser.add_argument("--token")
    parser.add_argument("--duration", type=int, default=10)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    if args.serve:
        serve(args.serve, args.port, args.token)
        return
    if shutil.which("wrk") is None:
        sys.exit("wrk not found: apt-get install wrk")
    from shared.tokens import generate_token

    token = generate_token()
    ratios: list[float] = []
    totals = {"hello": 0.0, "resolver": 0.0}
    for round_ in range(1, args.rounds + 1):
        hello = run("hello", token, args.duration, args.connections)
        resolver = run("resolver", token, args.duration, args.connections)
        print(
            f"round {round_}: bare ASGI {hello['rps']:,.0f} req/s (p50 {hello['p50']:.2f} ms,"
            f" p99 {hello['p99']:.2f} ms)"
            f" | resolver GET /v1/topics/{{name}} {resolver['rps']:,.0f} req/s (p50 {resolver['p50']:.2f} ms,"
            f" p99 {resolver['p99']:.2f} ms) | ratio {resolver['rps'] / hello['rps']:.2f}x",
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
