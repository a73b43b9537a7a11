"""The Go structs GoatFlow's "gRPC" plugins exchange over net/rpc (goatflow-compat.md §13).

gob matches struct fields by name, so the class and field names are GoatFlow's, in GoatFlow's
field order (the order fixes the field numbers on the wire and so the exact bytes).

Methods of the plugin's net/rpc service `Plugin`, called by the host:
  GKRegister  args: nil interface (None)   reply: []byte (registration JSON)
  Init        args: InitRequest            reply: nil interface
  Call        args: CallRequest            reply: CallResponse
  Shutdown    args: nil interface          reply: nil interface
The host API the host serves back (also named `Plugin`, on a broker stream):
  Call        args: HostAPIRequest         reply: HostAPIResponse
"""

from __future__ import annotations

from dataclasses import dataclass, field

from plughost.wire.gobtypes import Uint32


@dataclass
class InitRequest:
    Config: dict[str, str] = field(default_factory=dict)
    HostAPIID: Uint32 = 0  # broker id of the host API stream; 0 = no host API


@dataclass
class CallRequest:
    Function: str = ""
    Args: bytes = b""  # JSON
    CallToken: str = ""  # the host call's context, for callbacks (§13.4)


@dataclass
class CallResponse:
    Result: bytes = b""  # JSON
    Error: str = ""  # non-empty: the call failed with this text


@dataclass
class HostAPIRequest:
    Method: str = ""
    Args: bytes = b""  # JSON
    CallerPlugin: str = ""  # ignored by the host: it knows which plugin it loaded
    CallToken: str = ""


@dataclass
class HostAPIResponse:
    Result: bytes = b""
    Error: str = ""
