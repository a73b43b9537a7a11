"""The gob Decoder: the values of one stream, checked against caps because the peer is untrusted.

Every length is checked against the bytes actually present; a message longer than
`max_message` is refused before it is read; values nesting deeper than `max_depth`, more than
`max_types` definitions or MAX_TYPE_BYTES of them per stream are refused. Every refusal is a
GobError (GobLimitError for caps), never an IndexError, MemoryError, RecursionError or a hang.

Decoding follows Go's rules: struct fields match by name, fields unknown to the target are read
and dropped, fields not sent are zero, and kinds must agree (int is not uint, a local interface
needs a remote interface). Type definitions may refer to types defined after them, as Go's
encoder sends a struct before its field types; references are resolved when a value is read.
"""

from __future__ import annotations

import io
import threading
from collections.abc import Callable
from typing import Any, TypeVar, overload

from plughost.wire.gobformat import (
    BUILTIN_WIRE,
    DEFAULT_MAX_DEPTH,
    DEFAULT_MAX_MESSAGE,
    DEFAULT_MAX_TYPES,
    FIRST_USER_ID,
    MAX_NAME,
    MAX_TYPE_BYTES,
    WIRE_T,
    ArrayType,
    MapType,
    Reader,
    SliceType,
    StructType,
    Wire,
    WireType,
    float_from_bits,
    int_range,
)
from plughost.wire.gobtypes import (
    Array,
    Basic,
    GobEOF,
    GobError,
    GobLimitError,
    GoType,
    Iface,
    Kind,
    Map,
    Slice,
    Struct,
    go_type,
    zero_value,
)

T = TypeVar("T")


class Decoder:
    """Decodes the values of one stream. `read(n)` must return n bytes, or fewer only at
    the end of the stream (io.BufferedReader.read, or netrpc's socket reader)."""

    def __init__(self, read: Callable[[int], bytes], *, max_message: int = DEFAULT_MAX_MESSAGE,
                 max_depth: int = DEFAULT_MAX_DEPTH, max_types: int = DEFAULT_MAX_TYPES) -> None:
        self._read = read
        self.max_message, self.max_depth, self.max_types = max_message, max_depth, max_types
        self._wire: dict[int, Wire] = dict(BUILTIN_WIRE)
        self._type_bytes = 0
        self._registry: dict[str, GoType] = {}
        self._compat: dict[tuple[GoType, int], bool] = {}
        self._lock = threading.Lock()
        self.broken: GobError | None = None  # set once the stream is out of step for good

    @classmethod
    def from_bytes(cls, data: bytes, **caps: Any) -> Decoder:
        return cls(io.BytesIO(data).read, **caps)

    def register(self, name: str, type: object) -> None:
        """The concrete type behind interface values named `name` (Go's gob.Register name).
        Unregistered names still decode, into plain values (dicts for structs)."""
        self._registry[name] = go_type(type)

    @overload
    def decode(self, type: type[T]) -> T: ...
    @overload
    def decode(self, type: object = None) -> object: ...

    def decode(self, type: object = None) -> object:
        """The next value, as `type` (a dataclass, GoType or hint), or, with no type, as plain
        Python values (structs become dicts of the fields that were sent)."""
        target = None if type is None else go_type(type)
        with self._lock:
            if self.broken is not None:
                raise self.broken
            first = True
            while True:
                r = Reader(self._message(first))
                first = False
                tid = r.sint()
                if tid >= 0:
                    return self._top(r, tid, target)
                self._define(r, -tid)
                if not r.done():
                    raise GobError("gob: extra data after a type definition")

    def _take(self, n: int) -> bytes:
        try:
            return self._read(n)
        except Exception as e:  # the stream's own error goes to the caller as it is, but
            self.broken = GobError(f"gob: reading the stream failed: {e}")  # we are lost
            raise

    def _message(self, first: bool) -> bytes:
        head = self._take(1)
        if not head:
            if first:
                raise GobEOF("gob: end of stream")
            raise self._break(GobError("gob: stream ended between a type and its value"))
        n = head[0]
        if n >= 0x80:
            width = 256 - n
            more = self._take(width) if width <= 8 else b""
            if len(more) != width:
                raise self._break(GobError("gob: bad message length"))
            n = int.from_bytes(more, "big")
        if n > self.max_message:  # refused before reading (or allocating) any of it
            raise self._break(GobLimitError(
                f"gob: message of {n} bytes exceeds the limit of {self.max_message}"))
        body = self._take(n)
        if len(body) != n:
            raise self._break(GobError(f"gob: stream ended {len(body)} bytes into a "
                                       f"{n}-byte message"))
        return body

    def _break(self, err: GobError) -> GobError:
        self.broken = err
        return err

    def _define(self, r: Reader, tid: int) -> None:
        if tid < FIRST_USER_ID or tid in self._wire:
            raise GobError(f"gob: type id {tid} redefined (or reserved)")
        if len(self._wire) - len(BUILTIN_WIRE) >= self.max_types:
            raise GobLimitError(f"gob: more than {self.max_types} type definitions")
        start = r.pos
        wt = self._struct(r, self._wire[16], WIRE_T, 1)
        self._type_bytes += r.pos - start
        if self._type_bytes > MAX_TYPE_BYTES:
            raise GobLimitError(f"gob: more than {MAX_TYPE_BYTES} bytes of type definitions")
        assert isinstance(wt, WireType)
        kinds = [k for k in ("ArrayT", "SliceT", "StructT", "MapT", "GobEncoderT",
                             "BinaryMarshalerT", "TextMarshalerT") if getattr(wt, k) is not None]
        if len(kinds) != 1:
            raise GobError(f"gob: type {tid} defined as {kinds or 'nothing'}")
        d = getattr(wt, kinds[0])
        name = d.CommonType.Name
        if isinstance(d, StructType):
            if any(not f.Name for f in d.Field):
                raise GobError(f"gob: struct type {tid} has a field with no name")
            w = Wire("struct", name, fields=tuple((f.Name, f.Id) for f in d.Field))
        elif isinstance(d, SliceType):
            w = Wire("slice", name, elem=d.Elem)
        elif isinstance(d, ArrayType):
            w = Wire("array", name, elem=d.Elem, length=d.Len)
        elif isinstance(d, MapType):
            w = Wire("map", name, key=d.Key, elem=d.Elem)
        else:
            w = Wire("external", name)
        self._wire[tid] = w

    def _describe(self, tid: int) -> str:
        w = self._wire.get(tid)
        return Kind(tid).name.lower() if 0 < tid <= 8 else (
            f"{w.kind} {w.name or tid}" if w else f"undefined type {tid}")

    def _compatible(self, t: GoType, tid: int, seen: set[tuple[GoType, int]]) -> bool:
        """Go's compatibility rules: same kind (signedness included), same shape, and for
        structs every field present on both sides compatible (by name; others ignored)."""
        if (t, tid) in seen:
            return True
        if len(seen) > self.max_types:  # a long chain of definitions against a recursive type
            raise GobLimitError("gob: type graph too large to check")
        seen.add((t, tid))
        if isinstance(t, Basic):
            return tid == int(t.kind)
        w = self._wire.get(tid)
        if w is None:
            return False
        if isinstance(t, Slice):
            return w.kind == "slice" and self._compatible(t.elem, w.elem, seen)
        if isinstance(t, Array):
            return (w.kind == "array" and w.length == t.length
                    and self._compatible(t.elem, w.elem, seen))
        if isinstance(t, Map):
            return (w.kind == "map" and self._compatible(t.key, w.key, seen)
                    and self._compatible(t.elem, w.elem, seen))
        return w.kind == "struct" and all(
            self._compatible(t.by_name[n].type, i, seen) for n, i in w.fields if n in t.by_name)

    def _check(self, t: GoType | None, tid: int, top: bool) -> None:
        if t is None:
            return
        key = (t, tid)
        ok = self._compat.get(key)
        if ok is None:
            ok = self._compat[key] = self._compatible(t, tid, set())
        if not ok:
            raise GobError(f"gob: cannot decode {self._describe(tid)} into {t.go_string()}")
        w = self._wire.get(tid)
        if top and isinstance(t, Struct) and w and t.fields and w.fields and not any(
                n in t.by_name for n, _ in w.fields):
            raise GobError(f"gob: no fields of {self._describe(tid)} match {t.go_string()}")

    def _top(self, r: Reader, tid: int, target: GoType | None, depth: int = 1) -> object:
        self._check(target, tid, top=True)
        w = self._wire.get(tid)
        if w is not None and w.kind == "struct":
            v = self._struct(r, w, target if isinstance(target, Struct) else None, depth)
        else:
            if r.uint() != 0:
                raise GobError("gob: corrupted data: non-zero delta for a singleton")
            v = self._value(r, tid, target, depth)
        if not r.done():
            raise GobError("gob: extra data after a value")
        return v

    def _value(self, r: Reader, tid: int, t: GoType | None, depth: int) -> object:
        if depth > self.max_depth:
            raise GobLimitError(f"gob: value nests deeper than {self.max_depth}")
        if tid == Kind.BOOL:
            return r.uint() != 0
        if tid in (Kind.INT, Kind.UINT):
            x = r.sint() if tid == Kind.INT else r.uint()
            if isinstance(t, Basic) and x not in int_range(t):  # Go: "value out of range"
                raise GobError(f"gob: {x} is out of range for {t.go_name}")
            return x
        if tid == Kind.FLOAT:
            return float_from_bits(r.uint())
        if tid == Kind.COMPLEX:
            re = float_from_bits(r.uint())
            return complex(re, float_from_bits(r.uint()))
        if tid == Kind.INTERFACE:
            return self._iface(r, depth)
        w = self._wire.get(tid)
        if tid in (Kind.BYTES, Kind.STRING) or (w is not None and w.kind == "external"):
            data = r.take(r.count())
            return data.decode("utf-8", "surrogateescape") if tid == Kind.STRING else data
        if w is None:
            raise GobError(f"gob: value of undefined type id {tid}")
        if w.kind == "struct":
            return self._struct(r, w, t if isinstance(t, Struct) else None, depth)
        if w.kind == "map":
            n = r.count()
            kt, et = (t.key, t.elem) if isinstance(t, Map) else (None, None)
            out: dict[Any, object] = {}
            for _ in range(n):
                k = self._value(r, w.key, kt, depth + 1)
                try:
                    out[k] = self._value(r, w.elem, et, depth + 1)
                except TypeError:
                    raise GobError("gob: map key type not supported") from None
            return out
        n = r.count()
        if w.kind == "array" and n != w.length:
            raise GobError(f"gob: array of {n} elements, its type says {w.length}")
        et = t.elem if isinstance(t, Slice | Array) else None
        items = []
        for _ in range(n):
            if r.done():  # each element needs at least one byte (Go checks the same)
                raise GobError("gob: slice length exceeds the message")
            items.append(self._value(r, w.elem, et, depth + 1))
        return items

    def _struct(self, r: Reader, w: Wire, t: Struct | None, depth: int) -> object:
        if depth > self.max_depth:
            raise GobLimitError(f"gob: value nests deeper than {self.max_depth}")
        got: dict[str, object] = {}
        num = -1
        while not r.done():  # Go also ends a struct at the end of its message
            delta = r.uint()
            if delta == 0:
                break
            num += delta
            if num >= len(w.fields):
                raise GobError(f"gob: field number {num} out of range for {w.name or 'struct'}")
            name, fid = w.fields[num]
            local = t.by_name.get(name) if t is not None else None
            v = self._value(r, fid, local.type if local else None, depth + 1)
            if t is None or local is not None:  # unknown fields are read and dropped, as Go
                got[name] = v
        if t is None:
            return got
        try:  # fields that were not sent are zero, as in Go
            return t.cls(**{f.name: got[f.name] if f.name in got else
                            None if f.nilable else zero_value(f.type) for f in t.fields})
        except TypeError as e:
            raise GobError(f"gob: cannot build {t.cls.__name__}: {e}") from None

    def _iface(self, r: Reader, depth: int) -> Iface | None:
        n = r.uint()
        if n == 0:
            return None  # the nil interface
        if n > MAX_NAME or n > r.end - r.pos:
            raise GobError(f"gob: bad interface type name length {n}")
        name = r.take(n).decode("utf-8", "surrogateescape")
        while True:  # Go allows type definitions here, before the concrete type id
            tid = r.sint()
            if tid >= 0:
                break
            self._define(r, -tid)
            if not r.done():
                r.uint()  # the byte count of what follows, which Go skips too
        body = r.sub(r.count())
        v = self._top(body, tid, self._registry.get(name), depth + 1)
        return Iface(name, v)
