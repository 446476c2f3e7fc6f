"""One client of our own APIs: the issuer (PAT), the resolver and the notifier (streaming token).

Typed httpx clients whose answers are the services' own pydantic models (``shared.models``), one error
type (:class:`ApiCallError`: the server's error code, message and status, or ``unreachable``), and one
timeout and retry policy (:class:`Policy`). Blocking clients for the CLI, the dev stack and tests; async
ones where the agent and the notifier need them. Importing this loads httpx and pydantic, not the services.
"""

from shared.client.core import (
    BAD_ANSWER,
    DEFAULT_POLICY,
    INTERNAL_KEY_HEADER,
    NO_RETRY,
    UNREACHABLE,
    ApiCallError,
    Call,
    Policy,
)
from shared.client.issuer import AsyncIssuerClient, IssuerClient
from shared.client.notifier import AsyncNotifierClient, NotifierClient, Page
from shared.client.resolver import AsyncResolverClient, ResolverClient

__all__ = [
    "BAD_ANSWER",
    "DEFAULT_POLICY",
    "INTERNAL_KEY_HEADER",
    "NO_RETRY",
    "UNREACHABLE",
    "ApiCallError",
    "AsyncIssuerClient",
    "AsyncNotifierClient",
    "AsyncResolverClient",
    "Call",
    "IssuerClient",
    "NotifierClient",
    "Page",
    "Policy",
    "ResolverClient",
]
