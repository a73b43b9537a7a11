"""Scheduled jobs: each registration job run on its schedule, GoatFlow's way, one run at a
time (docs/plugin-authors.md, "Jobs").

A registration's `jobs` entry `{id, handler, schedule, enabled, timeout}` is scheduled when
`enabled` is true (GoatFlow's default is false) and its plugin is loaded and enabled. The
schedule is cron as GoatFlow's robfig/cron reads it: five fields (minute hour day month
weekday), a descriptor (`@yearly`, `@annually`, `@monthly`, `@weekly`, `@daily`,
`@midnight`, `@hourly`) or `@every <Go duration>`, in the host's time zone; `croniter`
computes the times. A run calls the handler with no arguments and the job's `timeout` (a
Go duration, whole seconds; missing, invalid or under a second: 300 s), never more than the
plugin's `call_timeout`. Only a failed call fails a run (a result such as `{"error": ...}`
is the plugin's business, as in GoatFlow). Unlike GoatFlow, a job never overlaps itself: a
tick that finds the previous run still going is skipped, and says so in the log.

Jobs follow the registry: a load or reload re-reads them, an unload or disable stops them
(a run in progress finishes). The clock is injectable, so tests move time instead of
waiting for it.
"""

from __future__ import annotations

import datetime
import logging
import threading
import time
import zoneinfo
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Protocol

from croniter import croniter

from .durations import parse_go_duration
from .errors import PlughostError

if TYPE_CHECKING:
    from .lifecycle import Event
from .manager import Manager

logger = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 300.0
_DESCRIPTORS = frozenset({"@yearly", "@annually", "@monthly", "@weekly", "@daily",
                          "@midnight", "@hourly"})


class Clock(Protocol):
    """Time for the scheduler: the wall clock in production, a hand-moved one in tests."""

    def now(self) -> float: ...

    def wait(self, wake: threading.Event, seconds: float) -> None:
        """Return after `seconds` of this clock's time, or as soon as `wake` is set."""


class WallClock:
    def now(self) -> float:
        return time.time()

    def wait(self, wake: threading.Event, seconds: float) -> None:
        wake.wait(max(0.0, seconds))


class Schedule:
    """One job's schedule; `after(t)` is the next run time after `t` (Unix seconds)."""

    def __init__(self, spec: str, tz: datetime.tzinfo) -> None:
        text = spec.strip()
        self.spec = text
        self.tz = tz
        self.every: float | None = None
        if text.startswith("@every "):
            self.every = parse_go_duration(text[len("@every "):].strip())
            if self.every < 1:
                raise ValueError(f"{spec!r}: an @every interval must be at least 1s")
        elif text.startswith("@"):
            if text not in _DESCRIPTORS:
                raise ValueError(f"{spec!r} is not a known descriptor")
            self.cron = "@daily" if text == "@midnight" else text
        else:
            if len(text.split()) != 5 or not croniter.is_valid(text):
                raise ValueError(f"{spec!r} is not a five-field cron schedule")
            self.cron = text

    def after(self, t: float) -> float:
        if self.every is not None:
            return t + self.every
        start = datetime.datetime.fromtimestamp(t, self.tz)
        nxt: datetime.datetime = croniter(self.cron, start).get_next(datetime.datetime)
        return nxt.timestamp()


def job_timeout(value: str | int | None) -> float:
    """GoatFlow's rule: a Go duration truncated to whole seconds; else 300 s."""
    try:
        seconds = float(int(parse_go_duration(str(value)))) if value not in (None, "") else 0.0
    except ValueError:
        seconds = 0.0
    return seconds if seconds >= 1 else DEFAULT_TIMEOUT


@dataclass(frozen=True)
class JobInfo:
    """A job as the API and the admin page show it (times are Unix seconds)."""

    plugin: str
    id: str
    handler: str
    schedule: str
    timeout: float
    next_run: float | None = None
    last_run: float | None = None
    last_duration: float | None = None
    last_status: str | None = None  # "ok", "failed" or "skipped"
    last_error: str | None = None
    running: bool = False
    error: str | None = None  # a schedule that cannot be read: the job never runs


class _Job:
    def __init__(self, info: JobInfo, schedule: Schedule | None) -> None:
        self.info = info
        self.schedule = schedule


class Scheduler:
    """Runs the jobs of `manager`'s plugins. `start()` begins; `close()` stops (runs in
    progress end on their own deadline)."""

    def __init__(self, manager: Manager, *, clock: Clock | None = None,
                 timezone: str | None = None) -> None:
        self.manager = manager
        self.clock = clock or WallClock()
        self.tz: datetime.tzinfo = datetime.UTC
        if timezone:
            try:
                self.tz = zoneinfo.ZoneInfo(timezone)
            except (zoneinfo.ZoneInfoNotFoundError, ValueError):
                logger.warning("jobs: unknown time zone %r; using UTC", timezone)
        self._jobs: dict[tuple[str, str], _Job] = {}
        #: the last state of jobs that are not scheduled now (plugin disabled, unloaded)
        self._history: dict[tuple[str, str], JobInfo] = {}
        self._lock = threading.Lock()
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: Callable[[Event], None] = self._on_event

    # -- the registry ---------------------------------------------------------------------

    def start(self) -> None:
        self.manager.add_listener(self._listener)
        for name in self.manager.names():
            self._read(name)
        self._thread = threading.Thread(target=self._loop, name="plughost-jobs", daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.manager.remove_listener(self._listener)
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(5.0)

    def jobs(self, plugin: str | None = None) -> list[JobInfo]:
        with self._lock:
            return sorted((j.info for j in self._jobs.values()
                           if plugin is None or j.info.plugin == plugin),
                          key=lambda i: (i.plugin, i.id))

    def _on_event(self, event: Event) -> None:
        if event.kind in ("load", "reload", "unload", "enable", "disable"):
            self._read(event.plugin)

    def _read(self, name: str) -> None:
        """(Re)read `name`'s jobs from its registration (none if gone or disabled)."""
        plugin = self.manager.get(name)
        info = self.manager.info(name)
        fresh: dict[tuple[str, str], _Job] = {}
        if plugin is not None and info is not None and info.enabled:
            now = self.clock.now()
            for spec in plugin.registration.jobs:
                if not spec.enabled:
                    continue
                base = JobInfo(name, spec.id, spec.handler, spec.schedule,
                               min(job_timeout(spec.timeout),
                                   plugin.source.manifest.resources.call_timeout_ms / 1000))
                try:
                    schedule = Schedule(spec.schedule, self.tz)
                except ValueError as exc:
                    self.manager.log_for(name).error(f"job {spec.id}: {exc}", source="host")
                    fresh[(name, spec.id)] = _Job(replace(base, error=str(exc)), None)
                    continue
                fresh[(name, spec.id)] = _Job(replace(base, next_run=schedule.after(now)),
                                              schedule)
        with self._lock:
            for key in [k for k in self._jobs if k[0] == name]:
                self._history[key] = self._jobs.pop(key).info
            for key, job in fresh.items():  # a reload or re-enable keeps the job's history
                if (past := self._history.get(key)) is not None:
                    job.info = replace(job.info, last_run=past.last_run,
                                       last_duration=past.last_duration,
                                       last_status=past.last_status,
                                       last_error=past.last_error, running=past.running)
            self._jobs.update(fresh)
        self._wake.set()

    # -- running ------------------------------------------------------------------------

    def _loop(self) -> None:
        while not self._stop.is_set():
            self._wake.clear()  # before reading the jobs: a change from now on wakes us
            now = self.clock.now()
            due: list[_Job] = []
            with self._lock:
                times = [j.info.next_run for j in self._jobs.values()
                         if j.info.next_run is not None]
                for job in self._jobs.values():
                    if job.schedule is not None and job.info.next_run is not None \
                            and job.info.next_run <= now:
                        job.info = replace(job.info, next_run=job.schedule.after(now))
                        due.append(job)
            for job in due:
                self._fire(job, now)
            if due:
                continue
            wait = min(times) - now if times else 3600.0
            self.clock.wait(self._wake, wait)

    def _fire(self, job: _Job, now: float) -> None:
        info = job.info
        log = self.manager.log_for(info.plugin)
        if info.running:
            with self._lock:
                job.info = replace(job.info, last_status="skipped")
            log.warning(f"job {info.id}: skipped at its schedule, the last run is still "
                        "going", source="host")
            return
        with self._lock:
            job.info = replace(job.info, running=True, last_run=now)
        threading.Thread(target=self._run, args=(job,), name=f"plughost-job-{info.id}",
                         daemon=True).start()

    def _run(self, job: _Job) -> None:
        info = job.info
        start = time.monotonic()
        error: str | None = None
        try:
            self.manager.call_raw(info.plugin, info.handler, b"", timeout=info.timeout)
        except PlughostError as exc:
            error = f"{type(exc).__name__}: {exc.message}"
        except Exception as exc:  # a bug of ours: still this run's failure
            logger.exception("job %s.%s", info.plugin, info.id)
            error = repr(exc)
        duration = time.monotonic() - start
        key = (info.plugin, info.id)
        with self._lock:
            current = self._jobs.get(key, job)  # re-read meanwhile: the job's new entry
            status = "failed" if error else "ok"
            current.info = replace(current.info, running=False, last_duration=duration,
                                   last_status=status, last_error=error)
            if key in self._history:
                self._history[key] = replace(self._history[key], running=False,
                                             last_duration=duration, last_status=status,
                                             last_error=error)
        log = self.manager.log_for(info.plugin)
        if error is None:
            log.info(f"job {info.id} completed in {duration:.3f}s", source="host")
            self.manager.emit("job_run", info.plugin, f"{info.id} ok in {duration:.3f}s")
        else:
            log.error(f"job {info.id} failed: {error}", source="host")
            self.manager.emit("job_error", info.plugin, f"{info.id}: {error}")
