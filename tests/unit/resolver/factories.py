"""Build ``shared.events`` records for resolver tests."""

from __future__ import annotations

from datetime import UTC, datetime

from shared.events import Change, ChangeType, TokenRef, TokenStateChanged
from shared.tokens import fingerprint, generate_token, new_token_id


class Env:
    """An environment with real tokens, producing its events generation by generation."""

    def __init__(self, environment_id: str) -> None:
        self.environment_id = environment_id
        self.generation = 1
        self.token_1 = generate_token()
        self.token_2 = generate_token()
        self.id_1 = new_token_id()
        self.id_2 = new_token_id()
        self.grace: tuple[str, str, datetime] | None = None

    def event(self, change: ChangeType = ChangeType.CREATED) -> TokenStateChanged:
        org, project, environment = ([*self.environment_id.split("-", 2), "x", "x"])[:3]
        tokens = [
            TokenRef(slot=1, token_id=self.id_1, fingerprint=fingerprint(self.token_1)),
            TokenRef(slot=2, token_id=self.id_2, fingerprint=fingerprint(self.token_2)),
        ]
        if self.grace is not None:
            token, token_id, until = self.grace
            tokens.append(
                TokenRef(slot=1, token_id=token_id, fingerprint=fingerprint(token), valid_until=until)
            )
        return TokenStateChanged(
            environment_id=self.environment_id,
            org=org,
            project=project,
            environment=environment,
            generation=self.generation,
            tokens=tuple(tokens),
            change=Change(
                type=change,
                actor="test",
                at=datetime.now(UTC),
                rotation_id=None if change is ChangeType.CREATED else f"rot-{self.generation}",
            ),
        )

    def rotate(self, grace_until: datetime | None = None) -> TokenStateChanged:
        old_token, old_id = self.token_1, self.id_1
        self.token_1, self.id_1 = self.token_2, self.id_2
        self.token_2, self.id_2 = generate_token(), new_token_id()
        self.grace = (old_token, old_id, grace_until) if grace_until is not None else None
        self.generation += 1
        return self.event(ChangeType.ROTATED)
