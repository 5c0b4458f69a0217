from __future__ import annotations

from dataclasses import fields, replace

from providers.base import ProviderHealth


def test_with_wait_is_replace_of_the_expected_wait() -> None:
    health = ProviderHealth(
        healthy=False, detail="d", queue_depth=3, expected_wait_s=1.5, saturated=True, service_s=2.5,
        extra={"gpu": "a100"}, configured=False,
    )  # fmt: skip
    assert health.with_wait(7.0) == replace(health, expected_wait_s=7.0)
    assert health.with_wait(7.0).expected_wait_s == 7.0 and health.expected_wait_s == 1.5


def test_with_wait_copies_every_field() -> None:
    # with_wait names the fields one by one; a field added to ProviderHealth must be added there too.
    assert [f.name for f in fields(ProviderHealth)] == [
        "healthy", "detail", "queue_depth", "expected_wait_s", "saturated", "service_s", "extra", "configured",
    ]  # fmt: skip
