"""Discovery cost: Loader.discover_all vs a bare os.scandir walk of the same tree.

Tree 1 (files): 10,000 single-file plugins `<name>.wasm` (a few bytes each; discovery does
not read them) in 100 dirs x 100 files.
Tree 2 (manifests): 1,000 plugin directories (10 groups x 100), each with a plugin.yaml like
examples/plugins/hello's and its tiny .wasm; manifests are parsed and validated at discovery.

For tree 2 the steps in between show where the time goes:
  bare walk -> + read every plugin.yaml -> + yaml.safe_load (pure-Python loader, what
  plughost calls) -> + parse_manifest (pydantic validation, path checks) = discover_all.
  A reference row parses with yaml's libyaml-based CSafeLoader instead.

    .venv/bin/python benchmarks/discovery.py [--quick] [--json out.json]
"""

from __future__ import annotations

import gc
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml
from _common import (
    Stats,
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
from plughost.manifest import parse_manifest

MANIFEST = """\
name: {name}
version: 1.0.0
runtime: wasm
wasm: {name}.wasm
description: Says hello; hand-written WebAssembly text (hello.wat), built by scripts/build_wat.py
author: plughost
license: Apache-2.0
permissions: [config]
config:
  greeting: Hello from a wasm plugin!
resources: {{memory_mb: 8, call_timeout_ms: 1000}}
"""
STUB = b"\0asm\1\0\0\0"  # never read by discovery


def make_files_tree(root: Path, dirs: int, per_dir: int) -> int:
    for d in range(dirs):
        sub = root / f"group{d:03d}" / f"sub{d % 7}"
        sub.mkdir(parents=True)
        for f in range(per_dir):
            (sub / f"p{d:03d}-{f:03d}.wasm").write_bytes(STUB)
    return dirs * per_dir


def make_manifest_tree(root: Path, groups: int, per_group: int) -> int:
    for g in range(groups):
        for i in range(per_group):
            name = f"m{g:02d}-{i:03d}"
            pdir = root / f"team{g:02d}" / name
            pdir.mkdir(parents=True)
            (pdir / "plugin.yaml").write_text(MANIFEST.format(name=name))
            (pdir / f"{name}.wasm").write_bytes(STUB)
    return groups * per_group


def bare_walk(root: str) -> list[str]:
    """The floor: a recursive os.scandir walk collecting every .wasm path."""
    out: list[str] = []
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
                elif e.name.endswith(".wasm"):
                    out.append(e.path)
    return out


def manifest_walk(root: str, parse: Callable[[str, Path], object] | None) -> list[object]:
    """A walk that stops at plugin directories and reads (and maybe parses) plugin.yaml."""
    out: list[object] = []
    stack = [root]
    while stack:
        with os.scandir(stack.pop()) as it:
            for e in it:
                if not e.is_dir(follow_symlinks=False):
                    continue
                manifest = os.path.join(e.path, "plugin.yaml")
                if os.path.isfile(manifest):
                    with open(manifest, encoding="utf-8") as f:
                        text = f.read()
                    out.append(parse(text, Path(e.path)) if parse else text)
                else:
                    stack.append(e.path)
    return out


def _safe_load(text: str, _: Path) -> object:
    return yaml.safe_load(text)


def _c_safe_load(text: str, _: Path) -> object:
    return yaml.load(text, Loader=yaml.CSafeLoader)


def _full(text: str, pdir: Path) -> object:
    return parse_manifest(yaml.safe_load(text), plugin_dir=pdir,
                          manifest_path=pdir / "plugin.yaml")


def run(variants: dict[str, Callable[[], int]], expect: int, reps: int
        ) -> dict[str, list[int]]:
    for label, fn in variants.items():  # warm-up, and every variant finds the same count
        got = fn()
        if got != expect:
            raise SystemExit(f"{label}: found {got}, expected {expect}")
    samples: dict[str, list[int]] = {k: [] for k in variants}
    for round_no in range(reps):
        for label, fn in shuffled(list(variants.items()), round_no):
            gc.collect()
            samples[label].append(time_once(fn))
    return samples


def report(title: str, samples: dict[str, list[int]], base_key: str, count: int,
           steps: bool) -> list[dict[str, Any]]:
    """Ratios and steps are medians of same-round ratios/differences (paired_ratio)."""
    base = samples[base_key]
    rows, out = [], []
    prev: list[int] | None = None
    for label, xs in samples.items():
        s = Stats.of(label, xs)
        delta = None if prev is None or not steps or label.startswith("(") else \
            paired_delta(xs, prev)
        ratio = paired_ratio(xs, base)
        rows.append([label, fmt_ns(s.median), fmt_ns(s.min), fmt_ns(s.samples[-1]),
                     fmt_ns(s.median / count), fmt_ratio(ratio),
                     "" if delta is None else fmt_delta(delta)])
        out.append({"label": label, "median_ns": s.median, "min_ns": s.min,
                    "max_ns": s.samples[-1], "n": s.n, "per_plugin_ns": s.median / count,
                    "ratio_vs_bare": ratio, "step_ns": delta})
        if not label.startswith("("):
            prev = xs
    print(f"\n   {title}")
    print(table(["", "median", "min", "max", "per plugin", "vs bare walk", "step"], rows))
    print("   (vs bare walk / step: median of same-round ratios / differences)")
    return out


def main() -> int:
    args = parser(__doc__.splitlines()[0]).parse_args()
    quick: bool = args.quick
    (dirs, per_dir), (groups, per_group), reps = (
        ((10, 100), (2, 50), 5) if quick else ((100, 100), (10, 100), 15))
    header("discovery: Loader.discover_all vs a bare os.scandir walk", quick)
    summary: dict[str, Any] = {"benchmark": "discovery", "quick": quick}

    with tempfile.TemporaryDirectory(prefix="plughost-bench-") as tmp:
        engine = WasmEngine(Path(tmp) / "modcache")  # never used: discovery compiles nothing
        manager = Manager()

        files = Path(tmp) / "files"
        n_files = make_files_tree(files, dirs, per_dir)
        loader = Loader(files, manager, engine=engine)
        stats = run({
            "bare os.scandir walk": lambda: len(bare_walk(str(files))),
            "Loader.discover_all": loader.discover_all,
        }, n_files, reps)
        summary["files"] = {"count": n_files, "rows": report(
            f"tree 1: {n_files:,} .wasm files in {dirs} dirs x {per_dir} "
            f"({reps} runs each, interleaved)", stats, "bare os.scandir walk", n_files,
            steps=False)}
        from plughost import discovery, manifest

        inclusive, own = profile(loader.discover_all, 2 if quick else 5, [
            ("Loader.discover_all", Loader, "discover_all"),
            ("  discovery.scan", discovery, "scan"),
            ("    discovery._walk", discovery, "_walk"),
            ("      discovery.is_ignored", discovery, "is_ignored"),
            ("      discovery.single_file", discovery, "single_file|_single"),
            ("        is_valid_name", discovery, "is_valid_name"),
            ("    discovery._mark_duplicates", discovery, "_mark_duplicates"),
        ], top=8)
        print(f"\n   cProfile of discover_all on tree 1, per scan of {n_files:,} "
              "(profiler-inflated; read the shares):")
        print(profile_tables(inclusive, own))
        summary["files"].update(profile_inclusive=inclusive, profile_own=own)

        mtree = Path(tmp) / "manifests"
        n_dirs = make_manifest_tree(mtree, groups, per_group)
        mloader = Loader(mtree, manager, engine=engine)
        root = str(mtree)
        stats = run({
            "bare os.scandir walk": lambda: len(bare_walk(root)),
            "+ read each plugin.yaml": lambda: len(manifest_walk(root, None)),
            "+ yaml.safe_load (pure Python)": lambda: len(manifest_walk(root, _safe_load)),
            "+ parse_manifest (pydantic, paths)": lambda: len(manifest_walk(root, _full)),
            "Loader.discover_all": mloader.discover_all,
            "(ref: read + yaml CSafeLoader)": lambda: len(manifest_walk(root, _c_safe_load)),
        }, n_dirs, reps)
        rows = report(f"tree 2: {n_dirs:,} plugin dirs with plugin.yaml "
                      f"({reps} runs each, interleaved)", stats, "bare os.scandir walk",
                      n_dirs, steps=True)

        inclusive, own = profile(mloader.discover_all, 2 if quick else 5, [
            ("Loader.discover_all", Loader, "discover_all"),
            ("  discovery.scan", discovery, "scan"),
            ("    load_manifest", manifest, "load_manifest"),
            ("      yaml.safe_load", yaml, "safe_load"),
            ("      parse_manifest", manifest, "parse_manifest"),
            ("        Manifest.model_validate", manifest, "Manifest.model_validate"),
            ("        resolve_inside", manifest, "resolve_inside"),
            ("        _unknown_keys", manifest, "_unknown_keys"),
        ])
        print(f"\n   cProfile of discover_all on tree 2, per scan of {n_dirs:,} "
              "(profiler-inflated; read the shares):")
        print(profile_tables(inclusive, own))
        summary["manifests"] = {"count": n_dirs, "rows": rows,
                                "profile_inclusive": inclusive, "profile_own": own}
        manager.close()
        engine.close()
    write_json(args.json, summary)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
