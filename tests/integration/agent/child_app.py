"""A tiny deployment for the agent's tests: records what it was started with and what it was told.

Configured by variables: CHILD_LOG (JSON lines written here), CHILD_TOKEN_VAR (which variable holds the
token; default Quix__Sdk__Token), CHILD_TOKEN_FILE (a token file to read), CHILD_CRASHES (a counter file:
crash with status 3 while it holds a number > 0), CHILD_TERM_STATUS (exit status on SIGTERM),
CHILD_IGNORE_TERM (ignore SIGTERM), CHILD_SOURCE_VAR (a variable whose value to record as ``source_value``),
CHILD_PROBE (before "start", record as "probe" what a hostile deployment finds of the agent's PAT: the
agent's /proc environ, mem and command line, and every PAT file it can learn the path of).
"""

import json
import os
import signal
import sys
import time
from pathlib import Path

LOG = Path(os.environ["CHILD_LOG"])


def record(event: str, **fields: object) -> None:
    with LOG.open("a") as handle:
        handle.write(json.dumps({"event": event, "pid": os.getpid(), "t": time.time(), **fields}) + "\n")


def file_token() -> str | None:
    path = os.environ.get("CHILD_TOKEN_FILE")
    return Path(path).read_text().strip() if path and Path(path).exists() else None


def on_term(signum: int, frame: object) -> None:
    record("term")
    sys.exit(int(os.environ.get("CHILD_TERM_STATUS", "0")))


def on_hup(signum: int, frame: object) -> None:
    record("hup", file_token=file_token())


def _read(path: str) -> str:
    try:
        with open(path, "rb") as handle:
            return handle.read(1 << 16).decode(errors="replace")
    except OSError as exc:
        return f"<{exc.strerror}>"


def probe() -> None:
    agent = os.getppid()
    environ = _read(f"/proc/{agent}/environ")
    cmdline = _read(f"/proc/{agent}/cmdline").split("\0")
    paths = [os.environ.get("STREAMTOKEN_PAT_FILE")]
    paths += [v.split("=", 1)[1] for v in environ.split("\0") if v.startswith("STREAMTOKEN_PAT_FILE=")]
    paths += [cmdline[i + 1] for i, v in enumerate(cmdline[:-1]) if v == "--pat-file"]
    paths += [v.split("=", 1)[1] for v in cmdline if v.startswith("--pat-file=")]
    record(
        "probe",
        agent=agent,
        environ=environ,
        mem=_read(f"/proc/{agent}/mem")[:20],
        cmdline=cmdline,
        pat_files={path: _read(path) for path in paths if path},
    )


if os.environ.get("CHILD_PROBE"):
    probe()
# Handlers first, then "start": a test that sees "start" may signal the child at once.
signal.signal(signal.SIGTERM, signal.SIG_IGN if os.environ.get("CHILD_IGNORE_TERM") else on_term)
signal.signal(signal.SIGHUP, on_hup)
var = os.environ.get("CHILD_TOKEN_VAR", "Quix__Sdk__Token")
record(
    "start",
    token=os.environ.get(var),
    sdk_token=os.environ.get("Quix__Sdk__Token"),  # noqa: SIM112
    portal=os.environ.get("Quix__Portal__Api"),  # noqa: SIM112
    pat=os.environ.get("STREAMTOKEN_PAT"),
    file_token=file_token(),
    source_value=os.environ.get(os.environ.get("CHILD_SOURCE_VAR", "")),
    streamtoken_variables=sorted(k for k in os.environ if k.startswith("STREAMTOKEN_")),
)
crashes = os.environ.get("CHILD_CRASHES")
if crashes:
    left = int(Path(crashes).read_text())
    if left > 0:
        Path(crashes).write_text(str(left - 1))
        record("crash")
        sys.exit(3)
deadline = time.monotonic() + 120  # never outlive a test run
while time.monotonic() < deadline:
    time.sleep(0.05)
record("timeout")
