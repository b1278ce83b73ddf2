"""Approval webhooks under the egress rules: a URL is checked when it is set and again at each delivery
(public addresses only unless the operator allows the host, https unless allowed, the connection pinned to
the address checked, no redirects followed), and each new approval is POSTed in the background, so the
call that asked for it never waits on the receiver.

A delivery is one POST per attempt, each signed afresh (``Aiserve-Signature``, see
``money.approval_webhooks.signature``), within a time limit; a receiver that cannot be reached, times
out, or answers 408, 429 or 5xx is tried again after 1 s, 2 s, ... up to the number of attempts. Any 2xx
is delivered; another answer, or a host that may not be reached, ends it. The outcome is kept on the
webhook (``get_approval_webhook`` shows it). A receiver may get one approval twice (its answer was lost):
the approval's ``id`` tells them apart.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Collection
from typing import Any, Final

import anyio
import httpx

from aiserve_mcp.core.errors import AiserveError, Forbidden, UpstreamTimeout, ValidationFailed
from aiserve_mcp.core.events import Event, EventBus, Subscription
from aiserve_mcp.money.approval_webhooks import (
    EVENT_HEADER,
    SIGNATURE_HEADER,
    ApprovalWebhookStore,
    WebhookEndpoint,
    signature,
)
from aiserve_mcp.money.approvals import REQUESTED, STREAM
from aiserve_mcp.traffic.egress import AllowedHosts, checked_url, pinned_target

log = logging.getLogger(__name__)

SETTING: Final = "AISERVE_APPROVAL_WEBHOOK_ALLOWED_HOSTS"
WHAT: Final = "approval webhooks"
RETRIED_STATUSES: Final = frozenset({408, 429})
FIRST_RETRY_DELAY_S: Final = 1.0


class ApprovalWebhooks:
    """Each user's approval webhook, kept in ``store`` and delivered with ``client``
    (``traffic.egress.isolated_client``, which this object owns and closes in ``aclose``)."""

    def __init__(
        self,
        store: ApprovalWebhookStore,
        client: httpx.AsyncClient,
        allowed_hosts: Collection[str],
        *,
        timeout_s: float,
        attempts: int,
        retry_delay_s: float = FIRST_RETRY_DELAY_S,
    ) -> None:
        self._store = store
        self._client = client
        self._allowed = AllowedHosts(allowed_hosts, SETTING)
        self._timeout_s = timeout_s
        self._attempts = attempts
        self._retry_delay_s = retry_delay_s
        self._deliveries: set[asyncio.Task[str | None]] = set()

    async def get(self, user_id: str) -> WebhookEndpoint | None:
        return await self._store.get(user_id)

    async def set(self, user_id: str, url: str | None) -> WebhookEndpoint | None:
        """Send the user's new approvals to ``url`` under a new signing secret (``None``: to nowhere).
        ``ValidationFailed`` for a URL that is not https (http is for allowed hosts only), ``Forbidden`` for
        a host at a non-public address that the operator has not allowed, ``UpstreamFailed`` for a name
        that does not resolve (in time)."""
        if url is None:
            await self._store.remove(user_id)
            return None
        checked = checked_url(url, "the webhook URL", ValidationFailed)
        if checked.scheme != "https" and not self._allowed.admit(checked):
            raise ValidationFailed(
                f"the webhook URL must be an https:// URL (http:// only for a host allowed in {SETTING})"
            )
        try:
            with anyio.fail_after(self._timeout_s):
                await pinned_target(checked, self._allowed, WHAT)
        except TimeoutError:
            raise UpstreamTimeout(f"{checked.host!r} did not resolve within {self._timeout_s:g} s") from None
        return await self._store.replace(user_id, str(checked))

    def approval_requested(self, user_id: str, approval: dict[str, Any]) -> None:
        """Deliver ``approval`` (its view) to the user's webhook, if any, in the background."""
        task = asyncio.get_running_loop().create_task(self.deliver(user_id, approval))
        self._deliveries.add(task)
        task.add_done_callback(self._deliveries.discard)

    async def deliver(self, user_id: str, approval: dict[str, Any]) -> str | None:
        """POST ``approval`` to the user's webhook, with the retries above; the outcome (``None``: no
        webhook). Never raises."""
        try:
            endpoint = await self._store.get(user_id)
            if endpoint is None:
                return None
            body = json.dumps({"type": REQUESTED, "created": int(time.time()), "approval": approval}).encode()
            outcome, again = await self._attempt(endpoint, body)
            for attempt in range(1, self._attempts):
                if not again:
                    break
                await asyncio.sleep(self._retry_delay_s * 2 ** (attempt - 1))
                outcome, again = await self._attempt(endpoint, body)
            await self._store.record(user_id, endpoint.secret, outcome)
        except Exception:
            log.exception("cannot deliver approval %s to its webhook", approval.get("id"))
            return None
        if not outcome.startswith("delivered"):
            log.warning("approval %s not delivered to its webhook: %s", approval.get("id"), outcome)
        return outcome

    async def _attempt(self, endpoint: WebhookEndpoint, body: bytes) -> tuple[str, bool]:
        """One POST: its outcome, and whether trying again may help."""
        url = checked_url(endpoint.url, "the webhook URL", ValidationFailed)
        try:
            with anyio.fail_after(self._timeout_s):
                target, host = await pinned_target(url, self._allowed, WHAT)
                headers = {
                    "Content-Type": "application/json",
                    "User-Agent": "aiserve-approval-webhook",
                    EVENT_HEADER: REQUESTED,
                    SIGNATURE_HEADER: signature(endpoint.secret, body, int(time.time())),
                    **host,
                }
                async with self._client.stream("POST", target, content=body, headers=headers) as answer:
                    status = answer.status_code  # the body is not read: only the status matters
        except Forbidden as exc:
            return f"not sent: {exc.message}", False
        except TimeoutError:
            return f"no answer within {self._timeout_s:g} s", True
        except AiserveError as exc:
            return f"not sent: {exc.message}", True
        except httpx.HTTPError as exc:
            return f"{url.host!r} cannot be reached: {type(exc).__name__}", True
        if 200 <= status < 300:
            return f"delivered: HTTP {status}", False
        return f"answered HTTP {status}", status >= 500 or status in RETRIED_STATUSES

    def tap(self, bus: EventBus) -> EventBus:
        """``bus``, which also hands each ``approval.requested`` event published through it to
        :meth:`approval_requested`: once, in the process that published it (a subscription would receive
        it in every server process)."""
        return _Tapped(bus, self)

    async def aclose(self) -> None:
        """Stop deliveries still under way and close the client."""
        for task in list(self._deliveries):
            task.cancel()
        await asyncio.gather(*self._deliveries, return_exceptions=True)
        await self._client.aclose()


class _Tapped:
    """An event bus that also starts a webhook delivery for each new approval published through it."""

    def __init__(self, bus: EventBus, webhooks: ApprovalWebhooks) -> None:
        self._bus = bus
        self._webhooks = webhooks

    async def publish(self, event: Event) -> None:
        await self._bus.publish(event)
        if event.stream == STREAM and event.type == REQUESTED and event.user_id is not None:
            self._webhooks.approval_requested(event.user_id, event.data)

    def subscribe(self, user_id: str | None, streams: frozenset[str]) -> Subscription:
        return self._bus.subscribe(user_id, streams)

    async def ready(self) -> None:
        await self._bus.ready()

    def unsubscribe(self, subscription: Subscription) -> None:
        self._bus.unsubscribe(subscription)

    async def aclose(self) -> None:
        """Nothing: the bus tapped is closed by its owner."""
