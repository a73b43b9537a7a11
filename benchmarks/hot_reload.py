"""Hot reload under load: time from a plugin file replaced on disk to the new version
answering, and failed calls while 8 threads keep calling.

wasm: tests/fixtures/wat/testkit.wat assembled with wasmtime.wat2wasm (`__NAME__` -> "hr",
`__VERSION__` -> the version; its `version` function returns the version string), as the
plugin dir `hr/` with `plugin.yaml` (`resources: {max_instances: 8}`) and `hr.wasm`.
grpc: benchmarks/_grpc_plugin.py's script as `hr/hr.py` (the version is in the script).

For each debounce D (100 ms and the default 500 ms): Manager + Loader (own module cache in
the temp dir), `loader.watch_dir(debounce_ms=D)`, 8 threads calling `manager.call("hr",
"version")` in a loop, each recording when it first sees each version and any exception.
The main thread replaces the file N times (write a hidden temp file in the same dir, fsync,
`os.replace`; the time is taken right after `os.replace`), waits until a caller sees the new
version and the watcher has finished the batch (the old version retired), then waits a
random 0..D ms so that replacements land at random points of the watcher's cycle.

  latency     = first time any caller sees the new version - replacement time
  latency - D = what is left after the debounce the user asked for
Phases come from wrapping (instance attributes only, no src/ edits) `Watcher.apply`,
`Loader.reload` and `Manager.replace` with timestamps.

Reference (no reloads): calls/s of testkit `version` with max_instances 1 vs 8 and 1 vs 8
calling threads, and 8 threads pinned to one CPU (`os.sched_setaffinity` in each caller
thread only), interleaved over rounds: how much of the calls/s above is the GIL.

    .venv/bin/python benchmarks/hot_reload.py [--quick] [--json out.json]
"""

from __future__ import annotations

import gc
import logging
import os
import random
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import wasmtime
from _common import (
    Stats,
    clock,
    fmt_ns,
    fmt_ratio,
    header,
    paired_ratio,
    parser,
    shuffled,
    table,
    write_json,
)
from _grpc_plugin import replace_atomically, script_text, write_plugin

from plughost import Loader, Manager, WasmEngine

ROOT = Path(__file__).resolve().parent.parent
TESTKIT = ROOT / "tests" / "fixtures" / "wat" / "testkit.wat"
NAME = "hr"
THREADS = 8
WAIT_S = 60.0  # give up on one replacement after this long (counted as "not seen")


def wasm_bytes(version: str, name: str = NAME) -> bytes:
    text = TESTKIT.read_text().replace("__NAME__", name).replace("__VERSION__", version)
    return bytes(wasmtime.wat2wasm(text))


@dataclass
class Caller:
    """One calling thread's record: version transitions and failures."""

    transitions: list[tuple[int, str]] = field(default_factory=list)  # (ns, version)
    errors: list[tuple[int, str]] = field(default_factory=list)
    calls: int = 0
    backwards: int = 0  # saw an older version after a newer one (must stay 0)


class Seen:
    """First time any caller saw each version; the main thread waits on it."""

    def __init__(self) -> None:
        self.first: dict[str, int] = {}
        self.cond = threading.Condition()

    def saw(self, version: str, t: int) -> None:
        with self.cond:
            if version not in self.first:
                self.first[version] = t
                self.cond.notify_all()

    def wait(self, version: str, timeout: float) -> bool:
        with self.cond:
            return self.cond.wait_for(lambda: version in self.first, timeout)


def caller_loop(manager: Manager, order: dict[str, int], seen: Seen, rec: Caller,
                stop: threading.Event) -> None:
    last: str | None = None
    while not stop.is_set():
        try:
            v = manager.call(NAME, "version")
        except Exception as exc:
            rec.errors.append((clock(), f"{type(exc).__name__}: {exc}"))
            continue
        t = clock()
        rec.calls += 1
        if v != last:
            if last is not None and order.get(v, -1) < order.get(last, -1):
                rec.backwards += 1
            rec.transitions.append((t, v))
            seen.saw(v, t)
            last = v


class Probe:
    """Timestamps of the watcher's and loader's steps (wrapping instance attributes)."""

    def __init__(self) -> None:
        self.events: list[tuple[int, str]] = []
        self._lock = threading.Lock()

    def add(self, label: str) -> None:
        with self._lock:
            self.events.append((clock(), label))

    def wrap(self, obj: Any, attr: str, before: str, after: str) -> None:
        real = getattr(obj, attr)

        def wrapper(*args: Any, **kwargs: Any) -> Any:
            self.add(before)
            try:
                return real(*args, **kwargs)
            finally:
                self.add(after)

        setattr(obj, attr, wrapper)

    def first_after(self, t: int, label: str, until: int | None = None) -> int | None:
        with self._lock:
            for ts, lb in self.events:
                if lb == label and ts >= t and (until is None or ts < until):
                    return ts
        return None


@dataclass
class Result:
    kind: str
    debounce_ms: int
    replacements: int
    latencies: list[int]
    not_seen: int
    failed_calls: int
    error_samples: list[str]
    backwards: int
    calls: int
    seconds: float
    phases: dict[str, list[int]]
    reload_errors: int
    steady_calls_per_s: float  # same callers, before any replacement
    during_calls_per_s: float  # while replacing

    def summary(self) -> dict[str, Any]:
        lat = Stats.of("latency", self.latencies) if self.latencies else None
        d = self.debounce_ms * 1_000_000
        return {
            "kind": self.kind, "debounce_ms": self.debounce_ms,
            "replacements": self.replacements, "seen": len(self.latencies),
            "not_seen": self.not_seen,
            "latency_median_ns": lat.median if lat else None,
            "latency_p99_ns": lat.p99 if lat else None,
            "latency_min_ns": lat.min if lat else None,
            "latency_max_ns": float(lat.samples[-1]) if lat else None,
            "minus_debounce_median_ns": lat.median - d if lat else None,
            "minus_debounce_p99_ns": lat.p99 - d if lat else None,
            "failed_calls": self.failed_calls, "error_samples": self.error_samples,
            "version_went_backwards": self.backwards, "calls": self.calls,
            "calls_per_s": self.calls / self.seconds, "seconds": self.seconds,
            "steady_calls_per_s": self.steady_calls_per_s,
            "during_calls_per_s": self.during_calls_per_s,
            "reload_errors_logged": self.reload_errors,
            "phases_median_ns": {k: statistics.median(v) for k, v in self.phases.items() if v},
            "phases_p99_ns": {k: Stats.of(k, v).p99 for k, v in self.phases.items() if v},
            "phases_min_ns": {k: min(v) for k, v in self.phases.items() if v},
            "phases_max_ns": {k: max(v) for k, v in self.phases.items() if v},
        }


def run(kind: str, debounce_ms: int, replacements: int, tmp: Path, steady_s: float
        ) -> Result:
    base = tmp / f"{kind}-{debounce_ms}"
    plugins = base / "plugins"
    versions = [f"1.{i}.0" for i in range(replacements + 1)]
    order = {v: i for i, v in enumerate(versions)}
    if kind == "wasm":
        pdir = plugins / NAME
        pdir.mkdir(parents=True)
        (pdir / "plugin.yaml").write_text(
            f"name: {NAME}\nversion: 1.0.0\nruntime: wasm\nwasm: {NAME}.wasm\n"
            "resources: {max_instances: 8}\n")
        target = pdir / f"{NAME}.wasm"
        payloads = [wasm_bytes(v) for v in versions]  # assembled before the clock runs
        target.write_bytes(payloads[0])
    else:
        target = write_plugin(plugins, NAME, versions[0])
        payloads = [script_text(NAME, v).encode() for v in versions]

    engine = WasmEngine(base / "modcache")
    manager = Manager(drain_timeout=10.0)
    loader = Loader(plugins, manager, engine=engine)
    count, errors = loader.load_all()
    if errors or count != 1:
        raise SystemExit(f"{kind}: loading failed: {count=} {errors=}")
    assert manager.call(NAME, "version") == versions[0]
    log = manager.log_for(NAME)
    log_before = len(log.records())

    watcher = loader.watch_dir(debounce_ms=debounce_ms)
    probe = Probe()
    probe.wrap(watcher, "apply", "apply0", "apply1")
    probe.wrap(loader, "reload", "reload0", "reload1")
    probe.wrap(manager, "replace", "swap", "retired")

    seen = Seen()
    stop = threading.Event()
    callers = [Caller() for _ in range(THREADS)]
    threads = [threading.Thread(target=caller_loop, args=(manager, order, seen, c, stop),
                                daemon=True) for c in callers]
    rng = random.Random(debounce_ms)
    replaced: list[int] = []
    not_seen = 0
    gc.collect()
    t_start = clock()
    for t in threads:
        t.start()
    def total_calls() -> int:
        return sum(c.calls for c in callers)

    try:
        seen.wait(versions[0], 10.0)
        time.sleep(0.3)
        c0, t0 = total_calls(), clock()
        time.sleep(steady_s)  # the same 8 callers, no reloads: the reference rate
        c1, t1 = total_calls(), clock()
        steady = (c1 - c0) / ((t1 - t0) / 1e9)
        for i in range(1, replacements + 1):
            batches = watcher.batches
            replace_atomically(target, payloads[i], tag=str(i))
            replaced.append(clock())
            if not seen.wait(versions[i], WAIT_S):
                not_seen += 1
                print(f"   ! {kind} D={debounce_ms}: version {versions[i]} not seen within "
                      f"{WAIT_S:.0f} s", flush=True)
            watcher.wait_for_batch(batches, WAIT_S)  # the old version is retired
            time.sleep(rng.uniform(0, debounce_ms / 1000))
            if i % 10 == 0 or i == replacements:
                print(f"   {kind} D={debounce_ms}: {i}/{replacements} replacements",
                      flush=True)
        c2, t2 = total_calls(), clock()
        during = (c2 - c1) / ((t2 - t1) / 1e9)
    finally:
        stop.set()
        for t in threads:
            t.join(WAIT_S)
        seconds = (clock() - t_start) / 1e9
        loader.stop_watch()

    latencies: list[int] = []
    phases: dict[str, list[int]] = {
        "detect (replace -> Watcher.apply)": [],
        "settle + rescan (apply -> Loader.reload)": [],
        "build new version (reload -> swap)": [],
        "swap -> first caller sees it": [],
        "retire old version (drain + shutdown)": [],
        "apply total (whole batch)": [],
    }
    for i, t_rep in enumerate(replaced, start=1):
        first = seen.first.get(versions[i])
        if first is None:
            continue
        latencies.append(first - t_rep)
        nxt = replaced[i] if i < len(replaced) else None
        a0 = probe.first_after(t_rep, "apply0", nxt)
        r0 = probe.first_after(t_rep, "reload0", nxt)
        sw = probe.first_after(t_rep, "swap", nxt)
        rt = probe.first_after(t_rep, "retired", nxt)
        a1 = probe.first_after(t_rep, "apply1", nxt)
        for key, x, y in (("detect (replace -> Watcher.apply)", t_rep, a0),
                          ("settle + rescan (apply -> Loader.reload)", a0, r0),
                          ("build new version (reload -> swap)", r0, sw),
                          ("swap -> first caller sees it", sw, first),
                          ("retire old version (drain + shutdown)", sw, rt),
                          ("apply total (whole batch)", a0, a1)):
            if x is not None and y is not None:
                phases[key].append(y - x)
    errors_all = [e for c in callers for e in c.errors]
    reload_errors = sum(1 for r in log.records()[log_before:]
                        if r.level == "error" and r.source == "host")
    loader.close()
    manager.close()
    engine.close()
    return Result(kind, debounce_ms, replacements, latencies, not_seen, len(errors_all),
                  sorted({m for _, m in errors_all})[:5], sum(c.backwards for c in callers),
                  sum(c.calls for c in callers), seconds, phases, reload_errors, steady,
                  during)


def steady_throughput(tmp: Path, seconds: float, reps: int) -> list[dict[str, Any]]:
    """Reference, no reloads: calls/s of testkit `version` with max_instances 1 vs 8,
    1 vs 8 calling threads, interleaved over rounds."""
    plugins = tmp / "steady" / "plugins"
    for inst in (1, 8):
        name = f"hr{inst}"
        pdir = plugins / name
        pdir.mkdir(parents=True)
        (pdir / "plugin.yaml").write_text(
            f"name: {name}\nruntime: wasm\nwasm: {name}.wasm\n"
            f"resources: {{max_instances: {inst}}}\n")
        (pdir / f"{name}.wasm").write_bytes(wasm_bytes("1.0.0", name))
    engine = WasmEngine(tmp / "steady" / "modcache")
    manager = Manager()
    loader = Loader(plugins, manager, engine=engine)
    count, errors = loader.load_all()
    if errors or count != 2:
        raise SystemExit(f"steady: loading failed: {count=} {errors=}")

    one_cpu = {min(os.sched_getaffinity(0))}

    def burst(name: str, nthreads: int, secs: float, pinned: bool) -> float:
        counts = [0] * nthreads
        stop = threading.Event()

        def work(k: int) -> None:
            if pinned:  # this thread only (Linux affinity is per thread)
                os.sched_setaffinity(0, one_cpu)
            while not stop.is_set():
                manager.call(name, "version")
                counts[k] += 1

        ts = [threading.Thread(target=work, args=(k,)) for k in range(nthreads)]
        t0 = clock()
        for t in ts:
            t.start()
        time.sleep(secs)
        stop.set()
        for t in ts:
            t.join()
        return sum(counts) / ((clock() - t0) / 1e9)

    # (max_instances, calling threads, callers pinned to one CPU)
    variants = [(inst, thr, False) for inst in (1, 8) for thr in (1, 8)]
    variants += [(1, 8, True), (8, 8, True)]
    rates: dict[tuple[int, int, bool], list[float]] = {v: [] for v in variants}
    for v in variants:
        burst(f"hr{v[0]}", v[1], seconds / 4, v[2])  # warm-up (instances are made lazily)
    for round_no in range(reps):
        for inst, thr, pin in shuffled(variants, round_no):
            gc.collect()
            rates[(inst, thr, pin)].append(burst(f"hr{inst}", thr, seconds, pin))
    loader.close()
    manager.close()
    engine.close()
    base = rates[(1, 1, False)]
    return [{"max_instances": inst, "threads": thr, "pinned_to_one_cpu": pin,
             "calls_per_s": statistics.median(rates[(inst, thr, pin)]),
             "min_calls_per_s": min(rates[(inst, thr, pin)]),
             "max_calls_per_s": max(rates[(inst, thr, pin)]),
             "vs_1_instance_1_thread": paired_ratio(rates[(inst, thr, pin)], base)}
            for inst, thr, pin in variants]


def report(results: list[Result]) -> None:
    rows = []
    for r in results:
        s = r.summary()
        if s["latency_median_ns"] is None:
            rows.append([r.kind, f"{r.debounce_ms} ms", f"0/{r.replacements}", "", "", "", "",
                         str(r.failed_calls), "", f"{r.during_calls_per_s:,.0f}",
                         f"{r.steady_calls_per_s:,.0f}"])
            continue
        rows.append([
            r.kind, f"{r.debounce_ms} ms", f"{s['seen']}/{r.replacements}",
            fmt_ns(s["latency_median_ns"]), fmt_ns(s["latency_p99_ns"]),
            fmt_ns(s["minus_debounce_median_ns"]), fmt_ns(s["minus_debounce_p99_ns"]),
            str(r.failed_calls), str(r.backwards), f"{r.during_calls_per_s:,.0f}",
            f"{r.steady_calls_per_s:,.0f}"])
    print(table(["plugin", "debounce D", "seen", "latency median", "p99",
                 "median - D", "p99 - D", "failed calls", "backwards", "calls/s",
                 "calls/s, no reloads"], rows))
    print("   (p99 is the nearest-rank 99th percentile: at n=20 that is the maximum; "
          "backwards: a caller saw an older version after a newer one; calls/s: all 8 "
          "callers together while replacing, and in the same run before any replacement)")
    for r in results:
        if r.error_samples:
            print(f"   {r.kind} D={r.debounce_ms}: errors seen: {r.error_samples}")
    print("\n   where the time goes (median [min-max] over the replacements):")
    keys = list(results[0].phases)
    prow = []
    for k in keys:
        prow.append([k] + [f"{fmt_ns(statistics.median(v))} [{fmt_ns(min(v))}-"
                           f"{fmt_ns(max(v))}]" if (v := r.phases[k]) else "n/a"
                           for r in results])
    print(table(["phase", *(f"{r.kind} D={r.debounce_ms}" for r in results)], prow))


def main() -> int:
    args = parser(__doc__.splitlines()[0]).parse_args()
    quick: bool = args.quick
    n_wasm, n_grpc = (8, 3) if quick else (100, 20)
    steady_s = 0.5 if quick else 2.0
    ref_s, ref_reps = (0.3, 1) if quick else (1.5, 5)
    header("hot_reload: file replaced -> new version answering, 8 callers", quick)
    logging.getLogger("plughost").setLevel(logging.CRITICAL)
    plan: list[tuple[str, int, int]] = [("wasm", 100, n_wasm), ("wasm", 500, n_wasm),
                                        ("grpc", 100, n_grpc), ("grpc", 500, n_grpc)]
    print(f"   {THREADS} caller threads; replacements: wasm {n_wasm}, grpc {n_grpc} per "
          "debounce\n", flush=True)
    results: list[Result] = []
    with tempfile.TemporaryDirectory(prefix="plughost-bench-") as tmp:
        for kind, d, n in plan:
            results.append(run(kind, d, n, Path(tmp), steady_s))
        print("\n   reference, no reloads: wasm calls/s by max_instances and calling "
              f"threads ({ref_reps} rounds x {ref_s} s, interleaved)", flush=True)
        steady = steady_throughput(Path(tmp), ref_s, ref_reps)
    print()
    report(results)
    print("\n   reference, no reloads: testkit `version` through manager.call, calls/s:")
    print(table(["max_instances", "calling threads", "calls/s (median)", "range",
                 "vs 1 instance, 1 thread"],
                [[str(r["max_instances"]),
                  f"{r['threads']}{' pinned to one CPU' if r['pinned_to_one_cpu'] else ''}",
                  f"{r['calls_per_s']:,.0f}",
                  f"{r['min_calls_per_s']:,.0f}-{r['max_calls_per_s']:,.0f}",
                  fmt_ratio(r["vs_1_instance_1_thread"])] for r in steady]))
    write_json(args.json, {"benchmark": "hot_reload", "quick": quick,
                           "runs": [r.summary() for r in results], "steady": steady})
    bad = sum(r.failed_calls + r.not_seen + r.backwards for r in results)
    if bad:
        print(f"\n   !! {bad} failed calls / unseen versions / backward versions: the bar is 0")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
