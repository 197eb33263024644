"""The NATS side every backend component shares: subjects, streams and KV buckets, device
presence and routing, device tokens, per-role NATS credentials, and the NATS metrics exporter."""
