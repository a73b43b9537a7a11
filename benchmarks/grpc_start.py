"""Start-up of a grpc plugin: loader.ensure_loaded + first manager.call vs the bare start of
the same executable.

The plugin is benchmarks/_grpc_plugin.py's `echo` (plughost.sdk, trace marks on), in a temp
plugin dir, loaded with Manager + Loader (one of each for the whole run; the plugin is
unloaded after each round, outside the timing).

  plughost   loader.ensure_loaded("echo") + the first manager.call answer
  bare       subprocess.Popen([sys.executable, script], env=<what plughost sets: PATH,
             PLUGHOST_PLUGIN=v1, PLUGIN_PROTOCOL_VERSIONS=1, PLUGIN_UNIX_SOCKET_DIR=<tmp
             0700 dir>, PLUGHOST_HOST_ADDR=unix:///nonexistent, PYTHONUNBUFFERED=1>,
             stdout=PIPE), timed until the handshake line is read (then SIGKILL)
  bare+flags (ref) bare with plughost's Popen flags: cwd, stdin=DEVNULL, stderr=PIPE,
             close_fds, start_new_session and the PR_SET_PDEATHSIG preexec_fn
  python -c pass / -c "import grpc" / -c "from plughost import sdk": the interpreter and
             the SDK import, same environment, timed to exit

Traced rounds (separate, interleaved with the others) time plughost's phases without editing
src/: module globals of plughost.runtimes.grpc/process (spawn, parse_handshake,
ChildProcess.wait_handshake, HostServer, the health and Plugin stubs) are wrapped to record
`time.time()`, and the plugin writes its own marks (script start, SDK imported, serve(),
Init served) to stderr, which plughost logs with the text intact.

    .venv/bin/python benchmarks/grpc_start.py [--quick] [--json out.json]
"""

from __future__ import annotations

import contextlib
import functools
import gc
import logging
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

from _common import (
    Stats,
    fmt_ns,
    fmt_ratio,
    header,
    paired_ratio,
    parser,
    shuffled,
    table,
    write_json,
)
from _grpc_plugin import parse_marks, write_plugin

from plughost import Loader, Manager
from plughost.host.service import HostServer
from plughost.runtimes import grpc as rt_module
from plughost.runtimes import process as proc_mod

rt: Any = rt_module  # its module globals (stubs, helpers) are wrapped below
NAME = "echo"
ARGS: dict[str, Any] = {"msg": "hello"}
HANDSHAKE = re.compile(rb"^1\|1\|unix\|[^|]+\|grpc")

# Phases of a traced plughost start: (label, from-mark, to-mark).
PHASES: list[tuple[str, str, str]] = [
    ("host prep: lookup, stage, private dir, Host service", "t0", "spawn0"),
    ("  of which: start the Host gRPC server", "hostsvc0", "hostsvc1"),
    ("fork + exec (Popen on the spawner thread)", "spawn0", "spawn1"),
    ("interpreter start-up, to the script's first line", "spawn1", "start"),
    ("plugin: `from plughost import sdk` (grpc, protobuf)", "start", "imported"),
    ("plugin: define the plugin", "imported", "serve"),
    ("plugin: serve() until the host reads the handshake", "serve", "hs_line"),
    ("host: wake-up after the handshake line", "hs_line", "hs_wait"),
    ("connect (channel_ready_future)", "hs_wait", "health0"),
    ("Health.Check RPC", "health0", "health1"),
    ("Register RPC + parse_registration", "health1", "reg1"),
    ("Init RPC", "reg1", "init1"),
    ("register in the manager, return", "init1", "loaded"),
    ("first manager.call", "loaded", "called"),
]
GROUPS: list[tuple[str, str, str]] = [
    ("handshake wait (ensure_loaded -> handshake read)", "t0", "hs_wait"),
    ("connect + health", "hs_wait", "health1"),
    ("Register + Init", "health1", "init1"),
    ("rest of ensure_loaded", "init1", "loaded"),
    ("first call", "loaded", "called"),
    ("total", "t0", "called"),
]


def bare_env(sock_dir: str) -> dict[str, str]:
    return {"PATH": os.environ.get("PATH", os.defpath), "PLUGHOST_PLUGIN": "v1",
            "PLUGIN_PROTOCOL_VERSIONS": "1", "PLUGIN_UNIX_SOCKET_DIR": sock_dir,
            "PLUGHOST_HOST_ADDR": "unix:///nonexistent", "PYTHONUNBUFFERED": "1"}


def bare_start(script: Path, env: dict[str, str], plughost_flags: bool
               ) -> tuple[int, dict[str, float]]:
    """Popen the script, time until its handshake line; returns (ns, marks incl. popen0)."""
    kw: dict[str, Any] = {}
    if plughost_flags:
        kw = {"cwd": str(script.parent), "stdin": subprocess.DEVNULL, "close_fds": True,
              "start_new_session": True,
              "preexec_fn": functools.partial(proc_mod._child_setup, os.getpid())}
    wall0 = time.time()
    t0 = time.perf_counter_ns()
    p = subprocess.Popen([sys.executable, str(script)], env=env, stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, **kw)
    wall1 = time.time()
    assert p.stdout is not None
    try:
        while True:
            line = p.stdout.readline()
            if not line:
                raise RuntimeError(f"bare plugin exited without a handshake: {p.wait()}")
            if HANDSHAKE.match(line):
                break
        elapsed = time.perf_counter_ns() - t0
        wall_end = time.time()
    finally:
        p.kill()
        _, err = p.communicate()
    marks = parse_marks(err.decode(errors="replace").splitlines())
    marks["popen0"], marks["popen1"], marks["end"] = wall0, wall1, wall_end
    return elapsed, marks


def run_python(code: str, env: dict[str, str]) -> int:
    t0 = time.perf_counter_ns()
    subprocess.run([sys.executable, "-c", code], env=env, check=True)
    return time.perf_counter_ns() - t0


class Tracer:
    """Wraps plughost internals (module globals only) to timestamp a start's phases."""

    def __init__(self) -> None:
        self.marks: dict[str, float] = {}

    def mark(self, label: str) -> None:
        self.marks.setdefault(label, time.time())

    def timed(self, fn: Callable[..., Any], before: str | None, after: str
              ) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            if before:
                self.mark(before)
            result = fn(*args, **kwargs)
            self.mark(after)
            return result
        return wrapper

    @contextlib.contextmanager
    def patched(self) -> Iterator[None]:
        tracer = self
        real_parse = proc_mod.parse_handshake

        def parse_handshake(line: str, *, plugin: str) -> Any:
            hs = real_parse(line, plugin=plugin)
            if hs is not None:
                tracer.mark("hs_line")
            return hs

        class TracedChild(proc_mod.ChildProcess):
            def wait_handshake(self, timeout: float, limit_ms: int | None = None) -> Any:
                hs = super().wait_handshake(timeout, limit_ms)
                tracer.mark("hs_wait")
                return hs

        class TracedHostServer(HostServer):
            def __init__(self, *args: Any, **kwargs: Any) -> None:
                tracer.mark("hostsvc0")
                super().__init__(*args, **kwargs)
                tracer.mark("hostsvc1")

        real_health_stub = rt.health_pb2_grpc.HealthStub
        real_plugin_stub = rt.pb_grpc.PluginStub

        def health_stub(channel: Any) -> Any:
            stub = real_health_stub(channel)
            stub.Check = tracer.timed(stub.Check, "health0", "health1")
            return stub

        def plugin_stub(channel: Any) -> Any:
            stub = real_plugin_stub(channel)
            stub.Register = tracer.timed(stub.Register, "reg0", "reg_rpc1")
            stub.Init = tracer.timed(stub.Init, "init0", "init1")
            return stub

        real_parse_reg = rt.parse_registration
        health_ns = SimpleNamespace(HealthStub=health_stub)
        pb_grpc_ns = SimpleNamespace(**{k: getattr(rt.pb_grpc, k) for k in dir(rt.pb_grpc)
                                        if not k.startswith("__")})
        pb_grpc_ns.PluginStub = plugin_stub
        with contextlib.ExitStack() as stack:
            for owner, attr, value in (
                    (proc_mod, "spawn", self.timed(proc_mod.spawn, "spawn0", "spawn1")),
                    (proc_mod, "parse_handshake", parse_handshake),
                    (rt, "ChildProcess", TracedChild),
                    (rt, "HostServer", TracedHostServer),
                    (rt, "health_pb2_grpc", health_ns),
                    (rt, "pb_grpc", pb_grpc_ns),
                    (rt, "parse_registration", self.timed(real_parse_reg, None, "reg1"))):
                stack.enter_context(mock.patch.object(owner, attr, value))
            yield


class Host:
    def __init__(self, plugins: Path) -> None:
        self.manager = Manager()
        self.loader = Loader(plugins, self.manager, cache_dir=plugins.parent / "modcache")
        self.loader.discover_all()
        self.unload_ns: list[int] = []

    def start(self) -> int:
        """ensure_loaded + first call, then unload (not counted); ns."""
        gc.collect()
        t0 = time.perf_counter_ns()
        self.loader.ensure_loaded(NAME)
        got = self.manager.call(NAME, "echo", ARGS)
        elapsed = time.perf_counter_ns() - t0
        assert got == ARGS, got
        self.stop()
        return elapsed

    def traced_start(self) -> tuple[int, dict[str, float]]:
        tracer = Tracer()
        log = self.manager.log_for(NAME)
        before = len(log.records())
        gc.collect()
        with tracer.patched():
            tracer.mark("t0")
            t0 = time.perf_counter_ns()
            self.loader.ensure_loaded(NAME)
            tracer.mark("loaded")
            got = self.manager.call(NAME, "echo", ARGS)
            tracer.mark("called")
            elapsed = time.perf_counter_ns() - t0
        assert got == ARGS, got
        # the plugin's own marks arrive through its stderr pipe: give the reader a moment
        deadline = time.monotonic() + 2.0
        marks: dict[str, float] = {}
        while time.monotonic() < deadline:
            recs = log.records()[before:] if len(log.records()) > before else []
            marks = parse_marks([r.message for r in recs if r.source == "stderr"])
            if "init" in marks:
                break
            time.sleep(0.01)
        self.stop()
        return elapsed, {**marks, **tracer.marks}

    def stop(self) -> None:
        t0 = time.perf_counter_ns()
        self.loader.unload(NAME)
        self.unload_ns.append(time.perf_counter_ns() - t0)

    def close(self) -> None:
        self.loader.close()
        self.manager.close()


IMPORT_ROWS = [
    ("everything (sum of the top-level imports)", "*"),
    ("plughost (the package __init__)", "plughost"),
    ("  of which logging", "logging"),
    ("plughost.sdk", "plughost.sdk"),
    ("  grpc", "grpc"),
    ("    of which grpc._cython.cygrpc", "grpc._cython.cygrpc"),
    ("    of which asyncio (imported by grpc)", "asyncio"),
    ("  plughost/v1/plugin_pb2 (protobuf runtime + descriptors)",
     "plughost.proto.plughost.v1.plugin_pb2"),
    ("  grpc_health.v1.health", "grpc_health.v1.health"),
]


def importtime(env: dict[str, str]) -> list[tuple[str, int]]:
    """`from plughost import sdk` under -X importtime: cumulative µs of a few modules
    (nested: rows overlap) and the total."""
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "from plughost import sdk"],
                       env=env, capture_output=True, text=True, check=True)
    cumulative: dict[str, int] = {}
    total = 0
    for line in r.stderr.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+(\d+) \|( *)(\S+)", line)
        if m:
            cumulative.setdefault(m[4], int(m[2]))
            if len(m[3]) == 1:
                total += int(m[2])
    return [(label, total if module == "*" else cumulative.get(module, 0))
            for label, module in IMPORT_ROWS]


def main() -> int:
    args = parser(__doc__.splitlines()[0]).parse_args()
    quick: bool = args.quick
    reps, traced_reps = (3, 2) if quick else (30, 15)
    header("grpc_start: ensure_loaded + first call of a grpc plugin vs its bare start", quick)
    logging.getLogger("plughost").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory(prefix="plughost-bench-") as tmp:
        plugins = Path(tmp) / "plugins"
        script = write_plugin(plugins, NAME, trace=True)
        sock_dir = tempfile.mkdtemp(prefix="phb-", dir="/tmp")
        os.chmod(sock_dir, 0o700)
        env = bare_env(sock_dir)
        host = Host(plugins)
        try:
            # warm-up: the spawner thread, imports, page cache, .pyc files
            host.start()
            host.traced_start()
            for flags in (False, True):
                bare_start(script, env, flags)
            run_python("from plughost import sdk", env)
            host.unload_ns.clear()

            variants: dict[str, Callable[[], int]] = {
                "plughost": host.start,
                "py_pass": lambda: run_python("pass", env),
                "py_grpc": lambda: run_python("import grpc", env),
                "py_sdk": lambda: run_python("from plughost import sdk", env),
            }
            samples: dict[str, list[int]] = {k: [] for k in
                                             ("plughost", "bare", "bare_flags", "py_pass",
                                              "py_grpc", "py_sdk")}
            traced: list[tuple[int, dict[str, float]]] = []
            bare_marks: dict[str, list[dict[str, float]]] = {"bare": [], "bare_flags": []}
            every = max(1, reps // traced_reps)  # spread the traced rounds over the run
            print(f"   {reps} rounds, variants in shuffled order; {traced_reps} traced "
                  f"plughost starts, one every {every} rounds\n", flush=True)
            for round_no in range(reps):
                traced_round = round_no % every == 0 and len(traced) < traced_reps
                keys = [*variants, *bare_marks] + (["traced"] if traced_round else [])
                for key in shuffled(keys, round_no):
                    if key == "traced":
                        traced.append(host.traced_start())
                    elif key in bare_marks:
                        ns, marks = bare_start(script, env, key == "bare_flags")
                        samples[key].append(ns)
                        bare_marks[key].append(marks)
                    else:
                        samples[key].append(variants[key]())
        finally:
            host.close()
            for p in Path(sock_dir).iterdir():
                p.unlink()
            os.rmdir(sock_dir)

        labels = {
            "plughost": "plughost: ensure_loaded + first manager.call",
            "bare": "bare: Popen -> handshake line",
            "bare_flags": "(ref) bare with plughost's Popen flags",
            "py_pass": "python -c pass",
            "py_grpc": "python -c 'import grpc'",
            "py_sdk": "python -c 'from plughost import sdk'",
        }
        stats = {k: Stats.of(k, v) for k, v in samples.items()}
        rows, summary_rows = [], []
        for k, label in labels.items():
            s = stats[k]
            r_bare = paired_ratio(samples[k], samples["bare"])
            rows.append([label, fmt_ns(s.median), fmt_ns(s.min), fmt_ns(s.p99),
                         fmt_ratio(r_bare)])
            summary_rows.append({"key": k, "label": label, "median_ns": s.median,
                                 "min_ns": s.min, "p99_ns": s.p99, "ratio_vs_bare": r_bare})
        print(table(["variant", "median", "min", "p99 (max at n<100)", "vs bare"], rows))
        print("   (vs bare: median of same-round ratios)")
        ratio = paired_ratio(samples["plughost"], samples["bare"])
        extra = statistics.median(a - b for a, b in zip(samples["plughost"], samples["bare"],
                                                        strict=True))
        unload = Stats.of("unload", host.unload_ns)
        print(f"\n   plughost start = {fmt_ratio(ratio)} the bare start "
              f"({fmt_ns(stats['plughost'].median)} vs {fmt_ns(stats['bare'].median)}; "
              f"+{fmt_ns(extra)} median same-round difference). Unload (not in the times): "
              f"median {fmt_ns(unload.median)}, max {fmt_ns(unload.samples[-1])}")

        # Phases, from the traced starts (ms; medians over the traced rounds)
        def phase(marks: dict[str, float], a: str, b: str) -> float | None:
            if a in marks and b in marks:
                return (marks[b] - marks[a]) * 1e9
            return None

        phase_rows, phase_summary = [], []
        tot = statistics.median(t for t, _ in traced)
        for label, a, b in PHASES + GROUPS:
            vals = [v for _, m in traced if (v := phase(m, a, b)) is not None]
            if not vals:
                phase_rows.append([label, "n/a", ""])
                continue
            med = statistics.median(vals)
            phase_rows.append([label, fmt_ns(med), f"{med / tot * 100:.0f}%"])
            phase_summary.append({"phase": label, "from": a, "to": b, "median_ns": med,
                                  "share": med / tot, "n": len(vals)})
        print(f"\n   phases of a traced plughost start ({len(traced)} traced starts, "
              f"median total {fmt_ns(tot)}):")
        print(table(["phase", "median", "share of total"], phase_rows))
        def med_between(runs: list[dict[str, float]], a: str, b: str) -> float | None:
            vals = [(m[b] - m[a]) * 1e9 for m in runs if a in m and b in m]
            return statistics.median(vals) if vals else None

        bare_phases: dict[str, dict[str, float | None]] = {}
        bare_rows = []
        for key, runs in bare_marks.items():
            got = {what: med_between(runs, a, b) for what, a, b in (
                ("Popen() (fork + exec)", "popen0", "popen1"),
                ("exec -> script's first line", "popen1", "start"),
                ("sdk import", "start", "imported"),
                ("serve() -> handshake read", "serve", "end"))}
            bare_phases[key] = got
        for what in bare_phases["bare"]:
            bare_rows.append([what] + [fmt_ns(v) if (v := bare_phases[k][what]) is not None
                                       else "n/a" for k in bare_phases])
        print("\n   the same marks in the bare runs (medians):")
        print(table(["phase", "bare", "bare with plughost's flags"], bare_rows))

        imports = importtime(env)
        print("\n   -X importtime of `from plughost import sdk` (one run; cumulative, so nested "
              "rows overlap; importtime itself adds overhead):")
        print(table(["module", "cumulative"], [[m, fmt_ns(us * 1000)] for m, us in imports]))

        write_json(args.json, {
            "benchmark": "grpc_start", "quick": quick, "rows": summary_rows,
            "phases": phase_summary, "unload_median_ns": unload.median,
            "traced_total_ns": tot, "importtime_us": imports,
            "bare_phases_ns": bare_phases,
            "headline": {"plughost_ns": stats["plughost"].median,
                         "bare_ns": stats["bare"].median, "ratio": ratio,
                         "extra_ns": extra},
        })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
