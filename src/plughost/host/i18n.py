"""Translations: one registry of `<namespace>.<key>` for every plugin and the host, and
`translate` as GoatFlow answers it.

A registration's `i18n` is GoatFlow's `{namespace, languages, translations: {lang: {key:
text}}}` (namespace empty: the plugin's name), or plughost's older `{lang: {key: text}}`
(namespace: the plugin's name). Each text is filed as `<namespace>.<key>`; a plugin may
also ask for its own keys without the namespace. A language falls back to its base
(`de-AT` to `de`), then to `en`, then the key itself is the answer.

Positional arguments are applied with Go's `fmt.Sprintf` rules (`go_sprintf`), only when
the key was found and there are arguments, as GoatFlow does; JSON numbers are Go float64,
so `%d` of a number reads `%!d(float64=5)` there and here alike.
"""

from __future__ import annotations

import json
import math
import re
import threading
from collections.abc import Mapping, Sequence
from typing import Any

from .gojson import shortest

__all__ = ["Translations", "go_sprintf", "parse_i18n"]

DEFAULT_LANGUAGE = "en"


def parse_i18n(plugin: str, spec: Mapping[str, Any]) -> tuple[str, dict[str, dict[str, str]]]:
    """`(namespace, {lang: {key: text}})` from either shape; non-text entries are dropped."""
    if isinstance(spec.get("translations"), Mapping):
        namespace = spec.get("namespace")
        ns = namespace if isinstance(namespace, str) and namespace else plugin
        tables = spec["translations"]
    else:
        ns, tables = plugin, spec
    out: dict[str, dict[str, str]] = {}
    for lang, table in tables.items():
        if isinstance(lang, str) and isinstance(table, Mapping):
            out[lang.lower()] = {k: v for k, v in table.items()
                                 if isinstance(k, str) and isinstance(v, str)}
    return ns, out


def _languages(lang: str) -> list[str]:
    lang = (lang or DEFAULT_LANGUAGE).lower().replace("_", "-")
    return list(dict.fromkeys([lang, lang.split("-")[0], DEFAULT_LANGUAGE]))


class Translations:
    """The registry: texts by language and full key, each installed by its owner (a plugin,
    or the application as `host`), replaced whole when the owner registers again."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._owners: dict[str, tuple[str, dict[str, dict[str, str]]]] = {}
        self._merged: dict[str, dict[str, str]] = {}

    def install(self, owner: str, spec: Mapping[str, Any]) -> str:
        """File `owner`'s texts (either shape); returns its namespace."""
        ns, tables = parse_i18n(owner, spec)
        with self._lock:
            self._owners[owner] = (ns, tables)
            self._rebuild()
        return ns

    def remove(self, owner: str) -> None:
        with self._lock:
            if self._owners.pop(owner, None) is not None:
                self._rebuild()

    def _rebuild(self) -> None:
        merged: dict[str, dict[str, str]] = {}
        for ns, tables in self._owners.values():
            for lang, table in tables.items():
                target = merged.setdefault(lang, {})
                for key, text in table.items():
                    target[f"{ns}.{key}"] = text
        self._merged = merged

    def lookup(self, key: str, lang: str, own: tuple[str, Mapping[str, Any]] | None = None
               ) -> str | None:
        """The text for `key` in `lang` (with fallbacks), or None. `own` is the asking
        plugin's `(name, i18n spec)`, so its own keys work without the namespace and
        before it is installed."""
        merged = self._merged
        own_ns, own_tables = parse_i18n(*own) if own is not None else ("", {})
        for candidate in _languages(lang):
            text = merged.get(candidate, {}).get(key)
            if text is None and own is not None:
                mine = own_tables.get(candidate, {})
                text = mine.get(key)
                if text is None and key.startswith(own_ns + "."):
                    text = mine.get(key[len(own_ns) + 1:])
                if text is None:
                    text = merged.get(candidate, {}).get(f"{own_ns}.{key}")
            if text is not None:
                return text
        return None

    def translate(self, key: str, lang: str, args: Sequence[Any] = (),
                  own: tuple[str, Mapping[str, Any]] | None = None) -> str:
        text = self.lookup(key, lang, own)
        if text is None:
            return key
        return go_sprintf(text, list(args)) if args else text


# -- Go's fmt.Sprintf, for the values JSON can carry -------------------------------------

_VERB = re.compile(r"%([-+# 0]*)(\d+)?(?:\.(\d+))?([a-zA-Z%]|$)")


def _go_type(v: Any) -> str:
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int | float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "[]interface {}"
    return "map[string]interface {}"


def _go_g(x: float) -> str:
    """Go's %v (and %g) of a float64: shortest digits, exponent notation when the exponent
    is below -4 or at least 6 (`1e+06`, `1.23456789e+08`, `1e-05`)."""
    if math.isinf(x):
        return "+Inf" if x > 0 else "-Inf"
    if math.isnan(x):
        return "NaN"
    if x == 0:
        return "-0" if math.copysign(1.0, x) < 0 else "0"
    digits, exp = shortest(x)
    sign = "-" if x < 0 else ""
    if exp < -4 or exp >= 6:
        mantissa = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return f"{sign}{mantissa}e{'+' if exp >= 0 else '-'}{abs(exp):02d}"
    if exp < 0:
        return f"{sign}0.{'0' * (-exp - 1)}{digits}"
    whole, frac = digits[:exp + 1].ljust(exp + 1, "0"), digits[exp + 1:]
    return sign + whole + ("." + frac if frac else "")


def _go_hex(x: float, upper: bool) -> str:
    """Go's %x of a float64: `0x1.fep+07` (shortest hex mantissa, two-digit exponent)."""
    if x == 0:
        text = "0x0p+00"
    else:
        mantissa, _, exp = float(x).hex().partition("p")
        mantissa = mantissa.rstrip("0").rstrip(".")
        e = int(exp)
        text = f"{mantissa}p{'+' if e >= 0 else '-'}{abs(e):02d}"
    return text.upper() if upper else text


def _go_v(v: Any) -> str:
    if v is None:
        return "<nil>"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int | float):
        return _go_g(float(v))
    if isinstance(v, str):
        return v
    if isinstance(v, list):
        return "[" + " ".join(_go_v(x) for x in v) + "]"
    if isinstance(v, Mapping):
        return "map[" + " ".join(f"{k}:{_go_v(v[k])}" for k in sorted(v)) + "]"
    return str(v)


def _bad(verb: str, v: Any) -> str:
    return f"%!{verb}(<nil>)" if v is None else f"%!{verb}({_go_type(v)}={_go_v(v)})"


def _pad(text: str, flags: str, width: str | None) -> str:
    if not width:
        return text
    w = int(width)
    return text.ljust(w) if "-" in flags else text.rjust(w)


def _one(verb: str, flags: str, width: str | None, prec: str | None, v: Any) -> str:
    number = isinstance(v, int | float) and not isinstance(v, bool)
    if verb == "v":
        return _pad(_go_v(v), flags, width)
    if verb == "s":
        if not isinstance(v, str):
            return _bad(verb, v)
        return _pad(v[:int(prec)] if prec is not None else v, flags, width)
    if verb == "q":
        return _pad(json.dumps(v, ensure_ascii=False), flags, width) if isinstance(v, str) \
            else _bad(verb, v)
    if verb == "t":
        return _pad(_go_v(v), flags, width) if isinstance(v, bool) else _bad(verb, v)
    if verb in "xX" and number:
        return _pad(_go_hex(float(v), verb == "X"), flags, width)
    if verb in "feEgG" and number:
        digits = 6 if prec is None else int(prec)
        if verb in "gG":
            text = _go_g(float(v)) if prec is None else format(float(v), f".{digits}{verb}")
        else:
            text = format(float(v), f"{'+' if '+' in flags else ''}.{digits}{verb}")
        return _pad(text, flags, width)
    return _bad(verb, v)  # %d %x ... of a float64, and any verb of the wrong type


def go_sprintf(fmt: str, args: list[Any]) -> str:
    """`fmt.Sprintf(fmt, args...)` for JSON values (numbers are float64), with Go's error
    texts: `%!d(float64=5)`, `%!s(MISSING)`, `%!(EXTRA string=x)`."""
    out: list[str] = []
    used = 0
    pos = 0
    for m in _VERB.finditer(fmt):
        out.append(fmt[pos:m.start()])
        pos = m.end()
        flags, width, prec, verb = m.groups()
        if not verb:  # a % at the very end
            out.append("%!(NOVERB)")
            continue
        if verb == "%":
            out.append("%")
            continue
        if used >= len(args):
            out.append(f"%!{verb}(MISSING)")
            continue
        out.append(_one(verb, flags, width, prec, args[used]))
        used += 1
    out.append(fmt[pos:])
    if used < len(args):
        extra = ", ".join(f"{_go_type(a)}={_go_v(a)}" if a is not None else "<nil>"
                          for a in args[used:])
        out.append(f"%!(EXTRA {extra})")
    return "".join(out)
