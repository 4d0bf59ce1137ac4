"""The collector's SQLite state file: one connection per user, WAL, `synchronous=FULL` (an acknowledged range
must survive a power cut, or a resent batch would be written twice)."""

from __future__ import annotations

import sqlite3
from pathlib import Path


def connect(path: str | Path) -> sqlite3.Connection:
    """Open (creating) the state file; autocommit mode, so each module controls its own transactions."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(path), timeout=30.0, isolation_level=None, check_same_thread=False)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    conn.execute("PRAGMA busy_timeout=30000")
    return conn
