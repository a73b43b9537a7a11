"""Scheduled jobs (jobs.py): GoatFlow's schedules and defaults, one run at a time, following
the registry. The clock is moved by hand; the tests wait on the runs' events."""

from __future__ import annotations

import datetime
import queue
import threading
import zoneinfo
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from plughost import Loader, Manager
from plughost.jobs import DEFAULT_TIMEOUT, Schedule, Scheduler, job_timeout
from plughost.lifecycle import Event
from plughost.runtimes.wasm import WasmEngine

from .conftest import variant_dir

T0 = 1_800_000_000.0  # 2027-01-15 08:00:00 UTC


class HandClock:
    """A clock that moves only when told; `wait` returns when woken or when moved past."""

    def __init__(self, t: float = T0) -> None:
        self.t = t
        self._cond = threading.Condition()

    def now(self) -> float:
        with self._cond:
            return self.t

    def wait(self, wake: threading.Event, seconds: float) -> None:
        with self._cond:
            end = self.t + seconds
            while not wake.is_set() and self.t < end:
                self._cond.wait(0.01)  # also notices `wake`, which has no condition

    def advance(self, seconds: float) -> None:
        with self._cond:
            self.t += seconds
            self._cond.notify_all()


class Setup:
    def __init__(self, manager: Manager, loader: Loader, scheduler: Scheduler,
                 clock: HandClock) -> None:
        self.manager, self.loader, self.scheduler, self.clock = manager, loader, scheduler, clock
        self.events: queue.Queue[Event] = queue.Queue()
        manager.add_listener(self.events.put)

    def next_job_event(self, timeout: float = 15.0) -> Event:
        while True:
            event = self.events.get(timeout=timeout)
            if event.kind in ("job_run", "job_error"):
                return event


@pytest.fixture
def setup(plugins: Path, engine: WasmEngine) -> Iterator[Any]:
    made: list[tuple[Manager, Loader, Scheduler]] = []

    def make(jobs: list[dict[str, Any]], manifest: dict[str, Any] | None = None) -> Setup:
        variant_dir(plugins, "tk", {"jobs": jobs}, manifest)
        manager = Manager(drain_timeout=5.0)
        loader = Loader(plugins, manager, engine=engine)
        assert loader.load_all() == (1, [])
        clock = HandClock()
        scheduler = Scheduler(manager, clock=clock)
        s = Setup(manager, loader, scheduler, clock)
        scheduler.start()
        made.append((manager, loader, scheduler))
        return s

    yield make
    for manager, loader, scheduler in made:
        scheduler.close()
        loader.close()
        manager.close()


def test_an_enabled_job_runs_on_its_schedule(setup: Any) -> None:
    s = setup([{"id": "tick", "handler": "count", "schedule": "@every 10s", "enabled": True},
               {"id": "off", "handler": "count", "schedule": "@every 1s"}])  # not enabled
    (info,) = s.scheduler.jobs()
    assert (info.id, info.next_run, info.last_run, info.timeout) == ("tick", T0 + 10, None,
                                                                     30.0)
    s.clock.advance(10)
    event = s.next_job_event()
    assert (event.kind, event.plugin) == ("job_run", "tk")
    assert event.detail.startswith("tick ok in ")
    assert s.manager.call("tk", "count") == 2  # the job's call was the first
    (info,) = s.scheduler.jobs()
    assert (info.last_status, info.last_run, info.next_run, info.running) == (
        "ok", T0 + 10, T0 + 20, False)
    assert info.last_duration is not None and info.last_duration >= 0
    assert any(r.message.startswith("job tick completed in ")
               for r in s.manager.log_for("tk").records())
    s.clock.advance(10)
    assert s.next_job_event().kind == "job_run"
    assert s.manager.call("tk", "count") == 4


def test_a_failed_call_fails_the_run(setup: Any) -> None:
    s = setup([{"id": "bad", "handler": "fail", "schedule": "@every 5s", "enabled": True}])
    s.clock.advance(5)
    event = s.next_job_event()
    assert event.kind == "job_error" and "asked to fail" in event.detail
    (info,) = s.scheduler.jobs()
    assert info.last_status == "failed" and "PluginCallError" in (info.last_error or "")


def test_a_job_never_overlaps_itself(setup: Any) -> None:
    s = setup([{"id": "slow", "handler": "loop", "schedule": "@every 10s", "enabled": True,
                "timeout": "1s"}], {"resources": {"call_timeout_ms": 5000}})
    (info,) = s.scheduler.jobs()
    assert info.timeout == 1.0
    s.clock.advance(10)
    while not s.scheduler.jobs()[0].running:  # the run has started (its flag is set first)
        threading.Event().wait(0.001)
    s.clock.advance(10)  # the next tick while the first run loops
    event = s.next_job_event()
    assert event.kind == "job_error" and "PluginTimeout" in event.detail
    messages = [r.message for r in s.manager.log_for("tk").records()]
    assert "job slow: skipped at its schedule, the last run is still going" in messages
    assert s.scheduler.jobs()[0].last_status == "failed"


def test_jobs_follow_the_registry(setup: Any) -> None:
    s = setup([{"id": "tick", "handler": "count", "schedule": "@every 10s", "enabled": True}])
    s.clock.advance(10)
    s.next_job_event()
    s.manager.disable("tk")
    assert s.scheduler.jobs() == []
    s.manager.enable("tk")
    (info,) = s.scheduler.jobs()
    assert info.last_status == "ok"  # the history stays with the job
    s.loader.reload("tk")
    (info,) = s.scheduler.jobs()
    assert info.last_status == "ok" and info.next_run == T0 + 20
    s.loader.unload("tk")
    assert s.scheduler.jobs() == []


def test_a_schedule_that_cannot_be_read_is_an_error_not_a_run(setup: Any) -> None:
    s = setup([{"id": "six", "handler": "count", "schedule": "* * * * * *", "enabled": True},
               {"id": "word", "handler": "count", "schedule": "@sometimes", "enabled": True}])
    infos = {i.id: i for i in s.scheduler.jobs()}
    assert infos["six"].next_run is None and "five-field" in (infos["six"].error or "")
    assert "descriptor" in (infos["word"].error or "")
    assert any(r.message.startswith("job six: ") and r.level == "error"
               for r in s.manager.log_for("tk").records())


def test_schedules_as_robfig_cron_reads_them() -> None:
    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    t = datetime.datetime(2026, 12, 3, 12, 0, tzinfo=datetime.UTC).timestamp()  # Thursday
    monday_8 = datetime.datetime(2026, 12, 7, 8, 0, tzinfo=berlin).timestamp()
    assert Schedule("0 8 * * 1", berlin).after(t) == monday_8
    assert Schedule("@midnight", datetime.UTC).after(t) == t + 12 * 3600
    assert Schedule("@hourly", datetime.UTC).after(t) == t + 3600
    assert Schedule("@every 1m30s", datetime.UTC).after(t) == t + 90
    for bad in ("@every 500ms", "* * * *", "61 * * * *", "@reboot"):
        with pytest.raises(ValueError):
            Schedule(bad, datetime.UTC)


@pytest.mark.parametrize(("value", "seconds"), [
    ("2m", 120.0), ("1.9s", 1.0), ("90s", 90.0), ("500ms", DEFAULT_TIMEOUT),
    ("", DEFAULT_TIMEOUT), (None, DEFAULT_TIMEOUT), ("soon", DEFAULT_TIMEOUT),
])
def test_job_timeouts_as_goatflow_reads_them(value: str | None, seconds: float) -> None:
    assert job_timeout(value) == seconds


def test_an_unknown_time_zone_is_utc(caplog: pytest.LogCaptureFixture) -> None:
    with Manager() as manager:
        scheduler = Scheduler(manager, timezone="Mars/Olympus")
        assert scheduler.tz is datetime.UTC
    assert "unknown time zone" in caplog.text
