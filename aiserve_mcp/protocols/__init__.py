"""Adapters that serve the tools over MCP (HTTP and stdio), A2A, the agent door and WebSocket events, and
the HTTP admission in front of them."""
