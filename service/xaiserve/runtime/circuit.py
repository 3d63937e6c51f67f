"""A circuit breaker for a remote backend (Nygard, *Release It!*, "Circuit Breaker").

CLOSED: calls go through; ``failures`` consecutive failed calls open the circuit.
OPEN: calls are refused at once (the caller answers UNAVAILABLE) until ``reset_seconds`` have
passed; then one trial call is let through (HALF_OPEN). A trial that succeeds closes the circuit;
one that fails opens it again for another ``reset_seconds``. :meth:`close` lets a health probe
close it without waiting for a request.
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Callable


class CircuitState(enum.IntEnum):
    """Values are those of the ``xaiserve_remote_circuit_state`` gauge."""

    CLOSED = 0
    OPEN = 1
    HALF_OPEN = 2


class CircuitBreaker:
    def __init__(
        self,
        failures: int,
        reset_seconds: float,
        on_change: Callable[[CircuitState], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if failures < 1 or reset_seconds <= 0:
            raise ValueError("a circuit needs failures ≥ 1 and reset_seconds > 0")
        self.failures = failures
        self.reset_seconds = reset_seconds
        self._on_change = on_change
        self._clock = clock
        self._lock = threading.Lock()
        self._state = CircuitState.CLOSED
        self._consecutive = 0
        self._opened_at = 0.0
        self._trial_out = False
        self.last_error = ""

    @property
    def state(self) -> CircuitState:
        with self._lock:
            return self._state

    @property
    def consecutive_failures(self) -> int:
        return self._consecutive

    def retry_in(self) -> float:
        """Seconds until an open circuit lets a trial call through (0 when not open)."""
        with self._lock:
            if self._state is not CircuitState.OPEN:
                return 0.0
            return max(0.0, self._opened_at + self.reset_seconds - self._clock())

    def allow(self) -> bool:
        """Whether a call may go now (an OPEN circuit past its reset time admits one trial)."""
        with self._lock:
            if self._state is CircuitState.CLOSED:
                return True
            if self._state is CircuitState.OPEN:
                if self._clock() - self._opened_at < self.reset_seconds:
                    return False
                self._set(CircuitState.HALF_OPEN)
                self._trial_out = False
            if self._trial_out:
                return False
            self._trial_out = True
            return True

    def record_success(self) -> None:
        with self._lock:
            self._consecutive = 0
            self._trial_out = False
            if self._state is not CircuitState.CLOSED:
                self._set(CircuitState.CLOSED)

    def record_failure(self, error: str) -> None:
        with self._lock:
            self._consecutive += 1
            self.last_error = error
            self._trial_out = False
            if self._state is CircuitState.HALF_OPEN or (
                self._state is CircuitState.CLOSED and self._consecutive >= self.failures
            ):
                self._opened_at = self._clock()
                self._set(CircuitState.OPEN)

    def release_trial(self) -> None:
        """A call that ended without a verdict on the remote (the client's deadline passed)."""
        with self._lock:
            self._trial_out = False

    def close(self) -> None:
        """A health probe saw the remote recover."""
        self.record_success()

    def _set(self, state: CircuitState) -> None:
        self._state = state
        if self._on_change is not None:
            self._on_change(state)
