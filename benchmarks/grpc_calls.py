"""Per-call cost of a grpc plugin through plughost vs a raw grpcio unary call, same socket.

One plugin process: a small plughost.sdk plugin `echo` (benchmarks/_grpc_plugin.py, function
`echo` returns its args), written to a temp plugin dir and loaded with Manager + Loader.
The baselines talk to the SAME process over the SAME Unix socket (the address from its
handshake, `plugin-<pid>.sock` in the plugin's private dir), on their own channel, calling
the `Plugin.Call` RPC directly with the same request. args = {"msg": "hello"}.

Sync layers (one call at a time, timed one by one):
  a   raw grpcio: PluginStub(grpc.insecure_channel(unix socket)).Call(CallRequest)
  a1  (ref) a plus what plughost adds to the RPC: timeout= and a call-id metadata entry
  c   GrpcPlugin.call(function, bytes) on the plugin object from manager.get(name)
  d   manager.call_raw(name, function, bytes)
  e   manager.call(name, function, dict)          (JSON encode + decode)
asyncio layers (sequential awaits on one event loop):
  g   raw grpc.aio: await PluginStub(grpc.aio.insecure_channel(...)).Call(CallRequest)
  g1  (ref) await loop.run_in_executor(pool of 32, raw sync a)
  f   await manager.acall(name, function, dict)
Concurrency: 8 threads (and 8 asyncio tasks) calling in a loop for a fixed time:
  raw sync stub (one shared channel) vs manager.call; raw aio stub vs manager.acall.

    .venv/bin/python benchmarks/grpc_calls.py [--quick] [--json out.json]
"""

from __future__ import annotations

import asyncio
import gc
import json
import logging
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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
    time_each,
    write_json,
)
from _grpc_plugin import write_plugin  # first: it imports plughost before grpc loads
from grpc import _channel, aio, insecure_channel

from plughost import Loader, Manager
from plughost.proto.plughost.v1 import plugin_pb2 as pb
from plughost.proto.plughost.v1 import plugin_pb2_grpc as pb_grpc
from plughost.runtimes.grpc import GrpcPlugin

NAME, FUNCTION = "echo", "echo"
ARGS: dict[str, Any] = {"msg": "hello"}
ARGS_BYTES = b'{"msg":"hello"}'
REQUEST = pb.CallRequest(function=FUNCTION, args=ARGS_BYTES)
REFS = ("timer", "a1", "g1")
THREADS = 8


@dataclass
class Layer:
    key: str
    label: str
    fn: Callable[[], object] | None = None
    afn: Callable[[], Any] | None = None
    samples: list[int] = field(default_factory=list)
    rounds: list[float] = field(default_factory=list)

    def ratio(self, other: Layer) -> float:
        return paired_ratio(self.rounds, other.rounds)

    def delta(self, other: Layer) -> float:
        return paired_delta(self.rounds, other.rounds)


def socket_target(plugin: GrpcPlugin) -> str:
    """The plugin process's socket, as its handshake announced it."""
    path = Path(plugin._dir) / f"plugin-{plugin.pid}.sock"
    if not path.exists():
        raise SystemExit(f"expected the plugin's socket at {path}")
    return f"unix:{path}"


def measure(layers: list[Layer], loop: asyncio.AbstractEventLoop, n: int, reps: int,
            warmup: int) -> None:
    """Interleave the layers over `reps` rounds, in a shuffled order each round."""

    async def each_async(afn: Callable[[], Any], count: int) -> list[int]:
        out = [0] * count
        for i in range(count):
            t0 = clock()
            await afn()
            out[i] = clock() - t0
        return out

    for layer in layers:
        if layer.fn is not None:
            time_each(layer.fn, warmup)
        elif layer.afn is not None:
            loop.run_until_complete(each_async(layer.afn, warmup))
    for round_no in range(reps):
        for layer in shuffled(layers, round_no):
            gc.collect()
            if layer.fn is not None:
                got = time_each(layer.fn, n)
            else:
                assert layer.afn is not None
                got = loop.run_until_complete(each_async(layer.afn, n))
            layer.samples += got
            layer.rounds.append(statistics.median(got))


@dataclass
class Burst:
    """One concurrency variant: THREADS threads (or tasks) calling for `seconds`."""

    key: str
    label: str
    fn: Callable[[], object] | None = None  # threads
    afn: Callable[[], Any] | None = None  # asyncio tasks
    throughput: list[float] = field(default_factory=list)  # calls/s per round
    latency: list[int] = field(default_factory=list)  # per-call ns, all rounds
    errors: int = 0


def run_threads(fn: Callable[[], object], seconds: float) -> tuple[int, list[int], int, float]:
    barrier = threading.Barrier(THREADS + 1)
    results: list[tuple[int, list[int], int]] = []
    lock = threading.Lock()
    stop = threading.Event()

    def worker() -> None:
        lat: list[int] = []
        errors = 0
        barrier.wait()
        while not stop.is_set():
            t0 = clock()
            try:
                fn()
            except Exception:
                errors += 1
            lat.append(clock() - t0)
        with lock:
            results.append((len(lat), lat, errors))

    threads = [threading.Thread(target=worker) for _ in range(THREADS)]
    for t in threads:
        t.start()
    barrier.wait()
    t0 = clock()
    time.sleep(seconds)
    stop.set()
    for t in threads:
        t.join()
    elapsed = (clock() - t0) / 1e9
    calls = sum(r[0] for r in results)
    return calls, [x for r in results for x in r[1]], sum(r[2] for r in results), elapsed


async def run_tasks(afn: Callable[[], Any], seconds: float
                    ) -> tuple[int, list[int], int, float]:
    lat: list[int] = []
    errors = 0
    stop = False

    async def worker() -> None:
        nonlocal errors
        while not stop:
            t0 = clock()
            try:
                await afn()
            except Exception:
                errors += 1
            lat.append(clock() - t0)

    t0 = clock()
    tasks = [asyncio.create_task(worker()) for _ in range(THREADS)]
    await asyncio.sleep(seconds)
    stop = True
    await asyncio.gather(*tasks)
    return len(lat), lat, errors, (clock() - t0) / 1e9


def measure_bursts(bursts: list[Burst], loop: asyncio.AbstractEventLoop, seconds: float,
                   reps: int) -> None:
    for b in bursts:  # warm-up
        if b.fn is not None:
            run_threads(b.fn, seconds / 4)
        elif b.afn is not None:
            loop.run_until_complete(run_tasks(b.afn, seconds / 4))
    for round_no in range(reps):
        for b in shuffled(bursts, 1000 + round_no):
            gc.collect()
            if b.fn is not None:
                calls, lat, errors, elapsed = run_threads(b.fn, seconds)
            else:
                assert b.afn is not None
                calls, lat, errors, elapsed = loop.run_until_complete(
                    run_tasks(b.afn, seconds))
            b.throughput.append(calls / elapsed)
            b.latency += lat
            b.errors += errors


def profile_points() -> list[tuple[str, Any, str]]:
    from plughost import manager as mgr
    from plughost.host import chain
    from plughost.runtimes import grpc as rt

    return [
        ("Manager.call", mgr, "Manager.call"),
        ("  encode_args", mgr, "encode_args"),
        ("  decode_result", mgr, "decode_result"),
        ("  Manager.call_raw", mgr, "Manager.call_raw"),
        ("    Manager._acquire", mgr, "Manager._acquire"),
        ("    _Entry.done", mgr, "_Entry.done"),
        ("    chain.entered", chain, "entered"),
        ("    GrpcPlugin.call", rt, "GrpcPlugin.call"),
        ("      chain.remote_call", chain, "remote_call"),
        ("      grpc _UnaryUnaryMultiCallable.__call__", _channel,
         "_UnaryUnaryMultiCallable.__call__"),
    ]


def main() -> int:
    args = parser(__doc__.splitlines()[0]).parse_args()
    quick: bool = args.quick
    n, reps, warmup = (100, 3, 100) if quick else (300, 30, 500)
    burst_s, burst_reps = (0.3, 2) if quick else (1.0, 12)
    header("grpc_calls: manager.call('echo', 'echo', {'msg': 'hello'}) on a grpc plugin vs "
           "raw grpcio", quick)
    logging.getLogger("plughost").setLevel(logging.ERROR)

    with tempfile.TemporaryDirectory(prefix="plughost-bench-") as tmp:
        plugins = Path(tmp) / "plugins"
        write_plugin(plugins, NAME)
        manager = Manager()
        loader = Loader(plugins, manager, cache_dir=Path(tmp) / "modcache")
        count, errors = loader.load_all()
        if errors or count != 1:
            raise SystemExit(f"loading the echo plugin failed: {count=} {errors=}")
        plugin = manager.get(NAME)
        assert isinstance(plugin, GrpcPlugin)
        target = socket_target(plugin)
        print(f"   plugin pid {plugin.pid}, socket {target}")

        channel = insecure_channel(target)
        stub = pb_grpc.PluginStub(channel)
        meta = (("plughost-call-id", "1"),)
        loop = asyncio.new_event_loop()

        async def make_aio() -> tuple[aio.Channel, pb_grpc.PluginStub]:
            ch = aio.insecure_channel(target)
            return ch, pb_grpc.PluginStub(ch)

        aio_channel, aio_stub = loop.run_until_complete(make_aio())
        hop_pool = ThreadPoolExecutor(32)  # like the manager's own pool

        async def hop_raw() -> object:
            return await asyncio.get_running_loop().run_in_executor(
                hop_pool, lambda: stub.Call(REQUEST))

        async def aio_call() -> object:
            return await aio_stub.Call(REQUEST)

        # Every layer does the same work: check they all echo the args.
        # (The SDK answers with json.dumps' default separators, so compare decoded.)
        for raw in (stub.Call(REQUEST).result,
                    stub.Call(REQUEST, timeout=30.0, metadata=meta).result,
                    plugin.call(FUNCTION, ARGS_BYTES),
                    manager.call_raw(NAME, FUNCTION, ARGS_BYTES),
                    loop.run_until_complete(aio_call()).result):  # type: ignore[attr-defined]
            assert json.loads(raw) == ARGS, raw
        assert manager.call(NAME, FUNCTION, ARGS) == ARGS
        assert loop.run_until_complete(manager.acall(NAME, FUNCTION, ARGS)) == ARGS

        layers = [
            Layer("timer", "(timer + empty lambda)", fn=lambda: None),
            Layer("a", "a  raw grpcio stub.Call, own channel", fn=lambda: stub.Call(REQUEST)),
            Layer("a1", "a1 (ref) raw stub.Call + timeout + call-id metadata",
                  fn=lambda: stub.Call(REQUEST, timeout=30.0, metadata=meta)),
            Layer("c", "c  GrpcPlugin.call (bytes)",
                  fn=lambda: plugin.call(FUNCTION, ARGS_BYTES)),
            Layer("d", "d  manager.call_raw (bytes)",
                  fn=lambda: manager.call_raw(NAME, FUNCTION, ARGS_BYTES)),
            Layer("e", "e  manager.call (JSON)",
                  fn=lambda: manager.call(NAME, FUNCTION, ARGS)),
            Layer("g", "g  await grpc.aio stub.Call, own aio channel", afn=aio_call),
            Layer("g1", "g1 (ref) await run_in_executor(raw sync stub.Call)", afn=hop_raw),
            Layer("f", "f  await manager.acall",
                  afn=lambda: manager.acall(NAME, FUNCTION, ARGS)),
        ]
        print(f"   {reps} rounds x {n} calls per layer, interleaved; warm-up {warmup}\n")
        measure(layers, loop, n, reps, warmup)
        by = {ly.key: ly for ly in layers}
        stats = {ly.key: Stats.of(ly.key, ly.samples) for ly in layers}
        rows, summary_rows = [], []
        for ly in layers:
            s = stats[ly.key]
            base = by["g"] if ly.afn is not None else by["a"]
            step = ""
            step_ns = None
            prev = {"c": "a", "d": "c", "e": "d", "f": "g"}.get(ly.key)
            if prev is not None:
                step_ns = ly.delta(by[prev])
                step = fmt_delta(step_ns)
            rows.append([ly.label, fmt_ns(s.median), fmt_ns(s.p99),
                         fmt_ratio(ly.ratio(base)), step])
            summary_rows.append({"key": ly.key, "label": ly.label.strip(),
                                 "median_ns": s.median, "p99_ns": s.p99,
                                 "baseline": base.key, "ratio": ly.ratio(base),
                                 "step_ns": step_ns, "samples": s.n})
        print(table(["layer", "median", "p99", "vs raw (a or g)", "step"], rows))
        print("   (vs raw: median over rounds of the same-round ratio to a (sync) or g "
              "(asyncio); step: same-round difference to the layer above it: c-a, d-c, e-d, "
              "f-g)")
        e_vs_a = by["e"].ratio(by["a"])
        f_vs_g = by["f"].ratio(by["g"])
        print(f"\n   manager.call: {fmt_ns(stats['e'].median)} = {fmt_ratio(e_vs_a)} a raw "
              f"grpcio call ({fmt_ns(stats['a'].median)}); await manager.acall: "
              f"{fmt_ns(stats['f'].median)} = {fmt_ratio(f_vs_g)} a raw grpc.aio call "
              f"({fmt_ns(stats['g'].median)})")

        bursts = [
            Burst("raw_threads", f"raw grpcio stub.Call, {THREADS} threads, shared channel",
                  fn=lambda: stub.Call(REQUEST)),
            Burst("ph_threads", f"manager.call, {THREADS} threads",
                  fn=lambda: manager.call(NAME, FUNCTION, ARGS)),
            Burst("raw_tasks", f"raw grpc.aio stub.Call, {THREADS} asyncio tasks",
                  afn=aio_call),
            Burst("ph_tasks", f"await manager.acall, {THREADS} asyncio tasks",
                  afn=lambda: manager.acall(NAME, FUNCTION, ARGS)),
        ]
        print(f"\n   concurrency: {burst_reps} rounds x {burst_s:.1f} s per variant, "
              "interleaved\n")
        measure_bursts(bursts, loop, burst_s, burst_reps)
        bb = {b.key: b for b in bursts}
        brows, bsummary = [], []
        for b in bursts:
            braw = bb["raw_tasks"] if b.afn is not None else bb["raw_threads"]
            lat = Stats.of(b.key, b.latency)
            ratio = paired_ratio(b.throughput, braw.throughput)
            brows.append([b.label, f"{statistics.median(b.throughput):,.0f}",
                          fmt_ratio(ratio), fmt_ns(lat.median), fmt_ns(lat.p99),
                          str(b.errors)])
            bsummary.append({"key": b.key, "label": b.label,
                             "calls_per_s": statistics.median(b.throughput),
                             "throughput_vs_raw": ratio, "latency_median_ns": lat.median,
                             "latency_p99_ns": lat.p99, "errors": b.errors})
        print(table(["variant", "calls/s (median)", "vs raw", "latency median",
                     "latency p99", "errors"], brows))

        inclusive, own = profile(lambda: manager.call(NAME, FUNCTION, ARGS),
                                 300 if quick else 3000, profile_points())
        print("\n   cProfile of manager.call, per call (profiler-inflated; read the shares):")
        print(profile_tables(inclusive, own))

        loop.run_until_complete(aio_channel.close(None))
        loop.close()
        channel.close()
        hop_pool.shutdown()
        loader.close()
        manager.close()
        write_json(args.json, {
            "benchmark": "grpc_calls", "quick": quick, "rows": summary_rows,
            "concurrency": bsummary, "profile_inclusive": inclusive, "profile_own": own,
            "headline": {"manager_call_ns": stats["e"].median, "raw_call_ns":
                         stats["a"].median, "ratio": e_vs_a, "acall_ns": stats["f"].median,
                         "raw_aio_ns": stats["g"].median, "acall_ratio": f_vs_g},
        })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
