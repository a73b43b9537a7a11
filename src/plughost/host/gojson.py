"""JSON as Go's `encoding/json` writes it, so that host-function results are the bytes a
GoatFlow plugin gets from GoatFlow.

What differs from `json.dumps`: no spaces; object keys sorted (Go sorts map keys, and every
GoatFlow result object is a map or a struct whose fields are already in that order); text
kept as UTF-8 rather than `\\uXXXX`, except `<`, `>`, `&`, U+2028 and U+2029, which Go
escapes; a float with an integral value written without a fraction (Go's `1`, not `1.0`),
and exponents only outside [1e-6, 1e21), written `1e-7` and `1e+21` as Go does. NaN and
infinities are refused, as Go refuses them.
"""

from __future__ import annotations

import json
import math
import re
import secrets
from decimal import Decimal
from typing import Any

_ESCAPES = {"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028",
            "\u2029": "\\u2029"}
_TABLE = str.maketrans(_ESCAPES)
_SURROGATE = re.compile("[\ud800-\udfff]")


def _float(x: float) -> str:
    """Go's float64 encoding: shortest digits; fixed notation for 1e-6 <= |x| < 1e21,
    else exponent notation with the exponent's leading zeros removed (`1e-7`, `1e+21`)."""
    if not math.isfinite(x):
        raise ValueError(f"unsupported value: {x!r}")
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    a = abs(x)
    if 1e-6 <= a < 1e21:
        if x == int(x):
            if a < 2**53:  # exact, and already the shortest digits
                return str(int(x))
            # Go writes the shortest digits, padded: 12345678901234567000, not ...7168
            digits, exp = shortest(x)
            return ("-" if x < 0 else "") + digits + "0" * (exp + 1 - len(digits))
        text = repr(x)
        if "e" not in text:
            return text
        digits, exp = shortest(x)  # e.g. 1.5e-05: fixed notation in Go
        return ("-" if x < 0 else "") + "0." + "0" * (-exp - 1) + digits
    digits, exp = shortest(x)
    mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
    return f"{'-' if x < 0 else ''}{mantissa}e{'+' if exp >= 0 else '-'}{abs(exp)}"


def shortest(x: float) -> tuple[str, int]:
    """The shortest decimal digits that round-trip `x` (no sign, no trailing zeros) and the
    power of ten of the first one: 1234.5 -> ("12345", 3)."""
    t = Decimal(repr(abs(x))).as_tuple()  # repr: Python's shortest round trip, as Go's
    assert isinstance(t.exponent, int)
    digits = "".join(map(str, t.digits))
    return digits.rstrip("0") or "0", len(digits) + t.exponent - 1


class _Floats:
    """The floats found so far and their marker, made (random) at the first one."""

    __slots__ = ("marker", "texts")

    def __init__(self) -> None:
        self.marker = ""
        self.texts: list[str] = []


def _swap_floats(value: Any, found: _Floats) -> Any:
    """`value` with each float replaced by a marker and its index (its Go text kept in
    `found`); the same object where there is none, so the common case copies nothing."""
    if isinstance(value, float):
        if not found.marker:
            found.marker = f"\u0000{secrets.token_hex(8)}:"
        found.texts.append(_float(value))
        return f"{found.marker}{len(found.texts) - 1}\u0001"
    if isinstance(value, dict):
        out = None
        for k, v in value.items():
            w = _swap_floats(v, found)
            if w is not v or not isinstance(k, str):
                if out is None:
                    out = dict(value)
                out[k] = w
        if out is not None:
            return {str(k): v for k, v in out.items()}
        return value
    if isinstance(value, list | tuple):
        items = [_swap_floats(v, found) for v in value]
        return items if any(w is not v for w, v in zip(items, value, strict=True)) \
            or isinstance(value, tuple) else value
    if value is None or isinstance(value, str | int):
        return value
    raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> bytes:
    """`value` (JSON-able: dict, list, str, int, float, bool, None) as Go would marshal
    it. The C encoder of `json` does the work; floats, which it writes otherwise than Go,
    go through as unguessable markers and are put back in Go's form."""
    found = _Floats()
    prepared = _swap_floats(value, found)
    text = json.dumps(prepared, separators=(",", ":"), sort_keys=True, ensure_ascii=False,
                      allow_nan=False).translate(_TABLE)
    if found.texts:  # json.dumps wrote each marker as "\u0000<hex>:<i>\u0001"
        floats = found.texts
        escaped = json.dumps(found.marker, ensure_ascii=False)[1:-1]
        text = re.sub(f'"{re.escape(escaped)}(\\d+)\\\\u0001"',
                      lambda m: floats[int(m[1])], text)
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate: Go writes U+FFFD for invalid text
        return _SURROGATE.sub("\ufffd", text).encode("utf-8")


_WS = " \t\n\r"


def raw_member(raw: bytes, key: str) -> bytes | None:
    """The bytes of member `key` of the JSON object `raw`, exactly as written (Go's
    `json.RawMessage`): the last member whose name matches case-insensitively when none
    matches exactly, as Go's decoder picks it. None when absent or `raw` is no object."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        return None
    decoder = json.JSONDecoder()
    i = len(text) - len(text.lstrip(_WS))
    if not text.startswith("{", i):
        return None
    i += 1
    exact: str | None = None
    folded: str | None = None
    try:
        while True:
            while i < len(text) and text[i] in _WS:
                i += 1
            if text.startswith("}", i):
                break
            name, i = decoder.raw_decode(text, i)
            while text[i] in _WS:
                i += 1
            if text[i] != ":":
                return None
            i += 1
            while text[i] in _WS:
                i += 1
            start = i
            _value, i = decoder.raw_decode(text, i)
            if name == key:
                exact = text[start:i]
            elif isinstance(name, str) and name.lower() == key.lower():
                folded = text[start:i]
            while i < len(text) and text[i] in _WS:
                i += 1
            if text.startswith(",", i):
                i += 1
    except (ValueError, IndexError):
        return None
    found = exact if exact is not None else folded
    return None if found is None else found.encode("utf-8")
