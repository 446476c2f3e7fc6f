"""What the agent's HTTP adapters share: which URLs would send a secret over the network in clear.

(Error bodies are read by ``shared.client``.)
"""

from __future__ import annotations

import ipaddress
from urllib.parse import urlsplit


def cleartext_host(url: str) -> str | None:
    """The host an ``http://`` URL would reach over the network in clear, or ``None``.

    ``None`` for any other scheme and for loopback (``localhost``, ``*.localhost``, ``127.0.0.0/8``,
    ``::1``): a PAT or a streaming token sent there does not leave the machine. A name is not resolved.
    """
    parts = urlsplit(url.strip())
    if parts.scheme.lower() != "http":
        return None
    host = (parts.hostname or "").rstrip(".").lower()
    if host == "localhost" or host.endswith(".localhost"):
        return None
    try:
        if ipaddress.ip_address(host).is_loopback:
            return None
    except ValueError:
        pass
    return host or url
