"""The wasm runtime: gk v1 modules run in wasmtime, in-process, sandboxed (docs/wasm-abi.md).

Ownership is explicit: one `WasmEngine` (engine, epoch ticker, module cache) serves every
wasm plugin; a `WasmPlugin` owns its compiled module and a small pool of `_Instance`s; an
instance owns its `Store`. A store is never used by two threads at once.
"""

from __future__ import annotations

import ctypes
import hashlib
import logging
import re
import threading
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

import wasmtime

from ..deadline import Deadline
from ..errors import (
    HostCallError,
    PlughostError,
    PluginABIError,
    PluginCallError,
    PluginLoadError,
    PluginResourceError,
    PluginTimeout,
    PluginTrap,
    PluginUnavailable,
)
from ..host import HostFunctions, PluginCaller, chain
from ..lifecycle import PluginState
from ..logs import GK_LEVELS, LineWriter, PluginLog
from ..plugin import Kind, PluginSource, Staged, StartContext
from ..registration import parse_registration
from .base import PluginBase, owning_private_copy
from .pool import Pool, PoolClosed
from .wasm_abi import MASK32, MASK64, WASI_MODULE, check_module, pack, unpack
from .wasm_engine import WasmEngine
from .wasm_imports import entered, store_limits
from .wasm_output import Channel

__all__ = ["WasmEngine", "WasmPlugin", "WasmRuntime", "compile_module", "load_wasm_plugin"]

logger = logging.getLogger(__name__)

_PAGE = 65536


class _ABIViolation(Exception):
    """Raised inside a host import when the plugin hands over a bad pointer/length."""


class _Overran(Exception):
    """A host call was refused or cut short because the call's deadline had passed."""


class _HostFailure(Exception):
    """A host function failed in a way it should not have (a host bug, not the plugin's)."""


def _memory(caller: wasmtime.Caller | wasmtime.Instance, store: Any) -> wasmtime.Memory:
    mem = caller.get("memory") if isinstance(caller, wasmtime.Caller) else \
        caller.exports(store).get("memory")
    if not isinstance(mem, wasmtime.Memory):
        raise _ABIViolation("module has no exported memory")
    return mem


def _read(store: Any, mem: wasmtime.Memory, ptr: int, length: int, what: str) -> bytes:
    """Copy `length` bytes at `ptr` out of plugin memory, after checking the bounds."""
    ptr, length = ptr & MASK32, length & MASK32  # i32s arrive signed; they are unsigned
    size = mem.data_len(store)
    if ptr < 0 or length < 0 or ptr + length > size:
        raise _ABIViolation(
            f"{what}: pointer {ptr} + length {length} is outside memory ({size} bytes)")
    if length == 0:
        return b""
    base = ctypes.addressof(mem.data_ptr(store).contents)
    return ctypes.string_at(base + ptr, length)


def _write(store: Any, mem: wasmtime.Memory, ptr: int, data: bytes, what: str) -> None:
    size = mem.data_len(store)
    if ptr <= 0 or ptr + len(data) > size:
        raise _ABIViolation(
            f"{what}: gk_malloc returned {ptr} for {len(data)} bytes, outside memory "
            f"({size} bytes)")
    if data:
        base = ctypes.addressof(mem.data_ptr(store).contents)
        ctypes.memmove(base + ptr, data, len(data))


_T = TypeVar("_T")


def _export(exports: Any, name: str, kind: type[_T]) -> _T:
    item = exports.get(name)
    if not isinstance(item, kind):  # check_module ran first, so this is a host bug
        raise _ABIViolation(f"export {name!r} is missing or not a {kind.__name__}")
    return item


def _start_up(store: wasmtime.Store, exports: Any) -> None:
    """A reactor's `_initialize`, or else a command's `_start`, run once per instance.

    GoatFlow's official build (TinyGo `-target wasi`) is a command: its runtime runs
    `_start` at instantiation and then calls the exports. A normal return or
    `proc_exit(0)` is success; any other exit code fails the start."""
    init = exports.get("_initialize")
    if isinstance(init, wasmtime.Func):
        init(store)
        return
    start = exports.get("_start")
    if not isinstance(start, wasmtime.Func):
        return
    try:
        start(store)
    except wasmtime.ExitTrap as exc:
        if exc.code != 0:
            raise _ABIViolation(f"_start exited with code {exc.code}") from None


class _Instance:
    """One instance of the module in its own store; not thread-safe (the pool hands it to
    one caller at a time)."""

    def __init__(self, plugin: WasmPlugin) -> None:
        self.plugin = plugin
        self.error_message: str | None = None  # set by gk.error during a call
        self.abi_error: str | None = None  # set by an import that met a bad pointer
        self.host_error: str | None = None  # set when a host function failed unexpectedly
        self.overran = False  # set when a host call failed with the deadline passed
        engine = plugin.engine
        self.store = wasmtime.Store(engine.engine)
        memory, tables, elements = store_limits(plugin.source.manifest.resources.memory_mb)
        # One linear memory, a few bounded tables: together within memory_mb.
        self.store.set_limits(memory_size=memory, memories=1, tables=tables,
                              table_elements=elements, instances=1)
        wasi = wasmtime.WasiConfig()  # nothing granted: no dirs, no env, no args
        if plugin.stdout is not None and plugin.stderr is not None:
            wasi.stdout_file = plugin.stdout.path  # a pipe: see wasm_output.py
            wasi.stderr_file = plugin.stderr.path
        self.store.set_wasi(wasi)
        engine.arm(self.store, plugin.call_timeout)
        with entered(self):  # instantiation and _initialize may already call imports
            self.instance = engine.linker().instantiate(self.store, plugin.module)
            exports = self.instance.exports(self.store)
            self.memory = _export(exports, "memory", wasmtime.Memory)
            self.gk_call = _export(exports, "gk_call", wasmtime.Func)
            self.gk_malloc = _export(exports, "gk_malloc", wasmtime.Func)
            self.gk_register = _export(exports, "gk_register", wasmtime.Func)
            free = exports.get("gk_free")
            self.gk_free = free if isinstance(free, wasmtime.Func) else None
            _start_up(self.store, exports)
        self._check_abi()

    # -- imports (run inside wasm calls, on the calling thread) --------------------------
    #
    # wasm_imports.py defines these once per engine and finds the instance through
    # `entered`; they must not raise (see there). A violation is recorded on this instance,
    # the import returns a neutral value, and the call fails with it once control is back.

    def violation(self, message: str) -> None:
        if self.abi_error is None:
            self.abi_error = message

    def host_failure(self, message: str) -> None:
        if self.host_error is None:
            self.host_error = message

    def host_call(self, caller: wasmtime.Caller, fp: int, fl: int, ap: int, al: int) -> int:
        try:
            mem = _memory(caller, caller)
            fn = _read(caller, mem, fp, fl, "gk.host_call function name").decode(
                "utf-8", "replace")
            args = _read(caller, mem, ap, al, "gk.host_call args")
        except _ABIViolation as exc:
            self.violation(str(exc))
            return 0
        try:
            result = self.plugin.host.dispatch(self.plugin.host_context, fn, args)
        except HostCallError:
            # Already logged by dispatch. Failed because the time is up: the call is over,
            # whatever the plugin does next (it may not loop back into an epoch check).
            if chain.path().left() == 0:
                self.overran = True
            return 0
        try:
            malloc = caller.get("gk_malloc")
            assert isinstance(malloc, wasmtime.Func)
            ptr = int(malloc(caller, len(result))) & MASK32
            if not ptr:
                self.plugin.log.warning(f"gk_malloc({len(result)}) returned 0 for a "
                                        "host_call result", source="host")
                return 0
            _write(caller, _memory(caller, caller), ptr, result, "gk.host_call result")
        except _ABIViolation as exc:
            self.violation(str(exc))
            return 0
        except Exception as exc:  # gk_malloc itself trapped
            self.violation(f"gk_malloc failed during gk.host_call: {_describe(exc)}")
            return 0
        return pack(ptr, len(result))

    def log(self, caller: wasmtime.Caller, level: int, ptr: int, length: int) -> None:
        try:
            msg = _read(caller, _memory(caller, caller), ptr, length, "gk.log message")
        except _ABIViolation as exc:
            self.violation(str(exc))
            return
        self.plugin.log.log(GK_LEVELS.get(level, logging.ERROR),
                            msg.decode("utf-8", "replace"), source="plugin")

    def error(self, caller: wasmtime.Caller, ptr: int, length: int) -> None:
        try:
            msg = _read(caller, _memory(caller, caller), ptr, length, "gk.error message")
        except _ABIViolation as exc:
            self.violation(str(exc))
            return
        self.error_message = msg.decode("utf-8", "replace") or "plugin reported an error"

    # -- calls into the plugin ----------------------------------------------------------

    def _check_abi(self) -> None:
        if self.abi_error is not None:
            raise _ABIViolation(self.abi_error)
        if self.host_error is not None:
            raise _HostFailure(self.host_error)

    def _result(self, packed: int, what: str) -> tuple[bytes, int]:
        """Copy a packed result out of plugin memory; returns (bytes, pointer)."""
        ptr, length = unpack(packed)
        if packed & MASK64 == 0:
            return b"", 0
        return _read(self.store, self.memory, ptr, length, what), ptr

    def _put(self, data: bytes, what: str, function: str) -> int:
        if not data:
            return 0
        ptr = int(self.gk_malloc(self.store, len(data))) & MASK32  # i32 comes back signed
        if not ptr:
            raise PluginResourceError(
                f"gk_malloc({len(data)}) returned 0 while passing {what}: out of memory",
                plugin=self.plugin.name, function=function)
        _write(self.store, self.memory, ptr, data, what)
        return int(ptr)

    def register(self) -> bytes:
        self.plugin.engine.arm(self.store, self.plugin.call_timeout)
        with entered(self):
            # Not freed: registrations are often static data, which gk_free must never see.
            raw, _ = self._result(self.gk_register(self.store), "gk_register result")
        self._check_abi()
        return raw

    def call(self, function: str, args: bytes, timeout: float) -> bytes:
        self.error_message = self.abi_error = self.host_error = None
        self.overran = False
        self.plugin.engine.arm(self.store, timeout)
        with entered(self):
            return self._call(function, args)

    def _call(self, function: str, args: bytes) -> bytes:
        fn = function.encode()
        fp = self._put(fn, "the function name", function)
        ap = self._put(args, "the arguments", function)
        packed = self.gk_call(self.store, fp, len(fn), ap, len(args))
        if self.overran:
            raise _Overran()
        self._check_abi()
        # Copy the result out before anything else runs in the instance (a result may
        # alias the argument buffer), then free each distinct buffer exactly once.
        result, rp = self._result(packed, "gk_call result")
        if self.gk_free is not None:
            for p in dict.fromkeys((rp, fp, ap)):
                if p:
                    self.gk_free(self.store, p)
        if self.error_message is not None:
            raise PluginCallError(self.error_message, plugin=self.plugin.name,
                                  function=function)
        return result

    def near_memory_limit(self) -> bool:
        limit = store_limits(self.plugin.source.manifest.resources.memory_mb)[0]
        try:
            return self.memory.data_len(self.store) + _PAGE > limit
        except Exception:
            return False


class WasmPlugin(PluginBase):
    """A loaded wasm plugin: its compiled module and a pool of instances.

    By default the pool holds one instance and calls are serialized on it, so plugin state
    persists between calls. A trap, deadline overrun or ABI violation discards the instance;
    a fresh one is made for the next call.
    """

    kind: Kind = "wasm"

    def __init__(self, source: PluginSource, engine: WasmEngine, module: wasmtime.Module,
                 host: HostFunctions, log: PluginLog, caller: PluginCaller | None = None,
                 *, any_name: bool = False) -> None:
        """`any_name`: accept whatever valid name the module registers (to learn the name
        of a bare module); otherwise it must register as `source.name`."""
        super().__init__(source, log, caller)
        self.engine = engine
        self.module = module
        self.host = host
        # Output pipes only for modules that can write (most gk modules cannot).
        writes = any(i.module == WASI_MODULE and i.name == "fd_write" for i in module.imports)
        self.stdout: Channel | None = engine.output.open(LineWriter(log, "stdout")) \
            if writes else None
        self.stderr: Channel | None = engine.output.open(
            LineWriter(log, "stderr", logging.WARNING)) if writes else None
        res = source.manifest.resources
        self._pool: Pool[_Instance] = Pool(res.max_instances, self._new_instance)
        self._closed = False
        # The first instance proves the module works and tells us who it says it is.
        first = self._new_instance(loading=True)
        try:
            raw = first.register()
        except Exception as exc:
            raise self._load_error(exc, "gk_register") from exc
        self._registration = parse_registration(
            raw, expected_name=None if any_name else source.name, path=str(source.path),
            shown_name=source.name)
        self.host_context = self._context(self._registration)
        self._pool.add(first)

    # -- Plugin protocol ---------------------------------------------------------------

    @property
    def state(self) -> PluginState:
        return "stopped" if self._closed else "running"

    def call(self, function: str, args: bytes, *, deadline: Deadline | None = None) -> bytes:
        dl = self._deadline(deadline)
        # Re-entry (this plugin already on the call path) was refused by the call chain
        # before this call got here (host/chain.py), so an instance wait cannot be on itself.
        inst = self._acquire(function, dl.at)
        healthy = False
        try:
            result = inst.call(function, args, dl.left())
            healthy = True
            return result
        except PluginCallError as exc:
            # gk.error is a clean, reported failure: the instance stays. Resource errors
            # leave it in an unknown state.
            healthy = type(exc) is PluginCallError
            raise
        except Exception as exc:
            raise self._call_error(exc, inst, function, dl) from None
        finally:
            self._release(inst, healthy)
            if self.stdout is not None and self.stderr is not None:
                self.stdout.drain()
                self.stderr.drain()

    def shutdown(self) -> None:
        self._closed = True
        self._pool.close()  # idle instances (and their stores) are dropped with it
        for channel in (self.stdout, self.stderr):
            if channel is not None:
                channel.close()
        self._release_private_copy()

    # -- pool ----------------------------------------------------------------------------

    def _new_instance(self, loading: bool = False) -> _Instance:
        try:
            return _Instance(self)
        except Exception as exc:
            if loading:
                raise self._load_error(exc, "instantiation") from exc
            raise self._call_error(exc, None, "(new instance)",
                                   Deadline.after(self.call_timeout)) from exc

    def _acquire(self, function: str, deadline: float) -> _Instance:
        try:
            return self._pool.acquire(deadline)
        except PoolClosed:
            raise PluginUnavailable("plugin has been shut down", plugin=self.name) from None
        except TimeoutError:
            raise PluginTimeout("no instance became free before the deadline",
                                plugin=self.name, function=function) from None

    def _release(self, inst: _Instance, healthy: bool) -> None:
        self._pool.release(inst, healthy=healthy)
        if not healthy:
            self._log.warning("instance discarded after a failed call; the next call gets a "
                              "fresh one", source="host")

    # -- error mapping -------------------------------------------------------------------

    def _load_error(self, exc: BaseException, stage: str) -> PlughostError:
        if isinstance(exc, PlughostError):
            return exc
        return PluginLoadError(f"{stage} failed: {_describe(exc)}", plugin=self.name,
                               path=str(self._source.path))

    def _call_error(self, exc: BaseException, inst: _Instance | None, function: str,
                    deadline: Deadline) -> PlughostError:
        if isinstance(exc, _Overran) or (isinstance(exc, wasmtime.Trap)
                                         and exc.trap_code == wasmtime.TrapCode.INTERRUPT):
            # First: a deadline that ran out during a host call is a timeout, whatever
            # the import recorded while it was being cut short.
            return PluginTimeout(f"call exceeded its deadline of {deadline.text()}",
                                 plugin=self.name, function=function)
        if inst is not None and inst.abi_error is not None:
            # the instance's own record beats whatever exception surfaced
            return PluginABIError(inst.abi_error, plugin=self.name, function=function)
        if inst is not None and inst.host_error is not None:
            return PluginCallError(f"host error during the call: {inst.host_error}",
                                   plugin=self.name, function=function)
        if isinstance(exc, PlughostError):
            return exc
        if isinstance(exc, _ABIViolation):
            return PluginABIError(str(exc), plugin=self.name, function=function)
        if isinstance(exc, wasmtime.Trap):
            if inst is not None and inst.near_memory_limit():
                return PluginResourceError(
                    f"trapped at the memory limit of "
                    f"{self._source.manifest.resources.memory_mb} MiB: {_describe(exc)}",
                    plugin=self.name, function=function)
            return PluginTrap(_describe(exc), plugin=self.name, function=function)
        if isinstance(exc, wasmtime.WasmtimeError):
            return PluginTrap(_describe(exc), plugin=self.name, function=function)
        # A Python error escaping a host import: a host bug, reported as the call's failure.
        logger.exception("unexpected error during a call to %s.%s", self.name, function)
        return PluginCallError(f"host error during the call: {exc!r}", plugin=self.name,
                               function=function)


def _describe(exc: BaseException) -> str:
    """One line that says what went wrong: wasmtime puts the cause after the backtrace."""
    text = (exc.message if isinstance(exc, wasmtime.Trap) else str(exc)).strip()
    if "Caused by:" in text:
        causes = [re.sub(r"^\d+:\s*", "", line.strip())
                  for line in text.split("Caused by:", 1)[1].strip().splitlines()]
        text = "; ".join(reversed([c for c in causes if c]))  # the root cause first
    first = text.splitlines()[0] if text else type(exc).__name__
    return first


def compile_module(engine: WasmEngine, wasm: bytes, *, name: str, path: Path,
                   verified: bool = False) -> wasmtime.Module:
    """Compile (or fetch from the cache) and ABI-check a module; errors name the plugin."""
    if not wasm.startswith(b"\0asm"):
        raise PluginLoadError("not a WebAssembly module (bad magic bytes)", plugin=name,
                              path=path)
    try:
        module = engine.cache.compile(wasm, use_disk=not verified)
    except wasmtime.WasmtimeError as exc:
        raise PluginLoadError(f"invalid module: {_describe(exc)}", plugin=name,
                              path=path) from None
    problems = check_module(module)
    if problems:
        raise PluginLoadError("; ".join(problems), plugin=name, path=path)
    return module


def load_wasm_plugin(source: PluginSource, wasm: bytes, engine: WasmEngine,
                     host: HostFunctions, log: PluginLog, *, verified: bool = False,
                     caller: PluginCaller | None = None) -> WasmPlugin:
    """Compile, instantiate, initialise and register one version of a wasm plugin.

    `verified`: `wasm` passed a signature check; then no compiled code is taken from disk.
    """
    module = compile_module(engine, wasm, name=source.name, path=source.entry,
                            verified=verified)
    return WasmPlugin(source, engine, module, host, log, caller)


class WasmRuntime:
    """Starts wasm plugins on one engine (shared by every version it starts)."""

    kind = "wasm"

    def __init__(self, engine: WasmEngine, *, owns_engine: bool = False) -> None:
        self.engine = engine
        self._owns_engine = owns_engine  # close() closes it
        self._names: dict[bytes, str] = {}  # module digest -> the name it registers
        self._names_lock = threading.Lock()

    def identify(self, staged: Staged, context: StartContext) -> str:
        """The name a bare module registers with (`plugin.Identifying`): it is started
        once, under the same limits as any start, asked `gk_register` and shut down.
        Remembered by the module's digest, so each module is asked once."""
        module = staged.module
        if module is None:
            raise PluginLoadError("no module bytes staged", plugin=staged.source.name)
        digest = hashlib.sha256(module).digest()
        with self._names_lock:
            known = self._names.get(digest)
        if known is not None:
            return known
        source = replace(staged.source, private_dir=None)  # the start's copy stays
        compiled = compile_module(self.engine, module, name=source.name, path=source.entry,
                                  verified=context.verified)
        probe = WasmPlugin(source, self.engine, compiled, context.host, context.log,
                           any_name=True)
        try:
            name = probe.registration.name
        finally:
            probe.shutdown()
        with self._names_lock:
            self._names[digest] = name
        return name

    def start(self, staged: Staged, context: StartContext) -> WasmPlugin:
        module = staged.module
        if module is None:
            raise PluginLoadError("no module bytes staged", plugin=staged.source.name)
        return owning_private_copy(staged.source, lambda: load_wasm_plugin(
            staged.source, module, self.engine, context.host, context.log,
            verified=context.verified, caller=context.caller))

    def close(self) -> None:
        if self._owns_engine:
            self.engine.close()
