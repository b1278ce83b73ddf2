"""Model formats, safe inspection and inference runtimes."""
