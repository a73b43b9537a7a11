"""The health checker (health.py) on real wasm plugins: GoatFlow's probe and restart rules,
plus the failures GoatFlow misses (a plugin shut down, a dead process). Time is a hand-moved
clock; rounds run with `probe_now()`, restarts are waited for by their own signals."""

from __future__ import annotations

import json
import logging
import queue
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import wasmtime

from plughost import Loader, Manager, PluginDisabled
from plughost.health import GO_ZERO_TIME, HealthChecker, PluginHealth, go_time

from .conftest import wait_until, write_wasm
from .test_jobs import T0, HandClock

PAYLOAD = {"status": "ok", "runtime": "test-wasm", "version": "1.0.0"}

# A minimal gk v1 module: `__health_ping__` does PING; any other function answers nothing.
MODULE = r"""
(module
  (memory (export "memory") 1)
  (global $heap (mut i32) (i32.const 8192))
  (data (i32.const 16) "{\"name\":\"NAME\",\"version\":\"1.0.0\"}")
  (data (i32.const 512) "__health_ping__")
  (data (i32.const 1024) "ANSWER")
  (func $pack (param $p i32) (param $n i32) (result i64)
    (i64.or (i64.shl (i64.extend_i32_u (local.get $p)) (i64.const 32))
            (i64.extend_i32_u (local.get $n))))
  (func (export "gk_malloc") (param $size i32) (result i32)
    (local $p i32)
    (local.set $p (global.get $heap))
    (global.set $heap (i32.add (global.get $heap) (local.get $size)))
    (local.get $p))
  (func (export "gk_register") (result i64)
    (call $pack (i32.const 16) (i32.const REGLEN)))
  (func (export "gk_call") (param $fp i32) (param $fl i32) (param $ap i32) (param $al i32)
    (result i64)
    (local $i i32)
    (if (i32.ne (local.get $fl) (i32.const 15)) (then (return (i64.const 0))))
    (block $differs (loop $next
      (br_if $differs (i32.ne (i32.load8_u (i32.add (local.get $fp) (local.get $i)))
                              (i32.load8_u (i32.add (i32.const 512) (local.get $i)))))
      (local.set $i (i32.add (local.get $i) (i32.const 1)))
      (br_if $next (i32.lt_u (local.get $i) (i32.const 15)))
      PING))
    (i64.const 0)))
"""
ANSWERS = {  # what `__health_ping__` does
    "json": "(return (call $pack (i32.const 1024) (i32.const ANSWERLEN)))",
    "text": "(return (call $pack (i32.const 1024) (i32.const ANSWERLEN)))",  # not JSON
    "hang": "(loop $forever (br $forever))",
    "trap": "unreachable",
}


def ping_module(name: str, behaviour: str) -> bytes:
    answer = json.dumps(PAYLOAD) if behaviour == "json" else "pong, not JSON"
    registration = json.dumps({"name": name, "version": "1.0.0"}, separators=(",", ":"))
    text = (MODULE.replace("PING", ANSWERS[behaviour])
            .replace("ANSWERLEN", str(len(answer))).replace("REGLEN", str(len(registration)))
            .replace("ANSWER", answer.replace('"', '\\"')).replace("NAME", name))
    return bytes(wasmtime.wat2wasm(text))


def write_pinger(plugins: Path, name: str, behaviour: str = "json") -> None:
    (plugins / f"{name}.wasm").write_bytes(ping_module(name, behaviour))


class Setup:
    """A loader, a started checker on a hand clock, and what it told."""

    def __init__(self, manager: Manager, loader: Loader, clock: HandClock,
                 restart: Callable[[str], None] | None, **options: Any) -> None:
        self.manager, self.loader, self.clock = manager, loader, clock
        self.changes: list[tuple[str, PluginHealth]] = []
        self.checker = HealthChecker(manager, restart=restart, clock=clock, timeout=0.3,
                                     interval=options.pop("interval", 1e6),
                                     on_change=lambda n, h: self.changes.append((n, h)),
                                     **options)
        self.checker.start()

    def probe(self, name: str) -> PluginHealth:
        """One round of probes; `name`'s status after it."""
        self.checker.probe_now()
        return self.status(name)

    def idle(self, name: str) -> PluginHealth:
        """`name`'s status once its restart, if any, has ended."""
        wait_until(lambda: not self.status(name).restarting)
        return self.status(name)

    def status(self, name: str) -> PluginHealth:
        health = self.checker.status(name)
        assert health is not None
        return health

    def kill(self, name: str) -> None:
        """Shut the running plugin down behind the registry's back: still registered, every
        call refused (PluginUnavailable), as a crashed process or a closed module."""
        plugin = self.manager.get(name)
        assert plugin is not None
        plugin.shutdown()


@pytest.fixture
def setup(manager: Manager, make_loader: Callable[..., Loader]) -> Iterator[Any]:
    made: list[HealthChecker] = []

    def make(restart: Callable[[str], None] | None = None, clock: HandClock | None = None,
             **options: Any) -> Setup:
        loader = make_loader()
        assert loader.load_all()[1] == []
        s = Setup(manager, loader, clock or HandClock(), restart, **options)
        made.append(s.checker)
        return s

    yield make
    for checker in made:
        checker.close()


class Restarts:
    """A restart callback that records the clock's time of each call; `fail` makes it raise,
    `hold` makes it wait until released."""

    def __init__(self, clock: HandClock, fail: bool = False, hold: bool = False) -> None:
        self.clock, self.fail = clock, fail
        self.calls: queue.Queue[tuple[str, float]] = queue.Queue()
        self.release = threading.Event()
        if not hold:
            self.release.set()

    def __call__(self, name: str) -> None:
        self.calls.put((name, self.clock.now()))
        self.release.wait(10)
        if self.fail:
            raise RuntimeError("cannot restart")

    def next(self) -> tuple[str, float]:
        return self.calls.get(timeout=10)


def test_constructing_does_nothing(manager: Manager) -> None:
    before = threading.active_count()
    checker = HealthChecker(manager)
    assert manager.listeners == () and threading.active_count() == before
    assert checker.statuses() == {}
    checker.close()  # closing one never started is fine


def test_a_probe_stores_the_payload_and_any_answer_is_healthy(
        plugins: Path, setup: Any) -> None:
    write_pinger(plugins, "good")
    write_pinger(plugins, "text", "text")
    write_pinger(plugins, "trap", "trap")
    write_wasm(plugins, "plain")  # testkit: no __health_ping__, "unknown function"
    s = setup()
    # Registered plugins are unhealthy until their first good probe (GoatFlow's rule).
    assert {n: h.healthy for n, h in s.checker.statuses().items()} == dict.fromkeys(
        ["good", "plain", "text", "trap"], False)
    after = s.checker.probe_now()
    assert {n: (h.healthy, h.payload, h.last_check, h.last_success, h.last_error)
            for n, h in after.items()} == {
        "good": (True, PAYLOAD, T0, T0, None), "plain": (True, None, T0, T0, None),
        "text": (True, None, T0, T0, None), "trap": (True, None, T0, T0, None)}
    assert {n for n, h in s.changes if h.healthy} == {"good", "plain", "text", "trap"}
    assert after["good"].as_json() == {
        "healthy": True, "last_check": "2027-01-15T08:00:00Z",
        "last_success": "2027-01-15T08:00:00Z", "consecutive_failures": 0,
        "last_error": "", "payload": PAYLOAD, "restart_attempts": 0,
        "last_restart_at": GO_ZERO_TIME, "next_restart_at": GO_ZERO_TIME,
        "crash_loop_abandoned": False}


def test_go_times() -> None:
    assert go_time(None) == "0001-01-01T00:00:00Z"
    assert go_time(T0 + 0.25) == "2027-01-15T08:00:00.25Z"
    assert go_time(T0 + 0.000001) == "2027-01-15T08:00:00.000001Z"


def test_a_disabled_plugin_is_still_probed(plugins: Path, setup: Any) -> None:
    write_pinger(plugins, "good")
    s = setup()
    s.manager.disable("good")
    with pytest.raises(PluginDisabled):
        s.manager.call("good", "__health_ping__")
    assert s.probe("good").payload == PAYLOAD


def test_timeouts_make_it_unhealthy_and_restart_it(plugins: Path, setup: Any) -> None:
    write_pinger(plugins, "hang", "hang")
    clock = HandClock()
    restarts = Restarts(clock)
    s = setup(restart=restarts, clock=clock)
    events: list[str] = []
    s.manager.add_listener(lambda e: events.append(e.kind))
    for count in (1, 2):
        h = s.probe("hang")
        assert (h.healthy, h.consecutive_failures, h.restart_attempts) == (False, count, 0)
        assert h.last_error is not None and h.last_error.startswith("PluginTimeout")
        assert h.last_success is None
    h = s.probe("hang")  # the third: a restart
    assert (h.consecutive_failures, h.restart_attempts, h.last_restart_at,
            h.next_restart_at) == (3, 1, T0, T0 + 5)
    assert restarts.next() == ("hang", T0)
    assert events == []  # quiet probes: no call_error event per probe


def test_a_plugin_that_was_healthy_turns_unhealthy_after_three_failures(
        plugins: Path, setup: Any) -> None:
    write_pinger(plugins, "good")
    s = setup()
    assert s.probe("good").healthy
    s.kill("good")  # GoatFlow counts this one healthy for ever
    assert [(h.healthy, h.consecutive_failures) for h in (s.probe("good") for _ in range(4))
            ] == [(True, 1), (True, 2), (False, 3), (False, 4)]
    h = s.status("good")
    assert h.last_error is not None and h.last_error.startswith("PluginUnavailable")
    assert (h.last_success, h.payload, h.restart_attempts) == (T0, PAYLOAD, 0)  # no restart
    assert [h.healthy for _, h in s.changes] == [True, False]


def test_backoff_doubles_is_capped_and_a_crash_loop_is_abandoned_until_reset(
        plugins: Path, setup: Any, caplog: pytest.LogCaptureFixture) -> None:
    write_pinger(plugins, "good")
    clock = HandClock()
    restarts = Restarts(clock, fail=True)  # a restart that raises still counts
    s = setup(restart=restarts, clock=clock, max_backoff=20.0)
    s.probe("good")
    s.kill("good")
    for _ in range(3):
        s.probe("good")
    assert restarts.next() == ("good", T0)
    expected = [(T0, T0 + 5)]
    for step in (4, 1, 10, 20, 20):  # 5 s, then 10, 20, then capped at 20
        assert (s.idle("good").last_restart_at, s.status("good").next_restart_at) == \
            expected[-1]
        clock.advance(step)
        h = s.probe("good")
        if clock.now() < expected[-1][1]:
            assert h.restart_attempts == len(expected)  # too early
            continue
        assert restarts.next() == ("good", clock.now())
        expected.append((clock.now(), h.next_restart_at))
    assert [t for t, _ in expected] == [T0, T0 + 5, T0 + 15, T0 + 35, T0 + 55]
    assert [b - a for a, b in expected] == [5, 10, 20, 20, 20]
    assert "restart of good failed: cannot restart" in caplog.text
    s.idle("good")
    clock.advance(20)
    with caplog.at_level(logging.ERROR, "plughost.health"):
        h = s.probe("good")  # a 6th attempt within 10 minutes: abandoned
    assert (h.crash_loop_abandoned, h.restart_attempts, h.next_restart_at) == (True, 5, None)
    assert "restarts abandoned" in caplog.text
    assert s.changes[-1] == ("good", h)
    clock.advance(600)
    assert s.probe("good").crash_loop_abandoned and restarts.calls.empty()
    assert not s.checker.reset("nothing")
    assert s.checker.reset("good")
    h = s.status("good")
    assert (h.crash_loop_abandoned, h.restart_attempts, h.last_restart_at) == (False, 0, None)
    s.probe("good")  # still failing: restarted at once
    assert restarts.next() == ("good", clock.now())


def test_attempts_older_than_the_window_do_not_count(plugins: Path, setup: Any) -> None:
    write_pinger(plugins, "good")
    clock = HandClock()
    restarts = Restarts(clock)
    s = setup(restart=restarts, clock=clock, max_attempts=2, attempt_window=100.0,
              backoff=60.0, max_backoff=60.0)
    s.probe("good")
    s.kill("good")
    for _ in range(3):
        s.probe("good")
    for _ in range(4):  # one attempt a minute, never more than 2 in 100 s
        assert restarts.next()[1] == clock.now()
        s.idle("good")
        clock.advance(60)
        s.probe("good")
    assert not s.status("good").crash_loop_abandoned


def test_one_restart_in_flight(plugins: Path, setup: Any) -> None:
    write_pinger(plugins, "good")
    clock = HandClock()
    restarts = Restarts(clock, hold=True)
    s = setup(restart=restarts, clock=clock)
    s.probe("good")
    s.kill("good")
    for _ in range(3):
        s.probe("good")
    assert restarts.next() == ("good", T0)
    assert s.status("good").restarting
    clock.advance(60)
    assert s.probe("good").restart_attempts == 1  # due, but the first is still running
    restarts.release.set()
    assert s.idle("good").restart_attempts == 1
    assert s.probe("good").restart_attempts == 2


def test_a_restart_by_reload_is_unhealthy_until_a_good_probe_clears_it(
        plugins: Path, setup: Any) -> None:
    write_pinger(plugins, "good")
    reloaded = threading.Event()
    s: Setup

    def restart(name: str) -> None:
        s.loader.reload(name)
        reloaded.set()

    s = setup(restart=restart)
    s.probe("good")
    s.kill("good")
    for _ in range(3):
        s.probe("good")
    assert reloaded.wait(10)
    h = s.idle("good")  # the new version: unhealthy until probed; its history kept
    assert (h.healthy, h.payload, h.consecutive_failures, h.restart_attempts,
            h.last_restart_at) == (False, None, 3, 1, T0)
    s.clock.advance(1)
    h = s.probe("good")
    assert (h.healthy, h.payload, h.consecutive_failures, h.last_error, h.last_success) == (
        True, PAYLOAD, 0, None, T0 + 1)
    assert (h.restart_attempts, h.last_restart_at, h.next_restart_at,
            h.crash_loop_abandoned) == (0, None, None, False)
    # one change per probe: the third failure turns it unhealthy and restarts it
    assert [(h.healthy, h.restart_attempts) for _, h in s.changes] == [
        (True, 0), (False, 1), (True, 0)]


def test_a_reload_makes_a_healthy_plugin_unhealthy_until_probed(
        plugins: Path, setup: Any) -> None:
    write_pinger(plugins, "good")
    s = setup()
    assert s.probe("good").healthy
    s.loader.reload("good")
    assert (s.status("good").healthy, s.status("good").last_success) == (False, T0)
    assert s.changes[-1][1].healthy is False
    assert s.probe("good").healthy


def test_unload_forgets_and_a_new_load_starts_unhealthy(plugins: Path, setup: Any) -> None:
    write_pinger(plugins, "good")
    s = setup()
    s.probe("good")
    s.loader.unload("good")
    assert s.checker.status("good") is None and "good" not in s.checker.statuses()
    assert not s.checker.reset("good")
    s.loader.ensure_loaded("good")
    assert s.status("good") == PluginHealth()
    assert s.probe("good").healthy


def test_the_thread_probes_every_interval_and_stops_on_close(
        plugins: Path, manager: Manager, make_loader: Callable[..., Loader]) -> None:
    write_pinger(plugins, "good")
    make_loader().load_all()
    clock = HandClock()
    changed = threading.Event()
    before = set(threading.enumerate())
    with HealthChecker(manager, clock=clock, interval=60,
                       on_change=lambda n, h: changed.set()) as checker:
        checker.start()
        checker.start()  # once is enough
        [thread] = [t for t in set(threading.enumerate()) - before
                    if t.name.startswith("plughost-health")]
        assert thread.name == "plughost-health" and thread.daemon
        clock.advance(59)
        assert not changed.wait(0.05)  # nothing is due before the interval
        clock.advance(1)
        assert changed.wait(10)
        h = checker.status("good")
        assert h is not None and (h.healthy, h.last_check) == (True, T0 + 60)
    assert not thread.is_alive()
    assert not [t for t in threading.enumerate() if t.name.startswith("plughost-health")]
    assert manager.listeners == ()
    checker.close()  # idempotent
