"""gob's wire format, the parts both directions share (the Encoder is in gob.py, the Decoder
in gobdecode.py): gob's own description of types, the predefined type ids, the integer and
float codings, and a bounds-checked reader over one message.

Integers: an unsigned value below 128 is one byte; anything else is its minimal big-endian bytes
preceded by the negated byte count. A signed value is shifted left one bit, complemented first
if negative, with bit 0 saying so (so the most negative value is not a special case). A float is
its IEEE-754 bits, byte-reversed (the exponent goes first and zero low bytes drop off).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from plughost.wire.gobtypes import Array, Basic, GobError, GoType, Map, Slice, Struct, struct_type

FIRST_USER_ID = 64  # Go rejects definitions of ids below this; its first user id is 65
MAX_NAME = 1024  # Go refuses interface type names longer than this
DEFAULT_MAX_MESSAGE = 4 << 20  # Go's own cap is 1 GiB; RPC payloads here are small JSON
DEFAULT_MAX_DEPTH = 64  # real values nest 3 deep; this only stops hostile nesting early
DEFAULT_MAX_TYPES = 1024  # distinct types a peer may define on one stream
MAX_TYPE_BYTES = 1 << 20  # total bytes of type definitions a peer may send on one stream


# gob's own description of types (Go's wireType and friends). Ids 16..24 are predefined on
# every stream, so these definitions never travel; the field names and order must be Go's.
@dataclass
class CommonType:
    Name: str = ""
    Id: int = 0


@dataclass
class ArrayType:
    CommonType: CommonType = field(default_factory=CommonType)
    Elem: int = 0
    Len: int = 0


@dataclass
class SliceType:
    CommonType: CommonType = field(default_factory=CommonType)
    Elem: int = 0


@dataclass
class FieldType:
    Name: str = ""
    Id: int = 0


@dataclass
class StructType:
    CommonType: CommonType = field(default_factory=CommonType)
    Field: list[FieldType] = field(default_factory=list)


@dataclass
class MapType:
    CommonType: CommonType = field(default_factory=CommonType)
    Key: int = 0
    Elem: int = 0


@dataclass
class GobEncoderType:
    CommonType: CommonType = field(default_factory=CommonType)


@dataclass
class WireType:
    ArrayT: ArrayType | None = None
    SliceT: SliceType | None = None
    StructT: StructType | None = None
    MapT: MapType | None = None
    GobEncoderT: GobEncoderType | None = None
    BinaryMarshalerT: GobEncoderType | None = None
    TextMarshalerT: GobEncoderType | None = None


@dataclass(frozen=True)
class Wire:
    """A received (or predefined) type definition."""

    kind: str  # struct, slice, array, map or external (GobEncoder/BinaryMarshaler/TextMarshaler)
    name: str
    elem: int = 0
    key: int = 0
    length: int = 0
    fields: tuple[tuple[str, int], ...] = ()


WIRE_T = struct_type(WireType)
BUILTIN_IDS: dict[GoType, int] = {
    WIRE_T: 16, struct_type(ArrayType): 17, struct_type(CommonType): 18,
    struct_type(SliceType): 19, struct_type(StructType): 20, struct_type(FieldType): 21,
    Slice(struct_type(FieldType)): 22, struct_type(MapType): 23,
    struct_type(GobEncoderType): 24,
}


def type_id(t: GoType, ids: dict[GoType, int]) -> int:
    return int(t.kind) if isinstance(t, Basic) else ids[t]


def definition(t: GoType, name: str, ids: dict[GoType, int]) -> Wire:
    if isinstance(t, Struct):
        return Wire("struct", name, fields=tuple((f.name, type_id(f.type, ids)) for f in t.fields))
    if isinstance(t, Slice):
        return Wire("slice", name, elem=type_id(t.elem, ids))
    if isinstance(t, Array):
        return Wire("array", name, elem=type_id(t.elem, ids), length=t.length)
    assert isinstance(t, Map)
    return Wire("map", name, key=type_id(t.key, ids), elem=type_id(t.elem, ids))


BUILTIN_WIRE = {i: definition(t, "", BUILTIN_IDS) for t, i in BUILTIN_IDS.items()}


def put_uint(b: bytearray, x: int) -> None:
    if x < 0x80:
        b.append(x)
    else:  # big-endian, minimal length, preceded by the negated byte count
        n = (x.bit_length() + 7) // 8
        b.append(256 - n)
        b += x.to_bytes(n, "big")


def put_int(b: bytearray, i: int) -> None:
    put_uint(b, (~i << 1) | 1 if i < 0 else i << 1)  # bit 0 says "complement the rest"


def float_bits(f: float) -> int:
    # Float64bits byte-reversed, so that the exponent goes first and zero low bits drop off
    return int.from_bytes(struct.pack("<d", f), "big")


class Reader:
    """A bounded view of one message: every read checks the bytes are really there."""

    __slots__ = ("buf", "end", "pos")

    def __init__(self, buf: bytes, pos: int = 0, end: int | None = None) -> None:
        self.buf, self.pos, self.end = buf, pos, len(buf) if end is None else end

    def done(self) -> bool:
        return self.pos >= self.end

    def uint(self) -> int:
        if self.pos >= self.end:
            raise GobError("gob: unexpected end of message")
        x = self.buf[self.pos]
        self.pos += 1
        if x < 0x80:
            return x
        n = 256 - x
        if n > 8 or self.pos + n > self.end:
            raise GobError(f"gob: bad unsigned integer (byte count {n})")
        self.pos += n
        return int.from_bytes(self.buf[self.pos - n:self.pos], "big")

    def sint(self) -> int:
        u = self.uint()
        return ~(u >> 1) if u & 1 else u >> 1

    def count(self) -> int:
        """A count of items that follow, each at least one byte: more than remain is a lie."""
        n = self.uint()
        if n > self.end - self.pos:
            raise GobError(f"gob: count {n} exceeds the {self.end - self.pos} bytes left")
        return n

    def take(self, n: int) -> bytes:
        self.pos += n
        return self.buf[self.pos - n:self.pos]

    def sub(self, n: int) -> Reader:
        self.pos += n
        return Reader(self.buf, self.pos - n, self.pos)


FLOAT = struct.Struct("<d")


def int_range(t: Basic) -> range:
    """The values a Go int or uint type holds (gob sends them all alike; Go checks on receipt)."""
    bits = {"int8": 8, "int16": 16, "int32": 32, "uint8": 8, "uint16": 16, "uint32": 32}.get(
        t.go_name, 64)
    return range(1 << bits) if t.go_name.startswith("uint") else range(
        -(1 << (bits - 1)), 1 << (bits - 1))


def float_from_bits(u: int) -> float:
    return float(FLOAT.unpack(u.to_bytes(8, "big"))[0])
