"""Load time of a ~2 MB wasm plugin: plughost first and cached loads vs raw wasmtime.

The module is examples/plugins/hello/hello.wat (registration renamed to "large") plus a few
thousand generated functions of real code (loops, i32/i64 arithmetic, branches, a call
chain reachable from an export), so compilation has real work to do; no data segment
padding. It is written as the single-file plugin `large.wasm` in a temp plugin dir.

  a  raw compile:      wasmtime.Module(engine, bytes), engine configured like plughost's
                       (epoch_interruption on; the only setting plughost changes)
  b  first load:       Loader.ensure_loaded with an empty cache dir:
                       compile + serialize + cache write (fsync) + instantiate + register
  c  cached load:      new WasmEngine (same cache dir: no in-memory reuse), new Manager and
                       Loader; Loader.ensure_loaded: read + verify entry, deserialize,
                       ABI check, instantiate, register
  d  raw deserialize:  wasmtime.Module.deserialize(engine, serialized bytes)
  d2 raw deserialize_file (mmap, reference)

    .venv/bin/python benchmarks/load_time.py [--quick] [--json out.json]
"""

from __future__ import annotations

import gc
import hashlib
import statistics
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import wasmtime
from _common import (
    Stats,
    fmt_bytes,
    fmt_delta,
    fmt_ns,
    fmt_ratio,
    header,
    paired_delta,
    paired_ratio,
    parser,
    profile,
    profile_tables,
    shuffled,
    table,
    time_once,
    write_json,
)

from plughost import Loader, Manager, WasmEngine

ROOT = Path(__file__).resolve().parent.parent
HELLO_WAT = ROOT / "examples" / "plugins" / "hello" / "hello.wat"
NAME = "large"


def _function(i: int, groups: int) -> str:
    """One generated function: a loop over `groups` blocks of mixed arithmetic and
    branches, then a call to the previous function (a chain reachable from an export)."""

    def c(k: int) -> int:
        return (i * 2654435761 + k * 40503 + 12345) & 0x7FFFFFFF

    body = []
    for k in range(groups):
        body.append(
            f"(local.set $x (i32.add (i32.mul (local.get $x) (i32.const {c(4 * k)})) "
            f"(i32.xor (local.get $y) (i32.const {c(4 * k + 1)}))))\n"
            f"(local.set $y (i32.rotl (i32.sub (local.get $y) (local.get $x)) "
            f"(i32.const {k % 31 + 1})))\n"
            f"(local.set $z (i64.add (local.get $z) (i64.mul (i64.extend_i32_u "
            f"(local.get $x)) (i64.const {c(4 * k + 2)}))))\n"
            f"(if (i32.gt_u (local.get $x) (local.get $y))\n"
            f"  (then (local.set $y (i32.shr_u (local.get $y) (i32.const 3))))\n"
            f"  (else (local.set $x (i32.and (local.get $x) (i32.const {c(4 * k + 3)})))))")
    chain = (f"(local.set $x (i32.add (local.get $x) (call $g{i - 1} (local.get $y) "
             f"(local.get $x))))" if i else "")
    return (f"(func $g{i} (param $a i32) (param $b i32) (result i32)\n"
            f"(local $x i32) (local $y i32) (local $z i64) (local $k i32)\n"
            f"(local.set $x (local.get $a)) (local.set $y (local.get $b))\n"
            f"(loop $l\n" + "\n".join(body) + "\n"
            f"(local.set $k (i32.add (local.get $k) (i32.const 1)))\n"
            f"(br_if $l (i32.lt_u (local.get $k) (i32.const 4))))\n"
            f"{chain}\n"
            f"(i32.add (local.get $x) (i32.wrap_i64 (local.get $z))))\n")


def large_module(target_bytes: int, groups: int = 16) -> tuple[bytes, int]:
    """A gk v1 module of about `target_bytes` of wasm; returns (wasm, function count)."""
    base = HELLO_WAT.read_text()
    old, new = '\\"name\\":\\"hello\\"', '\\"name\\":\\"large\\"'  # same length: 92 bytes
    if base.count(old) != 1:
        raise SystemExit(f"{HELLO_WAT} changed: cannot find the registration name")
    base = base.replace(old, new)
    end = base.rstrip().rindex(")")

    def build(n: int) -> bytes:
        funcs = "".join(_function(i, groups) for i in range(n))
        export = f'(export "bench_chain" (func $g{n - 1}))\n'
        return bytes(wasmtime.wat2wasm(base[:end] + funcs + export + base[end:]))

    probe = 20
    per_func = (len(build(probe)) - len(wasmtime.wat2wasm(base))) / probe
    n = max(1, round((target_bytes - len(wasmtime.wat2wasm(base))) / per_func))
    return build(n), n


class Bench:
    def __init__(self, tmp: Path, wasm: bytes) -> None:
        self.tmp = tmp
        self.wasm = wasm
        self.plugins = tmp / "plugins"
        self.plugins.mkdir()
        (self.plugins / f"{NAME}.wasm").write_bytes(wasm)
        cfg = wasmtime.Config()
        cfg.epoch_interruption = True
        self.engine = wasmtime.Engine(cfg)
        self._n = 0
        self.warm_cache = self.fresh_dir("cache")

    def fresh_dir(self, prefix: str) -> Path:
        self._n += 1
        return self.tmp / f"{prefix}-{self._n}"

    # a
    def raw_compile(self) -> wasmtime.Module:
        return wasmtime.Module(self.engine, self.wasm)

    # b, c
    def plughost_load(self, cache_dir: Path, expect: str) -> int:
        engine = WasmEngine(cache_dir)
        manager = Manager()
        loader = Loader(self.plugins, manager, engine=engine)
        try:
            loader.discover_all()
            gc.collect()
            t = time_once(lambda: loader.ensure_loaded(NAME))
            assert manager.call(NAME, "echo", {"ok": 1}) == {"ok": 1}
            stats = engine.cache.stats
            got = "miss" if stats.misses == 1 and stats.hits == 0 else \
                "hit" if stats.hits == 1 and stats.misses == 0 else f"{stats}"
            if got != expect:
                raise SystemExit(f"module cache: expected a {expect}, got {got}")
            return t
        finally:
            manager.close()
            engine.close()

    def first_load(self) -> int:
        return self.plughost_load(self.fresh_dir("cache"), "miss")

    def cached_load(self) -> int:
        return self.plughost_load(self.warm_cache, "hit")


def components(b: Bench, serialized: bytes, reps: int) -> dict[str, Stats]:
    """The pieces a load is made of, timed alone (to explain b-a and c-d)."""
    cache_file = next(b.warm_cache.glob("*.cwasm"))
    module = wasmtime.Module.deserialize(b.engine, serialized)
    i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
    serial_file = b.tmp / "raw.cwasm"
    serial_file.write_bytes(serialized)

    def instantiate() -> None:
        store = wasmtime.Store(b.engine)
        linker = wasmtime.Linker(b.engine)
        linker.define_wasi()
        store.set_wasi(wasmtime.WasiConfig())
        linker.define_func("gk", "host_call", wasmtime.FuncType([i32] * 4, [i64]),
                           lambda *_: 0)
        linker.define_func("gk", "log", wasmtime.FuncType([i32] * 3, []), lambda *_: None)
        linker.define_func("gk", "error", wasmtime.FuncType([i32] * 2, []),
                           lambda *_: None)
        linker.instantiate(store, module)

    def write_fsync() -> None:
        import os

        path = b.tmp / "write-test.cwasm"
        with open(path, "wb") as f:
            f.write(serialized)
            f.flush()
            os.fsync(f.fileno())
        path.unlink()

    parts: dict[str, Callable[[], object]] = {
        "sha256(wasm): cache key": lambda: hashlib.sha256(b.wasm).digest(),
        "read cache entry": cache_file.read_bytes,
        "sha256(entry): integrity check": lambda: hashlib.sha256(serialized).digest(),
        "Module.serialize()": module.serialize,
        "write + fsync of the entry": write_fsync,
        "raw instantiate (Store+WASI+Linker)": instantiate,
        "new WasmEngine() (not in b/c)": lambda: WasmEngine(None).close(),
    }
    out: dict[str, Stats] = {}
    for label, fn in parts.items():
        fn()
        out[label] = Stats.of(label, [time_once(fn) for _ in range(reps)])
    return out


def profile_points() -> list[tuple[str, Any, str]]:
    from plughost import loader as ld
    from plughost import registration as reg
    from plughost.runtimes import wasm as rt
    from plughost.runtimes import wasm_abi as abi
    from plughost.runtimes import wasm_cache as wc

    return [
        ("Loader.ensure_loaded", ld, "Loader.ensure_loaded"),
        ("  Loader._source", ld, "Loader._source"),
        ("  Path.read_bytes (module + cache entry)", Path, "read_bytes"),
        ("  compile_module", rt, "compile_module"),
        ("    ModuleCache.compile", wc, "ModuleCache.compile"),
        ("      ModuleCache.key (sha256 of the wasm)", wc, "ModuleCache.key"),
        ("      ModuleCache._read (read, sha256, deserialize)", wc, "ModuleCache._read"),
        ("        wasmtime Module.deserialize", wasmtime.Module, "deserialize"),
        ("    check_module", abi, "check_module"),
        ("  WasmPlugin.__init__", rt, "WasmPlugin.__init__"),
        ("    _Instance.__init__ (store, WASI, linker, instantiate)", rt,
         "_Instance.__init__"),
        ("    _Instance.register (gk_register)", rt, "_Instance.register"),
        ("    parse_registration", reg, "parse_registration"),
        ("  Manager.register", ld, "Manager.register"),
    ]


def profile_cached(b: Bench, n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """cProfile of the timed part of cached loads (engine/manager setup outside)."""
    loaders = []
    for _ in range(n):
        engine = WasmEngine(b.warm_cache)
        manager = Manager()
        loader = Loader(b.plugins, manager, engine=engine)
        loader.discover_all()
        loaders.append((engine, manager, loader))
    it = iter(loaders)
    try:
        return profile(lambda: next(it)[2].ensure_loaded(NAME), n, profile_points())
    finally:
        for engine, manager, _ in loaders:
            manager.close()
            engine.close()


def main() -> int:
    args = parser(__doc__.splitlines()[0]).parse_args()
    quick: bool = args.quick
    target = 256 * 1024 if quick else 2 * 1024 * 1024
    compile_reps, cached_reps = (2, 3) if quick else (7, 21)
    header("load_time: plughost load of a ~2 MB module vs raw wasmtime", quick)

    wasm, nfuncs = large_module(target)
    print(f"   module: {fmt_bytes(len(wasm))} of wasm, {nfuncs} generated functions "
          f"+ hello's gk ABI")
    with tempfile.TemporaryDirectory(prefix="plughost-bench-") as tmp:
        b = Bench(Path(tmp), wasm)
        # Warm-up: code paths, and the warm cache for the cached loads.
        b.plughost_load(b.warm_cache, "miss")
        module = b.raw_compile()
        serialized = bytes(module.serialize())
        wasmtime.Module.deserialize(b.engine, serialized)
        b.cached_load()
        serial_file = Path(tmp) / "raw.cwasm"
        serial_file.write_bytes(serialized)
        del module

        samples: dict[str, list[int]] = {k: [] for k in ("a", "b", "c", "d", "d2")}
        slow: dict[str, Callable[[], int]] = {
            "a": lambda: time_once(b.raw_compile),
            "b": b.first_load,
        }
        fast: dict[str, Callable[[], int]] = {
            "c": b.cached_load,
            "d": lambda: time_once(lambda: wasmtime.Module.deserialize(b.engine, serialized)),
            "d2": lambda: time_once(
                lambda: wasmtime.Module.deserialize_file(b.engine, str(serial_file))),
        }
        for round_no in range(compile_reps):
            for key, run in shuffled(list(slow.items()), round_no):
                samples[key].append(run())
        for round_no in range(cached_reps):
            for key, run in shuffled(list(fast.items()), round_no):
                samples[key].append(run())
        stats = {k: Stats.of(k, v) for k, v in samples.items()}
        parts = components(b, serialized, cached_reps)
        inclusive, own = profile_cached(b, cached_reps)

    labels = {
        "a": "a  raw wasmtime.Module(engine, bytes)",
        "b": "b  plughost first load (empty cache)",
        "c": "c  plughost cached load (new engine)",
        "d": "d  raw Module.deserialize(bytes)",
        "d2": "d2 raw Module.deserialize_file (ref)",
    }

    def vs(k: str, base: str) -> float:
        """Paired (same-round) ratio when both were timed in the same loop."""
        same_loop = {"a", "b"} if base == "a" else {"c", "d", "d2"}
        if k in same_loop:
            return paired_ratio(samples[k], samples[base])
        return stats[k].median / stats[base].median

    rows = []
    summary_rows = []
    for k, label in labels.items():
        s = stats[k]
        rows.append([label, fmt_ns(s.median), fmt_ns(s.min), fmt_ns(s.samples[-1]),
                     str(s.n), fmt_ratio(vs(k, "a")), fmt_ratio(vs(k, "d"))])
        summary_rows.append({"key": k, "label": label, "median_ns": s.median,
                             "min_ns": s.min, "max_ns": s.samples[-1], "n": s.n,
                             "vs_raw_compile": vs(k, "a"), "vs_raw_deserialize": vs(k, "d")})
    print(f"   module {fmt_bytes(len(wasm))}, serialized {fmt_bytes(len(serialized))}\n")
    print(table(["", "median", "min", "max", "n", "vs a", "vs d"], rows))
    first, cached = stats["b"].median, stats["c"].median
    print("   (vs a: b is paired with a, round by round; vs d: c, d2 paired with d)")
    print(f"\n   first/cached = {fmt_ratio(first / cached)}; first load = "
          f"{fmt_ratio(vs('b', 'a'))} raw compile "
          f"({fmt_delta(paired_delta(samples['b'], samples['a']))}); cached load = "
          f"{fmt_ratio(vs('c', 'd'))} raw deserialize "
          f"({fmt_delta(paired_delta(samples['c'], samples['d']))})")
    print("\n   components, timed alone:")
    print(table(["part", "median", "min"],
                [[k, fmt_ns(v.median), fmt_ns(v.min)] for k, v in parts.items()]))
    accounted = sum(v.median for k, v in parts.items() if k in (
        "sha256(wasm): cache key", "read cache entry", "sha256(entry): integrity check",
        "raw instantiate (Store+WASI+Linker)"))
    c_minus_d = paired_delta(samples["c"], samples["d"])
    print(f"\n   c - d = {fmt_delta(c_minus_d)}; key hash + read + entry hash + "
          f"instantiate = {fmt_ns(accounted)}")
    print("\n   cProfile of the cached load (c), per load (profiler-inflated; read the "
          "shares):")
    print(profile_tables(inclusive, own))
    summary: dict[str, Any] = {
        "benchmark": "load_time", "quick": quick, "wasm_bytes": len(wasm),
        "serialized_bytes": len(serialized), "functions": nfuncs, "rows": summary_rows,
        "profile_inclusive": inclusive, "profile_own": own,
        "components": {k: {"median_ns": v.median, "min_ns": v.min} for k, v in parts.items()},
        "headline": {"first_over_cached": first / cached,
                     "first_over_raw_compile": vs("b", "a"),
                     "cached_over_raw_deserialize": vs("c", "d"),
                     "spread_a": statistics.pstdev(samples["a"]) / stats["a"].median},
    }
    write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
