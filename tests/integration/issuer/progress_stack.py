"""The real services behind the issuer's progress view, wired as a deployment runs them.

A real resolver and a real notifier on loopback and an issuer that polls both (the notifier with its
internal key), on the session's Kafka with a usage topic and group of their own, and one environment,
waited for until the resolver applied it: the ``progress_stack_factory`` fixture, which
``tests/integration/issuer/test_progress.py`` and the agent's ``tests/integration/agent/test_real_stack.py``
both start it with.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import pytest

from services.notifier.bootstrap import build_app as build_notifier
from services.resolver.bootstrap import build_app as build_resolver
from shared.kafka import KafkaSettings, ensure_streaming_tokens_topic
from tests.integration.issuer.conftest import RunningIssuer
from tests.integration.notifier.conftest import fast_settings
from tests.integration.resolver.conftest import resolver_settings, wait_ready
from tests.support import wait_until

NOTIFIER_KEY = "the-notifiers-internal-key-in-the-progress-tests"
WAIT = 60.0
S = TypeVar("S", bound="ProgressStack")


@dataclass
class ProgressStack:
    """What was started: the issuer (its admin and member clients), the resolver's and notifier's URLs, the
    Kafka settings they share and the environment."""

    issuer: RunningIssuer
    resolver: str
    notifier: str
    kafka: KafkaSettings
    environment_id: str

    def progress(self) -> dict[str, Any]:
        return progress(self.issuer, self.environment_id)


def progress(issuer: RunningIssuer, environment_id: str) -> dict[str, Any]:
    """The progress view of ``environment_id`` as ``issuer``'s member sees it (always a 200)."""
    response = issuer.member.get(f"/v1/environments/{environment_id}/streaming-tokens/progress")
    assert response.status_code == 200, response.text
    body: dict[str, Any] = response.json()
    return body


@pytest.fixture
def progress_stack_factory(
    sqlite_url: str,
    tmp_path: Path,
    kafka_settings: KafkaSettings,
    serve_app: Callable[..., str],
    issuer_factory: Callable[..., RunningIssuer],
) -> Callable[[dict[str, str], type[S]], S]:
    """``start(environment, kind)``: start the resolver, the notifier and the issuer, create
    ``environment`` (``org``, ``project``, ``name``) and wait until its progress view says
    ``resolvers_applied``; the answer is a ``kind`` (``ProgressStack`` or a test's subclass of it, with
    helpers of its own). Import it with ``issuer_factory`` into a test module outside this folder."""

    def start(environment: dict[str, str], kind: type[S]) -> S:
        kafka = kafka_settings.model_copy(update={"usage_topic": f"usage-{uuid.uuid4().hex[:8]}"})
        ensure_streaming_tokens_topic(kafka)
        resolver = serve_app(build_resolver(resolver_settings(kafka, usage_tick_seconds=0.2)))
        wait_ready(resolver, timeout=120)
        notifier_db = f"sqlite:///{tmp_path / 'notifier.db'}"
        notifier = serve_app(
            build_notifier(fast_settings(notifier_db, resolver, internal_key=NOTIFIER_KEY, kafka=kafka))
        )
        issuer = issuer_factory(
            sqlite_url,
            kafka,
            settings={
                "usage_group": f"usage-{uuid.uuid4().hex[:8]}",
                "resolver_urls": resolver,
                "notifier_url": notifier,
                "notifier_internal_key": NOTIFIER_KEY,
            },
        )
        created = issuer.admin.post("/v1/environments", json=environment)
        assert created.status_code == 201, created.text
        stack = kind(issuer, resolver, notifier, kafka, created.json()["id"])
        wait_until(
            lambda: stack.progress()["state"] == "resolvers_applied", WAIT, "the new environment applied"
        )
        return stack

    return start
