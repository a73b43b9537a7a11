"""When a crashed plugin process is restarted, and when the host gives up on it.

One rule, one place: a crash (an unexpected exit, or a restart that failed) is recorded
with the time it happened; crashes older than the window are forgotten; this many within
the window open the circuit, otherwise the next start waits an exponential backoff. The
clock is injectable, so the rule is tested without crash loops of real processes.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class RestartPolicy:
    """How a crashed plugin is restarted, and when plughost gives up on it."""

    initial_backoff: float = 0.2  # seconds before the first restart
    max_backoff: float = 10.0  # the backoff doubles per crash in the window, up to this
    max_crashes: int = 5  # this many crashes within `window` seconds open the circuit
    window: float = 60.0


@dataclass(frozen=True)
class Verdict:
    """What to do after a crash: restart after `delay` seconds, or give up."""

    crashes: int  # within the window, this one included
    give_up: bool
    delay: float

    def reason(self, policy: RestartPolicy) -> str:
        return (f"{self.crashes} crashes within {policy.window:.0f}s: circuit open, not "
                "restarting until reloaded")


class Supervisor:
    """The crash record of one plugin. Thread-safe."""

    def __init__(self, policy: RestartPolicy | None = None, *,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.policy = policy or RestartPolicy()
        self._clock = clock
        self._crashes: deque[float] = deque()
        self._lock = threading.Lock()

    def crashed(self) -> Verdict:
        """Record a crash now and say what follows."""
        p = self.policy
        with self._lock:
            now = self._clock()
            self._crashes.append(now)
            while self._crashes and now - self._crashes[0] > p.window:
                self._crashes.popleft()
            n = len(self._crashes)
        delay = min(p.max_backoff, p.initial_backoff * 2 ** max(0, n - 1))
        return Verdict(n, n >= p.max_crashes, delay)
