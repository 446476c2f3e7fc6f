"""``build_app``'s typed overrides: an already built store is used (and left to its owner), the clock is
the time of every part, and the routes reach their dependencies by closure (nothing in ``app.state``)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx

from services.issuer.adapters.db import SqlStore, make_engine
from services.issuer.auth import Role
from services.issuer.bootstrap import build_app
from services.issuer.metrics import IssuerMetrics
from services.issuer.settings import IssuerSettings
from shared.kafka import KafkaSettings
from shared.settings import RuntimeSettings
from tests.conftest import running_server

NOWHERE = KafkaSettings(bootstrap_servers="127.0.0.1:9")  # nothing may reach a broker here
# A fixed moment (the PAT's JWT is checked against real time too, so not far in the past).
MOMENT = datetime.now(UTC).replace(microsecond=0) - timedelta(minutes=5)


def test_overrides_are_used_and_the_clock_is_every_parts_time(tmp_path: Path) -> None:
    settings = IssuerSettings(
        database_url="sqlite:///unused.db",
        kafka=NOWHERE,
        runtime=RuntimeSettings(env="test", data_dir=tmp_path),
    )
    store = SqlStore(make_engine(f"sqlite:///{tmp_path / 'shared.db'}"))
    disposed: list[bool] = []
    store.engine.dispose = lambda *a, **k: disposed.append(True)  # type: ignore[method-assign]
    metrics = IssuerMetrics()
    app = build_app(settings, store=store, metrics=metrics, clock=lambda: MOMENT, start_relay=False)
    assert app.store is store
    assert app.deps.store is store
    assert app.deps.metrics is metrics
    assert set(app.state._state) <= {"ops"}  # typed handles on the app; only shared.web keeps its ops there

    with running_server(app) as url, httpx.Client(base_url=url) as client:
        record, pat = app.issue_pat("alice", Role.ADMIN, actor="test")
        assert record.created_at == MOMENT
        created = client.post(
            "/v1/environments",
            json={"org": "acme", "project": "telemetry", "name": "dev"},
            headers={"Authorization": f"Bearer {pat}"},
        )
        assert created.status_code == 201, created.text
        assert datetime.fromisoformat(created.json()["updated_at"]) == MOMENT
        assert client.get("/v1/environments").status_code == 401  # the closure's PAT check
        assert "streamtoken_issuer" in client.get("/metrics").text
    assert not (tmp_path / "unused.db").exists()
    assert disposed == []  # the store's engine is its owner's
    assert [e.at for e in store.audit_entries(None, 10)] == [MOMENT, MOMENT]  # the PAT, the environment
