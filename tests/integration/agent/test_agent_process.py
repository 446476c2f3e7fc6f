"""``streamtoken run`` as a real process, with a real child and the real issuer, resolver and notifier
(without Kafka: real_services.py)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
import pytest

from cli.agent import PAT_ON_COMMAND_LINE
from shared.tokens import generate_token
from tests.integration.agent.conftest import (
    REPO,
    WAIT,
    RunningAgent,
    alive,
    wait_until,
)
from tests.integration.agent.real_services import (
    RealServices,
    agent_args,
    log_lines,
    sender,
    start_real_services,
)


def subscribed(real: RealServices, agent: RunningAgent) -> dict[str, Any]:
    wait_until(lambda: log_lines(agent.stderr(), "subscribed"), "the subscription at the notifier")
    (sub,) = real.subscriptions()
    return sub


def test_reload_with_a_signal_keeps_the_child_running(
    real: RealServices, tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    agent = start_agent(
        agent_args(real, tmp_path, "--slot", "2", "--inject-as", "MY_TOKEN", "--adopt", "off"),
        {"CHILD_TOKEN_VAR": "MY_TOKEN"},
    )
    first = wait_until(agent.starts, "the child to start")[0]
    old_token_2 = real.tokens()["token_2"]["token"]
    assert first["token"] == old_token_2
    assert first["sdk_token"] is None  # --inject-as puts it in MY_TOKEN instead
    assert subscribed(real, agent)["action"] == "reload"

    after = real.rotate()
    wait_until(lambda: agent.records("hup"), "the child to get SIGHUP")
    wait_until(lambda: real.acknowledged() == [2], "the acknowledgement")
    assert len(agent.starts()) == 1
    assert alive(first["pid"])
    assert old_token_2 == after["token_1"]["token"]  # what the child holds is still valid: no downtime


def test_reload_with_a_token_file_rewrites_it_atomically(
    real: RealServices, tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    token_file = tmp_path / "secrets" / "token"
    agent = start_agent(
        agent_args(real, tmp_path, "--slot", "2", "--action", "reload", "--token-file-out", str(token_file)),
        {"CHILD_TOKEN_FILE": str(token_file)},
    )
    first = wait_until(agent.starts, "the child to start")[0]
    before = real.tokens()
    assert first["file_token"] == before["token_2"]["token"]
    assert first["sdk_token"] == before["token_2"]["token"]
    subscribed(real, agent)

    after = real.rotate()
    wait_until(lambda: real.acknowledged() == [2], "the acknowledgement")
    assert token_file.read_text().strip() == after["token_2"]["token"]  # the new Token 2
    assert oct(token_file.stat().st_mode & 0o777) == "0o600"
    assert sorted(p.name for p in token_file.parent.iterdir()) == ["token"]
    assert agent.records("hup") == []  # with a token file, no signal unless asked
    assert len(agent.starts()) == 1
    assert alive(first["pid"])


def test_crashed_child_is_restarted_with_backoff(
    tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    counter = tmp_path / "crashes"
    counter.write_text("2")
    agent = start_agent(
        ["--token-env", "DEMO_TOKEN", "--no-subscribe", "--backoff-initial", "0.3"],
        {"CHILD_CRASHES": str(counter)},
        DEMO_TOKEN=generate_token(),
    )
    starts = wait_until(lambda: agent.starts()[2:] and agent.starts(), "the third start")
    assert [r["event"] for r in agent.records()][:5] == ["start", "crash", "start", "crash", "start"]
    crashes = agent.records("crash")
    gap_1 = starts[1]["t"] - crashes[0]["t"]
    gap_2 = starts[2]["t"] - crashes[1]["t"]
    assert gap_1 >= 0.3
    assert gap_2 >= 0.6  # the delay doubled
    assert agent.process.poll() is None
    assert '"event": "child_crashed"' in agent.stderr()


def test_sigterm_stops_the_child_and_the_agent_exits_with_its_status(
    real: RealServices, tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    agent = start_agent(agent_args(real, tmp_path), {"CHILD_TERM_STATUS": "7"})
    child = wait_until(agent.starts, "the child to start")[0]
    subscribed(real, agent)
    agent.process.send_signal(signal.SIGTERM)
    assert agent.wait_exit() == 7
    assert agent.records("term")
    assert not alive(child["pid"])
    assert real.subscriptions() == []


def test_a_child_ignoring_sigterm_is_killed_after_the_stop_timeout(
    start_agent: Callable[..., RunningAgent],
) -> None:
    agent = start_agent(
        ["--token-env", "DEMO_TOKEN", "--no-subscribe", "--stop-timeout", "0.5"],
        {"CHILD_IGNORE_TERM": "1"},
        DEMO_TOKEN=generate_token(),
    )
    child = wait_until(agent.starts, "the child to start")[0]  # it records "start" after its handlers
    agent.process.send_signal(signal.SIGTERM)
    assert agent.wait_exit() == 128 + signal.SIGKILL
    assert not alive(child["pid"])


def test_a_refused_pat_is_one_clear_line(
    real: RealServices, tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    args = agent_args(real, tmp_path)
    at = args.index("--pat-file")
    args[at : at + 2] = ["--pat", "pat-wrong"]
    agent = start_agent(args)
    assert agent.wait_exit() == 1
    lines = agent.stderr().splitlines()
    assert lines[-1] == (
        "streamtoken run: error: the issuer refused the PAT (401): check STREAMTOKEN_PAT / --pat-file / --pat"
    )
    assert lines[0] == PAT_ON_COMMAND_LINE  # --pat as an argument is visible in the process list
    assert agent.starts() == []


def gone(pid: int) -> bool:
    """Not running (a zombie waiting for its new parent to reap it counts as gone)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_the_child_gets_no_streamtoken_variable_and_not_the_token_source(
    start_agent: Callable[..., RunningAgent],
) -> None:
    token = generate_token()
    agent = start_agent(
        ["--token-env", "DEPLOY_TOKEN", "--no-subscribe"],
        {"CHILD_SOURCE_VAR": "DEPLOY_TOKEN"},
        DEPLOY_TOKEN=token,
        STREAMTOKEN_PAT="pat-secret",
        STREAMTOKEN_ISSUER_JWT_SECRET="jwt-secret",
        STREAMTOKEN_ISSUER_ENCRYPTION_KEY="encryption-key",
        STREAMTOKEN_KAFKA_SASL_PASSWORD="kafka-password",
    )
    start = wait_until(agent.starts, "the child to start")[0]
    assert start["token"] == token  # in Quix__Sdk__Token
    assert start["streamtoken_variables"] == []
    assert start["source_value"] is None  # DEPLOY_TOKEN itself is not passed on
    assert PAT_ON_COMMAND_LINE not in agent.stderr()


def test_the_child_dies_with_a_sigkilled_agent(start_agent: Callable[..., RunningAgent]) -> None:
    agent = start_agent(["--token-env", "DEMO_TOKEN", "--no-subscribe"], DEMO_TOKEN=generate_token())
    child = wait_until(agent.starts, "the child to start")[0]
    assert os.getpgid(child["pid"]) == child["pid"]  # still a process group of its own
    agent.process.kill()
    agent.process.wait(WAIT)
    wait_until(lambda: gone(child["pid"]), "the orphaned child to stop", timeout=10)
    assert agent.records("term"), "the child was told with SIGTERM (PR_SET_PDEATHSIG)"


def test_a_pat_file_keeps_the_pat_off_the_command_line(
    real: RealServices, tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    args = agent_args(real, tmp_path)
    pat = (tmp_path / "pat").read_text()
    agent = start_agent(args, STREAMTOKEN_PAT="pat-wrong")  # --pat-file takes precedence
    start = wait_until(agent.starts, "the child to start")[0]
    assert start["token"] == real.tokens()["token_1"]["token"]
    assert start["pat"] is None
    assert pat not in " ".join(psutil.Process(agent.process.pid).cmdline())
    assert str(tmp_path / "pat") not in " ".join(psutil.Process(agent.process.pid).cmdline())
    assert PAT_ON_COMMAND_LINE not in agent.stderr()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--inject-as", "A=B"],
            "streamtoken run: error: --inject-as 'A=B' is not a variable name "
            "(letters, digits and _, not starting with a digit)",
        ),
        (
            ["--pat", "p", "--pat-file", "/nonexistent"],
            "streamtoken run: error: give --pat or --pat-file, not both",
        ),
        (
            ["--pat-file", "/nonexistent/pat"],
            "streamtoken run: error: cannot read the PAT file /nonexistent/pat: No such file or directory",
        ),
    ],
)
def test_bad_options_are_one_line_errors(
    args: list[str], message: str, start_agent: Callable[..., RunningAgent]
) -> None:
    agent = start_agent(["--environment", "acme-telemetry-dev", "--no-subscribe", *args])
    assert agent.wait_exit() == 2
    stderr = agent.stderr()
    assert stderr.strip().splitlines()[-1] == message
    assert "Traceback" not in stderr
    assert agent.starts() == []


def test_a_token_file_out_that_cannot_be_written_says_so(
    tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("")
    target = blocker / "token"
    agent = start_agent(
        ["--token-env", "DEMO_TOKEN", "--no-subscribe", "--token-file-out", str(target)],
        DEMO_TOKEN=generate_token(),
    )
    assert agent.wait_exit() == 1
    last = agent.stderr().strip().splitlines()[-1]
    assert last.startswith(
        f"streamtoken run: error: could not write the token file (--token-file-out): {target}"
    )
    assert "could not start the command" not in agent.stderr()
    assert agent.starts() == []


def test_a_refused_subscription_is_an_error_with_the_notifiers_message_and_the_child_runs(
    serve_app: Callable[..., str], tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    real = start_real_services(
        serve_app, tmp_path, notifier={"allowed_webhook_hosts": ("hooks.example.com",)}
    )
    agent = start_agent(agent_args(real, tmp_path))
    child = wait_until(agent.starts, "the child to start")[0]
    line = wait_until(lambda: log_lines(agent.stderr(), "subscribe_refused"), "the subscribe_refused error")[
        0
    ]
    assert line["level"] == "error"
    assert line["status"] == 422
    assert "the webhook host 127.0.0.1 is not allowed" in line["notifier_message"]
    assert "STREAMTOKEN_NOTIFIER_ALLOWED_WEBHOOK_HOSTS" in line["hint"]
    assert line["retry_in"] == 30.0  # slowly: asking again at once will not help
    assert alive(child["pid"])
    began = time.monotonic()
    agent.process.send_signal(signal.SIGTERM)  # stopping does not wait out the retry delay
    assert agent.wait_exit() == 0
    assert time.monotonic() - began < WAIT
    assert real.subscriptions() == []


def test_stopping_during_a_subscribe_request_deletes_what_it_created(
    serve_app: Callable[..., str], tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    real = start_real_services(serve_app, tmp_path, slow_subscribe=1.5)
    agent = start_agent(agent_args(real, tmp_path))
    wait_until(agent.starts, "the child to start")
    assert real.notifier_observed.slow_started.wait(WAIT)
    agent.process.send_signal(signal.SIGTERM)  # while the subscribe request is under way
    assert agent.wait_exit() == 0
    assert real.subscriptions() == [], "a subscription was left behind"
    assert real.notifier_observed.count("DELETE", "") == 1


def test_a_token_file_nobody_updated_is_not_restarted_on_nor_acknowledged_until_it_is(
    real: RealServices, tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    token_file = tmp_path / "token"
    token_file.write_text(real.tokens()["token_1"]["token"] + "\n")
    args = [
        "--token-file", str(token_file), "--notifier-url", real.notifier_url, "--deployment-id", "f1",
        "--portal-url", real.resolver_url, "--state-dir", str(tmp_path / "state"),
        "--backoff-initial", "0.2", "--backoff-max", "1", "--stop-timeout", "5",
    ]  # fmt: skip
    agent = start_agent(args)
    first = wait_until(agent.starts, "the child to start")[0]
    subscribed(real, agent)
    after = real.rotate()
    unchanged = wait_until(
        lambda: log_lines(agent.stderr(), "token_unchanged")[1:], "the token_unchanged error, twice (retried)"
    )
    assert unchanged[0]["level"] == "error"
    assert "update the token file" in unchanged[0]["hint"]
    assert len(agent.starts()) == 1  # not restarted on the token that was rotated out
    assert real.acknowledged() == []
    assert alive(first["pid"])

    token_file.write_text(after["token_1"]["token"] + "\n")  # the operator updates the file
    second = wait_until(lambda: agent.starts()[1:], "the child to restart on the updated file")[0]
    assert second["token"] == after["token_1"]["token"]
    wait_until(lambda: real.acknowledged() == [2], "the acknowledgement")
    for token in (first["token"], second["token"]):
        assert token not in agent.stderr()


# --- finding 2: the child cannot read the agent's PAT (same user) -------------------------------------------

NOBODY = 65534


@dataclass
class Unprivileged:
    user: int | None  # run the agent as this user (None: as ourselves)
    directory: Path  # that user may write here
    python: str  # an interpreter that user may run, for the child (which needs only the standard library)


@pytest.fixture
def unprivileged(tmp_path: Path) -> Iterator[Unprivileged]:
    """Who the agent runs as in these tests, a directory it may write, and a python its child can run.

    As root the child could read anything (CAP_SYS_PTRACE, CAP_DAC_OVERRIDE): the attack that matters is a
    deployment running as the agent's own unprivileged user, so root runs the agent as ``nobody``.
    """
    if os.geteuid() != 0:
        yield Unprivileged(None, tmp_path, sys.executable)
        return
    system_python = shutil.which("python3", path="/usr/local/bin:/usr/bin:/bin")
    if shutil.which("setpriv") is None or system_python is None:
        pytest.fail(
            "running as root without setpriv or a system python3: cannot test as an unprivileged user"
        )
    directory = Path(tempfile.mkdtemp(prefix="agent-probe-"))
    os.chown(directory, NOBODY, NOBODY)
    # The agent runs as nobody from this checkout and this venv: the folders above them (a CI clone may sit
    # in a 0700 mktemp directory) must let it through for the test's time; restored afterwards.
    opened: list[tuple[Path, int]] = []
    for leaf in (REPO, Path(os.path.realpath(sys.executable)).parent, Path(sys.prefix)):
        for folder in (leaf, *leaf.parents):
            mode = folder.stat().st_mode
            if not mode & 0o001:
                opened.append((folder, mode))
                folder.chmod(mode | 0o001)
    try:
        yield Unprivileged(NOBODY, directory, system_python)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
        for folder, mode in reversed(opened):
            folder.chmod(mode & 0o7777)


@pytest.mark.parametrize("how", ["STREAMTOKEN_PAT", "STREAMTOKEN_PAT_FILE", "--pat-file", "--pat"])
def test_the_child_cannot_read_the_agents_pat(
    how: str,
    unprivileged: Unprivileged,
    real: RealServices,
    start_agent: Callable[..., RunningAgent],
) -> None:
    user, directory = unprivileged.user, unprivileged.directory
    pat = real.pat()
    pat_file = directory / "deployment.pat"
    pat_file.write_text(pat + "\n")
    pat_file.chmod(0o600)
    if user is not None:
        os.chown(pat_file, user, user)
    args = [
        "--issuer-url", real.issuer_url, "--environment", real.environment_id, "--no-subscribe",
        "--portal-url", real.resolver_url,
    ]  # fmt: skip
    extra: dict[str, str] = {}
    if how == "STREAMTOKEN_PAT":
        extra["STREAMTOKEN_PAT"] = pat
    elif how == "STREAMTOKEN_PAT_FILE":
        extra["STREAMTOKEN_PAT_FILE"] = str(pat_file)
    elif how == "--pat-file":
        args += ["--pat-file", str(pat_file)]
    else:
        args += ["--pat", pat]
    agent = start_agent(
        args, {"CHILD_PROBE": "1"}, user=user, logs=directory, child_python=unprivileged.python, **extra
    )
    start = wait_until(agent.starts, "the child to start")[0]
    assert start["token"] == real.tokens()["token_1"]["token"]  # the agent itself got the token with the PAT
    assert start["pat"] is None
    (probe,) = agent.records("probe")
    assert probe["agent"] == agent.process.pid
    assert pat not in json.dumps(probe), f"the child found the PAT: {probe}"
    assert probe["environ"] == "<Permission denied>"  # non-dumpable: /proc/<agent>/environ is closed
    assert probe["mem"] == "<Permission denied>"
    assert str(pat_file) not in probe["cmdline"]  # --pat-file's path is overwritten in the command line
    assert all(not text or text.startswith("<") for text in probe["pat_files"].values())
    assert pat not in agent.stderr()


# --- finding 7: a forged generation, then kill -9 of the child ---------------------------------------------


def agent_lines(agent: RunningAgent, event: str) -> list[dict[str, Any]]:
    return [json.loads(x) for x in agent.stderr().splitlines() if f'"event": "{event}"' in x]


def test_an_inflated_webhook_neither_strands_the_agent_nor_keeps_a_killed_child_down(
    real: RealServices, tmp_path: Path, start_agent: Callable[..., RunningAgent]
) -> None:
    agent = start_agent(agent_args(real, tmp_path, "--backoff-initial", "0.3", "--backoff-max", "0.6"))
    first = wait_until(agent.starts, "the child to start")[0]
    sub = subscribed(real, agent)
    hooks = sender(real, tmp_path, sub)

    pat = (tmp_path / "pat").read_text()

    def reveals() -> int:  # the agent's own reads of the tokens (not the test's)
        return real.issuer_observed.count("GET", "/streaming-tokens", pat)

    reads_at_start = reveals()
    forged = {
        "type": "streaming_tokens.rotated", "environment_id": real.environment_id, "action": "restart",
        "generation": 9007199254740993, "subscription_id": sub["id"], "deployment_id": "f1-producer",
    }  # fmt: skip
    assert hooks.send(forged).status_code == 202
    wait_until(lambda: agent_lines(agent, "token_older_than_rotation"), "an answer older than the webhook")
    os.kill(first["pid"], signal.SIGKILL)  # the review's repro: the child then stayed down for good
    second = wait_until(lambda: agent.starts()[1:], "the killed child to start again")[0]
    assert second["token"] == real.tokens()["token_1"]["token"]  # nothing was rotated: the same token
    (dropped,) = wait_until(lambda: agent_lines(agent, "rotation_dropped"), "the issuer's word to win")
    assert dropped["generation"] == 1
    capped = agent_lines(agent, "webhook_generation_capped")
    assert capped[0]["capped_to"] == 1 + 1000
    revealed = reveals() - reads_at_start
    assert revealed <= 5 + 1  # the bounded answers, plus the killed child's restart
    assert real.acknowledged() == []  # a generation the issuer never had is not acknowledged
    time.sleep(1.5)  # several back-off periods: no further reveals for the forged rotation
    assert reveals() - reads_at_start == revealed

    after = real.rotate()  # a real rotation afterwards is applied as usual
    third = wait_until(lambda: agent.starts()[2:], "the child to restart on the rotation")[0]
    assert third["token"] == after["token_1"]["token"]
    wait_until(lambda: real.acknowledged() == [2], "the acknowledgement")


# --- finding 15: no PAT or token in clear text to another host --------------------------------------------


@pytest.mark.parametrize(
    ("args", "option", "what"),
    [
        (["--environment", "acme-telemetry-dev", "--pat", "p", "--issuer-url", "http://issuer.example:8001"],
         "--issuer-url", "the PAT"),
        (["--token-env", "DEMO_TOKEN", "--notifier-url", "http://10.0.0.9:8003"],
         "--notifier-url", "the streaming token"),
        (["--token-env", "DEMO_TOKEN", "--no-subscribe", "--portal-url", "http://resolver:8002"],
         "--portal-url", "the streaming token (from the child)"),
    ],
)  # fmt: skip
def test_http_to_another_host_is_refused_unless_insecure_http(
    args: list[str], option: str, what: str, start_agent: Callable[..., RunningAgent]
) -> None:
    agent = start_agent(args, DEMO_TOKEN=generate_token())
    assert agent.wait_exit() == 2
    last = agent.stderr().strip().splitlines()[-1]
    assert last.startswith(f"streamtoken run: error: {option} http://")
    assert f"sends {what} in clear text to" in last
    assert "--insecure-http" in last
    assert agent.starts() == []


def test_insecure_http_allows_it_with_a_warning(start_agent: Callable[..., RunningAgent]) -> None:
    agent = start_agent(
        [
            "--token-env",
            "DEMO_TOKEN",
            "--no-subscribe",
            "--portal-url",
            "http://resolver:8002",
            "--insecure-http",
        ],
        DEMO_TOKEN=generate_token(),
    )
    start = wait_until(agent.starts, "the child to start")[0]
    assert start["portal"] == "http://resolver:8002"
    assert (
        "streamtoken run: warning: --portal-url http://resolver:8002 sends the streaming token "
        "(from the child) in clear text to resolver (not loopback); use https:// (allowed by --insecure-http)"
    ) in agent.stderr()
