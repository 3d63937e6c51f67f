"""The remote backend's circuit breaker, on a clock the test moves."""

from __future__ import annotations

from xaiserve.runtime.circuit import CircuitBreaker, CircuitState


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_opens_after_consecutive_failures_only() -> None:
    seen: list[CircuitState] = []
    breaker = CircuitBreaker(3, 5.0, on_change=seen.append, clock=Clock())
    for _ in range(2):
        assert breaker.allow()
        breaker.record_failure("x")
    breaker.record_success()  # a success in between resets the count
    for _ in range(2):
        breaker.record_failure("y")
    assert breaker.state is CircuitState.CLOSED and seen == []
    breaker.record_failure("z")
    assert breaker.state is CircuitState.OPEN and seen == [CircuitState.OPEN]
    assert breaker.last_error == "z" and not breaker.allow()


def test_half_open_admits_one_trial_then_closes_or_reopens() -> None:
    clock = Clock()
    breaker = CircuitBreaker(1, 5.0, clock=clock)
    breaker.record_failure("down")
    assert not breaker.allow() and breaker.retry_in() == 5.0
    clock.now += 5.0
    assert breaker.allow() and breaker.state is CircuitState.HALF_OPEN
    assert not breaker.allow()  # only one trial at a time
    breaker.record_failure("still down")
    assert breaker.state is CircuitState.OPEN and not breaker.allow()
    clock.now += 5.0
    assert breaker.allow()
    breaker.release_trial()  # the trial's client gave up: another may try
    assert breaker.allow()
    breaker.record_success()
    assert breaker.state is CircuitState.CLOSED and breaker.allow() and breaker.allow()


def test_a_probe_closes_an_open_circuit() -> None:
    breaker = CircuitBreaker(1, 60.0, clock=Clock())
    breaker.record_failure("down")
    breaker.close()
    assert breaker.state is CircuitState.CLOSED and breaker.consecutive_failures == 0
