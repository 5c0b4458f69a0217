"""Accounting: API keys and teams, admission and settlement (limits, budget reservations,
idempotency, the ledger) as atomic Redis scripts, the settlement spool, usage reports and billing
gauges. Step 2 (admit) and step 5 (settle) of the request path."""
