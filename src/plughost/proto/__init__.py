"""The plughost.v1 protocol: plughost/v1/plugin.proto and its generated code."""

#: gRPC metadata key carrying the host's id of a `Call`, forwarded by plugins on `HostCall`
#: so the host can check plugin_call chains across processes (docs/protocol.md).
CALL_ID_METADATA = "plughost-call-id"
