"""The HAProxy tier in front of the shards: its generated configuration and local TLS material."""
