"""The deployment agent's notifier client against the real notifier: it keeps the management key from the
create answer and sends it on acknowledgements and on unsubscribing; without the key the same calls fail."""

from __future__ import annotations

from collections.abc import Callable

import httpx
import pytest

from services.agent.adapters.notifier import NotifierClient, NotifierError
from services.agent.domain import Credential
from tests.integration.notifier.support import Resolver, new_environment


async def test_the_agent_subscribes_acknowledges_and_unsubscribes_with_its_key(
    start_notifier: Callable[..., httpx.Client], sqlite_url: str, resolver: Resolver
) -> None:
    api = start_notifier(sqlite_url, None, deliver=False)
    env = new_environment(resolver)
    credential = Credential(env.token_1)
    async with httpx.AsyncClient() as http:
        agent = NotifierClient(str(api.base_url), http)
        other = NotifierClient(str(api.base_url), http)  # another app of the environment, no key
        sub = await agent.subscribe(credential, "host-1234", "http://127.0.0.1:9/webhook", "restart")
        assert sub.secret.startswith("whsec_")
        assert sub.management_key
        assert sub.management_key not in repr(sub)

        with pytest.raises(NotifierError) as refused:
            await other.acknowledge(sub.id, env.generation, credential)
        assert refused.value.status == 403
        await agent.acknowledge(sub.id, env.generation, credential)
        with pytest.raises(NotifierError) as refused:
            await other.unsubscribe(sub.id, credential)
        assert refused.value.status == 403
        await agent.unsubscribe(sub.id, credential)
        assert api.get(f"/v1/subscriptions/{sub.id}", headers=env.auth()).status_code == 404
