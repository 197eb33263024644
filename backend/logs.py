"""Structured (logfmt) logs on stderr; quiet by default, ``-v`` for more."""

from __future__ import annotations

import logging
import time


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        stamp = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
        fields = [
            f"ts={stamp}.{int(record.msecs):03d}Z",
            f"level={record.levelname.lower()}",
            f"logger={record.name}",
            f"msg={_quote(record.getMessage())}",
        ]
        if record.exc_info:
            fields.append(f"exc={_quote(self.formatException(record.exc_info))}")
        return " ".join(fields)


def _quote(value: str) -> str:
    if value and not any(c in value for c in ' "=\n'):
        return value
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def setup(verbosity: int = 0) -> None:
    """0: warnings and lifecycle info; 1: info; 2+: debug (also from libraries)."""
    handler = logging.StreamHandler()
    handler.setFormatter(LogfmtFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.DEBUG if verbosity >= 2 else logging.WARNING)
    logging.getLogger("fleet").setLevel(logging.DEBUG if verbosity >= 2 else logging.INFO)


class Throttled:
    """At most one line per key per ``interval`` seconds, then how many were held back: a
    device that sends garbage thousands of times a second costs one log line, not thousands.
    Keys are bounded (``max_keys``): past it the oldest are forgotten."""

    def __init__(self, logger: logging.Logger, interval: float = 10.0, max_keys: int = 4096):
        self.logger = logger
        self.interval = interval
        self.max_keys = max_keys
        self._last: dict[str, tuple[float, int]] = {}  # key -> (last emitted, held back)

    def warning(
        self, key: str, message: str, *args: object, exc: BaseException | None = None
    ) -> None:
        """Log ``message % args`` (with ``exc``'s traceback) unless ``key`` logged lately."""
        now = time.monotonic()
        last, held = self._last.pop(key, (-self.interval, 0))
        if now - last < self.interval:
            self._last[key] = (last, held + 1)
            return
        if held:
            message += f" ({held} more like it in the last {now - last:.0f}s)"
        self.logger.warning(message, *args, exc_info=exc)  # None: no traceback
        if len(self._last) >= self.max_keys:
            del self._last[next(iter(self._last))]
        self._last[key] = (now, 0)
