"""The Portal API's answers (PORTAL_API.md), as the resolver's routes declare them in OpenAPI.

The routes write these bodies themselves with orjson (``services.resolver.api``) and return the bytes, so
FastAPI neither validates nor re-encodes them; these models are the documented shape, and the tests check
real answers against it (``tests/unit/resolver/test_response_models.py``, schemathesis in
``tests/integration/test_openapi_contract.py``). Their readers are quixstreams and Telegraf, not
``shared.client``: the answers a client of ours reads are in ``shared.models.resolver``.
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field
from pydantic.alias_generators import to_camel
from pydantic.json_schema import SkipJsonSchema


class _Camel(BaseModel):
    model_config = ConfigDict(alias_generator=to_camel, populate_by_name=True)


class BrokerSettings(_Camel):
    broker_type: Literal["SharedKafka"]
    sync_topics: bool


class Workspace(_Camel):
    """The caller's environment as a workspace (``GET /workspaces`` answers a list of exactly one)."""

    workspace_id: str = Field(description="the environment id; the prefix of its topics and consumer groups")
    name: str
    status: Literal["Ready"]
    broker_type: Literal["SharedKafka"]
    broker_settings: BrokerSettings


class TopicConfiguration(_Camel):
    partitions: int = Field(ge=1, description="as the broker has the topic")
    replication_factor: int
    retention_in_minutes: int = Field(ge=-1, description="-1: unlimited; never null (quixstreams needs it)")
    retention_in_bytes: int = Field(ge=-1, description="-1: unlimited")
    cleanup_policy: Literal["Delete", "Compact", "DeleteAndCompact"]


class Topic(_Camel):
    """A topic of the workspace as the broker describes it."""

    id: str = Field(description="the Kafka topic name, {workspaceId}-{name}")
    name: str
    workspace_id: str
    status: Literal["Ready", "Creating"] = Field(
        description="Creating: created here moments ago and not yet in the broker's metadata"
    )
    configuration: TopicConfiguration


class LibrdkafkaSettings(BaseModel):
    """The flat librdkafka dict of ``GET /workspaces/{ws}/broker/librdkafka``: only keys quixstreams
    accepts (it rejects the whole answer for any other). The SASL keys come exactly with a SASL protocol
    (the caller's own login), ``ssl.ca.cert`` only with TLS and a configured CA."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    bootstrap_servers: str = Field(alias="bootstrap.servers")
    security_protocol: Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"] = Field(
        alias="security.protocol"
    )
    # Absent rather than null when unset: SkipJsonSchema keeps null out of the documented schema.
    sasl_mechanism: Literal["SCRAM-SHA-256", "SCRAM-SHA-512"] | SkipJsonSchema[None] = Field(
        None, alias="sasl.mechanism"
    )
    sasl_username: str | SkipJsonSchema[None] = Field(
        None, alias="sasl.username", description="the broker principal of the caller's token (its token id)"
    )
    sasl_password: str | SkipJsonSchema[None] = Field(
        None, alias="sasl.password", description="derived from the caller's token (broker_password)"
    )
    ssl_ca_cert: str | SkipJsonSchema[None] = Field(
        None, alias="ssl.ca.cert", description="the cluster CA, base64 PEM"
    )
