"""The relay between the processes of one port: who owns a tagged session, and whose word about the
caller's address counts."""

from __future__ import annotations

from pathlib import Path

import httpx
from starlette.types import Receive, Scope, Send

from aiserve_mcp.core.processes import ProcessGroup
from aiserve_mcp.protocols.mcp.affinity import HOP_HEADER, SessionAffinity, Siblings

GROUP = ProcessGroup(0, 2, Path("/nonexistent"), "group-token")


def test_a_session_id_names_its_process_only_when_it_is_one_of_the_group() -> None:
    assert GROUP.owner("p1.abc") == 1 and GROUP.owner("p0.abc") == 0
    for foreign in ("p2.abc", "abc", "p.abc", "px.abc", "p1abc", ""):
        assert GROUP.owner(foreign) is None, foreign


async def test_only_a_sibling_names_the_callers_address_and_the_tag_is_ours_to_strip() -> None:
    seen: list[Scope] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        seen.append(scope)
        await send({"type": "http.response.start", "status": 200, "headers": [(b"mcp-session-id", b"s1")]})
        await send({"type": "http.response.body", "body": b"{}"})

    relay = SessionAffinity(app, Siblings(GROUP), "/api/v1/mcp", "/api/v1/mcp/messages/", 1024)
    transport = httpx.ASGITransport(app=relay, client=("203.0.113.9", 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://127.0.0.1") as client:
        forged = await client.post(
            "/api/v1/mcp", headers={HOP_HEADER: "guessed 10.0.0.1", "mcp-session-id": "p0.s1"}, json={}
        )
        relayed = await client.post("/api/v1/mcp", headers={HOP_HEADER: "group-token 198.51.100.7"}, json={})
        gone = await client.post("/api/v1/mcp", headers={"mcp-session-id": "p1.s9"}, json={})  # no sibling
    assert seen[0]["client"][0] == "203.0.113.9" and seen[1]["client"][0] == "198.51.100.7"
    assert all(HOP_HEADER.encode() not in dict(s["headers"]) for s in seen)
    assert dict(seen[0]["headers"])[b"mcp-session-id"] == b"s1"  # the SDK knows it untagged
    assert forged.headers["mcp-session-id"] == relayed.headers["mcp-session-id"] == "p0.s1"
    assert gone.status_code == 404 and gone.json()["error"]["message"] == "Session not found"
