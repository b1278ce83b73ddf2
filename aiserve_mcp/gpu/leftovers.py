"""Local contracts whose worker no live server holds: they end when a server starts (or stops).

A worker on this host lives as long as the server that started it. When that server was restarted or
killed, its contracts are still stored as active; the next server to start on the same database ends
them as a destroy would, charging the time their worker ran.
"""

from __future__ import annotations

import logging
from datetime import timedelta

from aiserve_mcp.gpu.contracts import ContractStore
from aiserve_mcp.gpu.providers.local import LocalProvider
from aiserve_mcp.gpu.settlement import Settlement
from aiserve_mcp.gpu.tables import GpuContract

log = logging.getLogger(__name__)


async def end_leftovers(
    local: LocalProvider, contracts: ContractStore, settlement: Settlement
) -> list[GpuContract]:
    """End every contract stored as active on ``local`` whose worker no live server holds: a leftover
    worker still running is stopped, and the credit hold is settled for the time the worker ran (until its
    last heartbeat), or released when it never started. Contracts held by this server or by another live
    server process on this host are left alone. Returns the contracts ended."""
    ended = []
    for contract in await contracts.active(local.name):
        period_start = contract.expires_at - timedelta(hours=contract.duration_hours)
        try:  # one contract that cannot be ended must not keep the server from starting
            ending = await local.leftover(
                contract.id, contract.instance_id, period_start, contract.created_at
            )
            if ending is not None:
                ended.append(
                    await settlement.end(contract, ending.status, ending.message, ended_at=ending.at)
                )
        except Exception:
            log.exception("cannot end the leftover local contract %s", contract.id)
    if ended:
        log.warning(
            "ended %d local contract(s) whose worker stopped with its server: %s",
            len(ended),
            ", ".join(c.id for c in ended),
        )
    return ended
