"""The agent's event loop: feeds events to :class:`~services.agent.domain.AgentMachine`, carries out effects.

One asyncio loop holds everything: the child process, the webhook listener (uvicorn), the HTTP clients
(httpx) and the signal handlers. All decisions are the state machine's; this module only does I/O.
"""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable, Mapping
from contextlib import suppress
from datetime import datetime, timedelta
from typing import Any
from urllib.parse import urlsplit

import httpx

from services.agent.adapters.child import Child, child_environment, write_atomically
from services.agent.adapters.listener import advertised_url, bind, build_listener, make_server
from services.agent.adapters.notifier import NotifierClient, NotifierError, Subscription
from services.agent.adapters.resolver import ResolverClient
from services.agent.adapters.tokens import TokenSource, TokenUnavailable
from services.agent.domain import (
    Acknowledge,
    AgentMachine,
    AgentStarted,
    ChildExited,
    ChildStartFailed,
    Credential,
    Effect,
    Event,
    Exit,
    FetchToken,
    KillChild,
    Log,
    ReloadChild,
    ScheduleAdoption,
    ScheduleTimer,
    SendHeartbeat,
    SignalChild,
    SignalReceived,
    StartChild,
    StopChild,
    StopRequested,
    Subscribe,
    Timer,
    TimerFired,
    TokenFailed,
    TokenObtained,
    Unsubscribe,
    adoption_delay,
    backoff_delay,
)
from services.agent.settings import AgentSettings
from shared.logs import get_logger

log = get_logger("streamtoken.agent")

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
FORWARDED_SIGNALS = (signal.SIGHUP,)
NOTIFIER_BACKOFF = (1.0, 30.0)  # first and longest delay between subscribe / acknowledge attempts
ACK_ATTEMPTS = 5
UNSUBSCRIBE_WAIT = 5.0  # how long stopping waits for a subscribe request under way, then for the DELETE

_REFUSED_HINTS = {
    401: "the notifier does not accept the streaming token: check that the notifier's resolver "
    "(STREAMTOKEN_NOTIFIER_RESOLVER_URL) knows this environment's tokens",
    403: "the notifier refused this subscription: another subscription holds this --deployment-id (an agent "
    "that did not stop cleanly keeps its management key, X-Subscription-Key): delete it or use another "
    "--deployment-id; else check the webhook URL is allowed (STREAMTOKEN_NOTIFIER_ALLOWED_WEBHOOK_HOSTS) and "
    "the token belongs to the environment",
    422: "the notifier refused the subscription request: check the webhook URL is allowed "
    "(STREAMTOKEN_NOTIFIER_ALLOWED_WEBHOOK_HOSTS), --deployment-id and --action",
}


class ListenError(Exception):
    """The webhook listener could not be opened; the message is one sentence."""


class AgentRuntime:
    """Built by :func:`services.agent.bootstrap.build_agent`; ``run()`` until the agent exits.

    ``notifier`` is ``None`` without a subscription (no listener then); ``http`` is closed at the end when
    ``owns_http``.
    """

    def __init__(
        self,
        settings: AgentSettings,
        source: TokenSource,
        *,
        http: httpx.AsyncClient,
        resolver: ResolverClient,
        notifier: NotifierClient | None,
        environ: Mapping[str, str],
        clock: Callable[[], datetime],
        owns_http: bool = True,
    ) -> None:
        self.settings = settings
        self.clock = clock
        self.source = source
        self.environ = dict(environ)
        self.machine = AgentMachine(policy=settings.policy())
        self._reload_signal = settings.reload_signum
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.child: Child | None = None
        self.subscription: Subscription | None = None
        self.credential: Credential | None = None
        self.exit_status: int | None = None
        self.error: str | None = None
        self.webhook_url: str | None = None
        self._tasks: set[asyncio.Task[Any]] = set()
        self._subscribe_task: asyncio.Task[None] | None = None
        self._stop_subscribing = asyncio.Event()
        self._http = http
        self._owns_http = owns_http
        self._notifier = notifier
        self._resolver = resolver

    # --- wiring ------------------------------------------------------------------------------------------

    async def run(self) -> int:
        loop = asyncio.get_running_loop()
        for signum in STOP_SIGNALS:
            loop.add_signal_handler(signum, self.events.put_nowait, StopRequested(signum))
        for signum in FORWARDED_SIGNALS:
            loop.add_signal_handler(signum, self.events.put_nowait, SignalReceived(signum))
        server = None
        server_task = None
        try:
            if self._notifier is not None:
                host = self.settings.listen_host
                try:
                    sock = bind(self.settings.listen_port, host)
                except OSError as exc:
                    raise ListenError(
                        f"cannot listen for webhooks on {host}:{self.settings.listen_port}: "
                        f"{exc.strerror or exc}"
                    ) from None
                port = sock.getsockname()[1]
                self.webhook_url = advertised_url(host, port, self.settings.advertise_url)
                app = build_listener(
                    self.events.put_nowait,
                    self._secret,
                    self._environment_id,
                    extra_paths=(urlsplit(self.webhook_url).path,),
                )
                server = make_server(app)
                server_task = asyncio.create_task(server.serve(sockets=[sock]))
                log.info(
                    "listening",
                    address=f"{host}:{port}",
                    webhook_url=self.webhook_url,
                )
            self.events.put_nowait(AgentStarted())
            while self.exit_status is None:
                event = await self.events.get()
                for effect in self.machine.handle(event):
                    await self._carry_out(effect)
            return self.exit_status
        finally:
            for signum in (*STOP_SIGNALS, *FORWARDED_SIGNALS):
                loop.remove_signal_handler(signum)
            if self.child is not None and self.child.running():
                self.child.kill()
            for task in list(self._tasks):
                task.cancel()
            if server is not None and server_task is not None:
                server.should_exit = True
                try:
                    await asyncio.wait_for(server_task, 5)
                except (TimeoutError, asyncio.CancelledError):
                    server_task.cancel()
            if self._owns_http:
                await self._http.aclose()

    def _secret(self) -> str | None:
        return self.subscription.secret if self.subscription else None

    def _environment_id(self) -> str | None:
        if self.credential is not None and self.credential.environment_id:
            return self.credential.environment_id
        return self.subscription.environment_id if self.subscription else None

    def _spawn(self, coro: Any) -> asyncio.Task[Any]:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # --- effects -----------------------------------------------------------------------------------------

    async def _carry_out(self, effect: Effect) -> None:
        match effect:
            case Log(event, level, fields):
                getattr(log, level)(event, **fields)
            case FetchToken():
                self._spawn(self._fetch())
            case Subscribe(credential):
                self.credential = credential
                if self._notifier is not None and self._subscribe_task is None:
                    self._subscribe_task = self._spawn(self._subscribe())
            case Unsubscribe(credential):
                await self._unsubscribe(credential)
            case StartChild(credential):
                await self._start_child(credential)
            case StopChild(signum, kill_after):
                if self.child is not None:
                    self.child.stop(signum, kill_after)
            case KillChild():
                if self.child is not None:
                    self.child.kill()
            case SignalChild(signum):
                if self.child is not None:
                    self.child.signal(signum)
            case ReloadChild(credential):
                self._reload_child(credential)
            case Acknowledge(generation, credential):
                self._spawn(self._acknowledge(generation, credential))
            case ScheduleTimer(timer, delay):
                asyncio.get_running_loop().call_later(delay, self.events.put_nowait, TimerFired(timer))
            case SendHeartbeat(credential):
                self._spawn(self._heartbeat(credential))
            case ScheduleAdoption(after, window, credential):
                now = self.clock()
                delay = adoption_delay(now, after, window)
                log.info(
                    "adoption_scheduled",
                    **credential.describe(),
                    slot=credential.slot,
                    at=(now + timedelta(seconds=delay)).isoformat(timespec="seconds"),
                    window=str(window) if window else None,
                )
                loop = asyncio.get_running_loop()
                loop.call_later(delay, self.events.put_nowait, TimerFired(Timer.ADOPT))
            case Exit(status, error):
                if error:
                    log.error("agent_failed", error=error)
                else:
                    log.info("agent_exiting", status=status)
                self.error = error
                self.exit_status = status

    async def _fetch(self) -> None:
        try:
            credential = await self.source.fetch()
        except TokenUnavailable as exc:
            self.events.put_nowait(TokenFailed(exc.message, exc.permanent))
        else:
            self.events.put_nowait(TokenObtained(credential))

    async def _heartbeat(self, credential: Credential) -> None:
        answer = await self._resolver.heartbeat(credential, self.settings.deployment_id)
        self.events.put_nowait(answer)

    async def _start_child(self, credential: Credential) -> None:
        self.credential = credential
        token_file = self.settings.token_file_out
        if token_file is not None:
            try:
                write_atomically(token_file, credential.token + "\n")
            except OSError as exc:
                message = f"{token_file}: {exc.strerror or type(exc).__name__}"
                self.events.put_nowait(ChildStartFailed(message, token_file=True))
                return
        env = child_environment(
            self.environ,
            credential.token,
            self.settings.portal_url,
            self.settings.inject_as,
            self.settings.token_env,
        )
        try:
            child = await Child.start(self.settings.command, env)
        except (OSError, ValueError) as exc:  # ValueError: a NUL byte in an argument or a variable
            reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            self.events.put_nowait(ChildStartFailed(f"{self.settings.command[0]}: {reason}"))
            return
        self.child = child
        log.info("child_started", pid=child.pid, **credential.describe())
        self._spawn(self._watch(child))

    async def _watch(self, child: Child) -> None:
        returncode, ran_for = await child.wait()
        self.events.put_nowait(ChildExited(returncode, ran_for))

    def _reload_child(self, credential: Credential) -> None:
        self.credential = credential
        path = self.settings.token_file_out
        if path is not None:
            try:
                write_atomically(path, credential.token + "\n")
            except OSError as exc:
                log.error("token_file_not_written", path=str(path), error=exc.strerror or type(exc).__name__)
            else:
                log.info("token_file_rewritten", path=str(path), **credential.describe())
        if self._reload_signal is not None and self.child is not None:
            self.child.signal(self._reload_signal)
            log.info("child_signalled", signal=signal.Signals(self._reload_signal).name)

    # --- the notifier ------------------------------------------------------------------------------------

    async def _subscribe(self) -> None:
        assert self._notifier is not None
        assert self.webhook_url is not None
        attempt = 0
        while not self._stop_subscribing.is_set():
            credential = self.credential
            assert credential is not None
            try:
                self.subscription = await self._notifier.subscribe(
                    credential, self.settings.deployment_id, self.webhook_url, self.settings.chosen_action
                )
            except NotifierError as exc:
                attempt += 1
                if exc.refused:
                    # Asking again the same way will not help until someone changes something: say what,
                    # and keep trying slowly (the notifier's configuration or the token may change).
                    delay = NOTIFIER_BACKOFF[1]
                    log.error(
                        "subscribe_refused",
                        status=exc.status,
                        error=str(exc),
                        notifier_message=exc.detail,
                        hint=_REFUSED_HINTS.get(exc.status or 0, "see the notifier's message"),
                        webhook_url=self.webhook_url,
                        retry_in=delay,
                    )
                else:
                    delay = backoff_delay(attempt, *NOTIFIER_BACKOFF)
                    log.warning("subscribe_failed", error=str(exc), retry_in=delay)
                with suppress(TimeoutError):
                    await asyncio.wait_for(self._stop_subscribing.wait(), delay)
                continue
            log.info(
                "subscribed",
                subscription_id=self.subscription.id,
                deployment_id=self.settings.deployment_id,
                action=self.settings.chosen_action,
                webhook_url=self.webhook_url,
                environment_id=credential.environment_id or self.subscription.environment_id,
            )
            return

    async def _acknowledge(self, generation: int, credential: Credential) -> None:
        if self._notifier is None:
            return
        for attempt in range(1, ACK_ATTEMPTS + 1):
            subscription = self.subscription
            if subscription is not None:
                try:
                    await self._notifier.acknowledge(subscription.id, generation, credential)
                except NotifierError as exc:
                    log.warning("ack_failed", error=str(exc), generation=generation, attempt=attempt)
                else:
                    log.info("acknowledged", generation=generation, subscription_id=subscription.id)
                    return
            await asyncio.sleep(backoff_delay(attempt, NOTIFIER_BACKOFF[0], 10.0))
        log.error("ack_given_up", generation=generation)

    async def _unsubscribe(self, credential: Credential | None) -> None:
        task = self._subscribe_task
        if task is not None and not task.done():
            # A subscribe request may be under way: cancelling it could leave a subscription the agent never
            # learns about. Stop the retries, give the request a moment to finish, then delete what it made.
            self._stop_subscribing.set()
            await asyncio.wait({task}, timeout=UNSUBSCRIBE_WAIT)
            if not task.done():
                task.cancel()
                log.warning(
                    "subscribe_abandoned",
                    deployment_id=self.settings.deployment_id,
                    detail="a subscribe request did not finish in time; the notifier may keep a "
                    "subscription for this deployment id until it is re-registered or deleted",
                )
        subscription = self.subscription
        if self._notifier is None or subscription is None or credential is None:
            return
        try:
            await asyncio.wait_for(self._notifier.unsubscribe(subscription.id, credential), UNSUBSCRIBE_WAIT)
        except (NotifierError, TimeoutError) as exc:
            log.warning("unsubscribe_failed", error=str(exc) or "timed out", subscription_id=subscription.id)
        else:
            log.info("unsubscribed", subscription_id=subscription.id)
        self.subscription = None
