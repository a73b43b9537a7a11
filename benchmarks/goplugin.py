"""The same go-plugin plugin under plughost and under go-plugin's own Go client, side by side.

The plugin is tests/fixtures/goplugin/netrpc (GoatFlow-shaped: go-plugin 1.0.1 net/rpc over
yamux with gob), built from source with Debian's Go; the Go host is
tests/fixtures/goplugin/gohost (go-plugin's `plugin.NewClient`, `Dispense("gkplugin")`,
`GKRegister`, `Init` with a host API on the broker, then `echo` calls).

  start    launch of the process to the first `echo` answer (plughost: `loader.load_all()`
           plus the first `manager.call_raw`; go: gohost's own `start_ms`)
  echo     one `Plugin.Call("echo", {"a":1})`, median of N sequential calls (plughost:
           `manager.call_raw`; go: gohost's median)

Rounds alternate the two hosts; ratios are medians of same-round ratios (plughost / go).

    .venv/bin/python benchmarks/goplugin.py [--quick] [--json out.json]
"""

from __future__ import annotations

import json
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import header, paired_ratio, parser, table, write_json

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from plughost import Loader, Manager  # noqa: E402
from plughost.host import HostSettings  # noqa: E402


def _build(work: Path) -> tuple[Path, Path]:
    from tests.goplugin import build  # the tests' builder: Debian's Go, GOPATH mode

    return build("netrpc", work / "p"), build("gohost", work / "h")


def go_round(gohost: Path, plugin: Path, calls: int) -> tuple[float, float]:
    out = subprocess.run([str(gohost), "-plugin", str(plugin), "-calls", str(calls)],
                         capture_output=True, text=True, timeout=120, check=True)
    data = json.loads(out.stdout)
    return float(data["start_ms"]) / 1000, float(data["echo"]["median_us"]) / 1e6


def plughost_round(plugin: Path, work: Path, calls: int) -> tuple[float, float]:
    plugins = work / "plugins"
    shutil.rmtree(plugins, ignore_errors=True)
    pdir = plugins / "netrpc-demo"
    pdir.mkdir(parents=True)
    shutil.copy2(plugin, pdir / "netrpc-demo")
    (pdir / "plugin.yaml").write_text("name: netrpc-demo\nversion: 1.0.0\nruntime: grpc\n"
                                      "binary: netrpc-demo\n")
    with Manager(settings=HostSettings(data_dir=work / "data")) as manager:
        loader = Loader(plugins, manager, cache_dir=None)
        try:
            t0 = time.perf_counter()
            loader.load_all()
            manager.call_raw("netrpc-demo", "echo", b'{"a":1}')
            start = time.perf_counter() - t0
            times = []
            for _ in range(calls):
                t = time.perf_counter()
                manager.call_raw("netrpc-demo", "echo", b'{"a":1}')
                times.append(time.perf_counter() - t)
        finally:
            loader.close()
    return start, statistics.median(times)


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    rounds, calls = (2, 200) if args.quick else (7, 2000)
    header("go-plugin plugin: plughost vs go-plugin's Go client", args.quick)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        try:
            plugin, gohost = _build(work)
        except Exception as exc:  # pytest.skip's exception, or a build failure
            print(f"   skipped: cannot build the Go plugin and host ({exc})")
            write_json(args.json, {"skipped": str(exc)})
            return
        res: dict[str, list[float]] = {"ph_start": [], "go_start": [], "ph_echo": [],
                                       "go_echo": []}
        for r in range(rounds):
            order = ("go", "ph") if r % 2 else ("ph", "go")
            for who in order:
                if who == "go":
                    s, e = go_round(gohost, plugin, calls)
                else:
                    s, e = plughost_round(plugin, work, calls)
                res[f"{who}_start"].append(s)
                res[f"{who}_echo"].append(e)
    med = {k: statistics.median(v) for k, v in res.items()}
    rows = [["start (load to first answer)", f"{med['ph_start'] * 1000:.1f} ms",
             f"{med['go_start'] * 1000:.1f} ms",
             f"{paired_ratio(res['ph_start'], res['go_start']):.2f}x"],
            ["echo call (median)", f"{med['ph_echo'] * 1e6:.0f} µs",
             f"{med['go_echo'] * 1e6:.0f} µs",
             f"{paired_ratio(res['ph_echo'], res['go_echo']):.2f}x"]]
    print(table(["metric", "plughost", "go-plugin (Go)", "ratio"], rows))
    summary: dict[str, Any] = {"rounds": rounds, "calls": calls, "medians_s": med,
                               "start_ratio": paired_ratio(res["ph_start"], res["go_start"]),
                               "echo_ratio": paired_ratio(res["ph_echo"], res["go_echo"])}
    write_json(args.json, summary)


if __name__ == "__main__":
    main()
