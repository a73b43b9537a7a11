"""hclog lines, as a go-plugin plugin writes them to stderr, read back into log records
(docs/protocol.md, "Logs").

go-plugin's plugins log with hashicorp/go-hclog, whose lines come in two forms:

- JSON (`JSONFormat: true`, what go-plugin's own client expects):
  `{"@level":"info","@message":"started","@module":"plugin","@timestamp":"...","port":7}`;
  the `@` keys are hclog's own, every other key is a field;
- text: `2024-01-02T03:04:05.678Z [INFO]  plugin: started: port=7 dir="/a b"`; the fields
  are the trailing `key=value` pairs after the message's last `:` (a value with spaces is
  quoted, without escaping, and a slice is `[a, "b c"]`, as hclog writes them). The
  logger's name stays in the message (`plugin: started`).

A line without hclog's time stamp but starting with `[LEVEL]` (Go's `log` package, as
go-plugin reads it too) takes that level. Anything else is not hclog: the caller logs it as
it is. Levels: trace and debug are debug, info is info, warn is warning, error is error.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Mapping
from typing import Any

LEVELS = {"trace": logging.DEBUG, "debug": logging.DEBUG, "info": logging.INFO,
          "warn": logging.WARNING, "warning": logging.WARNING, "error": logging.ERROR}

_TEXT = re.compile(r"^(?:\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(?:\.\d+)?(?:Z|[+-]\d\d:?\d\d)? )?"
                   r"\[(TRACE|DEBUG|INFO|WARN|ERROR)\]\s*(.*)$", re.DOTALL)
_VALUE = r'(?:"[^"]*"|\[[^\]]*\]|[^\s"\[]*)'  # quoted, a rendered slice, or a bare word
_PAIRS = re.compile(rf"^(?P<msg>.*?):(?P<kv>(?: [^\s=]+={_VALUE})+)$", re.DOTALL)
_PAIR = re.compile(rf" ([^\s=]+)=({_VALUE})")
#: A JSON line longer than this is not parsed (it is logged as it is).
MAX_JSON_LINE = 64 * 1024


def _text_value(v: Any) -> str:
    return v if isinstance(v, str) else json.dumps(v, ensure_ascii=False, default=str)


def parse(line: str) -> tuple[int, str, Mapping[str, Any]] | None:
    """(level, message, fields) for an hclog line, None for any other line."""
    text = line.rstrip("\r")
    if text.startswith("{") and len(text) <= MAX_JSON_LINE:
        try:
            entry = json.loads(text)
        except (ValueError, RecursionError):
            entry = None
        if isinstance(entry, dict) and isinstance(entry.get("@message"), str):
            level = LEVELS.get(str(entry.get("@level", "info")).lower(), logging.INFO)
            fields = {k: _text_value(v) for k, v in entry.items() if not k.startswith("@")}
            return level, entry["@message"], fields
    m = _TEXT.match(text)
    if m is None:
        return None
    level = LEVELS[m[1].lower()]
    rest = m[2]
    pairs = _PAIRS.match(rest)
    if pairs is None:
        return level, rest, {}
    fields = {k: v[1:-1] if v.startswith('"') and v.endswith('"') and len(v) > 1 else v
              for k, v in _PAIR.findall(pairs["kv"])}
    return level, pairs["msg"], fields
