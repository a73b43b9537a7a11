"""The plughost.v1 protocol: plughost/v1/plugin.proto and its generated code."""

#: gRPC metadata key carrying the host's id of a `Call`, forwarded by plugins on `HostCall`
#: so the host can check plugin_call chains across processes (docs/protocol.md).
CALL_ID_METADATA = "plughost-call-id"

#: gRPC metadata key a plugin sends on every `HostCall`/`Log`, with the value of its
#: token (read once from the pipe PLUGHOST_HOST_TOKEN_FD names): the Host socket answers
#: only its own plugin.
HOST_TOKEN_METADATA = "plughost-host-token"

#: Largest message either side sends or accepts (gRPC's own default is 4 MiB).
MAX_MESSAGE_BYTES = 64 * 1024 * 1024
CHANNEL_OPTIONS = (
    ("grpc.max_send_message_length", MAX_MESSAGE_BYTES),
    ("grpc.max_receive_message_length", MAX_MESSAGE_BYTES),
)
