"""Charging for a contract's time: the hours it used when it ends, and each new period of a metered
contract that renews itself."""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal

from aiserve_mcp.core.errors import InsufficientCredits, SpendingLimit
from aiserve_mcp.core.principal import Principal
from aiserve_mcp.gpu.contracts import ContractStore
from aiserve_mcp.gpu.providers.base import InstanceStatus
from aiserve_mcp.gpu.tables import GpuContract
from aiserve_mcp.money.costs import CostGate

log = logging.getLogger(__name__)


class Settlement:
    def __init__(self, contracts: ContractStore, costs: CostGate) -> None:
        self._contracts = contracts
        self._costs = costs

    async def end(
        self,
        contract: GpuContract,
        status: InstanceStatus,
        message: str | None = None,
        *,
        ended_at: datetime | None = None,
    ) -> GpuContract:
        """Record that ``contract`` ended (now, or at ``ended_at``) and charge it: the hours used in its
        current period (at least the first hour on prepaid providers, at most the period), or nothing when
        it failed."""
        now = ended_at or datetime.now(UTC)
        period_start = contract.expires_at - timedelta(hours=contract.duration_hours)
        hours = Decimal((now - period_start).total_seconds()) / 3600
        if contract.billing == "prepaid":
            hours = max(hours, Decimal(1))
        hours = min(hours, Decimal(contract.duration_hours))
        cost = Decimal(0) if status == "failed" else contract.price_per_hour * hours
        await self._costs.settle(contract.id, cost, f"{contract.gpu_model} on {contract.provider}: {status}")
        return await self._contracts.update(
            contract.id, status=status, status_message=message, endpoint=None, destroyed_at=now
        )

    async def renew(self, contract: GpuContract) -> bool:
        """Extend ``contract`` (as read when it was due) by its duration, charge the period that ended and
        authorize the next one. False when the payer's limits or credits refuse it: its expiry is put back
        and the instance is to be destroyed. The extension is claimed first, conditionally on the expiry
        read, so that a process renewing the same contract at the same time finds it taken and charges
        nothing (True: it is renewed)."""
        renewed = await self._contracts.extend(
            contract, contract.expires_at + timedelta(hours=contract.duration_hours)
        )
        if renewed is None:
            log.info("%s was renewed or ended by another process", contract.id)
            return True
        await self._costs.settle(
            contract.id,
            contract.price_per_hour * contract.duration_hours,
            f"{contract.gpu_model}: period ended",
        )
        payer = Principal(
            contract.user_id,
            "",
            False,
            "api_key" if contract.api_key_id else "oauth" if contract.grant_id else "jwt",
            api_key_id=contract.api_key_id,
            grant_id=contract.grant_id,
        )
        try:
            await self._costs.authorize(
                payer,
                contract.price_per_hour * contract.duration_hours,
                contract.id,
                f"{contract.gpu_model}: renewed for {contract.duration_hours} h",
                spend_key=f"{contract.id}@{contract.expires_at.isoformat()}",
            )
        except (SpendingLimit, InsufficientCredits) as exc:
            log.info("not renewing %s: %s", contract.id, exc.message)
            await self._contracts.extend(renewed, contract.expires_at)
            return False
        return True
