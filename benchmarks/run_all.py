"""Run every benchmark (each in its own process) and print a one-table summary.

    .venv/bin/python benchmarks/run_all.py [--quick] [--json out.json]
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from _common import fmt_ns, fmt_ratio, loadavg, machine, parser, table, write_json

HERE = Path(__file__).resolve().parent
BENCHMARKS = ("call_overhead", "load_time", "discovery", "grpc_calls", "grpc_start",
              "hot_reload")


def _row(rows: list[dict[str, Any]], key: str, field: str = "key") -> dict[str, Any]:
    return next(r for r in rows if r[field] == key)


def summarize(results: dict[str, dict[str, Any]]) -> list[list[str]]:
    out: list[list[str]] = []
    if "call_overhead" in results:
        rows = results["call_overhead"]["rows"]
        a = _row(rows, "a")
        for key, what in (("b", "raw gk protocol by hand"), ("c", "WasmPlugin.call"),
                          ("d", "manager.call_raw"), ("e", "manager.call (JSON)"),
                          ("f", "await manager.acall")):
            r = _row(rows, key)
            out.append(["call_overhead", what, f"{fmt_ns(r['median_ns'])} "
                        f"(p99 {fmt_ns(r['p99_ns'])})", "raw wasmtime call",
                        fmt_ns(a["median_ns"]), fmt_ratio(r["ratio_vs_a"])])
    if "load_time" in results:
        res = results["load_time"]
        rows = res["rows"]
        a, b, c, d = (_row(rows, k) for k in "abcd")
        size = f"{res['wasm_bytes'] / 1024 / 1024:.2f} MiB"
        out.append(["load_time", f"first load, {size}", fmt_ns(b["median_ns"]),
                    "raw compile", fmt_ns(a["median_ns"]), fmt_ratio(b["vs_raw_compile"])])
        out.append(["load_time", "cached load", fmt_ns(c["median_ns"]),
                    "raw deserialize", fmt_ns(d["median_ns"]),
                    fmt_ratio(c["vs_raw_deserialize"])])
        out.append(["load_time", "first / cached", "", "", "",
                    fmt_ratio(b["median_ns"] / c["median_ns"])])
    if "discovery" in results:
        res = results["discovery"]
        for tree, what in (("files", ".wasm files"), ("manifests", "plugin.yaml dirs")):
            rows = res[tree]["rows"]
            bare = _row(rows, "bare os.scandir walk", "label")
            mine = _row(rows, "Loader.discover_all", "label")
            out.append(["discovery", f"discover_all, {res[tree]['count']:,} {what}",
                        fmt_ns(mine["median_ns"]), "bare scandir walk",
                        fmt_ns(bare["median_ns"]), fmt_ratio(mine["ratio_vs_bare"])])
    if "grpc_calls" in results:
        res = results["grpc_calls"]
        rows = res["rows"]
        a, g = _row(rows, "a"), _row(rows, "g")
        for key, what in (("c", "grpc: GrpcPlugin.call"), ("d", "grpc: manager.call_raw"),
                          ("e", "grpc: manager.call (JSON)"),
                          ("f", "grpc: await manager.acall")):
            r = _row(rows, key)
            base, bname = (g, "raw grpc.aio call") if key == "f" else (a, "raw grpcio call")
            out.append(["grpc_calls", what, f"{fmt_ns(r['median_ns'])} "
                        f"(p99 {fmt_ns(r['p99_ns'])})", bname, fmt_ns(base["median_ns"]),
                        fmt_ratio(r["ratio"])])
        conc = res["concurrency"]
        for key, bkey, what in (("ph_threads", "raw_threads", "grpc: 8 threads, calls/s"),
                                ("ph_tasks", "raw_tasks", "grpc: 8 asyncio tasks, calls/s")):
            r, b = _row(conc, key), _row(conc, bkey)
            out.append(["grpc_calls", what, f"{r['calls_per_s']:,.0f}/s", "raw, same",
                        f"{b['calls_per_s']:,.0f}/s", fmt_ratio(r["throughput_vs_raw"])])
    if "grpc_start" in results:
        h = results["grpc_start"]["headline"]
        out.append(["grpc_start", "ensure_loaded + first call", fmt_ns(h["plughost_ns"]),
                    "bare Popen -> handshake", fmt_ns(h["bare_ns"]), fmt_ratio(h["ratio"])])
    if "hot_reload" in results:
        for r in results["hot_reload"]["runs"]:
            if r["latency_median_ns"] is None:
                continue
            what = (f"{r['kind']} reload, D={r['debounce_ms']} ms, {r['seen']}/"
                    f"{r['replacements']} seen, {r['failed_calls']} failed calls")
            out.append(["hot_reload", what, f"{fmt_ns(r['latency_median_ns'])} "
                        f"(p99 {fmt_ns(r['latency_p99_ns'])})", "debounce D",
                        f"{r['debounce_ms']} ms",
                        f"D + {fmt_ns(r['minus_debounce_median_ns'])}"])
    return out


def main() -> int:
    args = parser(__doc__.splitlines()[0]).parse_args()
    results: dict[str, dict[str, Any]] = {}
    failed: list[str] = []
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="plughost-bench-") as tmp:
        for name in BENCHMARKS:
            out = Path(tmp) / f"{name}.json"
            cmd = [sys.executable, str(HERE / f"{name}.py"), "--json", str(out)]
            if args.quick:
                cmd.append("--quick")
            print(f"\n$ {' '.join(Path(c).name if c == sys.executable else c for c in cmd)}",
                  flush=True)
            rc = subprocess.call(cmd)
            print(f"   load average at end: {loadavg()}", flush=True)
            if rc != 0 or not out.exists():
                failed.append(name)
                continue
            results[name] = json.loads(out.read_text())
    print(f"\n== summary ({time.time() - started:.0f} s{', --quick' if args.quick else ''}; "
          "ratios are against baselines measured in the same run)")
    print(table(["benchmark", "what", "plughost", "baseline", "baseline time", "ratio"],
                summarize(results)))
    if failed:
        print(f"\nFAILED: {', '.join(failed)}")
    write_json(args.json, {"machine": machine(), "quick": args.quick, "results": results,
                           "failed": failed})
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
