"""The general config value types: durations, byte sizes, host names, identifiers, and the strict model base.

Each is a pydantic annotated type whose validator raises ValueError with a plain message, which
`core.config.validation` turns into a `file:line: key.path: message` issue.
"""

from __future__ import annotations

import ipaddress
import math
import re
from typing import Annotated, Any

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(ms|s|m|h|d)?\s*$")
_UNIT_SECONDS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86_400.0, None: 1.0}
DAY = 86_400.0


def parse_duration(value: Any, maximum: float = DAY) -> float:
    """Return seconds from `5`, `2.5`, `"500ms"`, `"30s"`, `"2m"`, `"1h"` or `"1d"`: more than 0, at most `maximum`.

    The bound keeps absurd values (`1e400`, 400 digits) from becoming inf or an overflow later.
    """
    if isinstance(value, bool):
        raise ValueError("a duration is a number of seconds or a string like '30s', '500ms', '2m'")
    if isinstance(value, (int, float)):
        seconds = float(value) if isinstance(value, float) or abs(value) < 10**18 else math.inf
    else:
        match = _DURATION.match(str(value))
        if not match:
            raise ValueError(f"{_shown(value)} is not a duration: write e.g. 5s, 500ms, 2m")
        seconds = float(match.group(1)) * _UNIT_SECONDS[match.group(2)]  # 400 digits make inf, refused below
    if math.isnan(seconds):
        raise ValueError("a duration is a number of seconds or a string like '30s', '500ms', '2m'")
    if seconds <= 0:
        raise ValueError("a duration must be greater than zero")
    if seconds > maximum:
        shown = "a number that large" if isinstance(value, int) and seconds == math.inf else _shown(value)
        raise ValueError(f"{shown} is too long: a duration here is at most {format_duration(maximum)}")
    return seconds


def _shown(value: Any) -> str:
    text = repr(value) if isinstance(value, (str, float)) else repr(str(value))
    return text if len(text) <= 40 else text[:30] + f"...' ({len(text) - 2} characters)"


def format_duration(seconds: float) -> str:
    """Return `24h`, `90m`, `30s` or `0.5s`: the largest unit that writes `seconds` exactly."""
    for unit, size in (("h", 3600), ("m", 60)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds:g}s"


Duration = Annotated[float, BeforeValidator(parse_duration)]
# Identifiers become tags: ASCII slugs ("dong-loc"), display names may carry diacritics.
Slug = Annotated[str, Field(pattern=r"^[a-z0-9][a-z0-9_.-]{0,62}$")]


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(b|kb|kib|mb|mib|gb|gib)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {None: 1, "b": 1, "kb": 10**3, "kib": 2**10, "mb": 10**6, "mib": 2**20, "gb": 10**9, "gib": 2**30}
MAX_SIZE = 10**12  # 1 TB: beyond any disk or body this product sizes; keeps 400-digit sizes from being "no limit"


def parse_size(value: Any) -> int:
    """Return bytes from `1048576`, `"100MB"`, `"64 KiB"` (k/M/G are powers of 1000, Ki/Mi/Gi of 1024); at most 1 TB."""
    if isinstance(value, bool):
        raise ValueError("a size is a number of bytes or a string like '100MB', '64kB'")
    match = _SIZE.match(str(value)[:100]) if not isinstance(value, (int, float)) else None
    size = None
    if isinstance(value, (int, float)):
        size = float(value) if isinstance(value, float) or abs(value) <= MAX_SIZE else math.inf
    elif match:
        size = float(match.group(1)) * _SIZE_UNITS[(match.group(2) or "b").lower()]  # 400 digits: inf, refused below
    if size is None or not size > 0:  # also nan
        raise ValueError(f"{str(value)[:40]!r} is not a size: write e.g. 100MB, 64kB or a number of bytes")
    if size > MAX_SIZE:
        shown = "a number that large" if isinstance(value, int) else repr(str(value)[:40])
        raise ValueError(f"{shown} is too large: a size is at most 1TB")
    return int(size)


ByteSize = Annotated[int, BeforeValidator(parse_size)]


_LABEL = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_-]{0,61}[A-Za-z0-9_])?$")


def check_hostname(value: str) -> str:
    """Accept a DNS name; a Vietnamese IDN name ("đồnglộc.vn") becomes its ASCII form (a config error otherwise)."""
    if not value.isascii():
        try:
            value = value.encode("idna").decode("ascii")
        except UnicodeError:
            raise ValueError(f"{value!r} is not a valid host name") from None
    labels = value[:-1].split(".") if value.endswith(".") else value.split(".")
    if not 0 < len(value) <= 253 or not all(_LABEL.match(label) for label in labels):
        raise ValueError(f"{value!r} is not a valid host name")
    return value


def check_host(value: str) -> str:
    """Accept a DNS name or an IP address literal (a config error otherwise)."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    try:
        return check_hostname(value)
    except ValueError:
        raise ValueError(f"{value!r} is neither a host name nor an IP address") from None


HostName = Annotated[str, AfterValidator(check_hostname)]
Host = Annotated[str, AfterValidator(check_host)]
Port = Annotated[int, Field(ge=1, le=65535)]


class StrictModel(BaseModel):
    """A config model that rejects unknown keys and cannot be changed after validation."""

    model_config = ConfigDict(extra="forbid", frozen=True)


__all__ = ["ByteSize", "DAY", "Duration", "Host", "HostName", "MAX_SIZE", "Port", "Slug", "StrictModel",
           "check_host", "check_hostname", "format_duration", "parse_duration", "parse_size"]
