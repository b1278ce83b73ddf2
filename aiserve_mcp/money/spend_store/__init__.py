"""Spending guardrails' store: the ``SpendStore`` protocol and its rolling-window semantics (``base``), the
rules both stores share (``rules``), and the stores over SQL (``sql``) and Redis (``redis_store``)."""
