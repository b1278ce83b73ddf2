"""OAuth 2.1 for MCP: the MCP SDK's authorization server handlers over ``accounts.oauth``, the protected
resource metadata, and the ``WWW-Authenticate`` challenge of the MCP endpoint."""
