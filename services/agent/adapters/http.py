"""What the agent's HTTP clients share: reading the ``{"error", "message"}`` body every service answers."""

from __future__ import annotations

import httpx


def error_message(response: httpx.Response, limit: int = 200) -> str:
    """The ``message`` of an error body (``shared.web``'s shape), or ``""``; at most ``limit`` characters."""
    try:
        body = response.json()
    except ValueError:
        return ""
    if not isinstance(body, dict):
        return ""
    return str(body.get("message", ""))[:limit]
