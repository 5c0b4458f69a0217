"""When and how to look at a queued fal request. Pure; no I/O, no clock.

A look is a status poll (one request on a warm keep-alive connection) or the status stream (one
request on a connection of its own, held until COMPLETED arrives, §2.3). Measured in the gateway
(bench/perf/held.py) a stream costs about as much CPU as three polls, mostly in making its
connection, and ~10 KiB while open; it answers the moment the job completes. So: stream while how
long the job will still take is unknown (nothing learned yet, or the job is well past its
expected time) or long (more than two of the longest poll waits away); otherwise poll. The first look comes
at a fraction of the time the app's recent requests took, so a learned 10 s job costs a poll at
8 s and one at 10 s instead of polls from the start. Between polls the wait is a fraction of the
time already waited (the curve of exponential backoff, restartable from any point), capped.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class PollPolicy:
    initial_s: float = 0.25  # the first poll when nothing has been learned yet, and the shortest wait
    factor: float = 1.5  # each wait is (factor - 1) x the time since submit: backoff by this factor
    max_s: float = 2.0  # the longest wait between two polls
    # The first look comes at this fraction of the learned time to completion: early enough that
    # most jobs are still running (then the stream catches the end at once, or polls do), late
    # enough that a request costs one or two calls.
    first_look_fraction: float = 0.8

    def __post_init__(self) -> None:
        if not (0 < self.initial_s <= self.max_s and self.factor >= 1.0 and 0 < self.first_look_fraction <= 1):
            raise ValueError("fal polling needs 0 < initial <= max, factor >= 1 and 0 < first_look_fraction <= 1")

    def first_look_s(self, expected_s: float | None, *, streaming: bool) -> float:
        """Seconds after the submit for the first look. With nothing learned, a stream (one call
        whenever it opens) opens at once, and a poll waits initial_s."""
        if expected_s is not None:
            return self.first_look_fraction * expected_s
        return 0.0 if streaming else self.initial_s

    def should_stream(self, expected_s: float | None, elapsed_s: float) -> bool:
        """Whether the status stream is worth its connection at this look: the wait left is
        unknown (nothing learned, or the job is well past its expected time) or long."""
        return expected_s is None or abs(expected_s - elapsed_s) > 2 * self.max_s

    def next_wait_s(self, elapsed_s: float) -> float:
        """Seconds from a poll that found the job unfinished, `elapsed_s` after its submit, to the next."""
        return min(self.max_s, max(self.initial_s, (self.factor - 1.0) * elapsed_s))


class CompletionTimes:
    """Seconds from submit to COMPLETED for each app's recent requests, and a cautious summary.

    The summary is a low quantile of a window rather than a mean: one request that sat long in
    fal's queue must not push the next requests' first look past their own completion (a late look
    costs latency; an early one costs a call or a longer-held stream). Observations from polls are
    upper bounds (the job finished somewhere in the last wait), taken when the poll was sent; a
    too-late first look that finds a job done reports its own time, 0.8x the estimate, so the
    estimate comes down again by itself when fal gets faster. (Taken when the poll's answer came
    back, each such look added a round trip: a job fal finished at once was learned as about five.)
    """

    def __init__(self, *, window: int = 64, quantile: float = 0.25, min_samples: int = 3) -> None:
        if window < 1 or not 0 <= quantile <= 1 or not 1 <= min_samples <= window:
            raise ValueError("CompletionTimes needs window >= min_samples >= 1 and 0 <= quantile <= 1")
        self._window = window
        self._quantile = quantile
        self._min_samples = min_samples
        self._seen: dict[str, deque[float]] = {}

    def observe(self, app: str, seconds: float) -> None:
        if seconds >= 0:
            self._seen.setdefault(app, deque(maxlen=self._window)).append(seconds)

    def expected_s(self, app: str) -> float | None:
        """The app's low-quantile time to completion, or None before min_samples completions."""
        seen = self._seen.get(app)
        if seen is None or len(seen) < self._min_samples:
            return None
        ordered = sorted(seen)
        return ordered[int(self._quantile * (len(ordered) - 1))]
