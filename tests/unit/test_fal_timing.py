"""When the fal adapter looks at a queued request: the poll schedule and what it learns from
completed requests (providers/fal/timing.py)."""

from __future__ import annotations

import pytest

from providers.fal.timing import CompletionTimes, PollPolicy


def test_the_first_look_comes_at_a_fraction_of_the_learned_time() -> None:
    policy = PollPolicy(initial_s=0.25, factor=1.5, max_s=2.0, first_look_fraction=0.8)
    assert policy.first_look_s(10.0, streaming=False) == pytest.approx(8.0)
    assert policy.first_look_s(10.0, streaming=True) == pytest.approx(8.0)
    assert policy.first_look_s(0.1, streaming=False) == pytest.approx(0.08)


def test_with_nothing_learned_a_stream_opens_at_once_and_a_poll_waits() -> None:
    policy = PollPolicy(initial_s=0.25)
    assert policy.first_look_s(None, streaming=True) == 0.0
    assert policy.first_look_s(None, streaming=False) == 0.25


def test_waits_between_polls_grow_with_the_time_waited_and_are_capped() -> None:
    policy = PollPolicy(initial_s=0.25, factor=1.5, max_s=2.0)
    assert policy.next_wait_s(0.25) == 0.25
    assert policy.next_wait_s(1.0) == pytest.approx(0.5)
    assert policy.next_wait_s(8.0) == 2.0


def test_a_ten_second_job_costs_few_polls_once_its_time_is_learned() -> None:
    policy = PollPolicy(initial_s=0.25, factor=1.5, max_s=2.0)

    def polls(job_s: float, expected_s: float | None) -> int:
        t, n = policy.first_look_s(expected_s, streaming=False), 1
        while t < job_s:
            t += policy.next_wait_s(t)
            n += 1
        return n

    cold, learned = polls(10.0, None), polls(10.0, 10.0)
    assert cold >= 8 and learned == 2


@pytest.mark.parametrize(
    ("expected", "elapsed", "stream"),
    [
        (None, 0.0, True),  # nothing learned: one stream beats a backoff of polls
        (10.0, 8.0, False),  # 2 s left: a poll or two
        (60.0, 48.0, True),  # 12 s left: six polls or one stream
        (10.0, 11.0, False),  # a little late: a poll or two more
        (10.0, 15.0, True),  # well past its expected time: how long now is unknown
    ],
)
def test_the_stream_is_chosen_when_the_wait_left_is_unknown_or_long(
    expected: float | None, elapsed: float, stream: bool
) -> None:
    assert PollPolicy(max_s=2.0).should_stream(expected, elapsed) is stream


@pytest.mark.parametrize(
    "bad",
    [{"initial_s": 0}, {"initial_s": 3.0, "max_s": 2.0}, {"factor": 0.9}, {"first_look_fraction": 1.5}],
)
def test_a_policy_out_of_range_is_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        PollPolicy(**bad)


def test_nothing_is_expected_before_a_few_completions() -> None:
    times = CompletionTimes(min_samples=3)
    times.observe("fal-ai/x", 10.0)
    times.observe("fal-ai/x", 10.0)
    assert times.expected_s("fal-ai/x") is None
    times.observe("fal-ai/x", 10.0)
    assert times.expected_s("fal-ai/x") == 10.0
    assert times.expected_s("fal-ai/other") is None  # apps are learned apart


def test_one_request_that_waited_long_does_not_delay_the_next_first_look() -> None:
    times = CompletionTimes(window=8, quantile=0.25)
    for seconds in (10.0, 10.2, 9.9, 10.1, 95.0, 10.0):
        times.observe("fal-ai/x", seconds)
    expected = times.expected_s("fal-ai/x")
    assert expected is not None and 9.9 <= expected <= 10.2


def test_the_estimate_follows_faster_completions_as_the_window_turns_over() -> None:
    times = CompletionTimes(window=8, quantile=0.25)
    for _ in range(8):
        times.observe("fal-ai/x", 10.0)
    for _ in range(3):
        times.observe("fal-ai/x", 4.0)
    expected = times.expected_s("fal-ai/x")
    assert expected == 4.0
