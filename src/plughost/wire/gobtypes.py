"""Go types as gob sees them, described from Python dataclasses.

gob matches struct fields by *name* and only distinguishes a handful of kinds (bool, signed,
unsigned, float, complex, string, []byte, interface, plus slices, arrays, maps and structs), so a
Go struct is described by a dataclass whose field names are the Go field names:

    @dataclass
    class InitRequest:
        Config: dict[str, str] = field(default_factory=dict)
        HostAPIID: Uint32 = 0

Python's `int` is ambiguous (Go's int and uint are different gob kinds and Go refuses to mix
them), so unsigned fields are annotated with `Uint`, `Uint32` or `Uint64`. `X | None` means "may
be nil" (a pointer, map, slice or interface left out). The Go type name of a struct is the class
name unless the class sets `__gob_name__`; it only matters for byte-exact output, since the
receiver matches by structure and field names. Fields whose name is not exported in Go's sense
(not starting with an upper-case letter) are not sent, as Go skips unexported fields.
"""

from __future__ import annotations

import dataclasses
import enum
import types
import typing
from dataclasses import dataclass
from typing import Annotated, Any, Union

from plughost.errors import PlughostError


class GobError(PlughostError):
    """A gob value could not be encoded or decoded: malformed, truncated or mismatched data."""


class GobLimitError(GobError):
    """A configured cap was hit (message length, nesting depth, type definitions)."""


class GobEOF(GobError, EOFError):
    """The stream ended cleanly, between two values."""


class Kind(enum.IntEnum):
    """The predefined gob type ids; they double as the kinds of basic values."""

    BOOL = 1
    INT = 2
    UINT = 3
    FLOAT = 4
    BYTES = 5
    STRING = 6
    COMPLEX = 7
    INTERFACE = 8


@dataclass(frozen=True)
class Basic:
    """A predefined gob type. `go_name` is Go's spelling (int64, uint32, ...): gob sends all
    signed ints alike, but the spelling appears in the names of unnamed slice/map types."""

    kind: Kind
    go_name: str

    def go_string(self) -> str:
        return self.go_name


@dataclass(frozen=True)
class Slice:
    elem: GoType
    name: str = ""  # a named Go slice type (type Names []string); "" for []T

    def go_string(self) -> str:
        return self.name or "[]" + self.elem.go_string()


@dataclass(frozen=True)
class Array:
    elem: GoType
    length: int
    name: str = ""

    def go_string(self) -> str:
        return self.name or f"[{self.length}]{self.elem.go_string()}"


@dataclass(frozen=True)
class Map:
    key: GoType
    elem: GoType
    name: str = ""

    def go_string(self) -> str:
        return self.name or f"map[{self.key.go_string()}]{self.elem.go_string()}"


@dataclass(frozen=True)
class Field:
    name: str  # the Go field name (also the Python attribute)
    type: GoType
    nilable: bool = False  # annotated `X | None`: None when the sender left it out


class Struct:
    """A Go struct backed by a dataclass. Equality is identity of the class, as in Go two
    distinct named types with the same fields are distinct types (each gets its own id)."""

    def __init__(self, cls: type[Any], name: str, pkg: str) -> None:
        self.cls = cls
        self.name = name
        self.pkg = pkg
        self.fields: tuple[Field, ...] = ()
        self.by_name: dict[str, Field] = {}

    def go_string(self) -> str:
        if not self.name:
            inner = "; ".join(f"{f.name} {f.type.go_string()}" for f in self.fields)
            return f"struct {{ {inner} }}" if inner else "struct {}"
        return f"{self.pkg}.{self.name}" if self.pkg else self.name

    def zero(self) -> object:
        return self.cls(**{f.name: None if f.nilable else zero_value(f.type)
                           for f in self.fields})

    def __repr__(self) -> str:
        return f"Struct({self.cls.__qualname__})"


GoType = Basic | Slice | Array | Map | Struct

BOOL = Basic(Kind.BOOL, "bool")
INT = Basic(Kind.INT, "int")
INT32 = Basic(Kind.INT, "int32")
INT64 = Basic(Kind.INT, "int64")
UINT = Basic(Kind.UINT, "uint")
UINT32 = Basic(Kind.UINT, "uint32")
UINT64 = Basic(Kind.UINT, "uint64")
FLOAT64 = Basic(Kind.FLOAT, "float64")
BYTES = Basic(Kind.BYTES, "[]uint8")
STRING = Basic(Kind.STRING, "string")
COMPLEX128 = Basic(Kind.COMPLEX, "complex128")
INTERFACE = Basic(Kind.INTERFACE, "interface {}")

# Annotations for dataclass fields (plain ints to mypy, unsigned to gob).
Uint = Annotated[int, UINT]
Uint32 = Annotated[int, UINT32]
Uint64 = Annotated[int, UINT64]
Int64 = Annotated[int, INT64]


@dataclass(frozen=True)
class Iface:
    """A non-nil interface value: the name the concrete type is registered under in Go
    (gob.Register / RegisterName) and the value. `type` may be omitted for values whose type
    can be inferred (dataclasses, bool, int, float, str, bytes)."""

    name: str
    value: object
    type: GoType | None = dataclasses.field(default=None, compare=False)


_PLAIN: dict[object, GoType] = {
    bool: BOOL, int: INT, float: FLOAT64, str: STRING, bytes: BYTES,
    complex: COMPLEX128, object: INTERFACE, Any: INTERFACE, Iface: INTERFACE,
}
_structs: dict[type[Any], Struct] = {}


def struct_type(cls: type[Any]) -> Struct:
    """The Struct for a dataclass, built once (and before its fields, so recursive types work)."""
    st = _structs.get(cls)
    if st is not None:
        return st
    if not dataclasses.is_dataclass(cls):
        raise GobError(f"{cls!r} is not a dataclass")
    st = Struct(cls, getattr(cls, "__gob_name__", cls.__name__), getattr(cls, "__gob_pkg__", ""))
    _structs[cls] = st
    try:
        hints = typing.get_type_hints(cls, include_extras=True)
        st.fields = tuple(Field(f.name, go_type(hints[f.name]), _nilable(hints[f.name]))
                          for f in dataclasses.fields(cls) if f.name[:1].isupper())
    except Exception:
        del _structs[cls]
        raise
    st.by_name = {f.name: f for f in st.fields}
    return st


def _nilable(hint: object) -> bool:
    if typing.get_origin(hint) is Annotated:
        return _nilable(typing.get_args(hint)[0])
    return (typing.get_origin(hint) in (Union, types.UnionType)
            and type(None) in typing.get_args(hint))


def go_type(hint: object) -> GoType:
    """The GoType for a type hint (or a GoType, returned as is)."""
    if isinstance(hint, Basic | Slice | Array | Map | Struct):
        return hint
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Annotated:
        for meta in getattr(hint, "__metadata__", ()):
            if isinstance(meta, Basic | Slice | Array | Map | Struct):
                return meta
        return go_type(args[0])
    if origin is Union or origin is types.UnionType:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return go_type(rest[0])  # X | None: nil-able, nil sends nothing
        raise GobError(f"no gob type for the union {hint!r}")
    if origin is list and len(args) == 1:
        return Slice(go_type(args[0]))
    if origin is dict and len(args) == 2:
        return Map(go_type(args[0]), go_type(args[1]))
    plain = _PLAIN.get(hint)
    if plain is not None:
        return plain
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return struct_type(hint)
    raise GobError(f"no gob type for {hint!r}")


def infer_type(value: object) -> GoType:
    """The GoType of a Python value that carries its type (no list or dict: say the type)."""
    if value is None or isinstance(value, Iface):
        return INTERFACE
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return struct_type(type(value))
    plain = _PLAIN.get(type(value))
    if plain is None or plain is INTERFACE:
        raise GobError(f"cannot infer a gob type for {type(value).__name__}; pass the type")
    return plain


def zero_value(t: GoType) -> object:
    """What Go leaves in a field the sender omitted (gob omits zero fields)."""
    if isinstance(t, Basic):
        return {Kind.BOOL: False, Kind.INT: 0, Kind.UINT: 0, Kind.FLOAT: 0.0, Kind.BYTES: b"",
                Kind.STRING: "", Kind.COMPLEX: 0j, Kind.INTERFACE: None}[t.kind]
    if isinstance(t, Slice):
        return []
    if isinstance(t, Map):
        return {}
    if isinstance(t, Array):
        return [zero_value(t.elem) for _ in range(t.length)]
    return t.zero()
