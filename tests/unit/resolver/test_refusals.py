"""Refused tokens (SECURITY_REVIEW finding 15): anyone can mint well-formed tokens, so ``token_refused``
is logged as a sample (at most STREAMTOKEN_RESOLVER_REFUSED_LOG_PER_MINUTE lines a minute), while every
refusal is counted in ``streamtoken_resolver_lookups_total``."""

from __future__ import annotations

import logging

import httpx
import pytest

from services.resolver.api import SampledLog
from services.resolver.bootstrap import build_app
from services.resolver.replica import Status
from services.resolver.settings import ResolverSettings
from services.resolver.table import TokenTable
from shared.logs import configure_logging
from shared.tokens import generate_token
from tests.unit.resolver.fakes import FakeAdmin, bearer


def test_sampled_log_admits_a_few_a_window_and_reports_what_it_dropped() -> None:
    sample = SampledLog(per_window=2, window_seconds=60.0)
    assert [sample.admit(t) for t in (0.0, 1.0, 2.0, 3.0, 59.0)] == [0, 0, None, None, None]
    assert sample.admit(60.0) == 3  # a new window: the first line says how many were dropped before it
    assert sample.admit(61.0) == 0
    assert sample.admit(62.0) is None
    assert SampledLog(0, 60.0).admit(0.0) is None


async def test_a_flood_of_unknown_tokens_logs_a_sample_and_counts_every_one(
    capsys: pytest.CaptureFixture[str],
) -> None:
    app = build_app(
        ResolverSettings(refused_log_per_minute=3),
        table=TokenTable(),
        admin=FakeAdmin(),
        start_replica=False,
        status=lambda: Status.READY,
    )
    configure_logging("resolver", "INFO")
    try:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://resolver") as c:
            for _ in range(20):
                assert (await c.get("/v1/whoami", headers=bearer(generate_token()))).status_code == 401
            for _ in range(20):  # the fast path refuses the same way
                assert (await c.get("/v1/topics/x", headers=bearer(generate_token()))).status_code == 401
            assert (await c.get("/v1/whoami")).status_code == 401
            metrics = (await c.get("/metrics")).text
    finally:
        logging.getLogger().handlers.clear()
    refused = [line for line in capsys.readouterr().err.splitlines() if '"token_refused"' in line]
    assert len(refused) == 3
    assert 'streamtoken_resolver_lookups_total{result="miss"} 40.0' in metrics
    assert 'streamtoken_resolver_lookups_total{result="missing"} 1.0' in metrics
