"""encoding/gob, the subset net/rpc needs, written from Go's documented wire format.

A gob stream is a sequence of length-prefixed messages. A message is either a type definition
(a negative type id and a `wireType` value describing a struct, slice, array or map) or a value
(a non-negative type id and the value). Definitions are sent once per stream, the first time a
type is used, so an Encoder and a Decoder each belong to one stream (one direction of one
connection) and keep their type tables across messages.

Values: Python bool/int/float/complex/str/bytes, lists (slices and arrays), dicts (maps),
dataclasses (structs; see gobtypes for how they describe Go structs), None (a nil interface, or
an omitted nil pointer, map or slice) and `Iface(name, value)` (a non-nil interface holding a
type registered under `name` in Go).

This module holds the Encoder and re-exports the rest: `from plughost.wire.gob import Decoder,
Encoder, GobError, Uint32, ...`. The Decoder is in gobdecode.py, shared pieces in gobformat.py.
"""

from __future__ import annotations

import threading
from collections.abc import Sequence

from plughost.wire.gobdecode import Decoder
from plughost.wire.gobformat import (
    BUILTIN_IDS,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_MESSAGE,
    DEFAULT_MAX_TYPES,
    FIRST_USER_ID,
    MAX_NAME,
    WIRE_T,
    ArrayType,
    CommonType,
    FieldType,
    MapType,
    SliceType,
    StructType,
    Wire,
    WireType,
    definition,
    float_bits,
    int_range,
    put_int,
    put_uint,
)
from plughost.wire.gobtypes import (
    BOOL,
    BYTES,
    COMPLEX128,
    FLOAT64,
    INT,
    INT32,
    INT64,
    INTERFACE,
    STRING,
    UINT,
    UINT32,
    UINT64,
    Array,
    Basic,
    GobEOF,
    GobError,
    GobLimitError,
    GoType,
    Iface,
    Int64,
    Kind,
    Map,
    Slice,
    Struct,
    Uint,
    Uint32,
    Uint64,
    go_type,
    infer_type,
    struct_type,
)

__all__ = [
    "BOOL", "BYTES", "COMPLEX128", "DEFAULT_MAX_DEPTH", "DEFAULT_MAX_MESSAGE", "DEFAULT_MAX_TYPES",
    "FLOAT64", "INT", "INT32", "INT64", "INTERFACE", "STRING", "UINT", "UINT32", "UINT64",
    "Array", "Decoder", "Encoder", "GoType", "GobEOF", "GobError", "GobLimitError", "Iface",
    "Int64", "Map", "Slice", "Struct", "Uint", "Uint32", "Uint64", "go_type", "struct_type",
]


def _named(t: GoType) -> str:
    return "" if isinstance(t, Basic) else t.name


def _is_zero(t: GoType, v: object) -> bool:
    """Whether Go would leave this struct field out: nil, or a zero basic, or an empty slice.
    Maps are sent even when empty (only nil maps are left out); arrays and structs always."""
    if v is None:
        return True
    if isinstance(t, Basic):
        if isinstance(v, bytes | bytearray | memoryview):
            return len(v) == 0
        return t.kind != Kind.INTERFACE and (v == 0 or v == "")
    return isinstance(t, Slice) and isinstance(v, list | tuple) and not v


class _EncState:
    """One encode_all() call's view of the stream's tables, committed only on success, so a
    value that fails to encode never leaves the peer without a definition we believe sent."""

    def __init__(self, enc: Encoder) -> None:
        self.ids = dict(enc._ids)
        self.defs = dict(enc._defs)
        self.sent = set(enc._sent)
        self.next_id = enc._next_id
        self.building: set[GoType] = set()


class Encoder:
    """Encodes values for one stream. encode() returns the bytes to write: any new type
    definitions, then the value. Write them in the order encode() returns them (net/rpc's
    Client and Server encode and write under one lock for that reason)."""

    def __init__(self, *, max_message: int = DEFAULT_MAX_MESSAGE,
                 max_depth: int = DEFAULT_MAX_DEPTH) -> None:
        self.max_message = max_message
        self.max_depth = max_depth
        self._ids: dict[GoType, int] = dict(BUILTIN_IDS)
        self._defs: dict[GoType, Wire] = {}
        self._sent: set[GoType] = set(BUILTIN_IDS)
        self._next_id = FIRST_USER_ID
        self._lock = threading.Lock()

    def encode(self, value: object, type: object = None) -> bytes:
        """One value; `type` (a GoType, dataclass or hint) is needed for lists and dicts."""
        return self.encode_all([(value, type)])

    def encode_all(self, items: Sequence[tuple[object, object]]) -> bytes:
        """Several values as one unit: all of them, or (on GobError) none."""
        with self._lock:
            st = _EncState(self)
            out = bytearray()
            for value, hint in items:
                t = infer_type(value) if hint is None else go_type(hint)
                defs, body = bytearray(), bytearray()
                self._send_type(st, defs, t)
                put_int(body, self._assign(st, t, _named(t)))
                if isinstance(t, Struct):
                    self._struct(st, body, defs, t, value, 1)
                else:
                    body.append(0)  # a non-struct value travels as field 0 of a struct
                    self._value(st, body, defs, t, value, 1)
                out += defs
                self._message(out, body)
            self._ids, self._defs, self._sent, self._next_id = (
                st.ids, st.defs, st.sent, st.next_id)
            return bytes(out)

    def _message(self, out: bytearray, body: bytearray) -> None:
        if len(body) > self.max_message:
            raise GobLimitError(f"gob message of {len(body)} bytes exceeds {self.max_message}")
        put_uint(out, len(body))
        out += body

    def _assign(self, st: _EncState, t: GoType, name: str) -> int:
        """The type's id, allocating ids as Go does (a struct before its fields, a slice, array
        or map after its elements) so that the bytes match Go's for the same first uses.
        `name` is what Go records: it depends on where the type is first reached."""
        if isinstance(t, Basic):
            return int(t.kind)
        got = st.ids.get(t)
        if got is not None:
            return got
        if t in st.building:  # a recursive composite: it needs its id now
            st.next_id += 1
            st.ids[t] = st.next_id
            return st.next_id
        if isinstance(t, Struct):
            st.next_id += 1
            st.ids[t] = st.next_id
            for f in t.fields:
                self._assign(st, f.type, _named(f.type) or f.type.go_string())
        else:
            st.building.add(t)
            if isinstance(t, Slice):
                self._assign(st, t.elem, _named(t.elem))
            elif isinstance(t, Array):
                self._assign(st, t.elem, "")
            else:
                self._assign(st, t.key, "")
                self._assign(st, t.elem, "")
            st.building.discard(t)
            if t not in st.ids:
                st.next_id += 1
                st.ids[t] = st.next_id
        st.defs[t] = definition(t, name, st.ids)
        return st.ids[t]

    def _send_type(self, st: _EncState, out: bytearray, t: GoType) -> None:
        """Definitions for t and what it contains, outer type first, each once per stream."""
        if isinstance(t, Basic) or t in st.sent:
            return
        tid = self._assign(st, t, _named(t))
        w = st.defs[t]
        c = CommonType(w.name, tid)
        if w.kind == "struct":
            wt = WireType(StructT=StructType(c, [FieldType(n, i) for n, i in w.fields]))
        elif w.kind == "slice":
            wt = WireType(SliceT=SliceType(c, w.elem))
        elif w.kind == "array":
            wt = WireType(ArrayT=ArrayType(c, w.elem, w.length))
        else:
            wt = WireType(MapT=MapType(c, w.key, w.elem))
        body = bytearray()
        put_int(body, -tid)
        self._struct(st, body, out, WIRE_T, wt, 1)
        self._message(out, body)
        st.sent.add(t)
        inner = ([f.type for f in t.fields] if isinstance(t, Struct) else
                 [t.key, t.elem] if isinstance(t, Map) else [t.elem])
        for sub in inner:
            self._send_type(st, out, sub)

    def _struct(self, st: _EncState, b: bytearray, defs: bytearray, t: Struct, v: object,
                depth: int) -> None:
        if not isinstance(v, t.cls):
            raise GobError(f"expected {t.cls.__name__} for gob struct, got {type(v).__name__}")
        last = -1  # field numbers are sent as deltas from the last field sent
        for i, f in enumerate(t.fields):
            fv = getattr(v, f.name)
            if _is_zero(f.type, fv):
                continue
            put_uint(b, i - last)
            last = i
            self._value(st, b, defs, f.type, fv, depth + 1)
        b.append(0)

    def _value(self, st: _EncState, b: bytearray, defs: bytearray, t: GoType, v: object,
               depth: int) -> None:
        if depth > self.max_depth:
            raise GobLimitError(f"gob value nests deeper than {self.max_depth}")
        if isinstance(t, Struct):
            return self._struct(st, b, defs, t, v, depth)
        if isinstance(t, Basic):
            return self._basic(st, b, defs, t, v, depth)
        if v is None and not isinstance(t, Array):
            v = {} if isinstance(t, Map) else []  # a nil map or slice: zero elements
        if isinstance(t, Map):
            if not isinstance(v, dict):
                raise GobError(f"expected dict for {t.go_string()}, got {type(v).__name__}")
            put_uint(b, len(v))
            for k, e in v.items():
                self._value(st, b, defs, t.key, k, depth + 1)
                self._value(st, b, defs, t.elem, e, depth + 1)
            return None
        if not isinstance(v, list | tuple):
            raise GobError(f"expected list for {t.go_string()}, got {type(v).__name__}")
        if isinstance(t, Array) and len(v) != t.length:
            raise GobError(f"{t.go_string()} needs {t.length} elements, got {len(v)}")
        put_uint(b, len(v))
        for e in v:
            self._value(st, b, defs, t.elem, e, depth + 1)
        return None

    def _basic(self, st: _EncState, b: bytearray, defs: bytearray, t: Basic, v: object,
               depth: int) -> None:
        kind = t.kind
        if kind == Kind.INTERFACE:
            if v is None or isinstance(v, Iface):
                return self._iface(st, b, defs, v, depth)
        elif kind == Kind.BOOL:
            if isinstance(v, bool):
                return put_uint(b, int(v))
        elif isinstance(v, bool):
            pass  # an int to Python, never to Go
        elif kind in (Kind.INT, Kind.UINT):
            if isinstance(v, int) and v in int_range(t):  # what the Go type can hold
                return (put_int if kind == Kind.INT else put_uint)(b, v)
        elif kind == Kind.FLOAT:
            if isinstance(v, float | int):
                return put_uint(b, float_bits(float(v)))
        elif kind == Kind.COMPLEX:
            if isinstance(v, complex | float | int):
                put_uint(b, float_bits(complex(v).real))
                return put_uint(b, float_bits(complex(v).imag))
        elif isinstance(v, str | bytes | bytearray | memoryview) and (
                (kind == Kind.STRING) == isinstance(v, str)):
            data = v.encode("utf-8", "surrogateescape") if isinstance(v, str) else bytes(v)
            put_uint(b, len(data))
            b += data
            return None
        raise GobError(f"cannot encode {type(v).__name__} {v!r:.40} as gob {kind.name.lower()}")

    def _iface(self, st: _EncState, b: bytearray, defs: bytearray, v: Iface | None,
               depth: int) -> None:
        if v is None:
            b.append(0)  # the nil interface: an empty type name and nothing else
            return
        t = infer_type(v.value) if v.type is None else go_type(v.type)
        name = v.name.encode()
        if t == INTERFACE or not name or len(name) > MAX_NAME:
            raise GobError(f"bad interface value {v!r:.60}: needs a concrete type and a name")
        put_uint(b, len(name))
        b += name
        # Go writes the concrete type's definitions to the stream right away, that is before
        # the message that carries this value; so do we (for nested interfaces too).
        self._send_type(st, defs, t)
        put_int(b, self._assign(st, t, _named(t)))
        data = bytearray()  # delimited, so a receiver that cannot store it can skip it
        if isinstance(t, Struct):
            self._struct(st, data, defs, t, v.value, depth + 1)
        else:
            data.append(0)
            self._value(st, data, defs, t, v.value, depth + 1)
        put_uint(b, len(data))
        b += data


