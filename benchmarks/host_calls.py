"""Host calls: what a host function's answer costs to write as Go's JSON, and what a whole
host call costs through the dispatcher, each against a baseline measured in the same run.

- encode: `gojson.dumps` (Go's bytes) vs `json.dumps` with the same options (Python's
  bytes), for a small answer and for a 10,000-row `db_query` result (with and without
  floats, which Go writes otherwise than Python).
- dispatch: `HostFunctions.dispatch("cache_get", ...)` (grant check, deadline, decode,
  backend, Go JSON) vs the backend's `MemoryCache.get` alone.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import Any

from _common import fmt_ns, fmt_ratio, header, paired_ratio, parser, table, time_batch

from plughost.host import HostSettings, default_host_functions, gojson
from plughost.host.dispatch import HostContext
from plughost.host.grants import DEFAULT_PERMISSIONS, Grants
from plughost.logs import PluginLog


def _python(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":"), sort_keys=True,
                      ensure_ascii=False).encode()


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    quick = bool(args.quick)
    header("host_calls: Go's JSON and the dispatcher vs their baselines", quick)
    rounds = 3 if quick else 7
    rows = [{"id": i, "name": f"ticket {i}", "state": "open", "prio": 3,
             "created": "2020-01-01 10:00:00"} for i in range(10_000)]
    floats = [{"id": i, "ratio": i / 7, "share": 0.5} for i in range(10_000)]
    small = {"found": True, "value": "aGVsbG8="}
    cases = [("small answer", small, 2000 if quick else 20000),
             ("10,000 rows", rows, 2 if quick else 10),
             ("10,000 rows with floats", floats, 2 if quick else 10)]
    out = []
    for label, value, n in cases:
        go, py = [], []
        for _ in range(rounds):
            go.append(time_batch(lambda v=value: gojson.dumps(v), n))
            py.append(time_batch(lambda v=value: _python(v), n))
        out.append([label, fmt_ns(sorted(go)[rounds // 2]), fmt_ns(sorted(py)[rounds // 2]),
                    fmt_ratio(paired_ratio(go, py))])
    print(table(["encode", "gojson.dumps", "json.dumps", "ratio"], out))

    with tempfile.TemporaryDirectory() as tmp:
        host = default_host_functions(settings=HostSettings(data_dir=Path(tmp)))
        ctx = HostContext("p", PluginLog("p"), grants=Grants("p", DEFAULT_PERMISSIONS))
        host.dispatch(ctx, "cache_set", b'{"key":"k","value":"aGVsbG8="}')
        cache = host.api.cache  # type: ignore[union-attr]
        n = 2000 if quick else 20000
        full, bare = [], []
        for _ in range(rounds):
            full.append(time_batch(lambda: host.dispatch(ctx, "cache_get", b'{"key":"k"}'), n))
            bare.append(time_batch(lambda: cache.get("p", "k"), n))
        print(table(["call", "dispatch(cache_get)", "MemoryCache.get", "ratio"],
                    [["cache_get", fmt_ns(sorted(full)[rounds // 2]),
                      fmt_ns(sorted(bare)[rounds // 2]), fmt_ratio(paired_ratio(full, bare))]]))


if __name__ == "__main__":
    main()
