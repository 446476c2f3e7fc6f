"""The child process: started in its own process group so signals reach it and its own children.

On Linux the child also gets ``PR_SET_PDEATHSIG`` (SIGTERM): if the agent dies without stopping it (SIGKILL,
OOM killer), the kernel tells the child to stop instead of leaving it running, orphaned, with the token.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
import time
from contextlib import suppress
from pathlib import Path

from shared.process import die_with_parent

# The agent's own configuration (PAT, and whatever else of streamtoken's runs in the same environment:
# STREAMTOKEN_ISSUER_JWT_SECRET, STREAMTOKEN_KAFKA_SASL_PASSWORD, ...) never reaches the child.
PROTECTED_PREFIX = "STREAMTOKEN_"


def child_environment(
    base: dict[str, str],
    token: str,
    portal_url: str,
    inject_as: str | None,
    token_source_variable: str | None = None,
) -> dict[str, str]:
    """The child's variables: the token in ``Quix__Sdk__Token`` (or ``inject_as``) and the portal URL.

    Every ``STREAMTOKEN_*`` variable is removed, and so is ``token_source_variable`` (``--token-env VAR``):
    the child finds the token in exactly one place, the one the agent keeps current. (When ``inject_as`` is
    that same variable, it holds the token the agent chose.)
    """
    env = {k: v for k, v in base.items() if not k.startswith(PROTECTED_PREFIX) and k != token_source_variable}
    if inject_as:
        env.pop("Quix__Sdk__Token", None)
        env[inject_as] = token
    else:
        env["Quix__Sdk__Token"] = token
    env["Quix__Portal__Api"] = portal_url
    return env


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` so a reader sees the old or the new content, never a mix (0600)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            os.fchmod(handle.fileno(), 0o600)
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with suppress(OSError):
            os.unlink(tmp)
        raise


class Child:
    """One run of the command; ``wait()`` returns its return code and how long it ran."""

    def __init__(self, process: asyncio.subprocess.Process, started: float) -> None:
        self.process = process
        self.started = started
        self._killer: asyncio.TimerHandle | None = None

    @property
    def pid(self) -> int:
        return self.process.pid

    @classmethod
    async def start(cls, argv: list[str], env: dict[str, str]) -> Child:
        process = await asyncio.create_subprocess_exec(
            *argv, env=env, start_new_session=True, preexec_fn=die_with_parent()
        )
        return cls(process, time.monotonic())

    def running(self) -> bool:
        return self.process.returncode is None

    def signal(self, signum: int) -> None:
        """Send ``signum`` to the child's process group (the child and what it started)."""
        if not self.running():
            return
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signum)

    def stop(self, signum: int, kill_after: float) -> None:
        self.signal(signum)
        if self._killer is None:
            self._killer = asyncio.get_running_loop().call_later(kill_after, self.kill)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    async def wait(self) -> tuple[int, float]:
        returncode = await self.process.wait()
        if self._killer is not None:
            self._killer.cancel()
        # The group may outlive its leader; leave none of it behind.
        with suppress(ProcessLookupError, PermissionError):
            os.killpg(self.process.pid, signal.SIGKILL)
        return returncode, time.monotonic() - self.started
