"""Recording a large fan-out in chunks: each subscription once, also across a crash between chunks."""

from __future__ import annotations

from services.notifier.domain import Action, DeliveryStatus, new_credentials, webhook_event_type
from services.notifier.store import Store
from tests.factories import Environment


def test_a_fan_out_is_recorded_in_chunks_once_per_subscription(database_url: str) -> None:
    store = Store.from_url(database_url)
    store.create_tables()
    try:
        env = Environment.create()
        subs = [
            store.register(
                env.id, f"d{i}", f"http://127.0.0.1:9/{i}", Action.RELOAD, 1, new_credentials()
            ).subscription.id
            for i in range(10)
        ]
        rotation = env.rotate()
        event_type = webhook_event_type(rotation.change.type)
        assert event_type is not None

        # A crash after the first transaction of 3: those 3 are recorded, nothing else yet.
        assert store._record_chunk(rotation, event_type, 3, first=True) == 3
        assert store.count_by_status(env.id) == {DeliveryStatus.PENDING.value: 3}

        # The record is consumed again: the other 7 follow, 3 per transaction, each chunk reported.
        progress: list[int] = []
        assert store.record_events([rotation], on_progress=progress.append, chunk=3) == 7
        assert progress == [3, 3, 1]
        assert store.record_events([rotation], chunk=3) == 0  # and once more: nothing new
        claimed = store.claim_due(
            now=1e12, limit=100, lease_seconds=30, restart_limit=0, restart_recheck_seconds=1
        )
        assert sorted(c.subscription_id for c in claimed) == sorted(subs)
        assert len({c.id for c in claimed}) == 10
        assert [r.notified + r.pending for r in store.rotations(env.id)] == [10]
    finally:
        store.dispose()
