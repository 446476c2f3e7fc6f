"""The issuer's API (Bearer PAT): ``IssuerClient`` (blocking: the CLI, the dev stack, tests) and
``AsyncIssuerClient`` (the agent). Answers are the issuer's own models (``shared.models.issuer``)."""

from __future__ import annotations

from typing import Any

from shared.client.core import ApiCallError, AsyncClient, Call, SyncClient
from shared.ids import validate_environment_id
from shared.models.issuer import (
    AuditLog,
    EnvironmentList,
    EnvironmentPublic,
    PatCreated,
    PatList,
    PatPublic,
    ProgressView,
    PropagationState,
    RepublishResult,
    SchedulePublic,
    StreamingTokens,
    UsageView,
)


def env_path(environment_id: str, suffix: str = "") -> str:
    """``/v1/environments/{id}{suffix}``; an invalid id raises ``shared.ids.InvalidIdentifier`` (a
    ``ValueError``) before anything is sent."""
    validate_environment_id(environment_id)
    return f"/v1/environments/{environment_id}{suffix}"


class IssuerCalls:
    """The requests, once, for both clients."""

    @staticmethod
    def environment(environment_id: str) -> Call:
        return Call("GET", env_path(environment_id), f"reading environment {environment_id}")

    @staticmethod
    def environments() -> Call:
        return Call("GET", "/v1/environments", "listing environments")

    @staticmethod
    def create_environment(org: str, project: str, name: str) -> Call:
        body = {"org": org, "project": project, "name": name}
        return Call("POST", "/v1/environments", f"creating {org}-{project}-{name}", json=body, ok=(200, 201))

    @staticmethod
    def delete_environment(environment_id: str) -> Call:
        return Call("DELETE", env_path(environment_id), f"deleting {environment_id}", ok=(200, 204))

    @staticmethod
    def streaming_tokens(environment_id: str, slot: int | None = None) -> Call:
        params = {"slot": slot} if slot is not None else None
        path = env_path(environment_id, "/streaming-tokens")
        return Call("GET", path, f"reading the tokens of {environment_id}", params=params)

    @staticmethod
    def usage(environment_id: str) -> Call:
        path = env_path(environment_id, "/streaming-tokens/usage")
        return Call("GET", path, f"reading the usage of {environment_id}")

    @staticmethod
    def progress(environment_id: str) -> Call:
        path = env_path(environment_id, "/streaming-tokens/progress")
        return Call("GET", path, f"reading the rotation progress of {environment_id}")

    @staticmethod
    def propagation(environment_id: str) -> Call:
        path = env_path(environment_id, "/streaming-tokens/propagation")
        return Call("GET", path, f"reading the propagation of {environment_id}")

    @staticmethod
    def rotate(
        environment_id: str,
        body: dict[str, Any],
        *,
        idempotency_key: str,
        expected_generation: int | None = None,
    ) -> Call:
        headers = {"Idempotency-Key": idempotency_key}
        if expected_generation is not None:
            headers["If-Match"] = f'"{expected_generation}"'
        path = env_path(environment_id, "/streaming-tokens/rotate")
        return Call("POST", path, f"rotating {environment_id}", json=body, headers=headers)

    @staticmethod
    def revoke(environment_id: str) -> Call:
        path = env_path(environment_id, "/streaming-tokens/revoke")
        return Call("POST", path, f"revoking the tokens of {environment_id}")

    @staticmethod
    def schedule(environment_id: str, body: dict[str, Any] | None = None) -> Call:
        path = env_path(environment_id, "/rotation-schedule")
        if body is None:
            return Call("GET", path, f"reading the rotation schedule of {environment_id}")
        return Call("PUT", path, f"setting the rotation schedule of {environment_id}", json=body)

    @staticmethod
    def delete_schedule(environment_id: str) -> Call:
        path = env_path(environment_id, "/rotation-schedule")
        return Call("DELETE", path, f"removing the schedule of {environment_id}", ok=(200, 204))

    @staticmethod
    def create_pat(body: dict[str, Any]) -> Call:
        return Call("POST", "/v1/pats", "minting a PAT", json=body, ok=(200, 201))

    @staticmethod
    def pats(limit: int, after: str | None = None) -> Call:
        params: dict[str, Any] = {"limit": limit, **({"after": after} if after else {})}
        return Call("GET", "/v1/pats", "listing PATs", params=params)

    @staticmethod
    def revoke_pat(pat_id: str) -> Call:
        return Call("DELETE", f"/v1/pats/{pat_id}", f"revoking PAT {pat_id}")

    @staticmethod
    def republish() -> Call:
        return Call("POST", "/v1/admin/republish", "republishing", ok=(200, 202))

    @staticmethod
    def audit(limit: int, environment_id: str | None = None) -> Call:
        params: dict[str, Any] = {"limit": limit}
        if environment_id:
            params["environment_id"] = environment_id
        return Call("GET", "/v1/admin/audit", "reading the audit log", params=params)


class IssuerClient(SyncClient):
    """The issuer at ``base_url`` as the PAT ``pat`` sees it (blocking)."""

    service = "issuer"
    calls = IssuerCalls

    def environment(self, environment_id: str) -> EnvironmentPublic:
        return self.get(self.calls.environment(environment_id), EnvironmentPublic)

    def environments(self) -> EnvironmentList:
        return self.get(self.calls.environments(), EnvironmentList)

    def create_environment(self, org: str, project: str, name: str) -> EnvironmentPublic:
        return self.get(self.calls.create_environment(org, project, name), EnvironmentPublic)

    def ensure_environment(self, org: str, project: str, name: str) -> EnvironmentPublic:
        """Create ``org/project/name``, or read it back if it already exists (409)."""
        try:
            return self.create_environment(org, project, name)
        except ApiCallError as exc:
            if exc.status != 409:
                raise
            return self.environment(f"{org}-{project}-{name}")

    def delete_environment(self, environment_id: str) -> None:
        self.send(self.calls.delete_environment(environment_id))

    def streaming_tokens(self, environment_id: str, slot: int | None = None) -> StreamingTokens:
        return self.get(self.calls.streaming_tokens(environment_id, slot), StreamingTokens)

    def usage(self, environment_id: str) -> UsageView:
        return self.get(self.calls.usage(environment_id), UsageView)

    def progress(self, environment_id: str) -> ProgressView:
        return self.get(self.calls.progress(environment_id), ProgressView)

    def propagation(self, environment_id: str) -> PropagationState:
        return self.get(self.calls.propagation(environment_id), PropagationState)

    def rotate(
        self,
        environment_id: str,
        body: dict[str, Any],
        *,
        idempotency_key: str,
        expected_generation: int | None = None,
    ) -> StreamingTokens:
        call = self.calls.rotate(
            environment_id, body, idempotency_key=idempotency_key, expected_generation=expected_generation
        )
        return self.get(call, StreamingTokens)

    def revoke(self, environment_id: str) -> StreamingTokens:
        return self.get(self.calls.revoke(environment_id), StreamingTokens)

    def schedule(self, environment_id: str, body: dict[str, Any] | None = None) -> SchedulePublic:
        return self.get(self.calls.schedule(environment_id, body), SchedulePublic)

    def delete_schedule(self, environment_id: str) -> None:
        self.send(self.calls.delete_schedule(environment_id))

    def create_pat(self, body: dict[str, Any]) -> PatCreated:
        return self.get(self.calls.create_pat(body), PatCreated)

    def pats(self, limit: int = 100, after: str | None = None) -> PatList:
        return self.get(self.calls.pats(limit, after), PatList)

    def revoke_pat(self, pat_id: str) -> PatPublic:
        return self.get(self.calls.revoke_pat(pat_id), PatPublic)

    def republish(self) -> RepublishResult:
        return self.get(self.calls.republish(), RepublishResult)

    def audit(self, limit: int = 50, environment_id: str | None = None) -> AuditLog:
        return self.get(self.calls.audit(limit, environment_id), AuditLog)


class AsyncIssuerClient(AsyncClient):
    """The calls the agent makes, without blocking its event loop."""

    service = "issuer"
    calls = IssuerCalls

    async def environment(self, environment_id: str) -> EnvironmentPublic:
        return await self.get(self.calls.environment(environment_id), EnvironmentPublic)

    async def streaming_tokens(self, environment_id: str, slot: int | None = None) -> StreamingTokens:
        return await self.get(self.calls.streaming_tokens(environment_id, slot), StreamingTokens)

    async def create_environment(self, org: str, project: str, name: str) -> EnvironmentPublic:
        return await self.get(self.calls.create_environment(org, project, name), EnvironmentPublic)

    async def ensure_environment(self, org: str, project: str, name: str) -> EnvironmentPublic:
        try:
            return await self.create_environment(org, project, name)
        except ApiCallError as exc:
            if exc.status != 409:
                raise
            return await self.environment(f"{org}-{project}-{name}")
