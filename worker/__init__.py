"""The self-hosted HiDream-I1 worker: one process per GPU serving one variant over the OpenAI
images protocol, with a bounded queue, readiness/load reporting and Prometheus metrics."""

__version__ = "0.1.0"
