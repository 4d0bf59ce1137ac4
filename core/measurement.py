"""The one data type that flows from a probe to the database: `Measurement`.

Every probe returns exactly one Measurement per run; the agent adds identity tags, the spool stores it, the
collector writes it. A failed probe is still a Measurement: `up=0` plus a `result` reason in plain words.

Why `result` is not a tag: a tag that changes with the status would split `up`/`rtt_ms` into one series per
reason. The reason travels as the numeric field `result_code` (one continuous series per target and line) and
as the attribute `result` for people (CLI, notifications). `RESULTS` is append-only: codes are stored forever.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Mapping

# Append only: the index is the stored `result_code`. docs/metrics.md documents every reason.
RESULTS: tuple[str, ...] = (
    "ok",
    "timeout",  # no answer within the probe's timeout
    "refused",  # TCP RST on connect (nothing listening), ICMP port unreachable for UDP
    "dns_error",  # the name did not resolve (NXDOMAIN, no answer, resolver unreachable)
    "tls_error",  # TLS handshake failed or the certificate is not trusted / wrong host
    "cert_expired",  # the certificate's notAfter is in the past (or notBefore in the future)
    "cert_chain_incomplete",  # the server does not send its intermediate certificate
    "bad_status",  # HTTP status not in the expected set
    "content_mismatch",  # the page does not contain the expected text
    "unreachable",  # no route / host or network unreachable / link down
    "banner_mismatch",  # TCP/SMTP/IMAP greeting not what was expected
    "auth_failed",  # SMTP AUTH or IMAP LOGIN refused
    "login_failed",  # a web login step did not yield the page that needs the session
    "answer_mismatch",  # DNS answered, but not with the expected records
    "protocol_error",  # the peer answered with something that is not the protocol
    "reset",  # the connection was reset after it was established
    "permission_denied",  # the probe lacks a privilege it needs (the detail says which)
    "error",  # anything else (the detail says what): a bug or an unforeseen failure, still data
)
RESULT_CODES: dict[str, int] = {name: code for code, name in enumerate(RESULTS)}


@dataclass(slots=True, frozen=True)
class Measurement:
    """One probe run: `name`, `tags`, numeric `fields`, `time` (probe start, Unix ms UTC).

    `result` is the reason in plain words ("ok" when up) and `detail` a sentence for people; neither is a tag.
    Fields are always floats: an int in one line and a float in the next is a type conflict in InfluxDB.
    A field that could not be computed is absent, never 0.
    """

    name: str
    tags: Mapping[str, str]
    fields: Mapping[str, float]
    time: int
    result: str = "ok"
    detail: str = ""

    def __post_init__(self) -> None:
        if self.result not in RESULT_CODES:
            raise ValueError(f"unknown result {self.result!r}; add it to core.measurement.RESULTS")
        clean: dict[str, float] = {}
        for key, value in self.fields.items():
            if value is None:
                continue
            number = float(value)  # bools and ints become floats; strings raise
            if not math.isfinite(number):
                continue  # NaN/inf cannot be stored; a missing field says "not computed"
            clean[key] = number
        clean["result_code"] = float(RESULT_CODES[self.result])
        object.__setattr__(self, "fields", clean)
        object.__setattr__(self, "tags", {k: str(v) for k, v in self.tags.items()})

    @property
    def up(self) -> bool:
        """Whether the probe succeeded."""
        return self.fields.get("up") == 1.0

    def with_tags(self, **tags: str) -> "Measurement":
        """Return a copy with extra tags (the runtime adds province/commune/agent this way)."""
        return Measurement(self.name, {**self.tags, **tags}, self.fields, self.time, self.result, self.detail)

    def to_dict(self) -> dict[str, Any]:
        """Return the JSON shape: name, tags, fields, time, result, detail."""
        out: dict[str, Any] = {
            "name": self.name,
            "tags": dict(self.tags),
            "fields": dict(self.fields),
            "time": self.time,
            "result": self.result,
        }
        if self.detail:
            out["detail"] = self.detail
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "Measurement":
        """Build a Measurement from `to_dict()` output (the spool and the wire use this)."""
        return cls(
            name=data["name"],
            tags=data["tags"],
            fields=data["fields"],
            time=int(data["time"]),
            result=data.get("result", "ok"),
            detail=data.get("detail", ""),
        )


__all__ = ["Measurement", "RESULTS", "RESULT_CODES"]
