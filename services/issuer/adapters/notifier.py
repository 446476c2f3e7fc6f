"""Asks the notifier about an environment's rotations (the progress view) and has it send a scheduled
rotation's warning, through :class:`shared.client.NotifierClient` with the notifier's internal key
(``X-Streamtoken-Internal-Key``), never a streaming token: these calls are no usage of any token. Sent
once (no retry: the progress view answers now, the scheduler asks again on its next pass)."""

from __future__ import annotations

from typing import Any

import httpx
from pydantic import ValidationError

from services.issuer.usage import NotifierUnavailable
from shared.client import BAD_ANSWER, INTERNAL_KEY_HEADER, ApiCallError, NotifierClient, Policy
from shared.models.notifier import NoticeCreate

__all__ = ["INTERNAL_KEY_HEADER", "HttpNotifierProbe"]

ROTATIONS_SHOWN = 10  # the progress view needs the current generation's, which is the newest


def _unavailable(exc: ApiCallError) -> NotifierUnavailable:
    """The one-line reason (no key, no token) the progress view and the schedule's audit show."""
    if exc.unreachable:
        state = "timed out" if exc.timed_out else "is unreachable"
        return NotifierUnavailable(f"the notifier {state} ({exc.message})")
    if exc.status in (401, 403):
        return NotifierUnavailable(
            f"{exc.status}: the notifier wants another internal key "
            "(STREAMTOKEN_ISSUER_NOTIFIER_INTERNAL_KEY = its STREAMTOKEN_NOTIFIER_INTERNAL_KEY)"
        )
    if exc.code == BAD_ANSWER:
        return NotifierUnavailable("unexpected answer from the notifier")
    return NotifierUnavailable(f"HTTP {exc.status} from the notifier")


class HttpNotifierProbe:
    """:class:`services.issuer.usage.NotifierProbe` over HTTP."""

    def __init__(
        self,
        url: str,
        *,
        internal_key: str | None = None,
        timeout_s: float = 2.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._client = NotifierClient(
            self.url,
            policy=Policy(timeout=timeout_s, retries=0),
            transport=transport,
            headers={INTERNAL_KEY_HEADER: internal_key} if internal_key else None,
        )

    def rotations(self, environment_id: str) -> dict[str, Any]:
        try:
            answer = self._client.environment_rotations(environment_id, limit=ROTATIONS_SHOWN)
        except ApiCallError as exc:
            raise _unavailable(exc) from None
        return answer.model_dump(mode="json")

    def warn(self, environment_id: str, notice: dict[str, Any]) -> int:
        try:
            body = NoticeCreate.model_validate(notice)
        except ValidationError as exc:  # as the notifier's 422 would be: the warning stays pending
            raise NotifierUnavailable(
                f"not a notice the notifier takes ({exc.error_count()} errors)"
            ) from None
        try:
            return self._client.notice(environment_id, body).queued
        except ApiCallError as exc:
            raise _unavailable(exc) from None

    def close(self) -> None:
        self._client.close()
