"""The JSON error body every endpoint answers with, and the exception that produces it.

Free of web-framework imports, so light components (the agent's webhook listener) share it.
"""

from __future__ import annotations

from typing import Any

from shared.logs import scrub, scrub_value
from shared.tokens import is_well_formed


class ApiError(Exception):
    """Raise from a handler or route to answer ``status`` with a JSON error body."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        headers: dict[str, str] | None = None,
        extra: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers
        self.extra = extra  # more fields of the error body (e.g. the clients of a 409 token_1_in_use)


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """``{"error": code, "message": sentence, ...}``, with anything shaped like a streaming token redacted:
    error messages often quote the input, and the input may be a token."""
    return {"error": code, "message": scrub(message), **scrub_value(extra)}


MISSING_TOKEN_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="streamtoken"'}
INVALID_TOKEN_CHALLENGE = {"WWW-Authenticate": 'Bearer realm="streamtoken", error="invalid_token"'}


def bearer_streaming_token(authorization: str | None) -> str:
    """The streaming token of an ``Authorization: Bearer <token>`` header, checked for shape (prefix, length,
    checksum) without any lookup; a 401 :class:`ApiError` (``missing_token`` or ``invalid_token``) else."""
    scheme, _, token = (authorization or "").partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise ApiError(
            401,
            "missing_token",
            "send the environment's streaming token as 'Authorization: Bearer <token>'",
            MISSING_TOKEN_CHALLENGE,
        )
    if not is_well_formed(token):
        raise ApiError(
            401,
            "invalid_token",
            "the bearer token is not a well-formed streaming token",
            INVALID_TOKEN_CHALLENGE,
        )
    return token
