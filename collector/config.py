"""The collector's YAML configuration (docs/collector.md): listener, TLS, the database, data folder, limits.

`load_config(path)` returns a `CollectorConfig` or raises `CollectorConfigError` listing every problem with its
key path. HTTPS is the default: plain HTTP needs `listen.allow_http: true` (a trusted network only: credentials
would travel in clear). Relative paths are relative to the config file's folder.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AnyHttpUrl, BeforeValidator, Field, ValidationError, model_validator

from agent.config import ByteSize
from probes.base import Duration, Slug, StrictModel

_SPAN = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(h|d|w|y)\s*$")
_SPAN_S = {"h": 3600, "d": 86_400, "w": 7 * 86_400, "y": 365 * 86_400}
# Tag keys a payload may carry besides the identity tags (which the collector sets itself).
DEFAULT_TAG_KEYS = ("service", "target", "probe", "line", "mount", "interface", "battery", "version")


def parse_span(value: Any) -> float:
    """Return seconds from a VictoriaMetrics-style span: `30d`, `2w`, `1y`, `12h`."""
    match = _SPAN.match(str(value))
    if isinstance(value, bool) or not match:
        raise ValueError(f"{value!r} is not a span: write e.g. 30d, 2w, 1y (the same as VM's -retentionPeriod)")
    return float(match.group(1)) * _SPAN_S[match.group(2)]


Span = Annotated[float, BeforeValidator(parse_span)]


class CollectorConfigError(Exception):
    """The collector config is wrong; `issues` lists every problem as `path: message`."""

    def __init__(self, path: str, issues: list[str]) -> None:
        super().__init__(f"{path}: " + "; ".join(issues))
        self.issues = [f"{path}: {issue}" for issue in issues]


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
    max_future: Duration = 600.0  # timestamps further ahead than this are refused (the agent corrects its clock)
    max_tag_value: int = Field(default=200, ge=1, le=4096)  # characters
    retry_after: int = Field(default=30, ge=1, le=3600)  # seconds, sent with 503 when the database is unavailable
    max_inflight: int = Field(default=32, ge=1, le=4096)  # ingest requests past authentication at once; more → 503
    admission_wait: float = Field(default=0.05, ge=0, le=5)  # seconds a returning agent may wait for a place
    extra_tag_keys: list[Slug] = Field(default_factory=list)  # allowed besides DEFAULT_TAG_KEYS


class CollectorConfig(StrictModel):
    """The whole file."""

    province: Slug
    data_dir: str = "."  # SQLite state: credentials, fleet registry, acknowledged ranges
    listen: ListenSection
    database: DatabaseSection
    limits: LimitsSection = Field(default_factory=LimitsSection)
    token_ttl: Duration = 24 * 3600.0  # default lifetime of an enrollment token
    views_token: str | None = None  # Bearer token for GET /api/v1/agents from other hosts (loopback: always)

    @property
    def tag_keys(self) -> frozenset[str]:
        """Tag keys accepted from payloads."""
        return frozenset(DEFAULT_TAG_KEYS) | frozenset(self.limits.extra_tag_keys)

    def db_path(self) -> Path:
        """Return the SQLite file holding the collector's state."""
        return Path(self.data_dir) / "collector.sqlite"


def parse_config(data: Any, *, base: Path | None = None, name: str = "<config>") -> CollectorConfig:
    """Validate a loaded mapping; relative paths are resolved against `base`."""
    try:
        config = CollectorConfig.model_validate(data)
    except ValidationError as exc:
        issues = [f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()]
        raise CollectorConfigError(name, issues) from None
    if base is None:
        return config
    listen = config.listen
    return config.model_copy(update={
        "data_dir": str(base / config.data_dir),
        "listen": listen.model_copy(update={
            "cert_file": str(base / listen.cert_file) if listen.cert_file else None,
            "key_file": str(base / listen.key_file) if listen.key_file else None,
            "ca_file": str(base / listen.ca_file) if listen.ca_file else None,
        }),
    })


def load_config(path: str | Path) -> CollectorConfig:
    """Read and validate a collector YAML file; raise CollectorConfigError with every problem."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise CollectorConfigError(str(path), [str(exc)]) from None
    config = parse_config(data, base=path.resolve().parent, name=str(path))
    missing = [f"listen.{key}: no such file: {value}" for key in ("cert_file", "key_file", "ca_file")
               if (value := getattr(config.listen, key)) and not Path(value).is_file()]
    if missing:
        raise CollectorConfigError(str(path), missing)
    return config


__all__ = ["CollectorConfig", "CollectorConfigError", "DEFAULT_TAG_KEYS", "load_config", "parse_config", "parse_span"]
