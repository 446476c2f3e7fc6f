"""The resolver API's answers a client reads (``/v1/topics/{name}``, ``/v1/whoami``, ``/v1/heartbeat``).

The resolver writes these bodies itself with orjson on its measured fast path; these models are what its
clients (``shared.client``) parse them into, and what its routes can declare.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, Field


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
