"""Kafka topic administration for the Portal API: describe topics as the broker has them, create them.

confluent-kafka's AdminClient blocks, so every call runs in a thread executor; topic metadata is cached for
a short time (``metadata_cache_seconds``) and dropped after a create, and topic configs are cached until
the topic is created again (they do not change under us).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from shared.kafka import KafkaSettings
from shared.logs import get_logger

log = get_logger(__name__)

DESCRIBED_CONFIGS = ("cleanup.policy", "retention.ms", "retention.bytes")


class TopicExists(Exception):
    """The topic already exists on the broker."""


class TopicAdminError(Exception):
    """The broker refused or failed a topic operation; the message says what happened."""


@dataclass(frozen=True)
class TopicInfo:
    """A topic as the broker describes it."""

    name: str
    partitions: int
    replication_factor: int
    ready: bool
    config: dict[str, str] = field(default_factory=dict)


class TopicAdmin(Protocol):
    """The port the Portal API needs; a fake implements it in unit tests."""

    async def topics(self, prefix: str) -> dict[str, TopicInfo]:
        """Every topic whose name starts with ``prefix``, with partitions and configs."""
        ...

    async def topic(self, name: str) -> TopicInfo | None: ...

    async def create(
        self, name: str, partitions: int, replication_factor: int, config: dict[str, str]
    ) -> None:
        """Create ``name``; raises :class:`TopicExists` or :class:`TopicAdminError`."""
        ...


class KafkaTopicAdmin:
    """:class:`TopicAdmin` on a real broker through confluent-kafka."""

    def __init__(self, kafka: KafkaSettings, cache_seconds: float = 2.0, timeout: float = 15.0) -> None:
        self._kafka = kafka
        self._cache_seconds = cache_seconds
        self._timeout = timeout
        self._client: Any = None
        self._metadata: dict[str, tuple[int, int, bool]] | None = None
        self._metadata_at = 0.0
        self._configs: dict[str, dict[str, str]] = {}
        self._lock = asyncio.Lock()

    def _admin(self) -> Any:
        if self._client is None:
            from confluent_kafka.admin import AdminClient

            self._client = AdminClient(self._kafka.librdkafka())
        return self._client

    async def _run(self, fn: Any, *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(None, fn, *args)

    def _list(self) -> dict[str, tuple[int, int, bool]]:
        metadata = self._admin().list_topics(timeout=self._timeout)
        out: dict[str, tuple[int, int, bool]] = {}
        for name, topic in metadata.topics.items():
            if topic.error is not None or not topic.partitions:
                continue
            partitions = topic.partitions.values()
            replicas = max((len(p.replicas) for p in partitions), default=0)
            ready = all(p.leader >= 0 and p.error is None for p in partitions)
            out[name] = (len(topic.partitions), replicas, ready)
        return out

    def _describe(self, names: list[str]) -> dict[str, dict[str, str]]:
        from confluent_kafka.admin import ConfigResource, ResourceType

        resources = [ConfigResource(ResourceType.TOPIC, n) for n in names]
        futures = self._admin().describe_configs(resources, request_timeout=self._timeout)
        out: dict[str, dict[str, str]] = {}
        for resource, future in futures.items():
            try:
                entries = future.result(self._timeout)
            except Exception as exc:
                log.warning("describe_configs_failed", topic=resource.name, error=str(exc))
                continue
            out[resource.name] = {
                k: str(v.value) for k, v in entries.items() if k in DESCRIBED_CONFIGS and v.value is not None
            }
        return out

    async def _metadata_now(self, fresh: bool = False) -> dict[str, tuple[int, int, bool]]:
        async with self._lock:
            stale = time.monotonic() - self._metadata_at > self._cache_seconds
            if fresh or stale or self._metadata is None:
                try:
                    self._metadata = await self._run(self._list)
                except Exception as exc:
                    raise TopicAdminError(f"could not read topic metadata from Kafka: {exc}") from None
                self._metadata_at = time.monotonic()
            return self._metadata

    async def _with_configs(self, found: dict[str, tuple[int, int, bool]]) -> dict[str, TopicInfo]:
        missing = [n for n in found if n not in self._configs]
        if missing:
            try:
                self._configs.update(await self._run(self._describe, missing))
            except Exception as exc:
                raise TopicAdminError(f"could not read topic configs from Kafka: {exc}") from None
        return {
            n: TopicInfo(n, parts, replicas, ready, dict(self._configs.get(n, {})))
            for n, (parts, replicas, ready) in found.items()
        }

    async def topics(self, prefix: str) -> dict[str, TopicInfo]:
        metadata = await self._metadata_now()
        return await self._with_configs({n: m for n, m in metadata.items() if n.startswith(prefix)})

    async def topic(self, name: str) -> TopicInfo | None:
        metadata = await self._metadata_now()
        if name not in metadata:
            # Created elsewhere moments ago? Look again before saying it does not exist - at most every
            # 250 ms, so clients asking for missing topics cannot make every request re-read all metadata.
            metadata = await self._metadata_now(fresh=time.monotonic() - self._metadata_at > 0.25)
        if name not in metadata:
            return None
        return (await self._with_configs({name: metadata[name]}))[name]

    async def create(
        self, name: str, partitions: int, replication_factor: int, config: dict[str, str]
    ) -> None:
        await self._run(self._create, name, partitions, replication_factor, config)
        self._configs.pop(name, None)
        self._metadata_at = 0.0

    def _create(self, name: str, partitions: int, replication_factor: int, config: dict[str, str]) -> None:
        from confluent_kafka import KafkaError, KafkaException
        from confluent_kafka.admin import NewTopic

        topic = NewTopic(
            name, num_partitions=partitions, replication_factor=replication_factor, config=config
        )
        try:
            futures = self._admin().create_topics(
                [topic], operation_timeout=self._timeout, request_timeout=self._timeout
            )
            futures[name].result(self._timeout)
        except KafkaException as exc:
            error = exc.args[0] if exc.args else None
            if error is not None and error.code() == KafkaError.TOPIC_ALREADY_EXISTS:
                raise TopicExists(name) from None
            reason = error.str() if error is not None else str(exc)
            raise TopicAdminError(f"Kafka refused to create topic {name!r}: {reason}") from None
        except Exception as exc:  # a timeout or a client error: Kafka is unreachable or overloaded
            raise TopicAdminError(f"could not create topic {name!r}: {type(exc).__name__} {exc}") from None
