"""Async image jobs (`Prefer: respond-async`): their state in Redis, the runner every gateway
process runs, and the signed webhooks that report their results."""
