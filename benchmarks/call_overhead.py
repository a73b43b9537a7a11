"""Per-call cost of a small JSON echo through plughost, layer by layer, vs raw wasmtime.

The plugin is examples/plugins/hello (hello.wasm, plugin name "hello"), function `echo`,
args {"msg": "hello"}, loaded through Manager + Loader from a private temp copy with an
explicit module cache dir. The baseline is one raw wasmtime-py call of an exported function
(`gk_malloc(8)`) on the same module, in a plain Store/Linker with the gk imports stubbed.

Layers (each includes the one before it, more or less):
  a   raw wasmtime: one exported call, gk_malloc(8)
  a2  raw wasmtime: gk_call("echo", args) with both already written into memory
  b   raw gk protocol by hand: gk_malloc x2, write, gk_call, read, gk_free x3
  c   WasmPlugin.call(function, bytes) on the plugin object from manager.get(name)
  d   manager.call_raw(name, function, bytes)
  e   manager.call(name, function, dict)         (JSON encode + decode)
  f   await manager.acall(name, function, dict)  (sequential, one event loop)

    .venv/bin/python benchmarks/call_overhead.py [--quick] [--json out.json]
"""

from __future__ import annotations

import asyncio
import ctypes
import gc
import json
import shutil
import statistics
import tempfile
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import wasmtime
from _common import (
    Stats,
    clock,
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
    time_batch,
    time_each,
    write_json,
)

from plughost import Loader, Manager, WasmEngine

ROOT = Path(__file__).resolve().parent.parent
HELLO = ROOT / "examples" / "plugins" / "hello"
NAME, FUNCTION = "hello", "echo"
ARGS: dict[str, Any] = {"msg": "hello"}
ARGS_BYTES = json.dumps(ARGS, separators=(",", ":")).encode()
MASK32 = 0xFFFF_FFFF
MASK64 = 0xFFFF_FFFF_FFFF_FFFF
REFS = ("timer", "a0", "b0", "hop")  # reference rows, not layers of the stack


@dataclass
class Layer:
    key: str
    label: str
    fn: Callable[[], object] | None = None  # sync layers
    afn: Callable[[], Any] | None = None  # async layers: returns an awaitable
    samples: list[int] | None = None
    batch: list[float] | None = None
    rounds: list[float] | None = None  # the median of each round

    def ratio(self, other: Layer) -> float:
        """Median over rounds of this layer's round median / the other's, same round:
        robust to load that comes and goes between rounds (other work on the machine)."""
        assert self.rounds and other.rounds
        return paired_ratio(self.rounds, other.rounds)

    def delta(self, other: Layer) -> float:
        """Median over rounds of the same-round difference of round medians, in ns."""
        assert self.rounds and other.rounds
        return paired_delta(self.rounds, other.rounds)


class RawModule:
    """hello.wasm in plain wasmtime: default Engine, a Store, a Linker with gk stubs."""

    def __init__(self, wasm: bytes) -> None:
        self.engine = wasmtime.Engine()
        self.store = wasmtime.Store(self.engine)
        linker = wasmtime.Linker(self.engine)
        i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
        linker.define_func("gk", "host_call", wasmtime.FuncType([i32] * 4, [i64]),
                           lambda *_: 0)
        linker.define_func("gk", "log", wasmtime.FuncType([i32] * 3, []), lambda *_: None)
        linker.define_func("gk", "error", wasmtime.FuncType([i32] * 2, []), lambda *_: None)
        module = wasmtime.Module(self.engine, wasm)
        instance = linker.instantiate(self.store, module)
        exports = instance.exports(self.store)

        def func(name: str) -> wasmtime.Func:
            f = exports[name]
            assert isinstance(f, wasmtime.Func)
            return f

        mem = exports["memory"]
        assert isinstance(mem, wasmtime.Memory)
        self.memory = mem
        self.malloc, self.free = func("gk_malloc"), func("gk_free")
        self.gk_call = func("gk_call")
        # For a2: the function name and args written once, far above the arena's reach.
        self.fp, self.ap = 60_000, 60_100
        self._write(self.fp, FUNCTION.encode())
        self._write(self.ap, ARGS_BYTES)

    def _base(self) -> int:
        return ctypes.addressof(self.memory.data_ptr(self.store).contents)

    def _write(self, ptr: int, data: bytes) -> None:
        ctypes.memmove(self._base() + ptr, data, len(data))

    def one_call(self) -> object:
        """a: one exported call. The arena is reset so memory does not grow."""
        return self.malloc(self.store, 8)

    def reset_arena(self) -> None:
        # hello's arena starts over when its live count drops to <= 0.
        self.free(self.store, 0)

    def gk_call_only(self) -> bytes:
        """a2: gk_call with pointers already written; the result is read but not freed
        (the arena is reset between repetitions)."""
        packed = self.gk_call(self.store, self.fp, 4, self.ap, len(ARGS_BYTES)) & MASK64
        return ctypes.string_at(self._base() + (packed >> 32), packed & MASK32)

    def protocol(self) -> bytes:
        """b: the whole gk v1 call done by hand, no checks."""
        store, fn, args = self.store, b"echo", ARGS_BYTES
        fp = self.malloc(store, len(fn))
        ap = self.malloc(store, len(args))
        base = self._base()
        ctypes.memmove(base + fp, fn, len(fn))
        ctypes.memmove(base + ap, args, len(args))
        packed = self.gk_call(store, fp, len(fn), ap, len(args)) & MASK64
        rp, rl = packed >> 32, packed & MASK32
        out = ctypes.string_at(self._base() + rp, rl)
        self.free(store, fp)
        self.free(store, ap)
        self.free(store, rp)
        return out


class UncheckedCalls:
    """Reference only: the same calls through wasmtime-py's private FFI
    (`wasmtime_func_call_unchecked` with preallocated raw argument arrays), i.e. what a call
    costs without `Func.__call__`'s per-call type lookup and value conversion. Not something
    plughost can use as is (private API, no trap/exception plumbing); it shows the floor."""

    def __init__(self, raw: RawModule) -> None:
        from wasmtime import _ffi as ffi

        self.raw = raw
        self._call = ffi.wasmtime_func_call_unchecked
        self._ctx = raw.store._context()
        self._trap = ctypes.POINTER(ffi.wasm_trap_t)()
        self._tref = ctypes.byref(self._trap)
        self._arr = (ffi.wasmtime_val_raw_t * 4)()
        self._malloc = ctypes.byref(raw.malloc._func)
        self._free = ctypes.byref(raw.free._func)
        self._gk_call = ctypes.byref(raw.gk_call._func)

    def _invoke(self, func: Any) -> None:
        if self._call(self._ctx, func, self._arr, 4, self._tref) or self._trap:
            raise RuntimeError("wasm call failed")

    def one_call(self) -> int:
        self._arr[0].i32 = 8
        self._invoke(self._malloc)
        return int(self._arr[0].i32)

    def protocol(self) -> bytes:
        arr, fn, args = self._arr, b"echo", ARGS_BYTES
        arr[0].i32 = len(fn)
        self._invoke(self._malloc)
        fp = arr[0].i32
        arr[0].i32 = len(args)
        self._invoke(self._malloc)
        ap = arr[0].i32
        base = self.raw._base()
        ctypes.memmove(base + fp, fn, len(fn))
        ctypes.memmove(base + ap, args, len(args))
        arr[0].i32, arr[1].i32, arr[2].i32, arr[3].i32 = fp, len(fn), ap, len(args)
        self._invoke(self._gk_call)
        packed = arr[0].i64 & MASK64
        rp, rl = packed >> 32, packed & MASK32
        out = ctypes.string_at(self.raw._base() + rp, rl)
        for p in (fp, ap, rp):
            arr[0].i32 = p
            self._invoke(self._free)
        return out


def measure(layers: list[Layer], raw: RawModule, n: int, reps: int, warmup: int) -> None:
    """Interleave the layers over `reps` rounds, in a shuffled order each round, so drift
    and position effects hit them all alike."""
    loop = asyncio.new_event_loop()

    async def each_async(afn: Callable[[], Any], count: int) -> list[int]:
        out = [0] * count
        for i in range(count):
            t0 = clock()
            await afn()
            out[i] = clock() - t0
        return out

    async def batch_async(afn: Callable[[], Any], count: int) -> float:
        t0 = clock()
        for _ in range(count):
            await afn()
        return (clock() - t0) / count

    try:
        for layer in layers:
            layer.samples, layer.batch, layer.rounds = [], [], []
            if layer.fn is not None:
                time_each(layer.fn, warmup)
            elif layer.afn is not None:
                loop.run_until_complete(each_async(layer.afn, warmup))
            raw.reset_arena()
        for round_no in range(reps):
            for layer in shuffled(layers, round_no):
                assert layer.samples is not None and layer.batch is not None
                assert layer.rounds is not None
                gc.collect()
                if layer.fn is not None:
                    got = time_each(layer.fn, n)
                    layer.batch.append(time_batch(layer.fn, n))
                elif layer.afn is not None:
                    got = loop.run_until_complete(each_async(layer.afn, n))
                    layer.batch.append(loop.run_until_complete(batch_async(layer.afn, n)))
                else:
                    continue
                layer.samples += got
                layer.rounds.append(statistics.median(got))
                raw.reset_arena()
    finally:
        loop.close()


def profile_points() -> list[tuple[str, Any, str]]:
    from plughost import manager as mgr
    from plughost.runtimes import wasm as rt

    return [
        ("Manager.call", mgr, "Manager.call"),
        ("  encode_args", mgr, "encode_args"),
        ("  decode_result", mgr, "decode_result"),
        ("  Manager.call_raw", mgr, "Manager.call_raw"),
        ("    Manager._acquire", mgr, "Manager._acquire"),
        ("    _Entry.done", mgr, "_Entry.done"),
        ("    chain.entered (call-chain context)", mgr, "chain.entered"),
        ("    WasmPlugin.call", rt, "WasmPlugin.call"),
        ("      WasmPlugin._acquire", rt, "WasmPlugin._acquire"),
        ("      WasmPlugin._release", rt, "WasmPlugin._release"),
        ("      _Instance.call", rt, "_Instance.call"),
        ("        WasmEngine.arm", rt, "WasmEngine.arm"),
        ("        _Instance._put (malloc+write)", rt, "_Instance._put"),
        ("        _Instance._result (read+free)", rt, "_Instance._result"),
        ("wasmtime Func.__call__ (all)", wasmtime.Func, "__call__"),
    ]


def main() -> int:
    args = parser(__doc__.splitlines()[0]).parse_args()
    quick: bool = args.quick
    n, reps, warmup = (300, 3, 100) if quick else (500, 40, 1000)
    header("call_overhead: manager.call('hello', 'echo', {'msg': 'hello'}) vs raw wasmtime",
           quick)

    with tempfile.TemporaryDirectory(prefix="plughost-bench-") as tmp:
        tmpdir = Path(tmp)
        plugins = tmpdir / "plugins"
        shutil.copytree(HELLO, plugins / "hello", ignore=shutil.ignore_patterns("*.wat"))
        wasm = (plugins / "hello" / "hello.wasm").read_bytes()
        engine = WasmEngine(tmpdir / "modcache")
        manager = Manager()
        loader = Loader(plugins, manager, engine=engine)
        count, errors = loader.load_all()
        if errors or count != 1:
            raise SystemExit(f"loading the hello plugin failed: {count=} {errors=}")
        plugin = manager.get(NAME)
        assert plugin is not None
        raw = RawModule(wasm)
        fast = UncheckedCalls(raw)

        # Every layer must do the same work: check that they all echo the args.
        assert raw.protocol() == ARGS_BYTES
        assert raw.gk_call_only() == ARGS_BYTES
        assert fast.protocol() == ARGS_BYTES
        assert plugin.call(FUNCTION, ARGS_BYTES) == ARGS_BYTES
        assert manager.call_raw(NAME, FUNCTION, ARGS_BYTES) == ARGS_BYTES
        assert manager.call(NAME, FUNCTION, ARGS) == ARGS
        assert asyncio.run(manager.acall(NAME, FUNCTION, ARGS)) == ARGS
        raw.reset_arena()

        hop_pool = ThreadPoolExecutor(32)  # like the manager's own pool

        async def hop() -> None:
            await asyncio.get_running_loop().run_in_executor(hop_pool, _noop)

        layers = [
            Layer("timer", "(timer + empty lambda: the floor of every sample)",
                  fn=lambda: None),
            Layer("a0", "(ref: a via private unchecked FFI call)", fn=fast.one_call),
            Layer("b0", "(ref: b via private unchecked FFI calls)", fn=fast.protocol),
            Layer("a", "a  raw wasmtime: gk_malloc(8)", fn=raw.one_call),
            Layer("a2", "a2 raw wasmtime: gk_call only (args pre-written)",
                  fn=raw.gk_call_only),
            Layer("b", "b  raw gk protocol by hand (6 wasm calls)", fn=raw.protocol),
            Layer("c", "c  WasmPlugin.call (bytes)",
                  fn=lambda: plugin.call(FUNCTION, ARGS_BYTES)),
            Layer("d", "d  manager.call_raw (bytes)",
                  fn=lambda: manager.call_raw(NAME, FUNCTION, ARGS_BYTES)),
            Layer("e", "e  manager.call (JSON)",
                  fn=lambda: manager.call(NAME, FUNCTION, ARGS)),
            Layer("f", "f  await manager.acall (sequential)",
                  afn=lambda: manager.acall(NAME, FUNCTION, ARGS)),
            Layer("hop", "(ref: await run_in_executor(no-op), pool of 32)", afn=hop),
        ]
        print(f"   {reps} rounds x {n} calls per layer, interleaved; warm-up {warmup}\n")
        measure(layers, raw, n, reps, warmup)
        hop_pool.shutdown()

        stats = {ly.key: Stats.of(ly.key, ly.samples or []) for ly in layers}
        batch = {ly.key: sorted(ly.batch or [])[len(ly.batch or []) // 2] for ly in layers}
        by_key = {ly.key: ly for ly in layers}
        la, lb = by_key["a"], by_key["b"]
        rows, summary_rows = [], []
        prev: Layer | None = None
        for ly in layers:
            s = stats[ly.key]
            step_ns = None if prev is None or ly.key in REFS else ly.delta(prev)
            step = "" if step_ns is None else fmt_delta(step_ns)
            rows.append([ly.label, fmt_ns(s.median), fmt_ns(s.p99), fmt_ns(batch[ly.key]),
                         fmt_ratio(ly.ratio(la)), fmt_ratio(ly.ratio(lb)), step])
            summary_rows.append({"key": ly.key, "label": ly.label.strip(),
                                 "median_ns": s.median, "p99_ns": s.p99,
                                 "batch_mean_ns": batch[ly.key], "ratio_vs_a": ly.ratio(la),
                                 "ratio_vs_b": ly.ratio(lb),
                                 "step_ns": step_ns, "samples": s.n})
            if ly.key not in (*REFS, "a2"):
                prev = ly
        print(table(["layer", "median", "p99", "mean (batched)", "vs a", "vs b", "step"],
                    rows))
        print("   (vs a/b: median over rounds of the same-round ratio; step: same-round "
              "difference to the layer above)")
        e, a = stats["e"].median, stats["a"].median
        le = by_key["e"]
        print(f"\n   manager.call: {fmt_ns(e)} per call = {fmt_ratio(le.ratio(la))} a raw "
              f"wasmtime call ({fmt_ns(a)}); {fmt_ratio(le.ratio(lb))} the hand-written gk "
              "protocol")

        inclusive, own = profile(lambda: manager.call(NAME, FUNCTION, ARGS),
                                 2000 if quick else 20000, profile_points())
        print("\n   cProfile of manager.call, per call (profiler-inflated; read the shares):")
        print(profile_tables(inclusive, own))

        manager.close()
        engine.close()
        write_json(args.json, {
            "benchmark": "call_overhead", "quick": quick, "rows": summary_rows,
            "profile_inclusive": inclusive, "profile_own": own,
            "headline": {"manager_call_ns": e, "raw_call_ns": a, "ratio": le.ratio(la)},
        })
    return 0


def _noop() -> None:
    return None


if __name__ == "__main__":
    raise SystemExit(main())
