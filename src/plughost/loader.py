"""The Loader: discovers plugins in a directory and loads, reloads and unloads them.

The manager's registry is the truth about what is loaded; the loader only remembers what it
found on disk. Every load path (first, lazy, reload, load_or_reload) goes through `_build`,
which re-reads and re-checks the plugin from disk, so a swapped file never skips a check.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager, suppress
from dataclasses import replace
from pathlib import Path
from typing import Any

from .discovery import DiscoveredPlugin, Found, resolve, scan_single, walk
from .errors import (
    PlughostError,
    PluginLoadError,
    PluginNotFound,
    PluginUnavailable,
)
from .host import chain
from .host.policy import Policy
from .identity import Identities
from .manager import Manager
from .manifest import load_manifest
from .naming import Naming
from .packaging import PackageLimits
from .plugin import Plugin, Runtime, StartContext
from .reconcile import Action, carry_out, plan
from .runtimes.base import release_private_copy
from .runtimes.grpc import GrpcRuntime
from .runtimes.sandbox import Sandbox, SandboxMode
from .runtimes.supervisor import RestartPolicy
from .runtimes.template import TemplateRuntime
from .runtimes.wasm import WasmEngine, WasmRuntime
from .staging import Stager, TrustedKey
from .watch import Watcher

logger = logging.getLogger(__name__)

#: A call to a plugin whose load failed retries the load only after this many seconds, so a
#: broken plugin under load is not rebuilt (a process started, a module compiled) per call.
#: Explicit loads, reloads and the watcher always retry at once.
LOAD_RETRY_AFTER = 5.0


class Loader(Naming):
    """Discovery and loading for one plugin directory (docs/architecture.md)."""

    def __init__(self, plugin_dir: str | Path, manager: Manager, *, lazy: bool = False,
                 trusted_keys: Iterable[TrustedKey] | None = None,
                 require_signatures: bool | None = None,
                 cache_dir: str | Path | None = "default", engine: WasmEngine | None = None,
                 restart_policy: RestartPolicy | None = None,
                 package_limits: PackageLimits | None = None,
                 sandbox: Sandbox | SandboxMode | None = None,
                 runtimes: Mapping[str, Runtime] | None = None,
                 policies: Mapping[str, Policy | Mapping[str, Any]] | None = None) -> None:
        """`runtimes`: the runtime for each plugin kind; default: wasm on `engine` (or a new
        engine with its module cache in `cache_dir`) and grpc with `restart_policy` and
        `sandbox` (bubblewrap where it works: "auto", the default, or PLUGHOST_SANDBOX;
        "bwrap" to require it; "off"). Any runtime given replaces the default of its kind.
        `policies`: the operator's policy per plugin name, set on the manager (the same as
        `Manager(policies=...)`; host/policy.py)."""
        self.plugin_dir = Path(plugin_dir)
        self.manager = manager
        self.lazy = lazy
        self.runtimes: dict[str, Runtime] = dict(runtimes or {})
        if "wasm" not in self.runtimes:
            self.runtimes["wasm"] = WasmRuntime(engine or WasmEngine(cache_dir),
                                                owns_engine=engine is None)
        if "grpc" not in self.runtimes:
            self.runtimes["grpc"] = GrpcRuntime(
                restart_policy, sandbox if isinstance(sandbox, Sandbox) else Sandbox(sandbox))
        self.runtimes.setdefault("template", TemplateRuntime())
        for policy_name, policy in (policies or {}).items():
            manager.policies.set(policy_name, policy)
        # Verification is on with trusted keys (argument or PLUGHOST_TRUSTED_KEYS) or with
        # PLUGHOST_REQUIRE_SIGNATURES=1; then every load path refuses unsigned plugins.
        self.stager = Stager(trusted_keys, require=require_signatures, limits=package_limits)
        self._found: dict[str, Found] = {}
        self._all: list[Found] = []
        self._walked: list[Found] = []  # the last walk, before names and duplicates
        #: the registered names of bare modules, learnt by asking them (identity.py)
        self.identities = Identities()
        self._extra: dict[str, Found] = {}  # load_wasm_from_path: outside the tree
        self._lock = threading.Lock()
        # One lock per name serialises its loads; a load never waits on its own lock,
        # because a path that is loading a plugin cannot enter it again (host/chain.py).
        self._name_locks: dict[str, threading.Lock] = {}
        self._watcher: Watcher | None = None
        # name -> (the last load failure, monotonic time); cleared by a successful load.
        self._failures: dict[str, tuple[PlughostError, float]] = {}
        manager.set_lazy_loader(self)

    @property
    def engine(self) -> WasmEngine:
        """The wasm runtime's engine (shared with other loaders by passing `engine=`)."""
        wasm = self.runtimes["wasm"]
        if not isinstance(wasm, WasmRuntime):
            raise AttributeError("this loader's wasm runtime has no WasmEngine")
        return wasm.engine

    @property
    def sandbox(self) -> Sandbox:
        """How the grpc runtime confines plugin processes."""
        grpc = self.runtimes["grpc"]
        if not isinstance(grpc, GrpcRuntime):
            raise AttributeError("this loader's grpc runtime has no Sandbox")
        return grpc.sandbox

    # -- discovery -----------------------------------------------------------------------

    def discover_all(self) -> int:
        """Rescan the directory; return how many plugins were found (broken ones too)."""
        if not self.plugin_dir.is_dir():
            raise PluginNotFound("plugin directory does not exist", path=self.plugin_dir)
        walked = walk(self.plugin_dir)
        with self._lock:
            self._walked = walked
            results = self._derive()
        for f in results:
            if f.error is not None:
                logger.warning("discovery: %s", f.error)
            for w in f.warnings:
                self.manager.log_for(f.name).warning(f"plugin.yaml: {w}", source="host")
        return len(results)

    def _derive(self) -> list[Found]:
        """Discovery state from the last walk and the names learnt so far (lock held)."""
        holders = {i.name: Path(i.path) for i in self.manager.list()}
        results = resolve(self._walked, self.identities.names(), holders)
        # A plugin whose manifest just broke keeps its name (the broken file cannot say
        # it), so the version already serving is reported on, not taken for removed.
        known = {f.path: f.name for f in self._all if f.error is None}
        results = [_renamed(f, known[f.path]) if f.error is not None
                   and known.get(f.path, f.name) != f.name else f for f in results]
        # a bare module that could not be asked its name shows why (until it changes)
        results = [replace(f, error=why) if f.provisional and f.error is None
                   and (why := self.identities.failure(f.path)) is not None else f
                   for f in results]
        self._all = results
        found: dict[str, Found] = dict(self._extra)
        for f in results:
            found.setdefault(f.name, f)
        self._found = found
        return results

    def _records(self) -> list[Found]:
        """The raw discovery records, one per name (for sync's before/after)."""
        with self._lock:
            return list(self._found.values())

    def discovered_plugins(self) -> list[DiscoveredPlugin]:
        """What is on disk (and loaded from elsewhere by `load_wasm_from_path`), the one
        view of discovery: every entry found, broken ones included (two plugins claiming
        one name are both listed, with their error), each with its loaded state."""
        with self._lock:
            entries = list(self._all) + [f for n, f in self._extra.items()
                                         if all(a.name != n for a in self._all)]
            failures = {n: e for n, (e, _) in self._failures.items()}
        infos = {i.name: i for i in self.manager.list()}
        out = []
        for f in entries:
            info = infos.get(f.name)
            loaded = info is not None and info.path == str(f.path)
            error = f.error or (None if loaded else failures.get(f.name))
            out.append(DiscoveredPlugin(
                f.name, f.path, f.kind, loaded, info.loaded_at if loaded and info else None,
                f.manifest.manifest if f.manifest else None, error, f.warnings))
        return out

    def load_failure(self, name: str) -> PlughostError | None:
        """Why `name` is discovered but not loaded: its discovery error or last failed load."""
        with self._lock:
            found = self._found.get(name)
            failure = self._failures.get(name)
        if found is not None and found.error is not None:
            return found.error
        if failure is None or self.manager.get(name) is not None:
            return None
        return failure[0]

    def knows(self, name: str) -> bool:
        """Is `name` discovered? A lazy loader asks the bare modules it has not asked yet
        for their names first (a call by registered name finds its module)."""
        with self._lock:
            hit = self._found.get(name)
            entries = list(self._all)
        if hit is not None:
            return True
        if not self.lazy:
            return False
        for f in self.identities.pending(entries):
            with suppress(PlughostError):  # its own error, recorded for it
                if self._identify(f).name == name:
                    return True
        return False

    def forget(self, name: str) -> None:
        """Unload `name` if loaded and drop it from discovery (until the next rescan)."""
        if self.manager.get(name) is not None:
            self.unload(name)
        with self._lock:
            paths = {f.path for f in self._all if f.name == name}
            self.identities.forget(paths)
            self._walked = [f for f in self._walked if f.path not in paths]
            self._found.pop(name, None)
            self._extra.pop(name, None)
            self._failures.pop(name, None)
            self._all = [f for f in self._all if f.name != name]

    # -- loading -------------------------------------------------------------------------

    def load_all(self) -> tuple[int, list[PlughostError]]:
        """Discover, then load every plugin (or, when lazy, only discover).

        Returns (plugins loaded or discovered, errors); one bad plugin never stops the rest.
        """
        self.discover_all()
        with self._lock:
            entries = list(self._all)
        if not self.lazy:
            # Every bare module is asked its name first, so two that register one name are
            # refused together, whichever of them the walk met first.
            for f in self.identities.pending(entries, retry=True):
                with suppress(PlughostError):  # its error is now in its entry
                    self._identify(f)
            with self._lock:
                entries = list(self._all)
        errors: list[PlughostError] = [f.error for f in entries if f.error is not None]
        good = [f for f in entries if f.error is None]
        if self.lazy:
            return len(good), errors
        count = 0
        for f in good:
            try:
                self.ensure_loaded(f.name)
                count += 1
            except PlughostError as exc:
                errors.append(exc)
            except Exception as exc:  # a bug of ours must not stop the other plugins
                logger.exception("unexpected error loading %s", f.name)
                errors.append(PluginLoadError(f"unexpected error: {exc!r}", plugin=f.name,
                                              path=f.path))
        return count, errors

    def ensure_loaded(self, name: str) -> None:
        """Load `name` unless the registry already has it. Concurrent callers start
        exactly one instance."""
        if self.manager.get(name) is not None:
            return
        found = self._lookup(name)
        if found.provisional:  # a bare module not asked yet: it is loaded by its name
            name = self._identify(found).name
            if self.manager.get(name) is not None:
                return
        with self._name_lock(name):
            if self.manager.get(name) is not None:
                return
            plugin = self._build(self._lookup(name))
            try:
                self.manager.register(plugin)
            except PlughostError as exc:
                self._discard(plugin)
                self._failed(name, exc)
                raise
            self._loaded(name)

    def load_for_call(self, name: str) -> None:
        """`ensure_loaded` for a call to an unloaded plugin (lazy loading). A load that
        failed less than `LOAD_RETRY_AFTER` seconds ago is not retried: the call gets
        `PluginUnavailable` saying why the load failed."""
        if not self.lazy:  # plugins load at start or when asked, never by a call
            cause = self.load_failure(name)
            if cause is not None:
                raise _unavailable(name, cause)
            raise PluginNotFound("is discovered but not loaded", plugin=name)
        with self._lock:
            failure = self._failures.get(name)
            found = self._found.get(name)
        if failure is not None and time.monotonic() - failure[1] < LOAD_RETRY_AFTER:
            raise _unavailable(name, failure[0])
        if found is not None and found.provisional and found.error is not None \
                and not self.identities.outdated(found):
            raise _unavailable(name, found.error)  # asked once; again when it changes
        self.ensure_loaded(name)

    def load_wasm(self, name: str) -> None:
        """Load the discovered wasm plugin `name`."""
        found = self._lookup(name)
        if found.kind != "wasm":
            raise PluginLoadError(f"is a {found.kind} plugin, not wasm", plugin=name,
                                  path=found.path)
        self.ensure_loaded(name)

    def load_wasm_from_path(self, path: str | Path, name: str | None = None) -> str:
        """Load a wasm plugin from any path (a .wasm file or a plugin dir); returns its name.

        The plugin is remembered, so `reload(name)` works on it like on any other.
        """
        p = Path(path)
        if p.is_dir():
            lm = load_manifest(p)
            found = Found(lm.name, p, lm.manifest.runtime, manifest=lm, warnings=lm.warnings)
        else:
            stem = name or p.name.removesuffix(".wasm")
            found = scan_single(p, stem)
        if found.error is not None:
            raise found.error
        if found.kind != "wasm":
            raise PluginLoadError(f"is a {found.kind} plugin, not wasm", plugin=found.name,
                                  path=p)
        with self._lock:
            self._extra[found.name] = found
            self._found[found.name] = found
        self.ensure_loaded(found.name)
        return found.name

    def reload(self, name: str) -> None:
        """Load the plugin again from disk and swap it in atomically.

        The new version is built and initialised first; if that fails, the old version keeps
        serving and the error is raised (and written to the plugin's log).
        """
        with self._name_lock(name):
            found = self._lookup(name)
            try:
                plugin = self._build(found)
            except PlughostError as exc:  # _build already logged it and emitted "error"
                if self.manager.get(name) is not None:
                    self.manager.log_for(name).error(
                        f"reload failed, the running version keeps serving: {exc}",
                        source="host")
                raise
            try:
                self.manager.replace(plugin)
            except PlughostError as exc:
                self._discard(plugin)
                self._failed(name, exc)
                raise
            self._loaded(name)

    def load_or_reload(self, name: str) -> None:
        """Rescan first (so a plugin added since start is found), then load or reload."""
        self.discover_all()
        if self.manager.get(name) is not None:
            self.reload(name)
        else:
            self.ensure_loaded(name)

    def unload(self, name: str) -> None:
        """Unload `name` (drains its calls); it stays discovered, so a lazy loader will load
        it again on the next call."""
        with self._name_lock(name):
            self.manager.unregister(name)

    # -- hot reload ----------------------------------------------------------------------

    def watch_dir(self, debounce_ms: int = 500) -> Watcher:
        """Watch the plugin directory and apply changes as they happen (docs/operations.md)."""
        with self._lock:
            if self._watcher is not None and self._watcher.running:
                return self._watcher
            self._watcher = Watcher(self.plugin_dir, self.sync, debounce_ms=debounce_ms)
            watcher = self._watcher
        watcher.start()
        return watcher

    def sync(self, changed: Iterable[Path] = ()) -> list[Action]:
        """Bring the loaded plugins in line with the tree after `changed` paths changed:
        rescan, then remove, load, reload or report each plugin as `reconcile.plan` says.
        One plugin's failure is logged and evented as its own; the rest is applied.
        Returns the actions taken (the watcher calls this for every batch)."""
        changed = set(changed)
        root = self.plugin_dir.absolute()
        before = {f.name: f for f in self._records()}
        if not self.plugin_dir.is_dir():  # the whole tree is gone: so are its plugins
            actions = [Action("remove", name) for name, f in sorted(before.items())
                       if f.path.absolute().is_relative_to(root)]
        else:
            try:
                self.discover_all()
            except PlughostError as exc:
                logger.warning("rescan failed: %s", exc)
                return []
            after = {f.name: f for f in self._records()}
            actions = plan(before, after, changed, lazy=self.lazy,
                           loaded=lambda name: self.manager.get(name) is not None)
        for action in actions:
            carry_out(action, self)
        return actions

    def not_applied(self, name: str, exc: PlughostError, *, emit: bool) -> None:
        logger.warning("sync: %s: %s", name, exc)
        self.manager.log_for(name).error(f"change not applied: {exc}", source="host")
        if emit:
            self.manager.emit("error", name, str(exc))

    def stop_watch(self) -> None:
        with self._lock:
            watcher, self._watcher = self._watcher, None
        if watcher is not None:
            watcher.stop()

    @property
    def watcher(self) -> Watcher | None:
        return self._watcher

    def __enter__(self) -> Loader:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop watching, unload what this loader loaded and remove its private copies."""
        self.stop_watch()
        with self._lock:
            names = list(self._found)
        for name in names:
            if self.manager.get(name) is not None:
                with suppress(PlughostError):
                    self.unload(name)
        self.stager.close()
        self.manager.set_lazy_loader(None)
        for runtime in self.runtimes.values():
            runtime.close()

    # -- asyncio twins -------------------------------------------------------------------

    async def aload_all(self) -> tuple[int, list[PlughostError]]:
        return await self.manager.run_blocking(self.load_all)

    async def aensure_loaded(self, name: str) -> None:
        await self.manager.run_blocking(self.ensure_loaded, name)

    async def areload(self, name: str) -> None:
        await self.manager.run_blocking(self.reload, name)

    async def aload_or_reload(self, name: str) -> None:
        await self.manager.run_blocking(self.load_or_reload, name)

    async def aunload(self, name: str) -> None:
        await self.manager.run_blocking(self.unload, name)

    # -- internals -----------------------------------------------------------------------

    @contextmanager
    def _name_lock(self, name: str) -> Iterator[None]:
        with self._lock:
            lock = self._name_locks.setdefault(name, threading.Lock())
        with lock:
            yield

    def _failed(self, name: str, exc: PlughostError) -> None:
        with self._lock:
            self._failures[name] = (exc, time.monotonic())

    def _loaded(self, name: str) -> None:
        with self._lock:
            self._failures.pop(name, None)

    @staticmethod
    def _discard(plugin: Plugin) -> None:
        """Shut down a built plugin the registry refused (its private copy goes with it)."""
        plugin.shutdown()

    def _lookup(self, name: str) -> Found:
        with self._lock:
            found = self._found.get(name)
        if found is None:
            raise PluginNotFound(f"not discovered in {self.plugin_dir}", plugin=name)
        if found.provisional and self.identities.asked_and_failed(found):
            return replace(found, error=None)  # an explicit load asks it again
        if found.error is not None:
            raise found.error
        return found

    def _build(self, found: Found) -> Plugin:
        """Stage (verify, copy/unpack) and start one version; nothing is registered here."""
        log = self.manager.log_for(found.name)
        try:
            staged = self.stager.stage(found)
            if found.bare:
                staged = self._same_name(found, staged)
            name = staged.source.name
            runtime = self.runtimes.get(staged.source.kind)
            if runtime is None:
                release_private_copy(staged.source)
                raise PluginLoadError(f"no runtime for kind {staged.source.kind!r} "
                                      f"(have: {', '.join(sorted(self.runtimes))})",
                                      plugin=name, path=found.path)
            context = StartContext(
                host=self.manager.host, log=log, caller=self.manager,
                on_event=lambda kind, detail: self.manager.emit(kind, name, detail),
                verified=self.stager.require)
            # A load enters the plugin on the call path: its init calling back into
            # itself (directly or round a cycle) is refused, not a wait on its own load.
            with chain.entered(name, None):
                plugin = runtime.start(staged, context)
        except Exception as exc:
            if not isinstance(exc, PlughostError):  # a bug of ours is still this plugin's
                logger.exception("unexpected error loading %s", found.name)
                exc = PluginLoadError(f"unexpected error: {exc!r}", plugin=found.name,
                                      path=found.path)
            log.error(f"load failed: {exc.message}", source="host")
            self.manager.emit("error", found.name, str(exc))
            self._failed(found.name, exc)
            raise exc from None
        log.info(f"loaded version {plugin.registration.version} from {found.path}",
                 source="host")
        if staged.note:
            log.warning(staged.note, source="host")
        return plugin


def _unavailable(name: str, cause: PlughostError) -> PluginUnavailable:
    return PluginUnavailable(f"discovered but failed to load: {cause.message}", plugin=name,
                             path=cause.path)


def _renamed(found: Found, name: str) -> Found:
    if found.error is not None:
        found.error.plugin = name
    return replace(found, name=name)
