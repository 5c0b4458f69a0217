"""The metrics keep their labelled children (gateway/metrics.py): a repeat of labels() is the same
child, exposed as prometheus-client exposes it, and a removed child is not written to afterwards."""

from __future__ import annotations

from gateway.metrics import Metrics


def test_labels_gives_the_same_child_for_the_same_values() -> None:
    m = Metrics()
    first = m.requests.labels("team_a", "hidream-i1-full", "local_gpu", "succeeded")
    assert m.requests.labels("team_a", "hidream-i1-full", "local_gpu", "succeeded") is first
    assert m.requests.labels("team_b", "hidream-i1-full", "local_gpu", "succeeded") is not first
    first.inc(2)
    m.requests.labels("team_a", "hidream-i1-full", "local_gpu", "succeeded").inc()
    text = m.render().decode()
    labels = 'model="hidream-i1-full",provider="local_gpu",status="succeeded",team="team_a"'
    assert f"gateway_requests_total{{{labels}}} 3.0" in text


def test_a_removed_child_is_made_anew_and_counts_from_zero() -> None:
    m = Metrics()
    m.images.labels("team_a", "hidream-i1-full", "fal").inc(5)
    m.images.remove("team_a", "hidream-i1-full", "fal")
    again = m.images.labels("team_a", "hidream-i1-full", "fal")
    again.inc()
    text = m.render().decode()
    assert 'gateway_images_total{model="hidream-i1-full",provider="fal",team="team_a"} 1.0' in text
    m.images.clear()
    assert m.images.labels("team_a", "hidream-i1-full", "fal") is not again


def test_labels_by_name_still_work() -> None:
    m = Metrics()
    m.duration.labels(model="hidream-i1-full", status="succeeded").observe(0.2)
    assert m.duration.labels("hidream-i1-full", "succeeded") is m.duration.labels("hidream-i1-full", "succeeded")


def test_the_fast_paths_count_as_prometheus_client_does() -> None:
    import prometheus_client
    import pytest
    from prometheus_client import CollectorRegistry, generate_latest

    from gateway.metrics import Counter, Gauge, Histogram

    ours, theirs = CollectorRegistry(), CollectorRegistry()
    pairs = [
        (cls("m_" + kind, "doc", ["a"], registry=ours), base("m_" + kind, "doc", ["a"], registry=theirs))
        for kind, cls, base in (
            ("c", Counter, prometheus_client.Counter),
            ("g", Gauge, prometheus_client.Gauge),
            ("h", Histogram, prometheus_client.Histogram),
        )
    ]
    (c, c0), (g, g0), (h, h0) = pairs
    for metric in (c, c0):
        metric.labels("x").inc()
        metric.labels("x").inc(2.5)
    for metric in (g, g0):
        metric.labels("x").inc(3)
        metric.labels("x").dec()
    for metric in (h, h0):  # on a bound, between bounds, past the last, below the first, NaN
        for amount in (0.005, 0.3, 99.0, -1.0, 7.5, float("nan")):
            metric.labels("y").observe(amount)

    def exposed(registry: CollectorRegistry) -> list[bytes]:  # less the times each was created
        return [line for line in generate_latest(registry).splitlines() if b"_created" not in line]

    assert exposed(ours) == exposed(theirs)
    with pytest.raises(ValueError):
        c.labels("x").inc(-1)
    for parent_call in (c.inc, g.inc, g.dec, lambda: h.observe(1.0)):
        with pytest.raises(ValueError):
            parent_call()  # a labelled metric's parent takes no value
