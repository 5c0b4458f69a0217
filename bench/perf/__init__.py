"""Performance benchmark (issue 6): overhead and throughput of the gateway, with LiteLLM beside it."""
