"""The JSON error body every endpoint answers with, and the exception that produces it.

Free of web-framework imports, so light components (the agent's webhook listener) share it.
"""

from __future__ import annotations

from typing import Any

from shared.logs import scrub, scrub_value


class ApiError(Exception):
    """Raise from a handler or route to answer ``status`` with a JSON error body."""

    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message
        self.headers = headers


def error_body(code: str, message: str, **extra: Any) -> dict[str, Any]:
    """``{"error": code, "message": sentence, ...}``, with anything shaped like a streaming token redacted:
    error messages often quote the input, and the input may be a token."""
    return {"error": code, "message": scrub(message), **scrub_value(extra)}
