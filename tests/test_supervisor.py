"""The restart rule (runtimes/supervisor.py) on a fake clock: backoff, window, circuit.
The real-process paths (kill -9, crash loops, failed restarts) are in test_grpc_runtime."""

from __future__ import annotations

import threading

from plughost.runtimes.supervisor import RestartPolicy, Supervisor


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


POLICY = RestartPolicy(initial_backoff=0.2, max_backoff=1.0, max_crashes=4, window=60.0)


def test_backoff_doubles_per_crash_in_the_window_up_to_the_cap() -> None:
    sup = Supervisor(POLICY, clock=Clock())
    verdicts = [sup.crashed() for _ in range(3)]
    assert [v.delay for v in verdicts] == [0.2, 0.4, 0.8]
    assert [v.crashes for v in verdicts] == [1, 2, 3]
    assert not any(v.give_up for v in verdicts)
    capped = Supervisor(RestartPolicy(initial_backoff=0.2, max_backoff=0.5, max_crashes=99),
                        clock=Clock())
    assert [capped.crashed().delay for _ in range(4)] == [0.2, 0.4, 0.5, 0.5]


def test_the_circuit_opens_at_max_crashes_within_the_window() -> None:
    sup = Supervisor(POLICY, clock=Clock())
    for _ in range(3):
        assert not sup.crashed().give_up
    last = sup.crashed()
    assert last.give_up and last.crashes == 4
    assert last.reason(POLICY) == ("4 crashes within 60s: circuit open, not restarting until "
                                   "reloaded")


def test_crashes_older_than_the_window_are_forgotten() -> None:
    # Both kinds of crash (an unexpected exit and a failed restart) go through crashed(),
    # so stale ones are pruned whichever came last (two copies of this rule once drifted
    # and let old failed restarts open the circuit early).
    clock = Clock()
    sup = Supervisor(POLICY, clock=clock)
    for _ in range(3):
        sup.crashed()
        clock.now += 25.0  # crashes at t=0, 25, 50
    clock.now = 1000.0 + 61.0  # the first is now older than the window
    v = sup.crashed()
    assert v.crashes == 3 and not v.give_up and v.delay == 0.8
    clock.now += 200.0  # a quiet spell: the next crash is a first one again
    v = sup.crashed()
    assert v.crashes == 1 and v.delay == 0.2


def test_concurrent_crashes_are_each_counted() -> None:
    sup = Supervisor(RestartPolicy(max_crashes=1000), clock=Clock())
    counts: list[int] = []
    lock = threading.Lock()

    def crash() -> None:
        for _ in range(100):
            n = sup.crashed().crashes
            with lock:
                counts.append(n)

    threads = [threading.Thread(target=crash) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sorted(counts) == list(range(1, 401))
