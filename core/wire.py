"""The agent ⇄ collector contract's constants (docs/wire.md), defined once for the shipper and the collector.

The version every request carries, what a spool id looks like, and the limits a payload must keep: the agent
builds its payloads within them, the collector refuses (400) what breaks them.
"""

from __future__ import annotations

import re

WIRE_VERSION = 1  # the integer every ingest, heartbeat and enroll body carries as `version`
# A spool's id (the agent's spool makes a UUID4): letters, digits, '-' and '_'. \Z, not $: `$` also matches
# before a final newline.
SPOOL_ID = re.compile(r"[A-Za-z0-9_-]{1,64}\Z")
FIELD_NAME = re.compile(r"[a-z][a-z0-9_]{0,63}\Z")  # a measurement's field name
MAX_FIELDS = 64  # fields per measurement
MAX_SEQ = 2**63 - 1  # seqs and ranges are 1..2^63−1 (the collector's acknowledgement store holds SQLite INTEGERs)
# |field value|: beside values up to 2^53 VictoriaMetrics keeps 3 decimals exactly (collector/validate.py's doc).
MAX_VALUE = 2.0**53
MAX_DEPTH = 16  # JSON nesting; the wire needs 4 (payload → measurements → measurement → tags)
MAX_RANGES = 10_000  # entries of `evicted` and of `lost` in one payload
MAX_REASON = 200  # characters of a `lost` range's reason
MAX_TASKS, MAX_TASK_ERROR = 16, 300  # the agent block's supervised tasks, and characters of a task's last error
MAX_TEXT = 100  # characters of the agent block's version strings

__all__ = ["FIELD_NAME", "MAX_DEPTH", "MAX_FIELDS", "MAX_RANGES", "MAX_REASON", "MAX_SEQ", "MAX_TASKS",
           "MAX_TASK_ERROR", "MAX_TEXT", "MAX_VALUE", "SPOOL_ID", "WIRE_VERSION"]
