"""Local HTTP servers that answer as the real external APIs do."""
