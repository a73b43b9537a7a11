"""Small shared helpers for the benchmarks: timing, statistics, tables, CLI.

Every benchmark measures its baseline in the same process and run as the thing it compares,
and reports ratios against it, so numbers from different machines are never mixed.
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

clock = time.perf_counter_ns


@dataclass(frozen=True)
class Stats:
    """Timings of one measured thing, in nanoseconds."""

    label: str
    samples: tuple[int, ...]  # sorted

    @classmethod
    def of(cls, label: str, samples: Sequence[int]) -> Stats:
        if not samples:
            raise ValueError(f"{label}: no samples")
        return cls(label, tuple(sorted(samples)))

    @property
    def n(self) -> int:
        return len(self.samples)

    @property
    def median(self) -> float:
        return float(statistics.median(self.samples))

    @property
    def mean(self) -> float:
        return float(statistics.fmean(self.samples))

    @property
    def min(self) -> float:
        return float(self.samples[0])

    def pct(self, q: float) -> float:
        """Nearest-rank percentile, q in (0, 100]."""
        rank = max(1, math.ceil(q / 100 * len(self.samples)))
        return float(self.samples[rank - 1])

    @property
    def p99(self) -> float:
        return self.pct(99)


def shuffled(items: Sequence[Any], round_no: int) -> list[Any]:
    """The items in a per-round random (but reproducible) order, so no variant always runs
    first or right after the same other variant."""
    import random

    out = list(items)
    random.Random(round_no).shuffle(out)
    return out


def paired_ratio(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Median of x[i]/y[i], where x[i] and y[i] were measured in the same round: robust to
    load from other work that comes and goes between rounds."""
    return float(statistics.median(x / y for x, y in zip(xs, ys, strict=True)))


def paired_delta(xs: Sequence[float], ys: Sequence[float]) -> float:
    """Median of x[i]-y[i] over rounds (see paired_ratio)."""
    return float(statistics.median(x - y for x, y in zip(xs, ys, strict=True)))


def time_each(fn: Callable[[], object], n: int) -> list[int]:
    """Time `n` calls of `fn` one by one (each sample includes one timer read pair)."""
    out = [0] * n
    for i in range(n):
        t0 = clock()
        fn()
        out[i] = clock() - t0
    return out


def time_batch(fn: Callable[[], object], n: int) -> float:
    """Mean ns per call over a tight loop of `n` calls (no per-call timer)."""
    t0 = clock()
    for _ in range(n):
        fn()
    return (clock() - t0) / n


def time_once(fn: Callable[[], object]) -> int:
    gc.collect()
    t0 = clock()
    fn()
    return clock() - t0


def profile(run: Callable[[], object], n: int,
            points: Sequence[tuple[str, Any, str]], top: int = 10
            ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Run `run` n times under cProfile. Returns (inclusive time per run of each function in
    `points` = (label, owner, "Class.method|alternative_name"), looked up defensively since
    src/ changes;
    the `top` functions by own time). Times are profiler-inflated: read the shares."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(n):
        run()
    prof.disable()
    raw: dict[Any, Any] = pstats.Stats(prof).stats  # type: ignore[attr-defined]
    total_own = sum(v[2] for v in raw.values())
    inclusive = []
    for label, owner, dotted in points:
        code = None
        for alternative in dotted.split("|"):  # names change as src/ evolves
            obj: Any = owner
            for part in alternative.split("."):
                obj = getattr(obj, part, None)
            obj = getattr(obj, "__wrapped__", obj)  # e.g. @contextmanager
            code = getattr(obj, "__code__", None)
            if code is not None:
                break
        v = None if code is None else raw.get(
            (code.co_filename, code.co_firstlineno, code.co_name))
        if v is None:
            continue
        inclusive.append({"function": label, "calls_per_op": v[1] / n,
                          "incl_us_per_op": v[3] / n * 1e6, "share": v[3] / total_own})
    own = []
    for (file, line, func), v in sorted(raw.items(), key=lambda kv: -kv[1][2])[:top]:
        where = f"{Path(file).parent.name}/{Path(file).name}:{line}({func})" if line else func
        own.append({"function": where, "calls_per_op": v[1] / n,
                    "own_us_per_op": v[2] / n * 1e6, "share": v[2] / total_own})
    return inclusive, own


def profile_tables(inclusive: list[dict[str, Any]], own: list[dict[str, Any]]) -> str:
    a = table(["function", "calls/op", "incl. µs/op", "share"],
              [[r["function"], f"{r['calls_per_op']:.0f}", f"{r['incl_us_per_op']:.1f}",
                f"{r['share'] * 100:.1f}%"] for r in inclusive])
    b = table(["function (top own time)", "calls/op", "own µs/op", "share"],
              [[r["function"], f"{r['calls_per_op']:.0f}", f"{r['own_us_per_op']:.1f}",
                f"{r['share'] * 100:.1f}%"] for r in own])
    return a + "\n\n" + b


def fmt_ns(ns: float) -> str:
    if ns < 1_000:
        return f"{ns:.0f} ns"
    if ns < 1_000_000:
        return f"{ns / 1_000:.2f} µs"
    if ns < 1_000_000_000:
        return f"{ns / 1_000_000:.2f} ms"
    return f"{ns / 1_000_000_000:.3f} s"


def fmt_delta(ns: float) -> str:
    return ("+" if ns >= 0 else "-") + fmt_ns(abs(ns))


def fmt_ratio(x: float) -> str:
    return f"{x:.2f}x" if x < 100 else f"{x:.0f}x"


def fmt_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    if n < 1024 * 1024:
        return f"{n / 1024:.1f} KiB"
    return f"{n / 1024 / 1024:.2f} MiB"


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    """A plain-text table that is also valid Markdown."""
    widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)
                                 ) + " |"

    sep = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(headers), sep, *(line(r) for r in rows)])


def machine() -> dict[str, str]:
    import os

    def version(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "?"

    return {
        "cpus": str(os.cpu_count()),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "wasmtime": version("wasmtime"),
        "plughost": version("plughost"),
        "pyyaml": version("PyYAML"),
        "pydantic": version("pydantic"),
    }


def parser(description: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--quick", action="store_true",
                   help="a fast smoke run (seconds): fewer, smaller repetitions")
    p.add_argument("--json", type=Path, default=None,
                   help="also write the summary as JSON to this file (used by run_all.py)")
    return p


def header(title: str, quick: bool) -> None:
    m = machine()
    print(f"== {title}{' (--quick)' if quick else ''}")
    print(f"   python {m['python']}, wasmtime {m['wasmtime']}, {m['cpus']} cpus, "
          f"{m['platform']}")
    print(f"   load average at start: {loadavg()} (other work on the machine adds noise)")


def loadavg() -> str:
    import os

    try:
        return " ".join(f"{x:.2f}" for x in os.getloadavg())
    except OSError:
        return "?"


def write_json(path: Path | None, summary: dict[str, Any]) -> None:
    if path is not None:
        path.write_text(json.dumps(summary, indent=2))


def flush() -> None:
    sys.stdout.flush()
