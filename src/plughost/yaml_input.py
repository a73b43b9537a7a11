"""plugin.yaml as hostile text: a safe YAML load with the checks a plugin host needs.

PyYAML's safe loader is safe from code execution, not from the rest:

- Constructors raise whatever Python raises: `!!int abc`, an empty `!!float`, a date that
  does not exist, `!!bool maybe`, a 5,000-digit number (past Python's int limit). Every
  exception is caught here and becomes one `ManifestError` with its line.
- Aliases make a document a graph, and anything that walks it (validation, `json.dumps` of
  `config` for a plugin) walks the expanded tree: 461 bytes can expand to gigabytes. The
  composed graph is measured, counting every alias as the copy it stands for, before
  anything is constructed; past the caps it is refused.
- A mapping may repeat a key and the last one silently wins, so a second `permissions:`
  further down could widen what a reviewer saw. A repeated key is an error (keys merged in
  with `<<` may be overridden, as YAML intends).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from .errors import ManifestError

# libyaml's parser when PyYAML has it: ~7x faster, which is most of discovery's cost.
_Base: type[yaml.SafeLoader] = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

#: Caps on the document with every alias expanded: nodes, scalar characters, depth.
MAX_NODES = 100_000
MAX_SCALAR_CHARS = 4 * 1024 * 1024
MAX_DEPTH = 100

_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(Exception):
    def __init__(self, message: str, node: yaml.Node | None) -> None:
        super().__init__(message)
        self.node = node


def _measure(root: yaml.Node) -> None:
    """Refuse a graph whose expansion is over the caps. Sizes are memoised per node, so an
    alias bomb is measured in time linear in its (small) graph, not in its expansion."""
    sizes: dict[int, tuple[int, int, int]] = {}  # id(node) -> (nodes, chars, depth)
    visiting: set[int] = set()
    # Iterative post-order walk: a document is at most ~1000 levels deep (libyaml's own
    # flow limit), but recursion here must not depend on that.
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            visiting.discard(key)
            children = _children(node)
            nodes, chars, depth = 1, len(node.value) if isinstance(node.value, str) else 0, 0
            for child in children:
                n, c, d = sizes[id(child)]
                nodes, chars, depth = nodes + n, chars + c, max(depth, d)
            depth += 1
            if nodes > MAX_NODES:
                raise _Refused(f"expands to more than {MAX_NODES} nodes (an alias bomb?)",
                               node)
            if chars > MAX_SCALAR_CHARS:
                raise _Refused(f"expands to more than {MAX_SCALAR_CHARS} characters "
                               "(an alias bomb?)", node)
            if depth > MAX_DEPTH:
                raise _Refused(f"nests deeper than {MAX_DEPTH} levels", node)
            sizes[key] = (nodes, chars, depth)
            continue
        if key in sizes:
            continue
        if key in visiting:  # a recursive alias (&a [*a]): infinite when expanded
            raise _Refused("holds a recursive alias", node)
        visiting.add(key)
        stack.append((node, True))
        stack.extend((child, False) for child in _children(node) if id(child) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    return []


class _CheckedLoader(_Base):  # type: ignore[misc,valid-type]
    def get_single_data(self) -> Any:
        node = self.get_single_node()
        if node is None:
            return None
        _measure(node)
        return self.construct_document(node)

    def construct_object(self, node: yaml.Node, deep: bool = False) -> Any:
        try:
            return super().construct_object(node, deep=deep)
        except (yaml.YAMLError, _Refused):
            raise
        except Exception as exc:  # a constructor's own error: bad int, float, date, bool
            value = node.value if isinstance(node.value, str) else ""
            raise _Refused(f"{_short(value, 40)!r} is not a valid {node.tag.rsplit(':', 1)[-1]}"
                           f" ({type(exc).__name__}: {_short(str(exc))})", node) from None

    def construct_mapping(self, node: yaml.Node, deep: bool = False) -> Any:
        if isinstance(node, yaml.MappingNode):
            seen: dict[Any, yaml.Node] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    first = seen.get(key)
                except TypeError:  # unhashable; the base constructor says so properly
                    continue
                if first is not None:
                    raise _Refused(f"key {key!r} appears twice (first at line "
                                   f"{first.start_mark.line + 1}); a repeated key would "
                                   "silently replace the first", key_node)
                seen[key] = key_node
        return super().construct_mapping(node, deep=deep)


def load_yaml(text: str, *, plugin: str | None, path: str | Path) -> Any:
    """Parse `text`; any problem is a ManifestError naming `plugin`, `path` and the line."""
    try:
        return yaml.load(text, Loader=_CheckedLoader)  # a SafeLoader subclass
    except _Refused as exc:
        raise ManifestError(f"invalid YAML{_at(exc.node)}: {exc}", plugin=plugin,
                            path=path) from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        at = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ManifestError(f"invalid YAML{at}: {problem}", plugin=plugin,
                            path=path) from None
    except Exception as exc:  # anything else PyYAML lets through
        raise ManifestError(f"invalid YAML value: {type(exc).__name__}: "
                            f"{_short(str(exc))}", plugin=plugin, path=path) from None


def compose(text: str) -> yaml.Node | None:
    """The node graph of `text` (already loaded once by `load_yaml`, so it is sound)."""
    return yaml.compose(text, Loader=_Base)


def _at(node: yaml.Node | None) -> str:
    if node is None:
        return ""
    return f" at line {node.start_mark.line + 1}, column {node.start_mark.column + 1}"


def _short(text: str, limit: int = 200) -> str:
    return text if len(text) <= limit else text[:limit] + "..."
