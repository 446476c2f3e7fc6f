"""How ``streamtoken run`` is configured: option values parsed into the machine's types."""

from __future__ import annotations

import re
from datetime import time

from services.agent.domain import AdoptWindow

_WINDOW = re.compile(r"^\s*(\d{1,2}):(\d{2})\s*-\s*(\d{1,2}):(\d{2})\s*(?:Z|UTC)?\s*$", re.IGNORECASE)
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)([smhd])")
_UNITS = {"s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0}


def parse_window(text: str) -> AdoptWindow:
    """``HH:MM-HH:MM`` (UTC; ``Z`` or ``UTC`` may follow) as an :class:`AdoptWindow`, or ``ValueError``."""
    match = _WINDOW.match(text)
    if match is None:
        raise ValueError(f"{text!r} is not a window HH:MM-HH:MM (UTC), e.g. 02:00-04:00")
    h1, m1, h2, m2 = (int(group) for group in match.groups())
    try:
        return AdoptWindow(time(h1, m1), time(h2, m2))
    except ValueError as exc:
        raise ValueError(f"{text!r}: {exc}") from None


def parse_duration(text: str) -> float:
    """Seconds in ``90``, ``90s``, ``15m``, ``2h``, ``1d`` or ``1h30m``; ``ValueError`` if not one."""
    value = text.strip().lower()
    try:
        seconds = float(value)
    except ValueError:
        parts = _DURATION_PART.findall(value)
        if not parts or "".join(n + u for n, u in parts) != value:
            raise ValueError(f"{text!r} is not a duration such as 90s, 15m, 2h or 1h30m") from None
        seconds = sum(float(number) * _UNITS[unit] for number, unit in parts)
    if seconds < 0:
        raise ValueError(f"{text!r} is negative")
    return seconds
