"""Where the agent keeps the management key of its subscription, so that an agent started again for the
same deployment (after a crash, a reboot, a rescheduled pod) can register it again (the notifier asks for
the key, ``X-Subscription-Key``).

One file per (notifier, environment, deployment), mode 0600 in a 0700 directory; the name is a digest, the
content is the key alone. A child running as the agent's user could read it if it knew the path: at most it
could then manage its own deployment's subscription.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path


def default_directory() -> Path:
    """``$STREAMTOKEN_AGENT_STATE_DIR``, else ``$XDG_STATE_HOME/streamtoken/agent`` (XDG_STATE_HOME
    defaults to ``~/.local/state``)."""
    explicit = os.environ.get("STREAMTOKEN_AGENT_STATE_DIR")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_STATE_HOME") or os.path.expanduser("~/.local/state")
    return Path(base) / "streamtoken" / "agent"


class SubscriptionKeys:
    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def _path(self, notifier_url: str, environment_id: str, deployment_id: str) -> Path:
        name = hashlib.sha256(f"{notifier_url}\0{environment_id}\0{deployment_id}".encode()).hexdigest()[:32]
        return self.directory / f"{name}.key"

    def load(self, notifier_url: str, environment_id: str, deployment_id: str) -> str | None:
        try:
            return self._path(notifier_url, environment_id, deployment_id).read_text().strip() or None
        except OSError:
            return None

    def save(self, notifier_url: str, environment_id: str, deployment_id: str, key: str) -> None:
        self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        path = self._path(notifier_url, environment_id, deployment_id)
        partial = path.with_suffix(".partial")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(key)
        os.replace(partial, path)

    def forget(self, notifier_url: str, environment_id: str, deployment_id: str) -> None:
        try:
            self._path(notifier_url, environment_id, deployment_id).unlink()
        except FileNotFoundError:
            return
