"""Log line formats for the daemons: plain text, text for journald, JSON lines.

Under systemd (``JOURNAL_STREAM`` set) each line starts with its syslog priority
(``<4>`` for a warning, sd-daemon(3)), so ``journalctl -p warning`` selects by level,
and the time is left to the journal. ``--log-format json`` writes one JSON object a
line for log shippers.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from typing import Final

LOG_FORMATS: Final = ("text", "json")
# syslog priorities (sd-daemon.h): err 3, warning 4, info 6, debug 7.
_PRIORITY: Final = {logging.CRITICAL: 2, logging.ERROR: 3, logging.WARNING: 4,
                    logging.INFO: 6, logging.DEBUG: 7}


def _priority(levelno: int) -> int:
    return next((p for level, p in sorted(_PRIORITY.items(), reverse=True)
                 if levelno >= level), 7)


class JournalFormatter(logging.Formatter):
    """``<priority>LEVEL logger: message`` (the journal adds time and unit)."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        # Every line of a traceback gets the prefix: the journal splits at newlines.
        prefix = f"<{_priority(record.levelno)}>"
        return "\n".join(prefix + line for line in text.splitlines())


class JsonFormatter(logging.Formatter):
    """One JSON object a line: ts, level, logger, msg (and exc when there is one)."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"ts": round(record.created, 3), "level": record.levelname.lower(),
               "logger": record.name, "msg": record.getMessage()}
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def configure(level: str, *, log_format: str = "text") -> None:
    """Root logging to stderr in ``log_format`` at ``level``."""
    handler = logging.StreamHandler(sys.stderr)
    under_journal = bool(os.environ.get("JOURNAL_STREAM"))
    formatter: logging.Formatter
    if log_format == "json":
        formatter = JsonFormatter()
    elif under_journal:
        formatter = JournalFormatter("%(levelname)s %(name)s: %(message)s")
    else:
        formatter = logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s")
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper(), logging.INFO))
