"""A sample deployment: an unmodified quixstreams app producing simulated F1 telemetry to ``f1-data``.

It knows nothing about streamtoken. Like any app deployed on Quix, it is configured only by
``Quix__Sdk__Token`` (its environment's streaming token) and ``Quix__Portal__Api`` (here: our resolver),
which the deployment agent sets::

    streamtoken run --environment acme-telemetry-dev -- python examples/f1_producer.py

The resolver maps the short name ``f1-data`` to the environment's topic id (``acme-telemetry-dev-f1-data``),
so the same code produces to the dev or the prod topic depending only on the token.

Zero-downtime strategy: ``--token-var NAME`` passes the token held in variable NAME to the client as an
argument (``Application(quix_sdk_token=...)``), as the seeds describe; run it with
``streamtoken run --slot 2 --inject-as NAME ...``. SIGHUP (the agent's reload) is logged, not fatal.

Stops cleanly on SIGTERM/SIGINT: the producer is flushed, so nothing it reported as produced is lost.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import signal
import sys
import time
from datetime import UTC, datetime
from types import FrameType

from quixstreams import Application

CARS = ("car-1", "car-16", "car-44", "car-55", "car-63", "car-81")


def telemetry(n: int) -> tuple[str, dict[str, object]]:
    car = CARS[n % len(CARS)]
    phase = n / 25.0
    speed = 180 + 120 * math.sin(phase) + random.uniform(-5, 5)
    return car, {
        "car": car,
        "sequence": n,
        "lap": 1 + n // 600,
        "speed_kmh": round(speed, 1),
        "rpm": int(9000 + 30 * speed + random.uniform(-200, 200)),
        "gear": max(1, min(8, int(speed // 40))),
        "throttle": round(max(0.0, math.sin(phase + 0.3)), 2),
        "brake": round(max(0.0, -math.sin(phase + 0.3)), 2),
        "timestamp": datetime.now(UTC).isoformat(),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--topic", default="f1-data", help="short topic name (default f1-data)")
    parser.add_argument("--interval", type=float, default=0.2, help="seconds between messages")
    parser.add_argument("--count", type=int, default=0, help="stop after this many messages (0: never)")
    parser.add_argument("--token-var", default=None, help="pass the token held in this variable explicitly")
    args = parser.parse_args()

    stopping = False

    def stop(signum: int, _: FrameType | None) -> None:
        nonlocal stopping
        stopping = True

    def reload(signum: int, _: FrameType | None) -> None:
        print("f1_producer: told the tokens were rotated; the token I hold stays valid", flush=True)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGHUP, reload)

    token = os.environ[args.token_var] if args.token_var else None
    app = Application(quix_sdk_token=token) if token else Application()
    topic = app.topic(args.topic, key_serializer="str", value_serializer="json")
    print(f"f1_producer: producing to {topic.name}", flush=True)
    produced = 0
    with app.get_producer() as producer:
        while not stopping and (args.count == 0 or produced < args.count):
            key, value = telemetry(produced)
            message = topic.serialize(key=key, value=value)
            producer.produce(topic=topic.name, key=message.key, value=message.value)
            produced += 1
            if produced % 25 == 0:
                producer.flush(10)
                print(f"f1_producer: {produced} messages produced to {topic.name}", flush=True)
            time.sleep(args.interval)
    print(
        f"f1_producer: stopped after {produced} message{'' if produced == 1 else 's'} (flushed)", flush=True
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
