"""The resolver API's answers a client of ours reads (``/v1/topics/{name}``, ``/v1/whoami``,
``/v1/heartbeat``, and ``/v1/environments/{id}/generation``, which the issuer's propagation view polls).

The resolver writes these bodies itself with orjson (the lookup on its measured fast path) and returns the
bytes; its routes declare these models in OpenAPI without FastAPI validating or re-encoding anything, and
its clients (``shared.client``) parse the answers into them.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field


class TopicLookup(BaseModel):
    topic_id: str = Field(description="the environment's full topic id, e.g. acme-telemetry-dev-f1-data")
    environment_id: str


class WhoamiAnswer(BaseModel):
    environment_id: str
    slot: Literal[1, 2]
    token_id: str
    generation: int


class HeartbeatAnswer(BaseModel):
    environment_id: str
    token_id: str
    slot: Literal[1, 2] | None = Field(description="null: an outgoing Token 1 in its grace period")
    generation: int


class GenerationAnswer(BaseModel):
    model_config = ConfigDict(strict=True)  # a JSON integer or null (never true or "7"), a JSON boolean

    environment_id: str
    generation: int | None = Field(
        description="the generation of the environment this replica has applied; null: it holds none "
        "(unknown or deleted)"
    )
    ready: bool = Field(description="the replica is caught up (as /health/ready)")
