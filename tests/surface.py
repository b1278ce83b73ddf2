"""The public surface of a running server, as one JSON document: the OpenAPI document, the MCP tools,
prompts, resources and resource templates (names, schemas, annotations, descriptions), the A2A agent
card, every CLI command's help and the settings with their defaults.

``tests/test_surface.py`` compares a live server's surface with ``tests/surface.json``, so a change that
moves code cannot change what users see unnoticed. After a deliberate change to the surface, rewrite the
snapshot and review its diff::

    .venv/bin/python -m tests.surface
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
from pathlib import Path
from typing import Any
from unittest import mock

import httpx

from aiserve_mcp.app import create_app
from aiserve_mcp.cli import build_parser
from aiserve_mcp.core.settings import Settings
from tests.conftest import serve, sign_up
from tests.mcp_clients import all_tools, mcp_client

SNAPSHOT = Path(__file__).with_name("surface.json")
SERVER = "http://SERVER"


def _cli_help(parser: argparse.ArgumentParser, prefix: str = "aiserve") -> dict[str, str]:
    """Every command's ``--help`` text, keyed by its command line (wrapped at a fixed width)."""
    parser.prog = prefix
    with mock.patch.dict(os.environ, {"COLUMNS": "100"}):
        helps = {prefix: parser.format_help()}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                helps.update(_cli_help(child, f"{prefix} {name}"))
    return helps


def _settings() -> dict[str, Any]:
    schema = Settings.model_json_schema()
    return {name: field.get("default") for name, field in sorted(schema["properties"].items())}


def _dump(items: list[Any]) -> list[Any]:
    return [item.model_dump(mode="json", by_alias=True, exclude_none=True) for item in items]


async def _served(url: str) -> dict[str, Any]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        account = await sign_up(http)
        openapi = (await http.get("/openapi.json")).json()
        card = (await http.get("/.well-known/agent-card.json")).json()
    async with mcp_client(url, account.access_token) as mcp:
        mcp_surface = {
            "tools": _dump(await all_tools(mcp)),
            "prompts": _dump((await mcp.list_prompts()).prompts),
            "resources": _dump((await mcp.list_resources()).resources),
            "resource_templates": _dump((await mcp.list_resource_templates()).resource_templates),
        }
    return {
        "openapi": openapi,
        "mcp": mcp_surface,
        "agent_card": json.loads(json.dumps(card).replace(url, SERVER)),
    }


async def surface() -> dict[str, Any]:
    """The surface of a server on a fresh SQLite database in a temporary directory."""
    with tempfile.TemporaryDirectory() as data_dir:
        settings = Settings(data_dir=Path(data_dir), log_level="WARNING")
        async with serve(create_app(settings)) as url:
            served = await _served(url)
    return {**served, "cli": _cli_help(build_parser()), "settings": _settings()}


def render(document: dict[str, Any]) -> str:
    return json.dumps(document, indent=1, sort_keys=True) + "\n"


if __name__ == "__main__":
    SNAPSHOT.write_text(render(asyncio.run(surface())))
    print(f"wrote {SNAPSHOT}")
