"""Use cases and domain logic. Nothing here knows about HTTP, MCP or A2A."""
