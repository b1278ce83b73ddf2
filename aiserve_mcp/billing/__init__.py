"""Money: the credit ledger, payment gateways and spending guardrails."""
