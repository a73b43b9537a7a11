"""Go duration strings (`"10s"`, `"1m30s"`, `"1.5h"`), as GoatFlow's manifests write timeouts.

The syntax is Go's `time.ParseDuration`: an optional sign, then one or more decimal numbers
(a fraction allowed) each followed by a unit `ns`, `us` (or `µs`, `μs`), `ms`, `s`, `m`,
`h`; `"0"` alone is zero. No days, no spaces, no unit-less numbers. Parsed by hand because
no kept Python library reads Go's syntax exactly (isodate and pytimeparse each accept other
forms and refuse some of Go's).
"""

from __future__ import annotations

import re

__all__ = ["parse_go_duration"]

_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6, "ms": 1e-3, "s": 1.0,
          "m": 60.0, "h": 3600.0}
_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_MAX_SECONDS = 9_223_372_036.854775807  # Go's int64 nanoseconds


def parse_go_duration(text: str) -> float:
    """Seconds in `text`; `ValueError` saying what is wrong (as Go would refuse it)."""
    if not isinstance(text, str):
        raise ValueError(f"expected a Go duration string such as '10s', got {text!r}")
    s = text
    sign = 1.0
    if s[:1] in "+-" and s:
        sign, s = (-1.0 if s[0] == "-" else 1.0), s[1:]
    if s == "0":
        return 0.0
    if not s:
        raise ValueError(f"invalid duration {text!r}")
    total, pos = 0.0, 0
    while pos < len(s):
        m = _PART.match(s, pos)
        if m is None:
            rest = s[pos:]
            if re.match(r"[\d.]+$", rest):
                raise ValueError(f"missing unit in duration {text!r} (e.g. '{rest}s')")
            raise ValueError(f"invalid duration {text!r} (units: ns, us, ms, s, m, h)")
        total += float(m[1]) * _UNITS[m[2]]
        pos = m.end()
    if total > _MAX_SECONDS:
        raise ValueError(f"duration {text!r} is out of range")
    return sign * total
