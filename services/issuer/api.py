"""The issuer's HTTP API: it authenticates, validates and translates; the handlers decide."""

from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Header, Path, Query, Request, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.issuer import handlers, usage
from services.issuer.auth import Action, AuthError, Principal
from services.issuer.domain import Environment
from services.issuer.handlers import Deps, IssuerError, PreconditionFailed, TokenInUse
from services.issuer.pats import PatVerifier
from services.issuer.ports import PatRecord
from services.issuer.web import api_principal
from services.issuer.web.sessions import COOKIE, SessionManager
from shared.errors import ApiError
from shared.ids import (
    ENVIRONMENT_ID_MAX,
    ENVIRONMENT_ID_PATTERN,
    SLUG_PATTERN,
    InvalidIdentifier,
    environment_id,
    validate_environment_id,
)
from shared.models.issuer import (  # noqa: F401 - the bodies are part of this module's surface
    MAX_GENERATION,
    MAX_UNUSED_WINDOW,
    AuditEntryPublic,
    AuditLog,
    BrokerProgress,
    DeploymentProgress,
    DeploymentPublic,
    EnvironmentCreate,
    EnvironmentList,
    EnvironmentPublic,
    GraceTokenPublic,
    GraceTokenUsage,
    InUseError,
    PatCreate,
    PatCreated,
    PatList,
    PatPublic,
    ProgressView,
    PropagationPublic,
    PropagationState,
    RepublishResult,
    ResolverProgress,
    ResolverPublic,
    RotateRequest,
    ScheduleCreate,
    ScheduleFields,
    SchedulePublic,
    StreamingTokens,
    TokenPublic,
    TokenUsagePublic,
    UsageClientPublic,
    UsageSummary,
    UsageView,
)
from shared.web import ErrorBody, error_responses

_bearer = HTTPBearer(auto_error=False)
_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="streamtoken-issuer"'}
_INVALID_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="streamtoken-issuer", error="invalid_token"'}


_SLUG_PATTERN = f"^{SLUG_PATTERN}$"  # the whole string: no trailing newline (shared.ids uses fullmatch)
_ENV_ID_PATTERN = f"^{ENVIRONMENT_ID_PATTERN}$"
EnvironmentId = Annotated[
    str,
    Path(
        min_length=1,
        max_length=ENVIRONMENT_ID_MAX,
        pattern=_ENV_ID_PATTERN,
        description="'{org}-{project}-{environment}'",
        examples=["acme-telemetry-prod"],
    ),
]
NO_STORE = {"Cache-Control": "no-store"}


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


def _pat_public(record: PatRecord) -> dict[str, Any]:
    return {
        "id": record.jti,
        "subject": record.subject,
        "role": record.role,
        "environments": list(record.environments) if record.environments is not None else None,
        "actions": list(record.actions) if record.actions is not None else None,
        "created_at": record.created_at,
        "expires_at": record.expires_at,
        "revoked_at": record.revoked_at,
        "created_by": record.created_by,
    }


_STATUS = {"not_found": 404, "conflict": 409, "invalid_request": 422, "precondition_failed": 412}


def _translate(exc: IssuerError) -> ApiError:
    if isinstance(exc, TokenInUse):
        return ApiError(409, exc.code, exc.message, extra={"clients": exc.clients})
    if isinstance(exc, PreconditionFailed):
        return ApiError(412, exc.code, exc.message, headers={"ETag": f'"{exc.generation}"'})
    return ApiError(_STATUS.get(exc.code, 400), exc.code, exc.message)


def principal_of(pats: PatVerifier, ui_sessions: SessionManager | None) -> Callable[..., Principal]:
    """The dependency that authenticates a request: the page's cookie session (no Authorization
    header) through ``ui_sessions``, else the Bearer PAT through ``pats``; 401 otherwise."""

    def principal(
        request: Request,
        credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)],
    ) -> Principal:
        # The page's cookie session (no Authorization header): the principal of the PAT it was opened with.
        session_id = request.cookies.get(COOKIE)
        if session_id and ui_sessions is not None and "authorization" not in request.headers:
            return api_principal(ui_sessions, request, session_id)
        if credentials is None or credentials.scheme.lower() != "bearer" or not credentials.credentials:
            raise ApiError(
                401,
                "unauthorized",
                "a personal access token is required: send 'Authorization: Bearer <PAT>'",
                headers=_CHALLENGE,
            )
        try:
            return pats.verify(credentials.credentials)
        except AuthError as exc:
            raise ApiError(401, "unauthorized", str(exc), headers=_INVALID_CHALLENGE) from None

    return principal


_NEEDS = {
    Action.READ: "the 'read' permission",
    Action.REVEAL: "the 'reveal' permission (member or admin role)",
    Action.ROTATE: "the 'rotate' permission (admin role)",
    Action.ADMIN: "the admin role",
}


def _allow(
    who: Principal, *actions: Action, environment: str | None = None, everywhere: bool = False
) -> Action:
    """The first of ``actions`` the PAT may do here; 403 when it may do none, or the environment (or, for
    ``everywhere``, any limit to environments) is outside its scope."""
    granted = next((a for a in actions if who.may(a)), None)
    if granted is None:
        raise ApiError(
            403,
            "forbidden",
            f"this action needs {_NEEDS.get(actions[0], repr(actions[0].value))}; your personal access "
            f"token has the {who.role.value} role"
            + (f" limited to {', '.join(sorted(who.allowed))}" if who.actions is not None else ""),
        )
    if everywhere and not who.unscoped:
        raise ApiError(
            403, "forbidden", "this action needs a personal access token that is not limited to environments"
        )
    if environment is not None and not who.covers(environment):
        raise ApiError(403, "forbidden", "your personal access token is not valid for this environment")
    return granted


AUTH_ERRORS = (401, 403)


IN_USE_409: dict[int | str, dict[str, Any]] = {
    409: {
        "model": InUseError | ErrorBody,
        "description": "token_1_in_use (if_unused_seconds: Token 1 was used within the window; its clients "
        "are listed), or another conflict (see the error code)",
    }
}


def build_router(
    deps: Deps,
    pats: PatVerifier,
    ui_sessions: SessionManager | None = None,
    notifier: usage.NotifierProbe | None = None,
) -> APIRouter:
    """The ``/v1`` routes over ``deps``; callers authenticated by ``pats`` (or the page's ``ui_sessions``),
    the progress view and scheduled warnings through ``notifier``. Everything reaches the routes by
    closure, never through ``app.state``."""
    router = APIRouter(prefix="/v1")
    Caller = Annotated[Principal, Depends(principal_of(pats, ui_sessions))]

    def call(function: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        try:
            return function(deps, *args, **kwargs)
        except IssuerError as exc:
            raise _translate(exc) from None

    @router.post(
        "/environments",
        status_code=201,
        response_model=EnvironmentPublic,
        tags=["environments"],
        responses=error_responses(*AUTH_ERRORS, 409, 413, 422),
    )
    def create_environment(body: EnvironmentCreate, who: Caller) -> EnvironmentPublic:
        """Create an environment with its Token 1 and Token 2 (admin)."""
        try:
            new_id: str | None = environment_id(body.org, body.project, body.name)
        except InvalidIdentifier:
            new_id = None  # the handler answers 422
        _allow(who, Action.ADMIN, environment=new_id)
        env = call(
            handlers.create_environment, body.org, body.project, body.name, actor=who.actor, pat_id=who.pat_id
        )
        return _public(env)

    @router.get(
        "/environments",
        response_model=EnvironmentList,
        tags=["environments"],
        responses=error_responses(*AUTH_ERRORS),
    )
    def list_environments(who: Caller) -> EnvironmentList:
        """Every environment the PAT may see (one limited to environments lists only those)."""
        _allow(who, Action.READ, Action.READ_CURRENT)
        found = call(handlers.list_environments, who.environments)
        return EnvironmentList(environments=[_public(e) for e in found])

    @router.get(
        "/environments/{environment_id}",
        response_model=EnvironmentPublic,
        tags=["environments"],
        responses=error_responses(*AUTH_ERRORS, 404, 422),
    )
    def get_environment(environment_id: EnvironmentId, who: Caller, response: Response) -> EnvironmentPublic:
        """One environment (token ids, no token); ``ETag`` is its generation, for ``If-Match`` on rotate."""
        _allow(who, Action.READ, Action.READ_CURRENT, environment=environment_id)
        env = _public(call(handlers.get_environment, environment_id))
        response.headers["ETag"] = f'"{env.generation}"'
        return env

    @router.delete(
        "/environments/{environment_id}",
        status_code=204,
        tags=["environments"],
        responses=error_responses(*AUTH_ERRORS, 404, 422),
    )
    def delete_environment(
        environment_id: EnvironmentId,
        who: Caller,
        purge: Annotated[
            bool,
            Query(description="also free the id for other org/project/name (works on an id already deleted)"),
        ] = False,
    ) -> Response:
        """Delete an environment: both tokens end and a tombstone goes to the topic (admin). A deleted id
        can be created again only with the same org/project/name unless it was purged."""
        _allow(who, Action.ADMIN, environment=environment_id)
        call(handlers.delete_environment, environment_id, actor=who.actor, pat_id=who.pat_id, purge=purge)
        return Response(status_code=204)

    @router.get(
        "/environments/{environment_id}/streaming-tokens",
        response_model=StreamingTokens,
        tags=["tokens"],
        responses=error_responses(*AUTH_ERRORS, 404, 422),
    )
    def show_tokens(
        environment_id: EnvironmentId,
        who: Caller,
        response: Response,
        slot: Annotated[
            int | None,
            Query(ge=1, le=2, description="only this token: 1 (current) or 2 (next; zero-downtime strategy)"),
        ] = None,
    ) -> dict[str, Any]:
        """Display Token 1 and Token 2 (every display is audit-logged; resolvers are not polled here). A
        deployment PAT gets only Token 1, or Token 2 with ``?slot=2``."""
        granted = _allow(who, Action.REVEAL, Action.READ_CURRENT, environment=environment_id)
        if granted is Action.READ_CURRENT and slot is None:
            slot = 1
        view = call(handlers.reveal_tokens, environment_id, actor=who.actor, pat_id=who.pat_id, slot=slot)
        response.headers.update(NO_STORE)
        return with_usage(environment_id, dict(view.to_json()))

    def with_usage(environment_id: str, body: dict[str, Any]) -> dict[str, Any]:
        """Each shown token's ``usage`` (its last use and clients in the window), read after the change
        (or display) committed: a database gone away since leaves it null, not the change an error."""
        shown = [body[name]["token_id"] for name in ("token_1", "token_2") if body.get(name) is not None]
        summaries = call(usage.usage_summaries, environment_id, shown, after_change=True)
        for name in ("token_1", "token_2"):
            if body.get(name) is not None:
                body[name]["usage"] = summaries[body[name]["token_id"]]
        return body

    @router.get(
        "/environments/{environment_id}/streaming-tokens/usage",
        response_model=UsageView,
        tags=["tokens"],
        responses=error_responses(*AUTH_ERRORS, 404, 422),
    )
    def token_usage(environment_id: EnvironmentId, who: Caller) -> dict[str, Any]:
        """Who uses which token: per token its last use and the clients seen within the window (address,
        user agent, deployment id, source), and per deployment (agents' heartbeats) the token it runs with
        — the readiness view before a rotation. No token is shown; not audit-logged."""
        _allow(who, Action.READ, Action.READ_CURRENT, environment=environment_id)
        result: dict[str, Any] = call(usage.usage_view, environment_id)
        return result

    @router.get(
        "/environments/{environment_id}/streaming-tokens/progress",
        response_model=ProgressView,
        tags=["tokens"],
        responses=error_responses(*AUTH_ERRORS, 404, 422),
    )
    def token_progress(environment_id: EnvironmentId, who: Caller) -> dict[str, Any]:
        """The latest change's progress, live: the broker, every resolver replica (polled now), and the
        deployments the notifier notified and that acknowledged (``deployments`` null with a reason when
        the notifier cannot be asked). Not audit-logged."""
        _allow(who, Action.READ, Action.READ_CURRENT, environment=environment_id)
        result: dict[str, Any] = call(usage.progress, environment_id, notifier)
        return result

    schedule_path = "/environments/{environment_id}/rotation-schedule"

    @router.get(
        schedule_path,
        response_model=SchedulePublic,
        tags=["schedule"],
        responses=error_responses(*AUTH_ERRORS, 404, 422),
    )
    def get_schedule(environment_id: EnvironmentId, who: Caller) -> dict[str, Any]:
        """The environment's scheduled rotation (404: none)."""
        _allow(who, Action.READ, environment=environment_id)
        result: dict[str, Any] = call(usage.get_schedule, environment_id)
        return result

    @router.put(
        schedule_path,
        response_model=SchedulePublic,
        tags=["schedule"],
        responses=error_responses(*AUTH_ERRORS, 404, 413, 422),
    )
    def put_schedule(environment_id: EnvironmentId, body: ScheduleCreate, who: Caller) -> dict[str, Any]:
        """Rotate every ``every_days`` (after the last rotation), only once Token 1 was unused for
        ``unused_window_seconds``, or anyway ``deadline_days`` after it was due; subscribed deployments
        are warned ``warn_before_seconds`` ahead (admin; audited; the rotation is audited with actor
        ``scheduler``)."""
        _allow(who, Action.ROTATE, environment=environment_id)
        result: dict[str, Any] = call(
            usage.set_schedule,
            environment_id,
            body.model_dump(),
            actor=who.actor,
            pat_id=who.pat_id,
            replace_all=True,
        )
        return result

    @router.patch(
        schedule_path,
        response_model=SchedulePublic,
        tags=["schedule"],
        responses=error_responses(*AUTH_ERRORS, 404, 413, 422),
    )
    def patch_schedule(environment_id: EnvironmentId, body: ScheduleFields, who: Caller) -> dict[str, Any]:
        """Change some fields of the schedule (admin; 404 without one). ``deadline_days: null`` removes
        the deadline."""
        _allow(who, Action.ROTATE, environment=environment_id)
        given = body.model_dump(exclude_unset=True)
        for name, value in given.items():
            if value is None and name != "deadline_days":
                raise ApiError(422, "invalid_request", f"{name} cannot be null")
        result: dict[str, Any] = call(
            usage.set_schedule, environment_id, given, actor=who.actor, pat_id=who.pat_id, replace_all=False
        )
        return result

    @router.delete(
        schedule_path,
        status_code=204,
        tags=["schedule"],
        responses=error_responses(*AUTH_ERRORS, 404, 422),
    )
    def delete_schedule(environment_id: EnvironmentId, who: Caller) -> Response:
        """Stop rotating this environment on a schedule (admin; audited)."""
        _allow(who, Action.ROTATE, environment=environment_id)
        call(usage.delete_schedule, environment_id, actor=who.actor, pat_id=who.pat_id)
        return Response(status_code=204)

    @router.get(
        "/environments/{environment_id}/streaming-tokens/propagation",
        response_model=PropagationState,
        tags=["tokens"],
        responses=error_responses(*AUTH_ERRORS, 404, 422),
    )
    def token_propagation(environment_id: EnvironmentId, who: Caller) -> PropagationState:
        """Whether the broker and every resolver replica accept the current tokens yet (the resolvers are
        polled now, each for at most STREAMTOKEN_ISSUER_RESOLVER_TIMEOUT_S; no token is shown; not
        audit-logged)."""
        _allow(who, Action.READ, Action.READ_CURRENT, environment=environment_id)
        state = call(handlers.propagation, environment_id)
        return PropagationState(environment_id=environment_id, generation=state.generation, **state.to_json())

    @router.post(
        "/environments/{environment_id}/streaming-tokens/rotate",
        response_model=StreamingTokens,
        tags=["tokens"],
        responses={**error_responses(*AUTH_ERRORS, 404, 412, 413, 422), **IN_USE_409},
    )
    def rotate_tokens(
        environment_id: EnvironmentId,
        who: Caller,
        response: Response,
        body: RotateRequest | None = None,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        if_match: Annotated[
            str | None, Header(max_length=40, description='the generation expected ("3" or 3); else 412')
        ] = None,
    ) -> dict[str, Any]:
        """Rotate: Token 1 is deactivated (or kept for the grace period), Token 2 becomes Token 1, a new
        Token 2 is issued (admin). The same ``Idempotency-Key`` returns the same result and rotates once;
        ``If-Match`` (or ``expected_generation``) rotates only from that generation (412 otherwise);
        ``if_unused_seconds`` only if Token 1 was unused that long (409 ``token_1_in_use`` with its
        ``clients`` otherwise, unless ``force``)."""
        _allow(who, Action.ROTATE, environment=environment_id)
        request = body or RotateRequest()
        view = call(
            handlers.rotate_tokens,
            environment_id,
            actor=who.actor,
            pat_id=who.pat_id,
            grace_seconds=request.grace_period_seconds,
            idempotency_key=_key(idempotency_key),
            expected_generation=_expected(if_match, request.expected_generation),
            if_unused_seconds=request.if_unused_seconds,
            force=request.force,
        )
        response.headers.update(NO_STORE)
        return with_usage(environment_id, dict(view.to_json()))

    @router.post(
        "/environments/{environment_id}/streaming-tokens/revoke",
        response_model=StreamingTokens,
        tags=["tokens"],
        responses=error_responses(*AUTH_ERRORS, 404, 409, 412, 422),
    )
    def revoke_tokens(
        environment_id: EnvironmentId,
        who: Caller,
        response: Response,
        idempotency_key: Annotated[str | None, Header(max_length=200)] = None,
        if_match: Annotated[str | None, Header(max_length=40)] = None,
    ) -> dict[str, Any]:
        """Emergency revocation: both tokens (and any in grace) end now, two new ones are issued (admin)."""
        _allow(who, Action.ROTATE, environment=environment_id)
        view = call(
            handlers.revoke_tokens,
            environment_id,
            actor=who.actor,
            pat_id=who.pat_id,
            idempotency_key=_key(idempotency_key),
            expected_generation=_expected(if_match, None),
        )
        response.headers.update(NO_STORE)
        return with_usage(environment_id, dict(view.to_json()))

    @router.get(
        "/admin/audit",
        response_model=AuditLog,
        tags=["admin"],
        responses=error_responses(*AUTH_ERRORS, 422),
    )
    def audit(
        who: Caller,
        environment_id: Annotated[
            str | None, Query(max_length=ENVIRONMENT_ID_MAX, pattern=_ENV_ID_PATTERN)
        ] = None,
        limit: Annotated[int, Query(ge=1, le=1000)] = 100,
    ) -> AuditLog:
        """The audit log, newest first: who created, displayed, rotated, revoked or deleted what (admin; a
        PAT limited to environments must name one of them)."""
        if environment_id is not None:
            try:
                validate_environment_id(environment_id)
            except InvalidIdentifier as exc:
                raise ApiError(422, "invalid_environment_id", str(exc)) from None
        _allow(who, Action.ADMIN, environment=environment_id, everywhere=environment_id is None)
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
                    pat_id=e.pat_id,
                )
                for e in entries
            ]
        )

    @router.post(
        "/admin/republish",
        status_code=202,
        response_model=RepublishResult,
        tags=["admin"],
        responses=error_responses(*AUTH_ERRORS),
    )
    def republish(who: Caller) -> RepublishResult:
        """Publish the current state of every environment again (after a broker lost its data) (admin)."""
        _allow(who, Action.ADMIN, everywhere=True)
        return RepublishResult(**call(handlers.republish_all, actor=who.actor, pat_id=who.pat_id))

    @router.post(
        "/pats",
        status_code=201,
        response_model=PatCreated,
        tags=["pats"],
        responses=error_responses(*AUTH_ERRORS, 404, 413, 422),
    )
    def create_pat(body: PatCreate, who: Caller, response: Response) -> dict[str, Any]:
        """Mint a PAT (admin): the answer's ``token`` is shown this once; the issuer keeps only its record."""
        _allow(who, Action.ADMIN, everywhere=True)
        record, token = call(
            handlers.create_pat,
            body.subject,
            body.role,
            actor=who.actor,
            pat_id=who.pat_id,
            environments=body.environments,
            actions=body.actions,
            ttl=timedelta(days=body.ttl_days) if body.ttl_days is not None else None,
        )
        response.headers.update(NO_STORE)
        return {**_pat_public(record), "token": token}

    @router.get("/pats", response_model=PatList, tags=["pats"], responses=error_responses(*AUTH_ERRORS, 422))
    def list_pats(
        who: Caller,
        limit: Annotated[int, Query(ge=1, le=500)] = 100,
        after: Annotated[str | None, Query(max_length=64, pattern="^[0-9a-f]{1,64}$")] = None,
    ) -> PatList:
        """PATs oldest first, revoked and expired ones included (never a token) (admin)."""
        _allow(who, Action.ADMIN, everywhere=True)
        found: list[PatRecord] = call(handlers.list_pats, limit + 1, after)
        page = found[:limit]
        return PatList(
            pats=[PatPublic(**_pat_public(r)) for r in page],
            next=page[-1].jti if len(found) > limit else None,
        )

    @router.delete(
        "/pats/{pat_id}",
        response_model=PatPublic,
        tags=["pats"],
        responses=error_responses(*AUTH_ERRORS, 404, 422),
    )
    def revoke_pat(
        pat_id: Annotated[str, Path(min_length=1, max_length=64, pattern="^[0-9a-f]{1,64}$")], who: Caller
    ) -> PatPublic:
        """Revoke a PAT (admin): refused at once here, within STREAMTOKEN_ISSUER_PAT_CACHE_TTL_S elsewhere."""
        _allow(who, Action.ADMIN, everywhere=True)
        record = call(handlers.revoke_pat, pat_id, actor=who.actor, pat_id=who.pat_id)
        return PatPublic(**_pat_public(record))

    return router


def _expected(if_match: str | None, body_value: int | None) -> int | None:
    """The generation an ``If-Match`` header (``3``, ``"3"``, ``W/"3"``; ``*``: any) or the body expects."""
    header: int | None = None
    if if_match is not None:
        value = if_match.strip().removeprefix("W/").strip('"')
        if value != "*":
            if (
                not (value.isascii() and value.isdigit() and len(value) <= 19)
                or not 1 <= int(value) <= MAX_GENERATION
            ):
                raise ApiError(
                    422, "invalid_request", 'If-Match must be the generation expected, e.g. If-Match: "3"'
                )
            header = int(value)
    if header is not None and body_value is not None and header != body_value:
        raise ApiError(422, "invalid_request", "If-Match and expected_generation disagree; send one of them")
    return header if header is not None else body_value


def _key(value: str | None) -> str | None:
    if value is None:
        return None
    value = value.strip()
    if not value or not value.isprintable():
        raise ApiError(422, "invalid_request", "Idempotency-Key must be 1-200 printable characters")
    return value
