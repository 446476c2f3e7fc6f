"""Events as the issuer makes them: environments driven through ``services.issuer.domain``.

A test environment is the issuer's own :class:`~services.issuer.domain.Environment`; creating, rotating
and revoking it call the domain's ``create_environment``/``rotate``/``revoke`` and the event is its
``to_event``, so tests never re-implement the rotation rule (Token 1 out, Token 2 promoted, a new Token 2)
or the event's shape. The plaintext tokens the domain issued are kept here, for tests that authenticate.
"""

from __future__ import annotations

import uuid
from datetime import UTC, datetime, timedelta

from services.issuer import domain
from shared.events import TokenStateChanged


def _now() -> datetime:
    return datetime.now(UTC)


class Environment:
    """An environment with real tokens; each command moves it on and returns the event of its new state."""

    def __init__(self, transition: domain.Transition, actor: str) -> None:
        self.state = transition.after
        self.actor = actor
        self._values = {t.record.token_id: t.value for t in transition.issued}

    @classmethod
    def create(
        cls,
        org: str = "acme",
        project: str = "tele",
        name: str | None = None,
        *,
        actor: str = "pat:test",
        previous_generation: int = 0,
        now: datetime | None = None,
    ) -> Environment:
        """A new environment (a unique ``name`` by default) at generation ``previous_generation + 1``."""
        transition = domain.create_environment(
            org,
            project,
            name or f"e{uuid.uuid4().hex[:8]}",
            actor=actor,
            now=now or _now(),
            previous_generation=previous_generation,
        )
        return cls(transition, actor)

    def _apply(self, transition: domain.Transition) -> TokenStateChanged:
        self.state = transition.after
        self._values.update({t.record.token_id: t.value for t in transition.issued})
        return self.event()

    def event(self) -> TokenStateChanged:
        """The event of the current state (what the issuer publishes after the last command)."""
        return domain.to_event(self.state)

    def rotate(self, *, grace: timedelta = timedelta(0), now: datetime | None = None) -> TokenStateChanged:
        return self._apply(
            domain.rotate(
                self.state,
                actor=self.actor,
                now=now or _now(),
                rotation_id=f"rot_{uuid.uuid4().hex[:12]}",
                grace=grace,
            )
        )

    def revoke(self, *, now: datetime | None = None) -> TokenStateChanged:
        return self._apply(
            domain.revoke(
                self.state, actor=self.actor, now=now or _now(), rotation_id=f"rot_{uuid.uuid4().hex[:12]}"
            )
        )

    @property
    def id(self) -> str:
        return self.state.id

    @property
    def generation(self) -> int:
        return self.state.generation

    @property
    def token_1(self) -> str:
        return self._values[self.state.token_1.token_id]

    @property
    def token_2(self) -> str:
        return self._values[self.state.token_2.token_id]

    @property
    def token_ids(self) -> tuple[str, str]:
        return self.state.token_1.token_id, self.state.token_2.token_id

    def token(self, slot: int) -> str:
        return self.token_1 if slot == 1 else self.token_2

    def auth(self, slot: int = 1, key: str | None = None) -> dict[str, str]:
        """Headers that authenticate with the current Token ``slot`` (and a subscription's management key)."""
        headers = {"authorization": f"Bearer {self.token(slot)}"}
        if key is not None:
            headers["x-subscription-key"] = key
        return headers


def rotation(environment_id: str = "acme-tele-prod", *, rotations: int = 1) -> TokenStateChanged:
    """The event of an environment ``environment_id`` (``org-project-name``) rotated ``rotations`` times."""
    org, project, name = environment_id.split("-", 2)
    env = Environment.create(org, project, name)
    event = env.event()
    for _ in range(rotations):
        event = env.rotate()
    return event
