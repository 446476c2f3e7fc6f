"""Where the agent obtains the streaming token: the issuer (with a PAT), a variable, or a file."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Protocol

import httpx

from services.agent.adapters.issuer import IssuerClient, IssuerError
from services.agent.domain import Credential
from shared.tokens import is_well_formed


class TokenUnavailable(Exception):
    """The token could not be obtained; ``permanent`` when retrying cannot help (a refused PAT)."""

    def __init__(self, message: str, permanent: bool = False) -> None:
        super().__init__(message)
        self.message = message
        self.permanent = permanent


class TokenSource(Protocol):
    describe: str

    async def fetch(self) -> Credential: ...


def _check_shape(token: str, where: str) -> str:
    token = token.strip()
    if not token:
        raise TokenUnavailable(f"{where} is empty", permanent=True)
    if not is_well_formed(token):
        raise TokenUnavailable(f"{where} does not hold a well-formed streaming token (stk_...)", True)
    return token


class VariableTokenSource:
    """``--token-env VAR``: the token in one of the agent's own environment variables, read once."""

    def __init__(self, name: str, environ: dict[str, str] | None = None) -> None:
        self.name = name
        self.describe = f"variable {name}"
        self._value = (os.environ if environ is None else environ).get(name)

    async def fetch(self) -> Credential:
        if self._value is None:
            raise TokenUnavailable(f"environment variable {self.name} is not set", permanent=True)
        return Credential(_check_shape(self._value, f"environment variable {self.name}"))


class FileTokenSource:
    """``--token-file PATH``: the token in a file, read again every time (an operator may update it)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.describe = f"file {path}"

    async def fetch(self) -> Credential:
        try:
            text = self.path.read_text(encoding="utf-8")
        except OSError as exc:
            raise TokenUnavailable(f"cannot read token file {self.path}: {exc.strerror}", True) from None
        return Credential(_check_shape(text, f"token file {self.path}"))


class IssuerTokenSource:
    """``GET {issuer}/v1/environments/{id}/streaming-tokens`` with a PAT; keeps the token of one slot."""

    def __init__(
        self,
        issuer_url: str,
        pat: str,
        environment_id: str,
        slot: int = 1,
        client: httpx.AsyncClient | None = None,
        timeout: float = 10.0,
        *,
        issuer: IssuerClient | None = None,
    ) -> None:
        self.issuer = issuer or IssuerClient(issuer_url, pat, client, timeout)
        self.issuer_url = self.issuer.issuer_url
        self.environment_id = environment_id
        self.slot = slot
        self.describe = f"issuer {self.issuer_url} (environment {environment_id}, token {slot})"

    async def fetch(self) -> Credential:
        try:
            body = await self.issuer.streaming_tokens(self.environment_id, self.slot)
        except IssuerError as exc:
            raise self._unavailable(exc) from None
        return self._credential_from(body)

    def _unavailable(self, exc: IssuerError) -> TokenUnavailable:
        env = self.environment_id
        status = exc.status
        if status is None:
            return TokenUnavailable(exc.message)  # unreachable: transient
        if status == 401:
            return TokenUnavailable(
                "the issuer refused the PAT (401): check STREAMTOKEN_PAT / --pat-file / --pat", permanent=True
            )
        if status == 403:
            return TokenUnavailable(
                f"the PAT may not read the streaming tokens of environment {env} (403)", permanent=True
            )
        if status == 404:
            return TokenUnavailable(f"environment {env} does not exist at the issuer (404)", permanent=True)
        if status >= 500:
            return TokenUnavailable(f"the issuer failed to answer ({status})")
        if status == 200:
            return TokenUnavailable(
                f"the issuer's answer for environment {env} is not the expected shape (not JSON)"
            )
        return TokenUnavailable(f"the issuer answered {status} for environment {env}", permanent=True)

    def _credential_from(self, body: dict[str, Any]) -> Credential:
        env = self.environment_id
        if body.get(f"token_{self.slot}") is None and isinstance(body.get("generation"), int):
            # A deployment-scoped PAT may read only the current token (token 1).
            raise TokenUnavailable(
                f"the issuer gave no token {self.slot} for environment {env}: the PAT may read only the "
                "current token (--slot 1), or use a PAT that may read token 2",
                permanent=True,
            )
        try:
            entry = body[f"token_{self.slot}"]
            token = _check_shape(str(entry["token"]), f"the issuer's token {self.slot}")
            return Credential(
                token=token,
                token_id=str(entry.get("token_id")) if entry.get("token_id") else None,
                generation=int(body["generation"]) if body.get("generation") is not None else None,
                environment_id=str(body.get("environment_id") or env),
                slot=self.slot,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            raise TokenUnavailable(
                f"the issuer's answer for environment {env} is not the expected shape ({type(exc).__name__})"
            ) from None
