"""Measure the reliability figures of docs/reliability.md, with and without bubblewrap.

1. kill -9 recovery under 8 callers: a Python SDK plugin serves 8 threads calling it in a
   loop; its process is SIGKILLed N times; each time, the time from the kill to the first
   call answered by the new process. Calls in between fail fast with PluginUnavailable;
   any other error is counted (it must be 0).
2. Orphans after a host SIGKILL: a host process loads a plugin that leaves six
   descendants (a non-exec shell wrapper and its child, a background child ignoring
   SIGTERM, a setsid double-forked daemon with a shell child and its child); the host is
   SIGKILLed, and after 5 s the script counts the descendants still alive (then kills them).

Usage: python scripts/reliability_figures.py [--kills 20]
"""

from __future__ import annotations

import argparse
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import yaml

from plughost import Loader, Manager, PluginUnavailable
from plughost.runtimes.grpc import GrpcPlugin
from plughost.runtimes.sandbox import Sandbox
from plughost.runtimes.supervisor import RestartPolicy

ROOT = Path(__file__).resolve().parent.parent
PROBE = ROOT / "tests" / "fixtures" / "grpc" / "probe_plugin.py"
HOST = ROOT / "tests" / "fixtures" / "scripts" / "host_spawn_tree.py"
# every crash counts as a first one (backoff 0.2 s), and the circuit never opens
POLICY = RestartPolicy(initial_backoff=0.2, max_backoff=0.2, max_crashes=10**6, window=1e-3)


def write_probe(plugins: Path, name: str, mark: str = "none") -> None:
    pdir = plugins / name
    pdir.mkdir(parents=True)
    text = PROBE.read_text().replace("__NAME__", name).replace("__MARK__", mark)
    (pdir / "plugin.py").write_text(text)
    (pdir / "plugin.yaml").write_text(yaml.safe_dump(
        {"name": name, "runtime": "grpc", "binary": "plugin.py"}))


def recovery(mode: str, kills: int) -> tuple[list[float], int, int, int]:
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        plugins = Path(tmp) / "plugins"
        write_probe(plugins, "k9")
        manager = Manager()
        loader = Loader(plugins, manager, cache_dir=None, restart_policy=POLICY,
                        sandbox=Sandbox(mode, read_only=(), writable=()))  # type: ignore[arg-type]
        loader.load_all()
        stop = threading.Event()
        lock = threading.Lock()
        answered: dict[int, float] = {}  # bwrap or plugin pid -> first answer after kill
        counts = {"ok": 0, "unavailable": 0, "other": 0}

        def caller() -> None:
            while not stop.is_set():
                try:
                    manager.call("k9", "pid")
                    plugin = manager.get("k9")
                    pid = plugin.pid if isinstance(plugin, GrpcPlugin) else None
                    with lock:
                        counts["ok"] += 1
                        if pid is not None and pid not in answered:
                            answered[pid] = time.monotonic()
                except PluginUnavailable:
                    with lock:
                        counts["unavailable"] += 1
                    stop.wait(0.001)
                except Exception:
                    with lock:
                        counts["other"] += 1

        threads = [threading.Thread(target=caller, daemon=True) for _ in range(8)]
        for t in threads:
            t.start()
        times = []
        try:
            for _ in range(kills):
                time.sleep(0.3)  # serve a while
                plugin = manager.get("k9")
                assert isinstance(plugin, GrpcPlugin) and plugin.pid is not None
                old = plugin.pid
                t0 = time.monotonic()
                os.kill(old, signal.SIGKILL)
                deadline = t0 + 30
                while time.monotonic() < deadline:
                    with lock:
                        new = [at for pid, at in answered.items() if pid != old and at > t0]
                    if new:
                        times.append(min(new) - t0)
                        break
                    time.sleep(0.001)
                else:
                    raise SystemExit(f"{mode}: no recovery within 30 s")
        finally:
            stop.set()
            for t in threads:
                t.join(10)
            loader.close()
            manager.close()
        return times, counts["ok"], counts["unavailable"], counts["other"]


def marked(mark: str) -> list[int]:
    out = []
    for p in os.listdir("/proc"):
        if p.isdigit():
            try:
                cmd = Path(f"/proc/{p}/cmdline").read_bytes()
                state = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except (OSError, IndexError):
                continue
            if mark.encode() in cmd and state not in ("Z", "X"):
                out.append(int(p))
    return out


def orphans(mode: str) -> tuple[int, int]:
    mark = "phorphan" + secrets.token_hex(6)
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        plugins = Path(tmp) / "plugins"
        write_probe(plugins, "tree", mark)
        host = subprocess.Popen([sys.executable, str(HOST), str(plugins), mode, "tree"],
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        assert host.stdout is not None
        line = host.stdout.readline().decode()
        assert line.startswith("ready"), line
        deadline = time.monotonic() + 10
        while len(marked(mark)) < 6 and time.monotonic() < deadline:
            time.sleep(0.01)
        before = len(marked(mark))
        host.kill()
        host.wait()
        time.sleep(5)
        left = marked(mark)
        for pid in left:
            os.kill(pid, signal.SIGKILL)
        return before, len(left)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--kills", type=int, default=20)
    args = ap.parse_args()
    modes = ["bwrap", "off"] if Sandbox("auto", read_only=(), writable=()).active else ["off"]
    print(f"date {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, modes {modes}")
    for mode in modes:
        times, ok, unavailable, other = recovery(mode, args.kills)
        ms = sorted(t * 1000 for t in times)
        print(f"[{mode}] kill -9 x{len(ms)} under 8 callers: recovery median "
              f"{statistics.median(ms):.0f} ms, p90 {ms[int(len(ms) * 0.9) - 1]:.0f} ms, "
              f"max {ms[-1]:.0f} ms (restart backoff 200 ms included); calls ok {ok}, "
              f"failed fast {unavailable}, other errors {other}")
    for mode in modes:
        before, left = orphans(mode)
        print(f"[{mode}] host SIGKILL: {before} plugin descendants before, {left} alive 5 s "
              f"after")


if __name__ == "__main__":
    main()
