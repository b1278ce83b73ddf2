"""The server processes of one ``aiserve serve --workers N``, as each of them sees the group.

Every process accepts connections on the shared port, so a client's next connection may reach another
process than its last one. State lives in PostgreSQL and Redis, except what cannot leave a process: an MCP
session (its streams and pending server requests). Each process therefore also listens on a private Unix
socket of its own, and tags what it hands out (MCP session ids, the legacy SSE message path) with its
index, so that a sibling that receives a request for it relays the request there
(:mod:`aiserve_mcp.protocols.mcp.affinity`). A relayed request carries the group's token, which proves it
came from a sibling (only then is the client address it names believed).
"""

from __future__ import annotations

import ctypes
import signal
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Final

PR_SET_PDEATHSIG: Final = 1  # <linux/prctl.h>


@dataclass(frozen=True)
class ProcessGroup:
    """Process ``index`` of ``count``; sibling ``i`` listens privately on :meth:`socket_path` ``(i)``."""

    index: int
    count: int
    run_dir: Path
    token: str

    def socket_path(self, index: int) -> Path:
        return self.run_dir / f"process-{index}.sock"

    def tag(self, index: int) -> str:
        """The prefix of the session ids that process ``index`` hands out."""
        return f"p{index}."

    def owner(self, tagged: str) -> int | None:
        """The index of the process that handed out ``tagged`` (a tagged session id), or None."""
        head, dot, _ = tagged.partition(".")
        if not dot or not head.startswith("p") or not head[1:].isdigit():
            return None
        index = int(head[1:])
        return index if index < self.count else None


def term_when_parent_dies() -> bool:
    """Ask the kernel (Linux) to send this process SIGTERM when its parent dies; False where it cannot."""
    if sys.platform != "linux":
        return False
    libc = ctypes.CDLL(None, use_errno=True)
    return bool(libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0) == 0)
