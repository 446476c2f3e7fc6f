"""The issuer's HTTP API: it authenticates, validates and translates; the handlers decide."""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, ConfigDict, Field

from services.issuer import handlers
from services.issuer.auth import AuthError, Principal, verify_pat
from services.issuer.domain import MAX_GRACE, Environment
from services.issuer.handlers import Deps, IssuerError
from shared.errors import ApiError
from shared.ids import InvalidIdentifier, validate_environment_id

_bearer = HTTPBearer(auto_error=False)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="streamtoken-issuer"'}
_INVALID_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="streamtoken-issuer", error="invalid_token"'}


class EnvironmentCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")

    org: str = Field(min_length=1, max_length=32, examples=["acme"])
    project: str = Field(min_length=1, max_length=32, examples=["telemetry"])
    name: str = Field(min_length=1, max_length=32, examples=["prod"])


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


class RotateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    grace_period_seconds: int = Field(0, ge=0, le=int(MAX_GRACE.total_seconds()))


class TokenPublic(BaseModel):
    token_id: str
    token: str
    fingerprint: str
    created_at: datetime


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
    token_1: TokenPublic
    token_2: TokenPublic
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


class AuditLog(BaseModel):
    entries: list[AuditEntryPublic]


class RepublishResult(BaseModel):
    environments: int
    tombstones: int


def _public(env: Environment) -> EnvironmentPublic:
    return EnvironmentPublic(
        id=env.id,
        org=env.org,
        project=env.project,
        name=env.name,
        generation=env.generation,
        token_1_id=env.token_1.token_id,
        token_2_id=env.token_2.token_id,
        updated_at=env.last_change.at,
    )


_STATUS = {"not_found": 404, "conflict": 409, "invalid_request": 422}


def _translate(exc: IssuerError) -> ApiError:
    return ApiError(_STATUS.get(exc.code, 400), exc.code, exc.message)


def _principal(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
) -> Principal:
    if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
        raise ApiError(
            401,
            "unauthorized",
            "a personal access token is required: send 'Authorization: Bearer <PAT>'",
            headers=_CHALLENGE,
        )
    try:
        return verify_pat(request.app.state.jwt_secret, credentials.credentials)
    except AuthError as exc:
        raise ApiError(401, "unauthorized", str(exc), headers=_INVALID_CHALLENGE) from None


def _admin(who: Annotated[Principal, Depends(_principal)]) -> Principal:
    if not who.is_admin:
        raise ApiError(
            403,
            "forbidden",
            "this action needs the admin role; your personal access token has the member role",
        )
    return who


Member = Annotated[Principal, Depends(_principal)]
Admin = Annotated[Principal, Depends(_admin)]


def build_router(deps: Deps) -> APIRouter:
    router = APIRouter(prefix="/v1")

    def call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return function(deps, *args, **kwargs)
        except IssuerError as exc:
            raise _translate(exc) from None

    @router.post("/environments", status_code=201, response_model=EnvironmentPublic, tags=["environments"])
    def create_environment(body: EnvironmentCreate, who: Admin) -> EnvironmentPublic:
        """Create an environment with its Token 1 and Token 2 (admin)."""
        env = call(handlers.create_environment, body.org, body.project, body.name, actor=who.actor)
        return _public(env)

    @router.get("/environments", response_model=EnvironmentList, tags=["environments"])
    def list_environments(_: Member) -> EnvironmentList:
        return EnvironmentList(environments=[_public(e) for e in call(handlers.list_environments)])

    @router.get("/environments/{environment_id}", response_model=EnvironmentPublic, tags=["environments"])
    def get_environment(environment_id: str, _: Member) -> EnvironmentPublic:
        return _public(call(handlers.get_environment, environment_id))

    @router.delete("/environments/{environment_id}", status_code=204, tags=["environments"])
    def delete_environment(environment_id: str, who: Admin) -> Response:
        """Delete an environment: both tokens end and a tombstone goes to the topic (admin)."""
        call(handlers.delete_environment, environment_id, actor=who.actor)
        return Response(status_code=204)

    @router.get(
        "/environments/{environment_id}/streaming-tokens", response_model=StreamingTokens, tags=["tokens"]
    )
    def show_tokens(environment_id: str, who: Member) -> dict[str, Any]:
        """Display Token 1 and Token 2 (every display is audit-logged)."""
        view = call(handlers.reveal_tokens, environment_id, actor=who.actor)
        return dict(view.to_json())

    @router.get(
        "/environments/{environment_id}/streaming-tokens/propagation",
        response_model=PropagationState,
        tags=["tokens"],
    )
    def token_propagation(environment_id: str, _: Member) -> PropagationState:
        """Whether the broker and every resolver replica accept the current tokens yet (the resolvers are
        polled now, each for at most STREAMTOKEN_ISSUER_RESOLVER_TIMEOUT_S; no token is shown; not
        audit-logged)."""
        state = call(handlers.propagation, environment_id)
        return PropagationState(environment_id=environment_id, generation=state.generation, **state.to_json())

    @router.post(
        "/environments/{environment_id}/streaming-tokens/rotate",
        response_model=StreamingTokens,
        tags=["tokens"],
    )
    def rotate_tokens(
        environment_id: str,
        who: Admin,
        body: RotateRequest | None = None,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> dict[str, Any]:
        """Rotate: Token 1 is deactivated (or kept for the grace period), Token 2 becomes Token 1, a new
        Token 2 is issued (admin). The same ``Idempotency-Key`` returns the same result and rotates once."""
        grace = (body or RotateRequest()).grace_period_seconds
        view = call(
            handlers.rotate_tokens,
            environment_id,
            actor=who.actor,
            grace_seconds=grace,
            idempotency_key=_key(idempotency_key),
        )
        return dict(view.to_json())

    @router.post(
        "/environments/{environment_id}/streaming-tokens/revoke",
        response_model=StreamingTokens,
        tags=["tokens"],
    )
    def revoke_tokens(
        environment_id: str,
        who: Admin,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
    ) -> dict[str, Any]:
        """Emergency revocation: both tokens (and any in grace) end now, two new ones are issued (admin)."""
        view = call(
            handlers.revoke_tokens, environment_id, actor=who.actor, idempotency_key=_key(idempotency_key)
        )
        return dict(view.to_json())

    @router.get("/admin/audit", response_model=AuditLog, tags=["admin"])
    def audit(
        _: Admin,
        environment_id: str | None = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> AuditLog:
        """The audit log, newest first: who created, displayed, rotated, revoked or deleted what (admin)."""
        if environment_id is not None:
            try:
                validate_environment_id(environment_id)
            except InvalidIdentifier as exc:
                raise ApiError(422, "invalid_environment_id", str(exc)) from None
        entries = call(handlers.audit_log, environment_id, limit)
        return AuditLog(
            entries=[
                AuditEntryPublic(
                    at=e.at,
                    actor=e.actor,
                    action=e.action,
                    environment_id=e.environment_id,
                    token_ids=list(e.token_ids),
                    detail=e.detail,
                )
                for e in entries
            ]
        )

    @router.post("/admin/republish", status_code=202, response_model=RepublishResult, tags=["admin"])
    def republish(who: Admin) -> RepublishResult:
        """Publish the current state of every environment again (after a broker lost its data) (admin)."""
        return RepublishResult(**call(handlers.republish_all, actor=who.actor))

    return router


def _key(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value or not value.isprintable():
        raise ApiError(422, "invalid_request", "Idempotency-Key must be 1-200 printable characters")
    return value
