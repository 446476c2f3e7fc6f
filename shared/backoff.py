"""Capped exponential back-off, the one formula the relay, the notifier and the agent retry with."""

from __future__ import annotations

import random as _random
from collections.abc import Callable


def exponential(attempt: int, initial: float, maximum: float) -> float:
    """``initial``, ``2*initial``, ``4*initial``, ... for attempts 1, 2, 3, ..., at most ``maximum``; 0 before
    the first attempt."""
    if attempt <= 0:
        return 0.0
    return float(min(initial * 2.0 ** min(attempt - 1, 62), maximum))


def equal_jitter(delay: float, random: Callable[[], float] = _random.random) -> float:
    """Half of ``delay`` fixed, half random: retries of many clients spread out, none retries at once."""
    return delay / 2 + random() * delay / 2
