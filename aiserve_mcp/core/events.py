"""Live events: what happened to a user's instances, spending, models and approvals, and metrics snapshots.

Publishers call :meth:`EventBus.publish`; subscribers (the ``/ws`` WebSocket, MCP resource subscriptions)
iterate a :class:`Subscription` for one user and a set of streams. Without Redis the bus is this process's
memory; with ``AISERVE_REDIS_URL`` every event goes through one Redis pub/sub channel, so a subscriber
connected to any server process receives events published by any other. A subscriber that falls behind
loses its oldest events (its queue is bounded), never blocks a publisher.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Final, Protocol

import anyio
from redis.asyncio import Redis

log = logging.getLogger(__name__)

STREAMS: Final = ("instances", "spending", "models", "metrics", "approvals")
QUEUE_SIZE: Final = 256
CLOSE_WAIT_S: Final = 2.0  # how long closing waits for the Redis listener to subscribe, then to stop


@dataclass(frozen=True)
class Event:
    """One event. ``user_id`` None: for every subscriber of the stream (metrics snapshots)."""

    stream: str
    type: str
    data: dict[str, Any]
    user_id: str | None = None
    at: float = field(default_factory=time.time)

    def to_json(self) -> dict[str, Any]:
        """What subscribers receive: ``{"type": "event", "stream", "event", "data", "at"}``."""
        return {"type": "event", "stream": self.stream, "event": self.type, "data": self.data, "at": self.at}

    def encode(self) -> str:
        return json.dumps(
            {
                "stream": self.stream,
                "type": self.type,
                "data": self.data,
                "user_id": self.user_id,
                "at": self.at,
            }
        )

    @classmethod
    def decode(cls, raw: str | bytes) -> Event:
        body = json.loads(raw)
        return cls(
            str(body["stream"]), str(body["type"]), dict(body["data"]), body.get("user_id"), float(body["at"])
        )


class Subscription:
    """Events for one user (``None``: every user's, for the server's own listeners) on some streams, in
    the order they were published."""

    def __init__(self, user_id: str | None, streams: frozenset[str]) -> None:
        self.user_id = user_id
        self.streams = streams
        self._queue: asyncio.Queue[Event] = asyncio.Queue(QUEUE_SIZE)

    def wants(self, event: Event) -> bool:
        return event.stream in self.streams and (
            self.user_id is None or event.user_id in (None, self.user_id)
        )

    def offer(self, event: Event) -> None:
        if self._queue.full():  # a slow subscriber loses its oldest event, never blocks the publisher
            self._queue.get_nowait()
        self._queue.put_nowait(event)

    async def next(self) -> Event:
        return await self._queue.get()

    def __aiter__(self) -> AsyncIterator[Event]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Event]:
        while True:
            yield await self._queue.get()


class EventBus(Protocol):
    async def publish(self, event: Event) -> None:
        """Best effort: never raises (the action that caused the event already happened)."""
        ...

    def subscribe(self, user_id: str | None, streams: frozenset[str]) -> Subscription: ...

    async def ready(self) -> None:
        """Wait until events published by any process reach this process's subscribers."""
        ...

    def unsubscribe(self, subscription: Subscription) -> None: ...

    async def aclose(self) -> None: ...


class MemoryEventBus:
    """Delivers to the subscribers of this process."""

    def __init__(self) -> None:
        self._subscriptions: set[Subscription] = set()

    def deliver(self, event: Event) -> None:
        for subscription in list(self._subscriptions):
            if subscription.wants(event):
                subscription.offer(event)

    async def publish(self, event: Event) -> None:
        self.deliver(event)

    def subscribe(self, user_id: str | None, streams: frozenset[str]) -> Subscription:
        subscription = Subscription(user_id, streams)
        self._subscriptions.add(subscription)
        return subscription

    async def ready(self) -> None:
        return None

    def unsubscribe(self, subscription: Subscription) -> None:
        self._subscriptions.discard(subscription)

    @property
    def subscribers(self) -> int:
        return len(self._subscriptions)

    async def aclose(self) -> None:
        self._subscriptions.clear()


class RedisEventBus:
    """Publishes to one Redis channel; a listener in each process delivers to that process's subscribers
    (listening starts with the first subscriber). An event published here reaches local subscribers
    through Redis too, exactly once."""

    def __init__(self, redis: Redis, channel: str) -> None:
        self._redis = redis
        self._channel = channel
        self._local = MemoryEventBus()
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()

    async def publish(self, event: Event) -> None:
        try:
            await self._redis.publish(self._channel, event.encode())
        except Exception as exc:  # events are best effort: the action that caused one already happened
            log.warning(
                "cannot publish a %s event through Redis (%s); delivered in this process", event.type, exc
            )
            self._local.deliver(event)  # the listener is cut off too, so nobody receives it twice

    def subscribe(self, user_id: str | None, streams: frozenset[str]) -> Subscription:
        if self._listener is None or self._listener.done():
            self._listening.clear()
            self._listener = asyncio.get_running_loop().create_task(self._listen())
        return self._local.subscribe(user_id, streams)

    async def ready(self) -> None:
        """Wait until this process listens on the channel (events published before are not seen)."""
        await self._listening.wait()

    def unsubscribe(self, subscription: Subscription) -> None:
        self._local.unsubscribe(subscription)

    async def _listen(self) -> None:
        while True:
            try:
                async with self._redis.pubsub() as pubsub:
                    await pubsub.subscribe(self._channel)
                    async for message in pubsub.listen():
                        if message.get("type") == "subscribe":  # confirmed: nothing published is missed
                            self._listening.set()
                        elif message.get("type") == "message":
                            self._local.deliver(Event.decode(message["data"]))
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                log.warning("event listener lost Redis (%s); reconnecting", exc)
                self._listening.clear()
                await asyncio.sleep(1)

    async def aclose(self) -> None:
        if self._listener is not None:
            # redis-py's PubSub cannot be torn down if it is cancelled while it connects and subscribes
            # (its teardown then waits forever, uncancellably): let a listener that is starting finish
            # subscribing before it is cancelled, and never wait on it forever.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._listening.wait(), CLOSE_WAIT_S)
            self._listener.cancel()
            _, pending = await asyncio.wait({self._listener}, timeout=CLOSE_WAIT_S)
            if pending:
                log.warning("the event listener did not stop within %.0f s; left behind", CLOSE_WAIT_S)
        await self._local.aclose()


async def publish_forever(bus: EventBus, make: Callable[[], Awaitable[Event]], interval_s: float) -> None:
    """Publish the event ``make()`` builds every ``interval_s`` seconds until cancelled; one that cannot be
    built is logged and skipped. A step that has started finishes (shielded): a database query cut off
    halfway would leave its connection closing after the event loop ends."""
    while True:
        await asyncio.sleep(interval_s)
        with anyio.CancelScope(shield=True):
            try:
                event = await make()
            except Exception:
                log.exception("cannot build a periodic event; trying again in %g s", interval_s)
                continue
            await bus.publish(event)
