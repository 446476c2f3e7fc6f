"""Asks the notifier about an environment's rotations (the progress view) and has it send a scheduled
rotation's warning, over httpx with the notifier's internal key (``X-Streamtoken-Internal-Key``), never a
streaming token: these calls are no usage of any token."""

from __future__ import annotations

from typing import Any
from urllib.parse import quote

import httpx

from services.issuer.usage import NotifierUnavailable

INTERNAL_KEY_HEADER = "X-Streamtoken-Internal-Key"


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
        self._client = httpx.Client(
            base_url=self.url,
            headers={INTERNAL_KEY_HEADER: internal_key} if internal_key else {},
            timeout=httpx.Timeout(timeout_s),
            transport=transport,
            follow_redirects=False,
        )

    def _call(self, method: str, path: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = self._client.request(method, path, **kwargs)
        except httpx.TimeoutException as exc:
            raise NotifierUnavailable(f"the notifier timed out ({type(exc).__name__})") from None
        except httpx.HTTPError as exc:
            raise NotifierUnavailable(f"the notifier is unreachable ({type(exc).__name__})") from None
        if response.status_code in (401, 403):
            raise NotifierUnavailable(
                f"{response.status_code}: the notifier wants another internal key "
                "(STREAMTOKEN_ISSUER_NOTIFIER_INTERNAL_KEY = its STREAMTOKEN_NOTIFIER_INTERNAL_KEY)"
            )
        if response.status_code not in (200, 201, 202):
            raise NotifierUnavailable(f"HTTP {response.status_code} from the notifier")
        try:
            body = response.json()
        except ValueError:
            raise NotifierUnavailable("the notifier's answer is not JSON") from None
        if not isinstance(body, dict):
            raise NotifierUnavailable("unexpected answer from the notifier")
        return body

    def rotations(self, environment_id: str) -> dict[str, Any]:
        return self._call(
            "GET", f"/v1/environments/{quote(environment_id, safe='')}/rotations", params={"limit": 10}
        )

    def warn(self, environment_id: str, notice: dict[str, Any]) -> int:
        body = self._call("POST", f"/v1/environments/{quote(environment_id, safe='')}/notices", json=notice)
        try:
            return int(body.get("queued", 0))
        except (TypeError, ValueError):
            raise NotifierUnavailable("unexpected answer from the notifier") from None

    def close(self) -> None:
        self._client.close()
