"""Helpers shared by the probe tests: a free port, and whole-Measurement comparison without the timing fields."""

from __future__ import annotations

import socket
from typing import Callable

from core.measurement import RESULT_CODES, Measurement

# Fields that vary run to run: compared loosely by the tests, not in the whole-Measurement comparison.
PHASE_TIMING = frozenset(
    {"dns_ms", "connect_ms", "banner_ms", "tls_ms", "auth_ms", "login_ms", "send_ms", "duration_ms"}
)


def free_port(kind: int = socket.SOCK_STREAM) -> int:
    """Return a port on 127.0.0.1 nothing listens on now."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def make_strip(timing: frozenset[str] | set[str] = PHASE_TIMING) -> Callable[[Measurement | dict], dict]:
    """Return `strip(m)`: the Measurement (or its to_dict()) without `timing` fields and time; cert_days_left
    (when not in `timing`) rounded to days."""

    def strip(m: Measurement | dict) -> dict:
        if isinstance(m, Measurement):
            out = m.to_dict()
        else:
            out = {**m, "fields": dict(m["fields"])}
        out["fields"] = {k: v for k, v in out["fields"].items() if k not in timing}
        if "cert_days_left" in out["fields"]:
            out["fields"]["cert_days_left"] = round(out["fields"]["cert_days_left"])
        del out["time"]  # every Measurement has one: a missing time is an error here
        return out

    return strip


def make_expected(service: str, probe: str, line: str = "auto") -> Callable[..., dict]:
    """Return `expected(result, fields, detail=None, line=line)`: what `strip` gives for target `t` of `probe`."""

    def expected(result: str, fields: dict, detail: str | None = None, line: str = line) -> dict:
        out = {
            "name": "probe",
            "tags": {"service": service, "target": "t", "probe": probe, "line": line},
            "fields": {**fields, "up": 1.0 if result == "ok" else 0.0, "result_code": float(RESULT_CODES[result])},
            "result": result,
        }
        if detail is not None:
            out["detail"] = detail
        return out

    return expected
