"""The asyncio (uvloop) shard holding device WebSockets."""

from backend.shard.config import ShardConfig
from backend.shard.server import Shard, serve

__all__ = ["Shard", "ShardConfig", "serve"]
