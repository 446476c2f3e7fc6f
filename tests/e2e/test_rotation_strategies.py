"""The seeds' two rotation strategies, end to end, with an unmodified quixstreams app under the agent."""

from __future__ import annotations

import re
import signal
from collections import Counter

from shared.kafka_broker import ApacheKafkaBroker
from tests.e2e.harness import STOPPED, RunningStack, read_topic, wait_for

FLUSHED = re.compile(r"f1_producer: (\d+) messages produced to ")


def _acknowledged(stack: RunningStack, token: str, environment_id: str, generation: int) -> bool:
    response = stack.client("notifier", token).get(f"/v1/environments/{environment_id}/rotations")
    if response.status_code != 200:
        return False
    rows = [r for r in response.json()["rotations"] if r["generation"] == generation]
    return bool(rows) and rows[0]["acknowledged"] == 1


def _flushed(run_output: str) -> int:
    """What one run of the sample app reported as flushed: its last periodic flush or its clean stop."""
    counts = [int(n) for n in FLUSHED.findall(run_output)] + [int(n) for n in STOPPED.findall(run_output)]
    return max(counts, default=0)


def test_downtime_strategy_restarts_the_deployment_with_the_new_token_1(
    e2e_stack: RunningStack, kafka_broker: ApacheKafkaBroker
) -> None:
    env_id = e2e_stack.create_environment("dev")
    before = e2e_stack.tokens(env_id)
    old_1, old_2 = before["token_1"]["token"], before["token_2"]["token"]
    wait_for("the resolver to learn the tokens", lambda: e2e_stack.whoami(old_1) == 200)
    deployment = e2e_stack.run("downtime", ["--environment", env_id], ["--interval", "0.05"])
    wait_for("the deployment to produce", lambda: sum(1 for n in deployment.produced() if n >= 50))
    assert deployment.starts() == 1

    rotated = e2e_stack.issuer.post(f"/v1/environments/{env_id}/streaming-tokens/rotate")
    assert rotated.status_code == 200
    assert rotated.json()["token_1"]["token"] == old_2
    new_1 = old_2
    wait_for("the old Token 1 to be refused", lambda: e2e_stack.whoami(old_1) == 401, timeout=30)
    assert e2e_stack.whoami(new_1) == 200
    # The notifier checks tokens with the real resolver: once its short whoami cache (5 s) lapses, the
    # deactivated token is refused there too (a read-only call, so no subscription is made with it).
    notifier_as_old = e2e_stack.client("notifier", old_1)
    wait_for(
        "the notifier to refuse the old Token 1",
        lambda: notifier_as_old.get("/v1/subscriptions").status_code == 401,
        timeout=30,
        every=0.5,
    )
    assert old_1 not in notifier_as_old.get("/v1/subscriptions").text

    wait_for("the agent to restart the deployment", lambda: deployment.starts() == 2, timeout=90)
    wait_for("the ack of generation 2", lambda: _acknowledged(e2e_stack, new_1, env_id, 2), timeout=60)
    produced_before_restart = len(deployment.produced())
    wait_for(
        "the restarted deployment to produce again",
        lambda: len(deployment.produced()) > produced_before_restart + 1,
        timeout=60,
    )
    process = deployment.child.process
    assert process is not None
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0

    output = deployment.output()
    topic = f"{env_id}-f1-data"
    assert output.count(f"producing to {topic}") == 2  # both runs resolved f1-data to the same topic id
    # The broker cuts the old Token 1 off at the rotation, before the webhook arrives: the first run cannot
    # flush what it produced after that (that is the downtime of this strategy). What each run reported as
    # flushed - every 25 messages, and at a clean stop - must be on the topic.
    first, second = output.split(f"producing to {topic}")[1:]
    runs = [_flushed(first), _flushed(second)]
    assert STOPPED.search(second), output[-2000:]  # the new run stops cleanly, on the new Token 1
    assert runs[0] >= 50, output[-2000:]
    records = read_topic(kafka_broker, topic, at_least=sum(runs))
    # Nothing a run reported as flushed is missing: each run numbers its messages from 0.
    sequences = Counter(r["sequence"] for r in records)
    for i in range(max(runs)):
        assert sequences[i] >= sum(1 for n in runs if n > i), f"message {i} lost"

    events = [e.get("event") for e in deployment.agent_log()]
    assert "child_started" in events
    assert "acknowledged" in events
    logs = deployment.log.read_text() + output + e2e_stack.service_logs()
    assert old_1 not in logs
    assert new_1 not in logs
    assert rotated.json()["token_2"]["token"] not in logs


def test_zero_downtime_strategy_keeps_running_on_token_2_without_a_restart(
    e2e_stack: RunningStack, kafka_broker: ApacheKafkaBroker
) -> None:
    env_id = e2e_stack.create_environment("prod")
    token_2 = e2e_stack.tokens(env_id)["token_2"]["token"]
    wait_for("the resolver to learn the tokens", lambda: e2e_stack.whoami(token_2) == 200)
    deployment = e2e_stack.run(
        "zero-downtime",
        ["--environment", env_id, "--slot", "2", "--inject-as", "F1_TOKEN"],
        ["--interval", "0.05", "--token-var", "F1_TOKEN"],
    )
    wait_for("the deployment to produce", lambda: sum(1 for n in deployment.produced() if n >= 50))

    rotated = e2e_stack.issuer.post(f"/v1/environments/{env_id}/streaming-tokens/rotate")
    assert rotated.status_code == 200
    assert rotated.json()["token_1"]["token"] == token_2  # the token the deployment holds is now Token 1
    wait_for("the ack of generation 2", lambda: _acknowledged(e2e_stack, token_2, env_id, 2), timeout=60)
    wait_for("the reload to reach the app", lambda: "told the tokens were rotated" in deployment.output())
    produced_at_reload = max(deployment.produced())
    wait_for("more output after the rotation", lambda: max(deployment.produced()) >= produced_at_reload + 50)
    assert e2e_stack.whoami(token_2) == 200

    process = deployment.child.process
    assert process is not None
    process.send_signal(signal.SIGTERM)
    assert process.wait(60) == 0
    output = deployment.output()
    assert deployment.starts() == 1  # never restarted
    runs = [int(n) for n in STOPPED.findall(output)]
    assert len(runs) == 1
    records = read_topic(kafka_broker, f"{env_id}-f1-data", at_least=runs[0])
    # No gap: one unbroken run of messages across the rotation.
    assert sorted({r["sequence"] for r in records}) == list(range(runs[0]))
    assert "child_started" in [e.get("event") for e in deployment.agent_log()]
    assert sum(1 for e in deployment.agent_log() if e.get("event") == "child_started") == 1
    logs = deployment.log.read_text() + output + e2e_stack.service_logs()
    assert token_2 not in logs
    assert rotated.json()["token_2"]["token"] not in logs
