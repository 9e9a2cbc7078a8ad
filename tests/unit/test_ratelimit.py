"""`RateLimits.hit`: fixed one-minute windows aligned to an injected clock, no I/O."""

from __future__ import annotations

import contextlib
import inspect
import math
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from app.access.ratelimit import RateLimits

WINDOW = 29_000_000  # a minute of 2025, as int(now // 60)


class Clock:
    """Seconds since the epoch, moved by hand."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock(WINDOW * 60 + 15.25)  # 15.25 s into a window


@pytest.fixture
def limits(clock: Clock) -> RateLimits:
    return RateLimits(clock=clock)


def test_the_limit_admits_that_many_then_tells_the_seconds_to_the_window_end(
    limits: RateLimits,
) -> None:
    assert [limits.hit("key:nightly-psa", 5) for _ in range(5)] == [None] * 5
    retry = limits.hit("key:nightly-psa", 5)
    assert retry == pytest.approx(60 - 15.25)
    assert limits.hit("key:nightly-psa", 5) == pytest.approx(44.75)  # still refused


def test_retry_after_shrinks_with_the_window_and_is_at_least_one_second_rounded_up(
    limits: RateLimits, clock: Clock
) -> None:
    assert limits.hit("key:a", 1) is None
    clock.now = WINDOW * 60 + 50
    assert limits.hit("key:a", 1) == pytest.approx(10)
    clock.now = (WINDOW + 1) * 60 - 0.001  # the window's last millisecond
    retry = limits.hit("key:a", 1)
    assert retry is not None
    assert 0 < retry <= 0.0011
    assert math.ceil(retry) == 1


def test_the_next_window_admits_again(limits: RateLimits, clock: Clock) -> None:
    for _ in range(3):
        assert limits.hit("key:a", 3) is None
    assert limits.hit("key:a", 3) is not None
    clock.now = (WINDOW + 1) * 60  # the next window's first instant
    assert [limits.hit("key:a", 3) for _ in range(3)] == [None] * 3
    assert limits.hit("key:a", 3) == pytest.approx(60)


def test_windows_are_aligned_to_the_clock_not_to_the_first_request(
    limits: RateLimits, clock: Clock
) -> None:
    clock.now = WINDOW * 60 + 59  # the first request comes late in its window
    assert limits.hit("key:a", 1) is None
    assert limits.hit("key:a", 1) == pytest.approx(1)
    clock.now = (WINDOW + 1) * 60 + 1  # two seconds later: a new window
    assert limits.hit("key:a", 1) is None


@pytest.mark.parametrize("per_minute", [0, -1])
def test_no_limit_counts_nothing(limits: RateLimits, per_minute: int) -> None:
    assert all(limits.hit("key:a", per_minute) is None for _ in range(10_000))
    # Nothing was counted: a limit set afterwards in the same window starts from zero.
    assert [limits.hit("key:a", 2) for _ in range(2)] == [None, None]
    assert limits.hit("key:a", 2) is not None


def test_identities_are_independent(limits: RateLimits) -> None:
    assert limits.hit("key:a", 2) is None
    assert limits.hit("key:a", 2) is None
    assert limits.hit("key:a", 2) is not None
    assert limits.hit("key:b", 2) is None  # another key's count is its own
    assert limits.hit("key:b", 2) is None
    assert limits.hit("key:b", 2) is not None
    assert limits.hit("key:c", 100) is None
    assert limits.hit("key:a", 2) is not None


def test_a_limit_changed_within_the_window_keeps_what_was_admitted(limits: RateLimits) -> None:
    assert [limits.hit("key:a", 5) for _ in range(3)] == [None] * 3
    assert limits.hit("key:a", 4) is None  # the 4th of 4
    assert limits.hit("key:a", 4) is not None
    assert limits.hit("key:a", 5) is None  # back to 5: the 5th
    assert limits.hit("key:a", 5) is not None
    assert [limits.hit("key:a", 7) for _ in range(2)] == [None, None]  # 5 admitted so far
    assert limits.hit("key:a", 7) is not None


def test_a_raised_limit_admits_exactly_the_difference(limits: RateLimits) -> None:
    for _ in range(3):
        assert limits.hit("key:a", 3) is None
    assert limits.hit("key:a", 3) is not None  # refused requests do not count as admitted
    assert [limits.hit("key:a", 5) for _ in range(2)] == [None, None]
    assert limits.hit("key:a", 5) is not None


def test_separate_instances_count_separately(clock: Clock) -> None:
    first, second = RateLimits(clock=clock), RateLimits(clock=clock)
    assert first.hit("key:a", 1) is None
    assert first.hit("key:a", 1) is not None
    assert second.hit("key:a", 1) is None


def test_the_default_clock_is_the_system_time() -> None:
    # Read the system time on both sides of the hits; tried again in the rare case that a
    # minute starts in between (the second hit would then be a new window's first).
    while True:
        before = time.time()
        limits = RateLimits()
        first, retry = limits.hit("key:a", 1), limits.hit("key:a", 1)
        after = time.time()
        if before // 60 == after // 60:
            break
    assert first is None
    assert retry is not None
    # The seconds left in the system clock's minute, as the hit saw it.
    window_end = (before // 60 + 1) * 60
    assert window_end - after <= retry <= window_end - before


# -- the hit path does no I/O ---------------------------------------------------------------

# Audit events (PEP 578) of every kind of I/O or blocking a request path must not do.
IO_EVENTS = (
    "open",
    "os.",
    "socket.",
    "subprocess.",
    "sqlite3.",
    "time.sleep",
    "shutil.",
    "urllib.",
    "http.client.",
    "ftplib.",
    "smtplib.",
)

_watching: dict[int, list[str]] = {}  # thread id -> the events seen while it watched


def _audit(event: str, _args: tuple[Any, ...]) -> None:
    seen = _watching.get(threading.get_ident())
    if seen is not None and event.startswith(IO_EVENTS):
        seen.append(event)


_hook_added = False


@contextlib.contextmanager
def io_events() -> Iterator[list[str]]:
    """The I/O audit events this thread raises inside the block (an audit hook cannot be
    removed: it stays, idle, for the rest of the session)."""
    global _hook_added
    if not _hook_added:
        sys.addaudithook(_audit)
        _hook_added = True
    seen: list[str] = []
    _watching[threading.get_ident()] = seen
    try:
        yield seen
    finally:
        del _watching[threading.get_ident()]


def test_the_audit_hook_sees_io() -> None:
    with io_events() as seen, open(__file__, "rb"):
        pass
    assert "open" in seen


def test_hit_does_no_io_and_needs_no_event_loop(limits: RateLimits, clock: Clock) -> None:
    assert not inspect.iscoroutinefunction(limits.hit)
    with io_events() as seen:
        for second in range(0, 180, 7):  # three windows: new counters, refusals, identities
            clock.now = WINDOW * 60 + second
            for n in range(20):
                limits.hit(f"key:{n % 4}", 5 + n % 3)
            limits.hit("key:unlimited", 0)
    assert seen == []


def test_hit_is_thread_safe(clock: Clock) -> None:
    limits = RateLimits(clock=clock)
    admitted: list[int] = []

    def send() -> None:
        admitted.append(sum(limits.hit("key:a", 500) is None for _ in range(300)))

    threads = [threading.Thread(target=send) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert sum(admitted) == 500


def test_counting_starts_no_thread_and_keeps_one_counter_per_identity() -> None:
    """limits' own MemoryStorage re-arms a timer thread every 10 ms while it holds keys,
    which costs the request path the GIL; the counts here are plain and expire lazily."""
    clock = [120.0]
    limits = RateLimits(clock=lambda: clock[0])
    before = threading.active_count()
    for minute in range(5):
        clock[0] = 120.0 + 60 * minute
        assert limits.hit("key:a", 10) is None
        assert limits.hit("key:b", 10) is None
    assert threading.active_count() == before
    assert len(limits._storage) == 2  # the windows left behind are dropped
