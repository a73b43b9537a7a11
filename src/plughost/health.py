"""The health checker: GoatFlow's periodic probe of every plugin and its auto-restart
(goatflow-compat.md, section 10), counting the failures GoatFlow misses.

Every `interval` seconds each registered plugin, enabled or not, is probed in turn with
`Manager.ping`: the reserved `__health_ping__`, no arguments, a `timeout` deadline, quietly
(no failed-call log line or event). Where plughost differs from GoatFlow:

- A probe FAILS when it raises `PluginTimeout` (GoatFlow's only failure) or
  `PluginUnavailable` (a dead process, an open circuit, a module shut down). GoatFlow counts
  those as healthy, so a crashed plugin was never restarted.
- Anything else means the plugin answered, so it is healthy: a result, or any other
  `PluginCallError` ("unknown function" from a plugin without the function, a trap). A
  result that is valid JSON is kept as the `payload`.

`failures` failures in a row make a plugin unhealthy. A newly loaded plugin is unhealthy
until its first good probe. With `restart` (in production the loader's `reload`), an
unhealthy plugin with at least `failures` failures is restarted, one restart in flight per
plugin. After an attempt the next waits `backoff` seconds, doubling per attempt up to
`max_backoff`. An attempt beyond `max_attempts` within `attempt_window` seconds abandons the
plugin (`crash_loop_abandoned`) until `reset(name)`. A good probe clears all of that,
abandonment included: the plugin works again, whoever fixed it.

A reload (a restart is one) makes the plugin unhealthy and drops its payload. It keeps the
failure count and the restart bookkeeping, because otherwise a restart that did not help
would need `failures` new probes before the next attempt. With GoatFlow's defaults (3 probes
a minute apart per attempt) the crash-loop rule could then never see 6 attempts in 10 minutes.
The clock is injectable (`jobs.Clock`), so tests move time instead of waiting for it.
"""

from __future__ import annotations

import datetime
import json
import logging
import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Protocol

from .errors import PlughostError, PluginNotFound, PluginTimeout, PluginUnavailable
from .jobs import Clock, WallClock

if TYPE_CHECKING:
    from .lifecycle import Event

logger = logging.getLogger(__name__)

GO_ZERO_TIME = "0001-01-01T00:00:00Z"  # Go's time.Time{} in JSON, as GoatFlow writes it


class Probed(Protocol):
    """What the checker needs of a manager (`plughost.Manager` is one)."""

    def names(self) -> list[str]: ...

    def ping(self, name: str, *, timeout: float) -> bytes: ...

    def add_listener(self, listener: Callable[[Event], None]) -> None: ...

    def remove_listener(self, listener: Callable[[Event], None]) -> None: ...


def go_time(t: float | None) -> str:
    """A Unix time as Go writes a UTC time.Time in JSON (to the microsecond a float holds)."""
    if t is None:
        return GO_ZERO_TIME
    micros = round(t * 1_000_000)
    stamp = datetime.datetime.fromtimestamp(micros // 1_000_000, datetime.UTC)
    fraction = f".{micros % 1_000_000:06d}".rstrip("0").rstrip(".")
    return f"{stamp:%Y-%m-%dT%H:%M:%S}{fraction}Z"


@dataclass(frozen=True)
class PluginHealth:
    """One plugin's health, GoatFlow's fields; times are Unix seconds or None."""

    healthy: bool = False
    last_check: float | None = None
    last_success: float | None = None
    consecutive_failures: int = 0
    last_error: str | None = None
    payload: Any = None
    restart_attempts: int = 0
    last_restart_at: float | None = None
    next_restart_at: float | None = None
    crash_loop_abandoned: bool = False
    restarting: bool = False  # a restart is running now (plughost's; not in the JSON)

    def as_json(self) -> dict[str, Any]:
        """GoatFlow's PluginHealth JSON (an entry of `GET /api/v1/plugins/health`)."""
        return {"healthy": self.healthy, "last_check": go_time(self.last_check),
                "last_success": go_time(self.last_success),
                "consecutive_failures": self.consecutive_failures,
                "last_error": self.last_error or "", "payload": self.payload,
                "restart_attempts": self.restart_attempts,
                "last_restart_at": go_time(self.last_restart_at),
                "next_restart_at": go_time(self.next_restart_at),
                "crash_loop_abandoned": self.crash_loop_abandoned}


def _cleared(health: PluginHealth, **changes: Any) -> PluginHealth:
    """`health` without restart bookkeeping or abandonment (a good probe, a reset)."""
    return replace(health, restart_attempts=0, last_restart_at=None, next_restart_at=None,
                   crash_loop_abandoned=False, **changes)


@dataclass
class _Record:
    health: PluginHealth = field(default_factory=PluginHealth)
    generation: int = 0  # bumped by a reload: a probe begun before it tested the old version
    attempts: deque[float] = field(default_factory=deque)  # restart times, for the window


class HealthChecker:
    """Probes `manager`'s plugins every `interval` seconds on one daemon thread (`start()`,
    `close()`). `on_change(name, health)` hears when a plugin turns healthy or unhealthy and
    when a restart is attempted, abandoned or reset, on the thread that saw the change."""

    def __init__(self, manager: Probed, *, restart: Callable[[str], None] | None = None,
                 interval: float = 60.0, timeout: float = 5.0, failures: int = 3,
                 backoff: float = 5.0, max_backoff: float = 300.0, max_attempts: int = 5,
                 attempt_window: float = 600.0, clock: Clock | None = None,
                 on_change: Callable[[str, PluginHealth], None] | None = None) -> None:
        if interval <= 0 or timeout <= 0 or failures < 1 or max_attempts < 1:
            raise ValueError("interval and timeout must be > 0, failures and max_attempts >= 1")
        self.manager, self.restart, self.on_change = manager, restart, on_change
        self.interval, self.timeout, self.failures = interval, timeout, failures
        self.backoff, self.max_backoff = backoff, max_backoff
        self.max_attempts, self.attempt_window = max_attempts, attempt_window
        self.clock = clock or WallClock()
        self._records: dict[str, _Record] = {}
        self._rounds = 0
        self._restarts: dict[str, threading.Thread] = {}  # the one in flight per plugin
        self._lock = threading.Lock()  # guards both dicts; never held over plugin code
        self._round = threading.Lock()  # one round at a time: the thread's or probe_now's
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._listener: Callable[[Event], None] = self._on_event

    def start(self) -> None:
        """Follow the registry; probe every `interval`, the first round one interval from
        now as GoatFlow's ticker does (`probe_now()` for one at once)."""
        if self._thread is not None or self._stop.is_set():
            return
        self.manager.add_listener(self._listener)
        with self._lock:
            for name in self.manager.names():
                self._records.setdefault(name, _Record())
        self._thread = threading.Thread(target=self._loop, name="plughost-health", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop. A probe under way ends by its deadline; a restart under way is waited for
        as long, then left to finish on its own (it is bounded by the loader's timeouts)."""
        self._stop.set()
        self.manager.remove_listener(self._listener)
        if self._thread is not None:
            self._thread.join(self.timeout + 1.0)
        with self._lock:  # after the probing thread ended: no restart starts from now on
            restarts = list(self._restarts.values())
        for thread in restarts:
            if thread.is_alive():  # one not started yet sees _stop and does nothing
                thread.join(self.timeout + 1.0)

    def __enter__(self) -> HealthChecker:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def status(self, name: str) -> PluginHealth | None:
        with self._lock:
            record = self._records.get(name)
            return record.health if record else None

    def statuses(self) -> dict[str, PluginHealth]:
        with self._lock:
            return {name: r.health for name, r in sorted(self._records.items())}

    def reset(self, name: str) -> bool:
        """Clear `name`'s abandonment and restart bookkeeping (GoatFlow's reset-crashloop):
        if it still fails, the next failed probe restarts it at once."""
        with self._lock:
            if (record := self._records.get(name)) is None:
                return False
            record.health = health = _cleared(record.health)
            record.attempts.clear()
        self._notify(name, health)
        return True

    def probe_now(self) -> dict[str, PluginHealth]:
        """Probe every registered plugin once, in turn; returns the statuses after."""
        with self._round:
            for name in self.manager.names():
                if self._stop.is_set():  # close() must not wait for a whole round
                    break
                self._probe(name)
            with self._lock:
                self._rounds += 1
        return self.statuses()

    @property
    def rounds(self) -> int:
        """Probe rounds completed (a test moving the clock waits for one to end)."""
        with self._lock:
            return self._rounds

    def _loop(self) -> None:
        due = self.clock.now() + self.interval
        while not self._stop.is_set():
            self.clock.wait(self._stop, due - self.clock.now())
            if self._stop.is_set() or self.clock.now() < due:
                continue
            try:
                self.probe_now()
            except Exception:  # a bug of ours must not end health checking
                logger.exception("health: probe round failed")
            due += self.interval  # a fixed cadence; a round that overran skips ticks
            if due <= self.clock.now():
                due = self.clock.now() + self.interval

    def _probe(self, name: str) -> None:
        with self._lock:
            record = self._records.setdefault(name, _Record())
            generation = record.generation
        error: str | None = None
        payload: Any = None
        try:
            raw = self.manager.ping(name, timeout=self.timeout)
            try:
                payload = json.loads(raw) if raw else None
            except ValueError:  # not JSON (or not UTF-8): it answered, without a payload
                payload = None
        except PluginNotFound:  # unloaded since names(): forget it, unless loaded again
            with self._lock:
                if self._records.get(name) is record and record.generation == generation:
                    del self._records[name]
            return
        except (PluginTimeout, PluginUnavailable) as exc:
            error = f"{type(exc).__name__}: {exc.message}"
        except PlughostError:
            pass  # it answered with an error: "unknown function", a trap, ...
        except Exception as exc:  # a runtime bug: it cannot be said to have answered
            logger.exception("health: probing %s", name)
            error = f"unexpected error: {exc!r}"
        self._record(name, record, generation, error, payload)

    def _record(self, name: str, record: _Record, generation: int, error: str | None,
                payload: Any) -> None:
        now = self.clock.now()
        thread: threading.Thread | None = None
        with self._lock:
            if self._records.get(name) is not record or record.generation != generation:
                return  # (un/re)loaded meanwhile: the answer was the old version's
            before = record.health
            if error is None:
                record.health = _cleared(before, healthy=True, last_check=now,
                                         last_success=now, consecutive_failures=0,
                                         last_error=None, payload=payload)
                record.attempts.clear()
            else:
                count = before.consecutive_failures + 1
                record.health = replace(before, last_check=now, consecutive_failures=count,
                                        last_error=error,
                                        healthy=before.healthy and count < self.failures)
                if self._decide(name, record, now):
                    thread = self._restarts[name]
            health = record.health
        if health.healthy != before.healthy:
            if health.healthy:
                logger.info("health: %s is healthy", name)
            else:
                logger.warning("health: %s is unhealthy: %s", name, error)
        if thread is not None:
            thread.start()
        if (health.healthy, health.restart_attempts, health.crash_loop_abandoned) != \
                (before.healthy, before.restart_attempts, before.crash_loop_abandoned):
            self._notify(name, health)

    def _decide(self, name: str, record: _Record, now: float) -> bool:
        """Under the lock, after a failed probe: is a restart due? Updates the record."""
        h = record.health
        waiting = h.next_restart_at is not None and now < h.next_restart_at  # backing off
        if self.restart is None or self._stop.is_set() or name in self._restarts or waiting \
                or h.healthy or h.crash_loop_abandoned or h.consecutive_failures < self.failures:
            return False
        while record.attempts and record.attempts[0] <= now - self.attempt_window:
            record.attempts.popleft()
        if len(record.attempts) >= self.max_attempts:
            logger.error("health: %s: restarts abandoned after %d attempts within %.0fs; "
                         "reset it to try again", name, len(record.attempts),
                         self.attempt_window)
            record.health = replace(h, crash_loop_abandoned=True, next_restart_at=None)
            return False
        record.attempts.append(now)
        attempts = h.restart_attempts + 1
        delay = min(self.backoff * 2 ** min(attempts - 1, 32), self.max_backoff)
        record.health = replace(h, restart_attempts=attempts, last_restart_at=now,
                                next_restart_at=now + delay, restarting=True)
        # Not on the probing thread: a reload can take as long as a plugin's start (a gRPC
        # process: seconds), and the other plugins' probes must not wait for it.
        self._restarts[name] = threading.Thread(target=self._restart_one, args=(name,),
                                                name=f"plughost-health-restart-{name}",
                                                daemon=True)
        return True

    def _restart_one(self, name: str) -> None:
        try:
            if self.restart is not None and not self._stop.is_set():
                logger.info("health: restarting %s", name)
                self.restart(name)
        except Exception as exc:  # counted already: a failed restart is still an attempt
            logger.warning("health: restart of %s failed: %s", name, exc)
        finally:
            with self._lock:
                del self._restarts[name]
                if (record := self._records.get(name)) is not None:
                    record.health = replace(record.health, restarting=False)

    # The manager calls listeners from the thread that changed the registry.

    def _on_event(self, event: Event) -> None:
        name, kind = event.plugin, event.kind
        with self._lock:
            record = self._records.get(name)
            was_healthy = record is not None and record.health.healthy
            if kind == "unload":
                self._records.pop(name, None)
                return
            if kind == "reload" and record is not None:  # a new version of a known plugin
                record.generation += 1
                record.health = replace(record.health, healthy=False, payload=None)
            elif kind in ("load", "reload"):
                record = self._records[name] = _Record(
                    PluginHealth(restarting=name in self._restarts))
            else:
                return
            health = record.health
        if was_healthy:
            self._notify(name, health)

    def _notify(self, name: str, health: PluginHealth) -> None:
        if self.on_change is not None:
            try:
                self.on_change(name, health)
            except Exception:
                logger.exception("health: on_change failed for %s", name)
