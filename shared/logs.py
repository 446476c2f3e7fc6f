"""Structured logging: one JSON object a line, saying what happened to which environment.

A last-line-of-defence processor replaces anything shaped like a streaming token with a redaction, so a
token that slips into an exception message or a field never reaches the log.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

from shared.tokens import TOKEN_PATTERN

REDACTED = "stk_[REDACTED]"
BROKER_PASSWORD_PATTERN = re.compile(r"bkp_[0-9A-Za-z_-]{20,}")  # shared.broker_access.broker_password


def scrub(text: str) -> str:
    return BROKER_PASSWORD_PATTERN.sub("bkp_[REDACTED]", TOKEN_PATTERN.sub(REDACTED, text))


def scrub_value(value: Any) -> Any:
    """``scrub`` applied to every string inside a value (dicts, lists and tuples too)."""
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        return {k: scrub_value(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(scrub_value(v) for v in value)
    return value


def redact_tokens(_: Any, __: str, event_dict: dict[str, Any]) -> dict[str, Any]:
    return {k: scrub_value(v) for k, v in event_dict.items()}


class _ScrubFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.msg, str):  # structlog's own records are dicts, scrubbed by redact_tokens
            record.msg = scrub(record.getMessage())
            record.args = None
        return True


def configure_logging(service: str, level: str = "INFO", json: bool = True) -> None:
    """Route structlog and the standard library through one JSON renderer on stderr."""
    shared_processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.format_exc_info,
        redact_tokens,
    ]
    renderer: Any = structlog.processors.JSONRenderer() if json else structlog.dev.ConsoleRenderer()
    structlog.configure(
        processors=[*shared_processors, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=True,
    )
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
            foreign_pre_chain=shared_processors,
        )
    )
    handler.addFilter(_ScrubFilter())
    root = logging.getLogger()
    root.handlers = [handler]
    root.setLevel(level.upper())
    # One INFO line per HTTP request (every webhook, every whoami) is noise; our own lines say what happened.
    for chatty in ("httpx", "httpcore"):
        logging.getLogger(chatty).setLevel(max(logging.WARNING, root.level))
    structlog.contextvars.bind_contextvars(service=service)


def get_logger(name: str) -> Any:
    return structlog.get_logger(name)
