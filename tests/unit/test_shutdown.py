"""The stop relay: a signal handler asks for a stop without taking a lock the interrupted thread may hold."""

from __future__ import annotations

import threading

import pytest

from jobs import shutdown


@pytest.mark.timeout(10)
def test_a_stop_signal_never_waits_on_the_lock_of_the_event_it_sets() -> None:
    """A handler may run while the main thread holds the lock inside Event.wait(); it must not block on it."""
    event = threading.Event()
    request_stop = shutdown.relay(event)
    # What the main thread holds between two bytecodes of Event.wait(); event.set() here never returns.
    with event._cond:
        request_stop()
    assert event.wait(5)


def test_the_relay_sets_its_event_once_per_request_and_keeps_running() -> None:
    """Every request sets the event again, also after it was cleared (a worker stops more than once in tests)."""
    event = threading.Event()
    request_stop = shutdown.relay(event)
    for _ in range(3):
        request_stop()
        assert event.wait(5)
        event.clear()
