"""Hand-written fakes for the resolver's ports, and request helpers."""

from __future__ import annotations

from services.resolver.admin import TopicAdminError, TopicExists, TopicInfo


class FakeAdmin:
    def __init__(self) -> None:
        self.topics_: dict[str, TopicInfo] = {}
        self.created: list[tuple[str, int, int, dict[str, str]]] = []
        self.fail = False

    async def topics(self, prefix: str) -> dict[str, TopicInfo]:
        return {n: t for n, t in self.topics_.items() if n.startswith(prefix)}

    async def topic(self, name: str) -> TopicInfo | None:
        if self.fail:
            raise TopicAdminError("broker down")
        return self.topics_.get(name)

    async def create(
        self, name: str, partitions: int, replication_factor: int, config: dict[str, str]
    ) -> None:
        if name in self.topics_:
            raise TopicExists(name)
        self.created.append((name, partitions, replication_factor, config))
        self.topics_[name] = TopicInfo(name, partitions, replication_factor, True, dict(config))


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}", "X-Version": "2.0"}
