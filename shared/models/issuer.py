"""The issuer API's request and response bodies, shared by ``services.issuer.api`` (which serves them)
and ``shared.client`` (which sends and reads them).

Kept here, free of FastAPI and of the issuer's modules, so a client (the CLI, the agent, the dev stack)
imports them in milliseconds without the service; the limits the issuer's domain owns are repeated as
constants and a unit test keeps them equal (tests/unit/test_client.py).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from shared.ids import ENVIRONMENT_ID_MAX, ENVIRONMENT_ID_PATTERN, SLUG_MAX, SLUG_PATTERN

MAX_SUBJECT = 120  # services.issuer.auth.MAX_SUBJECT
MAX_GRACE_SECONDS = 7 * 86400  # services.issuer.domain.MAX_GRACE
_SLUG_PATTERN = f"^{SLUG_PATTERN}$"  # the whole string: no trailing newline (shared.ids uses fullmatch)
_ENV_ID_PATTERN = f"^{ENVIRONMENT_ID_PATTERN}$"
MAX_GENERATION = 2**63 - 1


class EnvironmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    org: str = Field(min_length=1, max_length=SLUG_MAX, pattern=_SLUG_PATTERN, examples=["acme"])
    project: str = Field(min_length=1, max_length=SLUG_MAX, pattern=_SLUG_PATTERN, examples=["telemetry"])
    name: str = Field(min_length=1, max_length=SLUG_MAX, pattern=_SLUG_PATTERN, examples=["prod"])


class EnvironmentPublic(BaseModel):
    id: str
    org: str
    project: str
    name: str
    generation: int
    token_1_id: str
    token_2_id: str
    updated_at: datetime


class EnvironmentList(BaseModel):
    environments: list[EnvironmentPublic]


MAX_UNUSED_WINDOW = 30 * 86400


class RotateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_period_seconds: int = Field(0, ge=0, le=MAX_GRACE_SECONDS)
    if_unused_seconds: int | None = Field(
        None,
        ge=1,
        le=MAX_UNUSED_WINDOW,
        description="rotate only if Token 1 was not used (by anyone) within this many seconds; else 409 "
        "token_1_in_use with the clients still on it",
    )
    force: bool = Field(
        False, strict=True, description="rotate even when if_unused_seconds finds Token 1 in use"
    )
    expected_generation: int | None = Field(
        None,
        ge=1,
        le=MAX_GENERATION,
        description="rotate only if the environment is at this generation (like If-Match); else 412",
    )


class PatCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    subject: str = Field(min_length=1, max_length=MAX_SUBJECT, examples=["ci-bot"])
    role: Literal["admin", "member", "deployment"] = "member"
    environments: (
        list[Annotated[str, Field(max_length=ENVIRONMENT_ID_MAX, pattern=_ENV_ID_PATTERN)]] | None
    ) = Field(
        None,
        min_length=1,
        max_length=100,
        description="limit the PAT to these environment ids (a deployment PAT: exactly one); omit: all",
    )
    actions: list[Literal["read", "reveal", "rotate", "admin", "read-current"]] | None = Field(
        None,
        min_length=1,
        max_length=5,
        description="limit the PAT to some of its role's actions; omit: all of them",
    )
    ttl_days: int | None = Field(
        None, ge=1, le=365, description="lifetime (default and maximum: the issuer's settings)"
    )


class PatPublic(BaseModel):
    id: str = Field(description="the PAT's id (its jti)")
    subject: str
    role: str
    environments: list[str] | None
    actions: list[str] | None
    created_at: datetime
    expires_at: datetime
    revoked_at: datetime | None
    created_by: str


class PatCreated(PatPublic):
    token: str = Field(description="the PAT itself: shown once, never stored")


class PatList(BaseModel):
    pats: list[PatPublic]
    next: str | None = Field(description="pass as ?after= for the next page (null: the last page)")


class UsageSummary(BaseModel):
    last_used_at: datetime | None = Field(description="the token's last use by anyone (null: never seen)")
    client_count: int = Field(description="clients seen within STREAMTOKEN_ISSUER_USAGE_WINDOW_S")


class TokenPublic(BaseModel):
    token_id: str
    token: str
    fingerprint: str
    created_at: datetime
    usage: UsageSummary | None = Field(None, description="shown by GET .../streaming-tokens")


class UsageClientPublic(BaseModel):
    address: str = Field(description="the client's address as the resolver saw it")
    user_agent: str
    deployment_id: str | None = Field(description="the agent's deployment id (heartbeats), else null")
    source: Literal["lookup", "portal", "whoami", "heartbeat", "notifier"]
    last_seen_at: datetime
    uses: int = Field(description="uses the resolvers counted (a replayed record may count twice)")


class GraceTokenUsage(BaseModel):
    token_id: str
    fingerprint: str
    last_used_at: datetime | None
    client_count: int
    clients: list[UsageClientPublic]
    valid_until: datetime | None = None


class TokenUsagePublic(GraceTokenUsage):
    slot: Literal[1, 2]


class DeploymentPublic(BaseModel):
    deployment_id: str
    token_id: str = Field(description="the token its agent last reported")
    slot: Literal[1, 2] | None = Field(description="1 or 2; null: a token in its grace period")
    last_seen_at: datetime


class UsageView(BaseModel):
    environment_id: str
    generation: int
    window_seconds: int
    tokens: list[TokenUsagePublic]
    grace_tokens: list[GraceTokenUsage]
    deployments: list[DeploymentPublic]


class InUseError(BaseModel):
    error: Literal["token_1_in_use"]
    message: str
    clients: list[UsageClientPublic]


class BrokerProgress(BaseModel):
    applied: bool
    state: str
    generation: int | None


class ResolverProgress(BaseModel):
    applied: int
    total: int
    state: str
    detail: list[ResolverPublic]


class DeploymentProgress(BaseModel):
    subscribed: int
    notified: int
    acknowledged: int
    dead: int


class ProgressView(BaseModel):
    environment_id: str
    generation: int
    rotation_id: str | None
    change: str
    changed_at: datetime
    broker: BrokerProgress
    resolvers: ResolverProgress
    deployments: DeploymentProgress | None = Field(description="null: the notifier was not reachable")
    deployments_reason: str | None = None
    state: Literal["publishing", "broker_applied", "resolvers_applied", "notified", "acknowledged"]


class ScheduleFields(BaseModel):
    model_config = ConfigDict(extra="forbid")

    every_days: float | None = Field(None, gt=0, le=3650, description="rotate this many days after the last")
    unused_window_seconds: int | None = Field(
        None, ge=60, le=MAX_UNUSED_WINDOW, description="only once Token 1 was unused this long"
    )
    deadline_days: float | None = Field(
        None, ge=0, le=3650, description="rotate anyway this many days after it was due (null: never)"
    )
    warn_before_seconds: int | None = Field(
        None, ge=0, le=MAX_UNUSED_WINDOW, description="warn subscribed deployments this long before"
    )
    grace_period_seconds: int | None = Field(None, ge=0, le=MAX_GRACE_SECONDS)


class ScheduleCreate(ScheduleFields):
    every_days: float = Field(gt=0, le=3650, description="rotate this many days after the last")
    unused_window_seconds: int = Field(900, ge=60, le=MAX_UNUSED_WINDOW)
    warn_before_seconds: int = Field(86400, ge=0, le=MAX_UNUSED_WINDOW)
    grace_period_seconds: int = Field(0, ge=0, le=MAX_GRACE_SECONDS)


class SchedulePublic(BaseModel):
    environment_id: str
    every_days: float
    unused_window_seconds: int
    deadline_days: float | None
    warn_before_seconds: int
    grace_period_seconds: int
    due_at: datetime
    warn_at: datetime
    forced_at: datetime | None
    warned_generation: int
    last_outcome: str | None
    created_at: datetime | None
    updated_at: datetime | None


class GraceTokenPublic(BaseModel):
    token_id: str
    fingerprint: str
    created_at: datetime
    valid_until: datetime | None


class ResolverPublic(BaseModel):
    url: str = Field(description="the resolver replica's base URL (STREAMTOKEN_ISSUER_RESOLVER_URLS)")
    generation: int | None = Field(description="the generation its table holds (null: none, or no answer)")
    applied: bool = Field(description="it is ready and holds this generation or a newer one")
    ready: bool = Field(description="the replica is caught up (its /health/ready)")
    error: str | None = Field(None, description="why it gave no usable answer (unreachable, 401, ...)")


class PropagationPublic(BaseModel):
    broker: Literal["applied", "pending", "off"] = Field(
        description="applied: the broker's users and ACLs match this generation; pending: not yet (the "
        "relay retries); off: this deployment's broker does not enforce streaming tokens"
    )
    broker_generation: int | None = Field(description="the generation the broker was last made to match")
    resolvers: Literal["applied", "pending", "unknown"] = Field(
        "unknown",
        description="applied: every configured resolver replica serves this generation; pending: not all "
        "yet, or not polled (rotate and revoke answers do not poll: ask GET .../streaming-tokens/"
        "propagation); unknown: no resolver is configured (STREAMTOKEN_ISSUER_RESOLVER_URLS)",
    )
    resolver_detail: list[ResolverPublic] = Field(
        default_factory=list, description="one entry per configured replica when polled"
    )


class PropagationState(PropagationPublic):
    environment_id: str
    generation: int


class StreamingTokens(BaseModel):
    environment_id: str
    generation: int
    token_1: TokenPublic | None = Field(description="null when only Token 2 was asked for (?slot=2)")
    token_2: TokenPublic | None = Field(
        description="null when only Token 1 was asked for (?slot=1), and for a deployment PAT without ?slot=2"
    )
    grace_tokens: list[GraceTokenPublic]
    rotation_id: str | None
    propagation: PropagationPublic | None = None


class AuditEntryPublic(BaseModel):
    at: datetime
    actor: str
    action: str
    environment_id: str | None
    token_ids: list[str]
    detail: dict[str, Any]
    pat_id: str | None = Field(None, description="the id of the PAT that did it (null: the system)")


class AuditLog(BaseModel):
    entries: list[AuditEntryPublic]


class RepublishResult(BaseModel):
    environments: int
    tombstones: int
