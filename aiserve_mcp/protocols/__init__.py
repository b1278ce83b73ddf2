"""Adapters that serve the tools over MCP (HTTP and stdio), and the HTTP gateway in front of them."""
