"""Approvals: a person's say over what their agents spend.

A policy per scope (the user ``user:<id>``, and each API key ``key:<id>`` or OAuth grant ``grant:<id>``)
says when a money-moving call waits for the user's decision: ``never`` (the default), ``always``, or
``above`` a USD amount per action. The user's policy and the calling credential's own both apply: a call
waits when either catches its quote. Loosening a policy (always -> above -> never, or a higher threshold)
needs the ``guardrails:admin`` scope, as raising a spending limit does; tightening needs none.

A caught call is stored as a pending approval and refused with ``ApprovalRequired``; nothing is reserved
or spent while it waits. :meth:`ApprovalService.claim` moves it from ``pending`` to ``executing`` in one
conditional update, so exactly one of any number of concurrent approvals carries it out;
:meth:`ApprovalService.finish` keeps the outcome (``executed`` with the tool's output, ``failed`` with the
error body). A pending approval ``AISERVE_APPROVAL_TTL_S`` old reads ``expired`` and can no longer be
carried out; a denied one reads ``denied``. An approval whose server stopped while carrying it out stays
``executing``.

The ``approvals`` event stream tells the user of each new approval (``approval.requested``) and of each
change after (``approval.decided``: executing, then executed or failed; denied; expired), with the
approval's view (:meth:`ApprovalRecord.view`) as data.
"""

from __future__ import annotations

import secrets
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, Literal

import orjson
from sqlalchemy import delete, select, update

from aiserve_mcp.core.errors import ApprovalRequired, Forbidden, NotFound
from aiserve_mcp.core.events import Event, EventBus
from aiserve_mcp.core.principal import Principal
from aiserve_mcp.money.guardrails import ADMIN_SCOPE, credential_scope, user_scope
from aiserve_mcp.money.tables import Approval, ApprovalPolicy
from aiserve_mcp.storage.database import Database
from aiserve_mcp.storage.tables import utcnow

Mode = Literal["never", "always", "above"]
Status = Literal["pending", "executing", "executed", "denied", "expired", "failed"]
STREAM = "approvals"
REQUESTED = "approval.requested"
DECIDED = "approval.decided"
_STRICTNESS: dict[Mode, int] = {"never": 0, "above": 1, "always": 2}


def dollars(amount: Decimal) -> str:
    """``amount`` USD as a quote's sentence writes it: ``$4.80``, ``$0.125`` (cents, or finer when it
    has finer digits)."""
    text = f"{amount:,.6f}".rstrip("0")
    return f"${text}{'0' * (2 - len(text.split('.')[1]))}"


@dataclass(frozen=True)
class Quote:
    """What a call would cost, and a sentence saying what it does: "Rent 1x RTX 4090 on vastai at $1.60/h
    for 3 h ($4.80)"."""

    amount: Decimal
    description: str


@dataclass(frozen=True)
class Policy:
    """When an action waits for approval: ``never``, ``always``, or ``above`` ``threshold`` USD."""

    mode: Mode
    threshold: Decimal | None = None

    def catches(self, amount: Decimal) -> bool:
        if self.mode == "above":
            return self.threshold is None or amount > self.threshold
        return self.mode == "always"

    def looser_than(self, other: Policy) -> bool:
        """Whether this policy lets through something ``other`` holds back."""
        if self.mode == other.mode == "above":
            return (self.threshold or Decimal(0)) > (other.threshold or Decimal(0))
        return _STRICTNESS[self.mode] < _STRICTNESS[other.mode]


NEVER = Policy("never")


@dataclass(frozen=True)
class ApprovalRecord:
    """One approval. ``requested_by`` is the caller as it asked: ``via`` (jwt, api_key, oauth),
    ``api_key_id``, ``grant_id``, ``client_id``, ``session_id`` and ``scopes`` (null: every scope)."""

    id: str
    user_id: str
    action: str
    arguments: dict[str, Any]
    amount: Decimal
    description: str
    status: Status
    result: dict[str, Any] | None
    error: dict[str, Any] | None
    requested_by: dict[str, Any]
    created_at: datetime
    expires_at: datetime
    decided_at: datetime | None
    url: str

    def view(self) -> dict[str, Any]:
        """The approval as ``ApprovalRequired`` and the event stream show it (JSON values)."""
        return {
            "id": self.id,
            "status": self.status,
            "action": self.action,
            "arguments": self.arguments,
            "amount": float(self.amount),
            "description": self.description,
            "expires_at": self.expires_at.isoformat().replace("+00:00", "Z"),
            "url": self.url,
        }

    def requester(self) -> Principal:
        """The caller who asked, as it was then (its email and administrator flag are not kept: check the
        credential again, ``AccountService.recheck``, before acting as it)."""
        by = self.requested_by
        scopes = by.get("scopes")
        return Principal(
            self.user_id,
            "",
            False,
            by["via"],
            scopes=frozenset(scopes) if scopes is not None else None,
            api_key_id=by.get("api_key_id"),
            session_id=by.get("session_id"),
            grant_id=by.get("grant_id"),
            client_id=by.get("client_id"),
        )


def _snapshot(principal: Principal) -> dict[str, Any]:
    return {
        "via": principal.via,
        "api_key_id": principal.api_key_id,
        "grant_id": principal.grant_id,
        "client_id": principal.client_id,
        "session_id": principal.session_id,
        "scopes": sorted(principal.scopes) if principal.scopes is not None else None,
    }


def _number(value: object) -> float:
    if isinstance(value, Decimal):
        return float(value)  # read back exactly: an input model parses a float by its shortest repr
    raise TypeError(f"{type(value).__name__} is not JSON")


def _stored_arguments(arguments: Mapping[str, Any]) -> dict[str, Any]:
    """The call's arguments as JSON values, as they are stored and later passed to the tool again."""
    stored = orjson.loads(orjson.dumps(dict(arguments), default=_number))
    assert isinstance(stored, dict)
    return stored


class ApprovalService:
    """Approval policies, and the approvals of every user. ``base_url`` is this server's public address
    (an approval's ``url`` is its console page there); ``ttl_s`` how long an approval waits."""

    def __init__(self, db: Database, events: EventBus, *, ttl_s: float, base_url: str) -> None:
        self._db = db
        self._events = events
        self._ttl = timedelta(seconds=ttl_s)
        self._base_url = base_url.rstrip("/")

    # -- policies -----------------------------------------------------------------------------------

    async def policy(self, scope: str) -> Policy:
        async with self._db.session() as session:
            row = await session.get(ApprovalPolicy, scope)
        return Policy(row.mode, row.threshold) if row is not None else NEVER  # type: ignore[arg-type]

    async def set_policy(self, principal: Principal, scopes: list[str], policy: Policy) -> Policy:
        """Give each of ``scopes`` (the caller's user, or credentials of theirs) ``policy``; loosening any
        of them needs guardrails:admin."""
        for scope in scopes:
            if policy.looser_than(await self.policy(scope)) and not principal.has_scope(ADMIN_SCOPE):
                raise Forbidden(
                    f"loosening an approval policy needs the {ADMIN_SCOPE} scope (tightening does not)",
                    {"required_scope": ADMIN_SCOPE},
                )
        async with self._db.session() as session:
            await session.execute(delete(ApprovalPolicy).where(ApprovalPolicy.scope.in_(scopes)))
            if policy != NEVER:
                session.add_all(
                    ApprovalPolicy(
                        scope=scope,
                        user_id=principal.user_id,
                        mode=policy.mode,
                        threshold=policy.threshold,
                        updated_at=utcnow(),
                    )
                    for scope in scopes
                )
        return policy

    async def _policies(self, principal: Principal) -> list[tuple[str, Policy]]:
        """The policies that apply to ``principal``'s calls: its user's and its credential's own."""
        scopes = [user_scope(principal.user_id), credential_scope(principal)]
        async with self._db.session() as session:
            rows = await session.scalars(
                select(ApprovalPolicy).where(ApprovalPolicy.scope.in_([s for s in scopes if s]))
            )
            return [(r.scope, Policy(r.mode, r.threshold)) for r in rows]  # type: ignore[arg-type]

    async def watches(self, principal: Principal) -> bool:
        """Whether any policy applies to ``principal``'s calls (if none, no call needs quoting)."""
        return bool(await self._policies(principal))

    # -- approvals ----------------------------------------------------------------------------------

    async def gate(
        self, principal: Principal, action: str, arguments: Mapping[str, Any], quote: Quote
    ) -> None:
        """Raise ``ApprovalRequired``, after storing a pending approval of ``action`` with ``arguments``,
        when a policy of ``principal`` catches ``quote``; return when none does."""
        caught = [scope for scope, p in await self._policies(principal) if p.catches(quote.amount)]
        if not caught:
            return
        now = utcnow()
        row = Approval(
            id=f"apr_{secrets.token_hex(12)}",
            user_id=principal.user_id,
            action=action,
            arguments=_stored_arguments(arguments),
            amount=quote.amount,
            description=quote.description[:300],
            status="pending",
            requested_by=_snapshot(principal),
            created_at=now,
            expires_at=now + self._ttl,
        )
        async with self._db.session() as session:
            session.add(row)
        record = self._record(row)
        await self._publish(record, REQUESTED)
        whose = "your account's" if caught == [user_scope(principal.user_id)] else "this credential's"
        raise ApprovalRequired(
            f"{quote.description}: {whose} approval policy holds this for the account owner's approval; "
            f"nothing was done or spent. The owner approves or denies it at {record.url} (or with "
            f"decide_approval, which needs {ADMIN_SCOPE}); poll get_approval with id '{record.id}' for the "
            f"outcome. It expires at {record.view()['expires_at']}.",
            {"approval": record.view()},
        )

    async def get(self, user_id: str, approval_id: str) -> ApprovalRecord:
        """One of ``user_id``'s approvals (one past its expiry reads ``expired``); NotFound for another
        user's."""
        await self._expire_due(user_id)
        async with self._db.session() as session:
            row = await session.scalar(
                select(Approval).where(Approval.id == approval_id, Approval.user_id == user_id)
            )
        if row is None:
            raise NotFound(f"no approval '{approval_id}' of yours")
        return self._record(row)

    async def list(self, user_id: str, status: str | None, limit: int, offset: int) -> list[ApprovalRecord]:
        """``user_id``'s approvals, newest first (only those in ``status`` when given)."""
        await self._expire_due(user_id)
        query = select(Approval).where(Approval.user_id == user_id)
        if status is not None:
            query = query.where(Approval.status == status)
        query = query.order_by(Approval.created_at.desc(), Approval.id).limit(limit).offset(offset)
        async with self._db.session() as session:
            return [self._record(r) for r in await session.scalars(query)]

    async def claim(self, user_id: str, approval_id: str) -> ApprovalRecord | None:
        """Move a pending, unexpired approval to ``executing`` (its caller then carries it out and records
        the outcome with :meth:`finish`); None when it was not pending (decided already, or expired: it
        then reads ``expired``). NotFound for another user's."""
        claimed = await self._decide(user_id, approval_id, "executing")
        record = await self.get(user_id, approval_id)
        if not claimed:
            return None
        await self._publish(record, DECIDED)
        return record

    async def finish(
        self, approval_id: str, *, result: dict[str, Any] | None, error: dict[str, Any] | None
    ) -> ApprovalRecord:
        """Keep the outcome of a claimed approval: ``executed`` with the tool's ``result``, or ``failed``
        with the ``error`` body."""
        status = "executed" if error is None else "failed"
        async with self._db.session() as session:
            await session.execute(
                update(Approval)
                .where(Approval.id == approval_id, Approval.status == "executing")
                .values(status=status, result=result, error=error)
            )
            row = await session.get(Approval, approval_id)
        if row is None:
            raise NotFound(f"no approval '{approval_id}'")
        record = self._record(row)
        await self._publish(record, DECIDED)
        return record

    async def deny(self, user_id: str, approval_id: str) -> ApprovalRecord:
        """Refuse a pending approval; one decided already (or expired) is returned as it stands."""
        denied = await self._decide(user_id, approval_id, "denied")
        record = await self.get(user_id, approval_id)
        if denied:
            await self._publish(record, DECIDED)
        return record

    async def _decide(self, user_id: str, approval_id: str, status: Status) -> bool:
        """Move the approval from pending (and unexpired) to ``status`` in one conditional update; whether
        it was pending."""
        now = utcnow()
        async with self._db.session() as session:
            changed = await session.scalars(
                update(Approval)
                .where(
                    Approval.id == approval_id,
                    Approval.user_id == user_id,
                    Approval.status == "pending",
                    Approval.expires_at > now,
                )
                .values(status=status, decided_at=now)
                .returning(Approval.id)
            )
            return changed.first() is not None

    async def _expire_due(self, user_id: str) -> None:
        """Mark ``user_id``'s pending approvals past their expiry ``expired``, announcing each."""
        now = utcnow()
        due = (Approval.user_id == user_id, Approval.status == "pending", Approval.expires_at <= now)
        async with self._db.session() as session:
            if await session.scalar(select(Approval.id).where(*due).limit(1)) is None:
                return  # the common case reads only
            expired = await session.scalars(
                update(Approval).where(*due).values(status="expired", decided_at=now).returning(Approval)
            )
            records = [self._record(row) for row in expired]
        for record in records:
            await self._publish(record, DECIDED)

    def _record(self, row: Approval) -> ApprovalRecord:
        return ApprovalRecord(
            id=row.id,
            user_id=row.user_id,
            action=row.action,
            arguments=row.arguments,
            amount=row.amount,
            description=row.description,
            status=row.status,  # type: ignore[arg-type]
            result=row.result,
            error=row.error,
            requested_by=row.requested_by,
            created_at=row.created_at,
            expires_at=row.expires_at,
            decided_at=row.decided_at,
            url=f"{self._base_url}/console/approvals/{row.id}",
        )

    async def _publish(self, record: ApprovalRecord, kind: str) -> None:
        await self._events.publish(Event(STREAM, kind, record.view(), record.user_id))
