"""The Sans-I/O core: bytes in, events out, no I/O. Driven by the shard and the simulator.

- ``http`` / ``websocket``: the WebSocket upgrade and RFC 6455 framing.
- ``envelope``: Mender's ProtoMsg envelope; ``messages``: typed bodies.
- ``session``: the device session shared by both ends.
- ``errors``: the exception tree; ``closecodes``: the close codes we send.
"""
