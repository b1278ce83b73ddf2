"""What users see does not change by accident: routes, tool names and schemas, CLI, settings."""

from __future__ import annotations

import difflib

from tests.surface import SNAPSHOT, render, surface


async def test_surface_matches_the_snapshot() -> None:
    now = render(await surface())
    recorded = SNAPSHOT.read_text()
    diff = "".join(difflib.unified_diff(recorded.splitlines(True), now.splitlines(True), "recorded", "now"))
    assert now == recorded, (
        f"the public surface changed (rewrite with python -m tests.surface):\n{diff[:6000]}"
    )
