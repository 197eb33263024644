"""The shard's Prometheus metrics: base units, ``_total`` counters, bounded label sets.

No label ever carries a device id; ``proto``/``typ`` labels take names from a fixed table and
fold anything else into "other", so a misbehaving device cannot explode the series count.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

from backend.protocol import envelope

PROTO_NAMES = {
    envelope.PROTO_SHELL: "shell",
    envelope.PROTO_FILE_TRANSFER: "file_transfer",
    envelope.PROTO_PORT_FORWARD: "port_forward",
    envelope.PROTO_MENDER_CLIENT: "mender_client",
    envelope.PROTO_CONTROL: "control",
    envelope.PROTO_MONITOR: "monitor",
    envelope.PROTO_COMMAND: "command",
    envelope.PROTO_UPDATE: "update",
}
KNOWN_TYPES = frozenset(
    (
        *("open", "accept", "close", "error", "ping", "pong"),
        *("new", "shell", "stop", "resize"),
        *("status", "alert", "ack", "exec", "result", "offer", "progress"),
        *("get_file", "put_file", "stat", "file_info", "file_chunk", "forward"),
        *("check-update", "send-inventory"),
    )
)
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class ShardMetrics:
    def __init__(self, shard_id: str) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        # process_resident_memory_bytes and process_cpu_seconds_total: the capacity dashboard
        # divides them by the connections.
        ProcessCollector(registry=r)
        self.connections = Gauge(
            "fleet_shard_connections", "Open authenticated device connections", registry=r
        )
        self.connects = Counter(
            "fleet_shard_connects", "Device connections accepted (upgraded)", registry=r
        )
        self.disconnects = Counter(
            "fleet_shard_disconnects", "Device connections ended, by reason", ["reason"], registry=r
        )
        self.rejected_upgrades = Counter(
            "fleet_shard_rejected_upgrades",
            "Requests refused before the upgrade, by reason",
            ["reason"],
            registry=r,
        )
        self.protocol_errors = Counter(
            "fleet_shard_protocol_errors",
            "Bad input after the upgrade, by reason",
            ["reason"],
            registry=r,
        )
        self.messages_in = Counter(
            "fleet_shard_messages_received", "ProtoMsg messages from devices",
            ["proto", "typ"], registry=r,
        )  # fmt: skip
        self.messages_out = Counter(
            "fleet_shard_messages_sent", "ProtoMsg messages to devices",
            ["proto", "typ"], registry=r,
        )  # fmt: skip
        self.bytes_in = Counter(
            "fleet_shard_received_bytes", "WebSocket bytes from devices", registry=r
        )
        self.alerts = Counter(
            "fleet_shard_alerts", "Device alerts, by outcome (acked, failed)", ["outcome"],
            registry=r,
        )  # fmt: skip
        self.publishes = Counter(
            "fleet_shard_publishes",
            "NATS publishes not made, by kind (alert, status, update, relay) and outcome "
            "(shed: the device's share or the shard's queue was full)",
            ["kind", "outcome"],
            registry=r,
        )
        self.publish_failures = Counter(
            "fleet_shard_publish_failures", "NATS publishes that raised (NATS down...)",
            registry=r,
        )  # fmt: skip
        self.input_paused = Counter(
            "fleet_shard_input_paused",
            "Times a device's input was paused, by cause (write: it does not read its replies; "
            "publish: its share of the publish queue is full; turn: it sent more than one "
            "event-loop turn's share of messages at once)",
            ["cause"],
            registry=r,
        )
        self.alert_publish = Histogram(
            "fleet_shard_alert_publish_seconds",
            "From an alert's arrival to the stream's PubAck",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.ping_rtt = Histogram(
            "fleet_shard_ping_rtt_seconds",
            "WebSocket keep-alive ping round trip",
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.commands = Counter(
            "fleet_shard_commands", "Operator commands to devices, by outcome", ["outcome"],
            registry=r,
        )  # fmt: skip
        self.device_errors = Counter(
            "fleet_shard_device_errors", "Requests the device answered with a control error, "
            "by the protocol it names", ["proto"], registry=r,
        )  # fmt: skip
        self.unsupported = Counter(
            "fleet_shard_unsupported_requests", "Requests refused before sending: the device's "
            "accept did not list their protocol", ["proto"], registry=r,
        )  # fmt: skip
        self.info = Gauge(
            "fleet_shard_info", "Constant 1, labelled with the shard id", ["shard"], registry=r
        )
        self.info.labels(shard_id).set(1)
        self._in_children: dict[tuple[int, str], Counter] = {}
        self._out_children: dict[tuple[int, str], Counter] = {}

    def message_in(self, proto: int, typ: str) -> None:
        self._child(self.messages_in, self._in_children, proto, typ).inc()

    def message_out(self, proto: int, typ: str) -> None:
        self._child(self.messages_out, self._out_children, proto, typ).inc()

    @staticmethod
    def _child(
        family: Counter, cache: dict[tuple[int, str], Counter], proto: int, typ: str
    ) -> Counter:
        # labels() locks and hashes on every call; the hot path reuses bound children.
        child = cache.get((proto, typ))
        if child is None:
            label_typ = typ if typ in KNOWN_TYPES else "other"
            child = family.labels(PROTO_NAMES.get(proto, "other"), label_typ)
            if len(cache) < 256:
                cache[(proto, typ)] = child
        return child
