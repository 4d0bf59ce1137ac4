"""The collector's YAML configuration (docs/collector.md): listener, TLS, the database, data folder, limits.

`load_config(path)` returns a `CollectorConfig` or raises `CollectorConfigError` listing every problem as
`file:line: key.path: message`, read by the same budgeted loader as the agent's config (core/config/loader.py:
duplicate keys, alias bombs, deep nesting, control characters and huge numbers are errors with their line).
HTTPS is the default: plain HTTP needs `listen.allow_http: true` (a trusted network only: credentials would
travel in clear). Relative paths are relative to the config file's folder. Every duration is bounded:
`limits.max_future` by what VictoriaMetrics keeps (see `MAX_FUTURE`), `token_ttl` by `MAX_TOKEN_TTL`.
"""

from __future__ import annotations

import math
import re
from functools import partial
from pathlib import Path
from typing import Annotated, Any

from pydantic import AfterValidator, AnyHttpUrl, BeforeValidator, Field, model_validator

from core import catalogue
from core.config.issues import ConfigError, ConfigIssue
from core.config.loader import LocatedYaml, read_yaml
from core.config.types import DAY, ByteSize, Duration, Slug, StrictModel, format_duration, parse_duration
from core.config.validation import find_file, validate_model

from .directory import DirectoryError, load_directory

_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(h|d|w|y)\s*$")
_SPAN_S = {"h": 3600, "d": 86_400, "w": 7 * 86_400, "y": 365 * 86_400}
# VM's -retentionPeriod is at least 1d and at most 100y.
_SPAN_MIN, _SPAN_MAX = 86_400.0, 100 * 365 * 86_400.0
# VictoriaMetrics drops samples more than 2 days ahead of its clock and still answers 204 (lib/storage/table.go,
# getMinMaxTimestamps: `now + 2*24*3600*1000`; counted in vm_rows_ignored_total{reason="big_timestamp"}).
# Accepting up to 1 day ahead leaves a day for the collector's and VM's clocks to differ.
VM_FUTURE_LIMIT = 2 * DAY
MAX_FUTURE = DAY
MAX_TOKEN_TTL = 30 * DAY  # an enrollment token is a secret: a month is long enough to reach any commune
# Tag keys a payload may carry besides the identity tags (which the collector sets itself): core/catalogue.py.
DEFAULT_TAG_KEYS = catalogue.DEFAULT_TAG_KEYS


def parse_span(value: Any) -> float:
    """Return seconds from a VictoriaMetrics-style span: `30d`, `2w`, `1y`, `12h` (1d to 100y, as VM allows)."""
    match = _SPAN.match(str(value)) if isinstance(value, str) else None
    if not match:
        raise ValueError(f"{str(value)[:40]!r} is not a span: write e.g. 30d, 2w, 1y (the same as VM's -retentionPeriod)")
    seconds = float(match.group(1)) * _SPAN_S[match.group(2)]  # 400 digits make inf, refused here
    if not _SPAN_MIN <= seconds <= _SPAN_MAX:
        raise ValueError(f"{value[:40]!r} is outside what VM's -retentionPeriod accepts: 1d to 100y")
    return seconds


def check_max_future(seconds: float) -> float:
    """Refuse a `limits.max_future` that would let through samples VictoriaMetrics silently drops."""
    if seconds > MAX_FUTURE:
        raise ValueError(
            f"{format_duration(seconds)} is too far ahead: VictoriaMetrics drops samples more than "
            f"{format_duration(VM_FUTURE_LIMIT)} ahead of its own clock while answering 204, so they would be "
            f"acknowledged and lost; use at most {format_duration(MAX_FUTURE)} (a day's margin for the clocks)")
    return seconds


def parse_ttl(value: Any) -> float:
    """Return an enrollment token's lifetime in seconds (`24h`, `7d`; at most 30 days); ValueError otherwise."""
    return parse_duration(value, maximum=MAX_TOKEN_TTL)


Span = Annotated[float, BeforeValidator(parse_span)]
FutureLimit = Annotated[float, BeforeValidator(partial(parse_duration, maximum=math.inf)),
                        AfterValidator(check_max_future)]
TokenTTL = Annotated[float, BeforeValidator(parse_ttl)]


class CollectorConfigError(ConfigError):
    """The collector config is wrong; `issues` lists every problem (`file:line: key.path: message`)."""


class ListenSection(StrictModel):
    """Where the collector listens and how (HTTPS unless allow_http)."""

    host: str = "0.0.0.0"
    port: int = Field(default=8443, ge=0, le=65535)
    cert_file: str | None = None  # the collector's certificate chain (PEM), signed by the province CA
    key_file: str | None = None
    ca_file: str | None = None  # the province CA (PEM), served at /api/v1/ca for agents pinning its fingerprint
    allow_http: bool = False  # plain HTTP only when set explicitly

    @model_validator(mode="after")
    def _tls_unless_http(self) -> "ListenSection":
        if self.allow_http and (self.cert_file or self.key_file):
            raise ValueError("allow_http: true and cert_file/key_file: choose HTTPS (the files) or plain HTTP")
        if not self.allow_http and not (self.cert_file and self.key_file):
            raise ValueError("HTTPS needs cert_file and key_file; plain HTTP needs allow_http: true "
                             "(only on a trusted network: credentials would travel in clear)")
        return self


class DatabaseSection(StrictModel):
    """VictoriaMetrics (or InfluxDB 2.x): the InfluxDB v2 write API."""

    url: AnyHttpUrl
    token: str = ""  # InfluxDB 2.x: an API token with write access to the bucket; VM ignores it
    org: str = "commune-monitor"
    bucket: str = "commune-monitor"
    timeout: Duration = 10.0  # a write slower than this is "VM unavailable": 503 to the agent
    retention: Span = 365 * 86_400.0  # the database's retention (VM -retentionPeriod): older samples are refused
    concurrency: int = Field(default=8, ge=1, le=64)  # writes in flight at once


class LimitsSection(StrictModel):
    """What one request may carry; larger is 413, otherwise wrong is 400."""

    max_body: ByteSize = 2_000_000  # bytes on the wire (compressed)
    max_decompressed: ByteSize = 8_000_000  # bytes after gunzip: a gzip bomb stops here
    max_measurements: int = Field(default=5000, ge=1, le=100_000)  # per batch
    max_series_per_agent: int = Field(default=2000, ge=1)  # distinct (measurement, tags) per agent
    max_future: FutureLimit = 600.0  # timestamps further ahead are refused (the agent corrects its clock); ≤ 1 day
    max_tag_value: int = Field(default=200, ge=1, le=4096)  # characters
    retry_after: int = Field(default=30, ge=1, le=3600)  # seconds, sent with 503 when the database is unavailable
    max_inflight: int = Field(default=32, ge=1, le=4096)  # ingest requests past authentication at once; more → 503
    admission_wait: float = Field(default=0.05, ge=0, le=5)  # seconds a returning agent may wait for a place
    max_uploads_per_agent: int = Field(default=4, ge=1, le=64)  # one credential's requests at once; more → 429
    body_timeout: Duration = Field(default=30.0, gt=0, le=600)  # a body not read by then → 408, connection closed
    keepalive: Duration = Field(default=75.0, gt=0, le=3600)  # idle connection (or unfinished headers) closed after
    extra_tag_keys: list[Slug] = Field(default_factory=list)  # allowed besides DEFAULT_TAG_KEYS


class CollectorConfig(StrictModel):
    """The whole file."""

    province: Slug
    data_dir: str = "."  # SQLite state: credentials, fleet registry, acknowledged ranges, events
    event_retention: Span = 365 * 86_400.0  # agents' events older than this are deleted from the state file
    directory: str | None = None  # the province directory (collector/directory.py): communes, lines, contacts
    listen: ListenSection
    database: DatabaseSection
    limits: LimitsSection = Field(default_factory=LimitsSection)
    token_ttl: TokenTTL = 24 * 3600.0  # default lifetime of an enrollment token (at most MAX_TOKEN_TTL)
    views_token: str | None = None  # Bearer token for GET /api/v1/agents from other hosts (loopback: always)

    @property
    def tag_keys(self) -> frozenset[str]:
        """Tag keys accepted from payloads."""
        return frozenset(DEFAULT_TAG_KEYS) | frozenset(self.limits.extra_tag_keys)

    def db_path(self) -> Path:
        """Return the SQLite file holding the collector's state."""
        return Path(self.data_dir) / "collector.sqlite"


TOP_LEVEL_KEYS = frozenset(CollectorConfig.model_fields)  # how `cmon check-config` tells a collector config


def parse_config(data: Any, *, base: Path | None = None, name: str = "<config>") -> CollectorConfig:
    """Validate a loaded mapping; relative paths are resolved against `base`."""
    return from_yaml(LocatedYaml(data, name), base)


def load_config(path: str | Path) -> CollectorConfig:
    """Read and validate a collector YAML file; raise CollectorConfigError with every problem."""
    try:
        located = read_yaml(path)
    except ConfigError as exc:
        raise CollectorConfigError(exc.issues) from None
    return from_yaml(located, Path(path).resolve().parent, check_files=True)


def from_yaml(located: LocatedYaml, base: Path | None = None, *, check_files: bool = False) -> CollectorConfig:
    """Validate a loaded collector config (`read_yaml`); with `check_files`, the listen.*_file files must exist."""
    issues = list(located.issues)
    data = located.data
    if not isinstance(data, dict):
        what = "empty" if data is None else "not a mapping"
        issues.append(located.issue((), f"the file is {what}: it needs at least the keys province:, listen: and "
                                        "database:"))
        raise CollectorConfigError(issues)
    config, invalid = validate_model(CollectorConfig, data, located, skip=located.refused)
    issues += invalid
    if check_files:
        issues += _missing_files(located, base)
        if config is not None and not issues and config.directory:
            issues += _directory_issues(located, config, base)
    if issues or config is None:
        raise CollectorConfigError(issues)
    return config if base is None else _resolved(config, base)


def _directory_issues(located: LocatedYaml, config: CollectorConfig, base: Path | None) -> list[ConfigIssue]:
    """Return the directory file's own issues (with its file and lines), and a province that differs."""
    path, _ = find_file(str(config.directory), base)
    try:
        directory = load_directory(path)
    except DirectoryError as exc:
        return [located.issue(("directory",), f"{path} has {len(exc.issues)} error(s), listed after this one"),
                *exc.issues]
    if directory.province != config.province:
        return [located.issue(("directory",), f"{path} is the directory of province {directory.province!r}, not "
                                              f"of {config.province!r}")]
    return []


def _missing_files(located: LocatedYaml, base: Path | None) -> list[ConfigIssue]:
    """Return an issue for each listen.*_file (and the directory) that names no file (relative to `base`)."""
    issues = []
    directory = located.data.get("directory")
    if isinstance(directory, str) and directory:
        problem = find_file(directory, base)[1]
        if problem:
            issues.append(located.issue(("directory",), problem))
    listen = located.data.get("listen")
    for key in ("cert_file", "key_file", "ca_file"):
        value = listen.get(key) if isinstance(listen, dict) else None
        if not isinstance(value, str) or not value:
            continue  # absent, or its type is reported by validation
        problem = find_file(value, base)[1]
        if problem:
            issues.append(located.issue(("listen", key), problem))
    return issues


def _resolved(config: CollectorConfig, base: Path) -> CollectorConfig:
    """Return `config` with its relative paths made relative to `base`."""
    listen = config.listen
    return config.model_copy(update={
        "data_dir": str(base / config.data_dir),
        "directory": str(base / config.directory) if config.directory else None,
        "listen": listen.model_copy(update={
            "cert_file": str(base / listen.cert_file) if listen.cert_file else None,
            "key_file": str(base / listen.key_file) if listen.key_file else None,
            "ca_file": str(base / listen.ca_file) if listen.ca_file else None,
        }),
    })


__all__ = ["CollectorConfig", "CollectorConfigError", "DEFAULT_TAG_KEYS", "MAX_FUTURE", "MAX_TOKEN_TTL", "TOP_LEVEL_KEYS",
           "from_yaml",
           "load_config", "parse_config", "parse_span", "parse_ttl"]
