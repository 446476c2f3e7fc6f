"""``python -m services.agent [--] CMD [ARGS]...``: the deployment agent configured by the environment.

The same agent as ``streamtoken run`` (see docs/agent.md): every option is a variable, e.g.
``STREAMTOKEN_ENVIRONMENT``, ``STREAMTOKEN_PAT`` / ``STREAMTOKEN_PAT_FILE``, ``STREAMTOKEN_AGENT_SLOT``,
``STREAMTOKEN_AGENT_ADOPT_WINDOW``, ``STREAMTOKEN_AGENT_LISTEN_HOST``, ``STREAMTOKEN_AGENT_ADVERTISE_URL``.
The arguments are the command, passed on unchanged.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Sequence

PROG = "python -m services.agent"


def main(argv: Sequence[str] | None = None) -> int:
    from pydantic import ValidationError

    from services.agent.bootstrap import protect_pat, run_agent
    from services.agent.settings import AgentSettings, settings_error

    command = list(sys.argv[1:] if argv is None else argv)
    if command[:1] == ["--"]:
        command = command[1:]
    try:
        settings = AgentSettings(command=command)
    except (ValidationError, ValueError) as exc:
        print(f"{PROG}: error: {settings_error(exc)}", file=sys.stderr)
        return 2
    finally:
        protect_pat(os.environ, [], prog=PROG)  # the PAT comes from variables here, never from arguments
    status, error = run_agent(settings, prog=PROG)
    if error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
    return status


if __name__ == "__main__":
    sys.exit(main())
