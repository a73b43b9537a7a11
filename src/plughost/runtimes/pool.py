"""A small, fair pool of instances (FIFO hand-off).

A released instance goes straight to the longest-waiting caller, never back to whichever
thread asks first: with a plain queue the releasing thread tends to take it right back,
and other callers starve until their deadline.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Generic, TypeVar

T = TypeVar("T")


class PoolClosed(Exception):
    pass


class _Waiter(Generic[T]):
    __slots__ = ("closed", "event", "grow", "item")

    def __init__(self) -> None:
        self.event = threading.Event()
        self.item: T | None = None
        self.grow = False  # told to create a new instance itself
        self.closed = False


class Pool(Generic[T]):
    def __init__(self, max_size: int, factory: Callable[[], T]) -> None:
        self.max_size = max_size
        self._factory = factory
        self._idle: list[T] = []
        self._waiters: deque[_Waiter[T]] = deque()
        self._created = 0
        self._closed = False
        self._lock = threading.Lock()

    def add(self, item: T) -> None:
        """Add an instance made outside the pool (the first one, made at load time)."""
        with self._lock:
            self._created += 1
        self.release(item, healthy=True)

    def acquire(self, deadline: float) -> T:
        """An instance, or TimeoutError at `deadline` (monotonic), or PoolClosed."""
        with self._lock:
            if self._closed:
                raise PoolClosed
            if self._idle and not self._waiters:
                return self._idle.pop()
            waiter: _Waiter[T] | None = None
            if self._created < self.max_size and not self._waiters:
                self._created += 1
            else:
                waiter = _Waiter()
                self._waiters.append(waiter)
        if waiter is None:
            return self._grow()
        if not waiter.event.wait(max(0.0, deadline - time.monotonic())):
            with self._lock:
                if not waiter.event.is_set():
                    self._waiters.remove(waiter)
                    raise TimeoutError
        if waiter.closed:
            raise PoolClosed
        if waiter.grow:
            return self._grow()
        assert waiter.item is not None
        return waiter.item

    def _grow(self) -> T:
        try:
            return self._factory()
        except BaseException:
            with self._lock:
                self._created -= 1
                self._hand_growth()
            raise

    def _hand_growth(self) -> None:
        # lock held: a slot is free and someone waits: let them build an instance
        if self._waiters and self._created < self.max_size and not self._closed:
            waiter = self._waiters.popleft()
            self._created += 1
            waiter.grow = True
            waiter.event.set()

    def release(self, item: T, *, healthy: bool) -> None:
        """Return `item`; an unhealthy one is dropped and its slot freed."""
        with self._lock:
            if not healthy:
                self._created -= 1
                self._hand_growth()
                return
            if self._closed:
                return
            if self._waiters:
                waiter = self._waiters.popleft()
                waiter.item = item
                waiter.event.set()
            else:
                self._idle.append(item)

    def close(self) -> list[T]:
        """Refuse new acquisitions, wake every waiter, return the idle instances."""
        with self._lock:
            self._closed = True
            idle, self._idle = self._idle, []
            waiters, self._waiters = list(self._waiters), deque()
        for w in waiters:
            w.closed = True
            w.event.set()
        return idle
