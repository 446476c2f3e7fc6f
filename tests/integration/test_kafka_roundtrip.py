"""The first integration test on the real broker: keyed events on a compacted topic, through ``shared``."""

import time
from datetime import UTC, datetime

from quixstreams import Application
from quixstreams.models import TopicConfig

from shared.events import Change, ChangeType, TokenStateChanged, decode_event, encode_event, encode_key
from shared.kafka import KafkaSettings
from shared.topics import STREAMING_TOKENS_CONFIG
from tests.unit.test_events import _ref


def _event(env: str, generation: int) -> TokenStateChanged:
    org, project, name = env.split("-")
    return TokenStateChanged(
        environment_id=env,
        org=org,
        project=project,
        environment=name,
        generation=generation,
        tokens=(_ref(1), _ref(2)),
        change=Change(type=ChangeType.ROTATED, actor="test", at=datetime.now(UTC)),
    )


def test_quixstreams_producer_and_consumer_round_trip_keyed_events(kafka_settings: KafkaSettings) -> None:
    app = Application(
        broker_address=kafka_settings.connection_config(),
        consumer_group=f"{kafka_settings.topic}-reader",
        auto_offset_reset="earliest",
        consumer_extra_config=kafka_settings.consumer_group_tuning(),
    )
    topic = app.topic(
        kafka_settings.topic,
        config=TopicConfig(
            num_partitions=kafka_settings.topic_partitions,
            replication_factor=1,
            extra_config=STREAMING_TOKENS_CONFIG,
        ),
    )
    sent = [_event(env, gen) for gen in (1, 2) for env in ("acme-tele-dev", "acme-tele-prod")]
    with app.get_producer() as producer:
        for event in sent:
            producer.produce(topic.name, key=encode_key(event.environment_id), value=encode_event(event))
        producer.produce(topic.name, key=encode_key("acme-tele-gone"), value=None)

    received: list[tuple[bytes, TokenStateChanged | None]] = []
    with app.get_consumer() as consumer:
        consumer.subscribe([topic.name])
        deadline = time.monotonic() + 60
        while len(received) < len(sent) + 1 and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            received.append((message.key(), decode_event(message.value())))

    assert len(received) == len(sent) + 1
    assert (b"acme-tele-gone", None) in received
    by_env: dict[str, list[TokenStateChanged]] = {}
    for key, read in received:
        if read is not None:
            assert key == encode_key(read.environment_id)
            by_env.setdefault(read.environment_id, []).append(read)
    # Keys share a partition, so each environment's generations arrive in order.
    for env, events in by_env.items():
        assert [e.generation for e in events] == [1, 2], env
        assert events == [e for e in sent if e.environment_id == env]


def test_ensure_topic_creates_once(kafka_settings: KafkaSettings) -> None:
    from shared.kafka import ensure_streaming_tokens_topic

    assert ensure_streaming_tokens_topic(kafka_settings) is True
    assert ensure_streaming_tokens_topic(kafka_settings) is False
