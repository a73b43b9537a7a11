"""The gk imports of a wasm plugin, defined once per engine, and the store's limits.

Two wasmtime-py facts shape this module:

* A host function defined through wasmtime-py sits in a process-global table until
  wasmtime drops it. A function defined per instance (a bound method) keeps its instance,
  and so its store and linear memory, alive for ever: wasmtime drops the function only
  with the store. So the three gk functions are defined once, on the engine's linker, and
  find the instance they serve through `entered`, a per-thread stack of the instances
  currently executing wasm. Execution on a thread is strictly nested (a `plugin_call`
  runs the callee inside the caller's host call), so the top of the stack is the caller.
* An exception raised by a host function is carried back through a process-global slot,
  which a concurrent call on another store can pick up as its own. So these functions
  never raise: every failure is recorded on the instance (`host_failure`) and the function
  returns a neutral value; the call fails with the record once control is back.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Protocol

import wasmtime

logger = logging.getLogger(__name__)

_MIB = 1024 * 1024
#: tables a store may create; each element is counted at 8 bytes (a pointer in wasmtime)
MAX_TABLES = 4
_ELEMENT_BYTES = 8


def store_limits(memory_mb: int) -> tuple[int, int, int]:
    """(linear memory bytes, tables, elements per table) for a `memory_mb` budget.

    The budget covers all of a store's memories and tables: one linear memory gets
    15/16 of it, and up to `MAX_TABLES` tables share the last 1/16.
    """
    total = memory_mb * _MIB
    table_share = total // 16
    return total - table_share, MAX_TABLES, table_share // _ELEMENT_BYTES // MAX_TABLES


class ImportTarget(Protocol):
    """What an instance offers its imports (implemented by wasm._Instance)."""

    def host_call(self, caller: wasmtime.Caller, fp: int, fl: int, ap: int, al: int
                  ) -> int: ...

    def log(self, caller: wasmtime.Caller, level: int, ptr: int, length: int) -> None: ...

    def error(self, caller: wasmtime.Caller, ptr: int, length: int) -> None: ...

    def violation(self, message: str) -> None: ...

    def host_failure(self, message: str) -> None: ...


_active = threading.local()


@contextmanager
def entered(target: ImportTarget) -> Iterator[None]:
    """Mark `target` as the instance executing wasm on this thread (nests)."""
    stack: list[ImportTarget] | None = getattr(_active, "stack", None)
    if stack is None:
        stack = _active.stack = []
    stack.append(target)
    try:
        yield
    finally:
        stack.pop()


def _current() -> ImportTarget | None:
    stack: list[ImportTarget] | None = getattr(_active, "stack", None)
    return stack[-1] if stack else None


def _guarded(name: str, neutral: Any, caller: wasmtime.Caller, *args: int) -> Any:
    target = _current()
    if target is None:  # wasm entered without `entered`: a host bug, never the plugin's
        logger.error("gk.%s called outside any plugin call", name)
        return neutral
    try:
        return getattr(target, name)(caller, *args)
    except BaseException as exc:  # nothing may cross into wasmtime-py
        try:
            logger.debug("gk.%s failed", name, exc_info=True)
            target.host_failure(f"gk.{name}: {type(exc).__name__}: {exc}")
        except BaseException:  # the record itself failed: stay neutral
            pass
        return neutral


def _host_call(caller: wasmtime.Caller, fp: int, fl: int, ap: int, al: int) -> int:
    result = _guarded("host_call", 0, caller, fp, fl, ap, al)
    return result if isinstance(result, int) else 0


def _log(caller: wasmtime.Caller, level: int, ptr: int, length: int) -> None:
    _guarded("log", None, caller, level, ptr, length)


def _error(caller: wasmtime.Caller, ptr: int, length: int) -> None:
    _guarded("error", None, caller, ptr, length)


def define_imports(linker: wasmtime.Linker) -> None:
    """Define gk.host_call, gk.log and gk.error (the ABI's signatures) on `linker`."""
    i32, i64 = wasmtime.ValType.i32(), wasmtime.ValType.i64()
    linker.define_func("gk", "host_call", wasmtime.FuncType([i32] * 4, [i64]), _host_call,
                       access_caller=True)
    linker.define_func("gk", "log", wasmtime.FuncType([i32] * 3, []), _log,
                       access_caller=True)
    linker.define_func("gk", "error", wasmtime.FuncType([i32] * 2, []), _error,
                       access_caller=True)
