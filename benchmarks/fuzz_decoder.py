"""Coverage-guided fuzzing of the collector's wire decoder and validators, with atheris (not run in CI).

    .venv/bin/pip install atheris          # into the venv only: not a dependency of the product
    .venv/bin/python -m benchmarks.fuzz_decoder -max_total_time=300

Each input is an ingest body for `collector.decode.decode_ingest` (the msgspec fast path) and its slow path
(`parse_json` + `check_ingest`), then a heartbeat and an enrollment body for `check_heartbeat` and
`check_enroll`. A finding is: any exception but PayloadError (a 500 in the collector), a PayloadError without a
reason, the fast path accepting what the slow path refuses (or giving other lines, or another reason), an
accepted line that is not one safe line of line protocol, or an accepted `agent` block the fleet registry
cannot store. atheris then stops and writes the input to `crash-<sha1>` (or `timeout-`, `oom-`) in its working
folder (printed first; a temporary folder).

The seed corpus is a few valid batches of the standard profile (compact, as the agent sends them, and spaced)
with every wire addition (`lost`, the agent's health and tasks), plus heartbeats and enrollments; a libFuzzer
dictionary of JSON tokens and values at our limits guides the mutations. Extra arguments are libFuzzer's
(`-max_total_time`, `-jobs`, `-runs`, a corpus folder of your own...). The same invariants run in CI as
hypothesis properties (tests/unit/collector/test_collector_fuzz.py); this finds what random generation does not reach.
"""

from __future__ import annotations

import json
import random
import sqlite3
import time
from pathlib import Path

import atheris

from benchmarks.fuzzing import fuzz

with atheris.instrument_imports():  # coverage of our decoder and validators (msgspec itself is C)
    from collector.auth import Identity
    from collector.decode import _slow, decode_ingest, identity_suffix
    from collector.registry import Registry
    from collector.validate import PayloadError, Rules, check_enroll, check_heartbeat, parse_json
    from core.wire import MAX_VALUE

from lab.fleet import standard_round

RULES = Rules(frozenset({"service", "target", "probe", "line", "mount", "interface", "battery", "version"}),
              30 * 86_400_000, 600_000, 5000, 200)
IDENT = identity_suffix("ha-tinh", "dong loc", "quay=01")  # values that need escaping
# JSON's tokens and values at our limits, for libFuzzer's dictionary.
TOKENS = ['"version":1', '"spool":"s-1"', '"first":', '"last":', '"measurements":', '"seq":', '"name":"probe"',
          '"tags":', '"fields":', '"time":', '"evicted":', '"lost":', '"agent":', '"health":"degraded"', '"tasks":',
          '"state":"failed"', '"restarts":', '"error":', '"token":', '"agent_id":', '"hostname":', "\\ud800",
          "\\udc00", "\\u0000", "\\u0085", "\\u2028", "\\n", "\\\\", '\\"', "9223372036854775807", "9223372036854775808",
          "9007199254740992", "9007199254740993", "1e308", "1e309", "-0.0", "NaN", "Infinity", "true", "null", "[[[[",
          "{{{{", "]]]]", "}}}}", "\xed\xa0\x80", "\xff"]


def _fields(line: bytes) -> dict[str, float]:
    text = line.rstrip(b"\n").rsplit(b" ", 1)[0].rsplit(b" ", 1)[1].decode()
    return {k: float(v) for k, v in (f.split("=") for f in text.split(","))}


def _storable(info: dict) -> None:
    registry = Registry(sqlite3.connect(":memory:", isolation_level=None))
    registry.seen(Identity("ha-tinh", "dong-loc", "fuzz-01"), info, "127.0.0.1")
    if registry.flush() != 1 or registry.refused:
        raise AssertionError(f"an accepted agent block the registry cannot store: {info!r}")


def test_one_input(data: bytes) -> None:
    """Run one input through every decoder and validator; raise on a finding (see the module docstring)."""
    try:
        fast = decode_ingest(data, RULES, IDENT, now_ms=NOW_MS)
    except PayloadError as exc:
        fast = exc
    try:
        slow = _slow(data, RULES, IDENT, NOW_MS)
    except PayloadError as exc:
        slow = exc
    if isinstance(fast, PayloadError) or isinstance(slow, PayloadError):
        if not (isinstance(fast, PayloadError) and isinstance(slow, PayloadError)) or str(fast) != str(slow) \
                or not str(fast):
            raise AssertionError(f"fast {fast!r} but slow {slow!r}")
    else:
        if [_fields(line) for line in fast.lines] != [_fields(line) for line in slow.lines]:
            raise AssertionError("the fast path's fields differ from the slow path's")
        for line in fast.lines:
            line.decode("utf-8")
            if line.count(b"\n") != 1 or not line.endswith(b"\n") or b"\r" in line:
                raise AssertionError(f"an unsafe line: {line!r}")
            if any(abs(v) > MAX_VALUE for v in _fields(line).values()):
                raise AssertionError(f"a value past 2^53: {line!r}")
        _storable(fast.agent)
    try:
        _, info = check_heartbeat(parse_json(data))
        _storable(info)
    except PayloadError as exc:
        if not str(exc):
            raise AssertionError("a refusal without a reason") from None
    try:
        check_enroll(parse_json(data))
    except PayloadError:
        pass


NOW_MS = int(time.time() * 1000)


def _escaped(token: str) -> str:
    """Return a token as a libFuzzer dictionary entry's content (bytes outside printable ASCII as \\xNN)."""
    raw = token.encode("latin-1") if all(ord(c) < 256 for c in token) else token.encode("utf-8")
    return "".join(chr(b) if 32 <= b < 127 and b not in b'"\\' else f"\\x{b:02x}" for b in raw)


def seed_corpus(folder: Path) -> None:
    """Write valid batches (compact and spaced), a heartbeat and an enrollment into `folder`."""
    rng = random.Random(7)
    items = standard_round(rng, {}, NOW_MS - 3_600_000)
    agent = {"version": "0.1.0", "config_version": "sha256:abc", "spool_rows": 12, "dropped_total": 0,
             "clock_offset_ms": -1.5, "health": "degraded", "task_restarts_total": 2, "lost_total": 3,
             "disk_free_bytes": 10**11, "tasks": {"shipper": {"state": "restarting", "restarts": 2, "error": "x"}}}
    for count in (1, 3, len(items)):
        batch = {"version": 1, "spool": "s-1", "first": 11, "last": 10 + count,
                 "measurements": [{"seq": 11 + i, **m} for i, m in enumerate(items[:count])],
                 "evicted": [[1, 5]], "lost": [[6, 10, "unreadable row"]], "agent": agent}
        (folder / f"batch-{count}.json").write_text(json.dumps(batch, separators=(",", ":")))
        (folder / f"batch-{count}-spaced.json").write_text(json.dumps(batch))
    (folder / "heartbeat.json").write_text(json.dumps({"version": 1, "state": "running", "agent": agent}))
    (folder / "enroll.json").write_text(json.dumps({"version": 1, "token": "cmt.a.b", "agent_id": "quay-01",
                                                    "hostname": "Quầy 01"}))


def main() -> None:
    """Run atheris over the seeded corpus with the dictionary of tokens; libFuzzer's arguments pass through."""
    fuzz("decoder", seed_corpus, "".join(f'"{_escaped(token)}"\n' for token in TOKENS), test_one_input, max_len=65536, rss_limit_mb=2048)


if __name__ == "__main__":
    main()
