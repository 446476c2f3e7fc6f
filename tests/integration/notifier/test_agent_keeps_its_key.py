"""An agent started again for the same deployment id registers it again with the management key it kept
(``services.agent.adapters.keys``); one that never had the key cannot take the deployment over."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from services.agent.adapters.keys import SubscriptionKeys
from services.agent.adapters.notifier import NotifierClient, NotifierError
from services.agent.domain import Credential
from tests.integration.notifier.support import Resolver, new_environment


async def test_a_restarted_agent_registers_its_deployment_again_with_the_kept_key(
    start_notifier: Callable[..., httpx.Client], sqlite_url: str, resolver: Resolver, tmp_path: Path
) -> None:
    api = start_notifier(sqlite_url, None, deliver=False)
    env = new_environment(resolver)
    credential = Credential(env.token_1, environment_id=env.id)
    keys = SubscriptionKeys(tmp_path / "state")
    async with httpx.AsyncClient() as http:
        first = NotifierClient(str(api.base_url), http, keys)
        sub = await first.subscribe(credential, "pod-7", "http://127.0.0.1:9/webhook", "restart")
        stored = list((tmp_path / "state").iterdir())
        assert len(stored) == 1
        assert stored[0].stat().st_mode & 0o077 == 0
        assert sub.management_key is not None
        assert sub.management_key not in stored[0].name

        # The agent dies without unsubscribing; a new one for the same deployment comes up.
        again = NotifierClient(str(api.base_url), http, SubscriptionKeys(tmp_path / "state"))
        renewed = await again.subscribe(credential, "pod-7", "http://127.0.0.1:9/webhook2", "reload")
        assert renewed.id == sub.id
        await again.acknowledge(renewed.id, env.generation, credential)

        # Without the kept key (another host, another state dir) the deployment cannot be taken over.
        stranger = NotifierClient(str(api.base_url), http, SubscriptionKeys(tmp_path / "elsewhere"))
        with pytest.raises(NotifierError) as refused:
            await stranger.subscribe(credential, "pod-7", "http://127.0.0.1:9/evil", "reload")
        assert refused.value.status == 403

        await again.unsubscribe(renewed.id, credential)
        assert list((tmp_path / "state").iterdir()) == []
