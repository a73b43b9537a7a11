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
            return str(int(x))
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


def _encode(value: Any, out: list[str]) -> None:
    if value is None:
        out.append("null")
    elif value is True:
        out.append("true")
    elif value is False:
        out.append("false")
    elif isinstance(value, str):
        out.append(json.dumps(value, ensure_ascii=False).translate(_TABLE))
    elif isinstance(value, int):
        out.append(str(int(value)))
    elif isinstance(value, float):
        out.append(_float(value))
    elif isinstance(value, dict):
        out.append("{")
        for i, key in enumerate(sorted(value, key=str)):
            if i:
                out.append(",")
            _encode(str(key), out)
            out.append(":")
            _encode(value[key], out)
        out.append("}")
    elif isinstance(value, list | tuple):
        out.append("[")
        for i, item in enumerate(value):
            if i:
                out.append(",")
            _encode(item, out)
        out.append("]")
    else:
        raise TypeError(f"Object of type {type(value).__name__} is not JSON serializable")


def dumps(value: Any) -> bytes:
    """`value` (JSON-able: dict, list, str, int, float, bool, None) as Go would marshal
    it."""
    out: list[str] = []
    _encode(value, out)
    text = "".join(out)
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
