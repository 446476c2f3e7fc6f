"""Keeping the agent's PAT out of its child's reach (the child runs as the same user).

The child could otherwise read the PAT from ``/proc/<agent>/environ`` (the environment the agent was started
with: removing a variable from ``os.environ`` does not change it), from ``/proc/<agent>/mem``, from
``/proc/<agent>/cmdline`` (``--pat PAT``, or the path of ``--pat-file``), or from a file whose path it
learns there. So the agent, once it has read the PAT:

- overwrites those arguments in its own command line (``/proc/self/mem``), so later readers see ``***``;
- forgets ``STREAMTOKEN_PAT`` and ``STREAMTOKEN_PAT_FILE`` in ``os.environ``;
- makes itself non-dumpable (``prctl(PR_SET_DUMPABLE, 0)``): its ``/proc/<pid>/environ``, ``mem``, ``fd``
  and ``ptrace`` are then closed to processes of the same user (not to root, nor to a process with
  ``CAP_SYS_PTRACE``). The child's own ``execve`` makes the child dumpable again, which is its business.

The arguments must be overwritten before ``prctl``: a non-dumpable process may no longer open its own
``/proc/self/mem`` as a user other than root.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import sys
from collections.abc import Iterable, MutableMapping

_PR_SET_DUMPABLE = 4
PAT_VARIABLES = ("STREAMTOKEN_PAT", "STREAMTOKEN_PAT_FILE")


def _argument_area() -> tuple[int, int]:
    """``arg_start`` and ``arg_end`` of this process (fields 48 and 49 of ``/proc/self/stat``)."""
    with open("/proc/self/stat", "rb") as handle:
        stat = handle.read()
    fields = stat[stat.rindex(b")") + 2 :].split()  # the name in parentheses may hold spaces
    return int(fields[45]), int(fields[46])


def hide_arguments(values: Iterable[str]) -> bool:
    """Overwrite every command-line argument equal to one of ``values`` (or ``--opt=value``) with ``*``.

    The length stays the same, so the argument list keeps its shape. ``False`` when it could not be done
    (not Linux, ``/proc`` not mounted, the area not writable); nothing else changes then.
    """
    secrets = {value.encode() for value in values if value}
    if not secrets or not sys.platform.startswith("linux"):
        return not secrets
    try:
        start, end = _argument_area()
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            area = mem.read(end - start)
            offset = 0
            for argument in area.split(b"\0"):
                for secret in secrets:
                    if argument == secret or argument.endswith(b"=" + secret):
                        mem.seek(start + offset + len(argument) - len(secret))
                        mem.write(b"*" * len(secret))
                offset += len(argument) + 1
    except (OSError, ValueError, IndexError):
        return False
    return True


def forget_variables(environ: MutableMapping[str, str], names: Iterable[str] = PAT_VARIABLES) -> None:
    """Remove ``names`` from ``environ`` (``os.environ``: what later children and the runtime copy)."""
    for name in names:
        environ.pop(name, None)


def make_undumpable() -> bool:
    """``prctl(PR_SET_DUMPABLE, 0)`` on Linux: ``/proc/self/environ``, ``mem`` and ptrace closed to the user.

    ``False`` where it is not available or failed.
    """
    if not sys.platform.startswith("linux"):
        return False
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        prctl = ctypes.CDLL(name, use_errno=True).prctl
    except (OSError, AttributeError):
        return False
    return int(prctl(_PR_SET_DUMPABLE, 0, 0, 0, 0)) == 0
