"""Topic names and their configuration."""

from __future__ import annotations

STREAMING_TOKENS = "streaming-tokens"

# Compacted, keyed by environment id, kept forever. Explicit retention values because some brokers
# (Tansu) describe only the configs a topic was created with, and quixstreams reads them back.
STREAMING_TOKENS_CONFIG: dict[str, str] = {
    "cleanup.policy": "compact",
    "retention.ms": "-1",
    "retention.bytes": "-1",
    "min.compaction.lag.ms": "0",
}


def kafka_topic_config(cleanup_policy: str, retention_ms: int, retention_bytes: int) -> dict[str, str]:
    """Explicit topic configs for a client topic (what the resolver creates for the Portal API)."""
    return {
        "cleanup.policy": cleanup_policy,
        "retention.ms": str(retention_ms),
        "retention.bytes": str(retention_bytes),
    }
