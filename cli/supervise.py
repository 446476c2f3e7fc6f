"""Supervision of the local stack's processes: who died, why, and when to start it again.

``Restarts`` is the pure part (a unit test drives it with plain numbers): capped exponential back-off per
process, forgotten once a process has run for a while. ``exit_reason`` turns a status into words.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field

from shared.backoff import exponential


def exit_reason(returncode: int | None) -> str:
    """``status 3``, ``killed by SIGKILL``, ...: what a ``Popen.returncode`` says about a process's end."""
    if returncode is None:
        return "still running"
    if returncode < 0:
        try:
            return f"killed by {signal.Signals(-returncode).name}"
        except ValueError:
            return f"killed by signal {-returncode}"
    return f"status {returncode}"


@dataclass
class Restarts:
    """When each supervised process may start again: ``initial`` s after its first crash, doubling up to
    ``maximum``; a process that ran ``stable_after`` s before it died starts the count over."""

    initial: float = 0.5
    maximum: float = 30.0
    stable_after: float = 60.0
    attempts: dict[str, int] = field(default_factory=dict)
    due: dict[str, float] = field(default_factory=dict)

    def exited(self, name: str, now: float, ran_for: float) -> float:
        """Record a crash of ``name``; the delay before it may start again."""
        if ran_for >= self.stable_after:
            self.attempts[name] = 0
        self.attempts[name] = self.attempts.get(name, 0) + 1
        delay = exponential(self.attempts[name], self.initial, self.maximum)
        self.due[name] = now + delay
        return delay

    def waiting(self) -> list[str]:
        return sorted(self.due)

    def is_due(self, name: str, now: float) -> bool:
        return name in self.due and now >= self.due[name]

    def started(self, name: str) -> None:
        self.due.pop(name, None)
