"""The agent's YAML configuration: who this agent is, its lines, resolvers, defaults and targets by service.

`load_config(path)` returns an `AgentConfig` or raises `ConfigError` carrying EVERY problem found, each with
`file:line`, the key path and a plain message. Targets are validated by their probe's `Config` (only the probe
modules the file names are loaded: `probes.registry.loadable(names)`), after merging `defaults:` into them; an
error in a merged value points at the `defaults:` line.

Every path in the file is resolved once, here: keys ending in `_file` (targets', `collector.ca_file`) must exist,
`spool.path` and `collector.credential_file` need not yet; a relative path is relative to the config file's
folder, and the `AgentConfig` holds them absolute, so the code using it never joins paths and the working folder
does not matter. See docs/configuration.md.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import AbstractSet, Any, Mapping

from pydantic import AnyHttpUrl, BaseModel, Field, model_validator

from core.config.issues import ConfigError, ConfigIssue, Path_, kind_of, suggest, unknown_key
from core.config.loader import LocatedYaml, read_yaml
from core.config.types import ByteSize, Duration, Slug, StrictModel
from core.config.validation import absolute_path, field_keys, find_file, validate_model
from probes import registry
from probes.base import Line, LineConfig, TargetConfig


IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
# TargetConfig keys that `defaults:` may set for every target (identity keys are per target only).
_NOT_DEFAULTABLE = {"name", "probe", "display_name"}


class AgentSection(StrictModel):
    """Who this agent is: identifiers become tags (ASCII slugs), the display name may carry diacritics."""

    province: Slug
    commune: Slug
    id: Slug
    display_name: str | None = None


# Services every agent of a commune reaches at the same central server: probed in turns (agent/scheduler.py).
SHARED_SERVICES = frozenset({"ioffice", "dvc", "email"})


class CollectorSection(StrictModel):
    """Where and how the long-running agent ships its measurements (see docs/agent.md)."""

    url: AnyHttpUrl
    credential_file: str = "credential.json"  # written by `cmon agent enroll`; absolute once loaded
    allow_http: bool = False  # plain http:// only when set explicitly
    ca_file: str | None = None  # the province CA (PEM); else the one pinned at enrollment; else the system's
    timeout: Duration = 20.0
    backlog_rate: ByteSize = 32_000  # bytes/s of (compressed) backlog at most; live data is not capped
    batch_max: int = Field(default=500, ge=1, le=10_000)

    @model_validator(mode="after")
    def _https_unless_allowed(self) -> "CollectorSection":
        if self.url.scheme == "http" and not self.allow_http:
            raise ValueError("the collector URL is plain http://: use https://, or set allow_http: true "
                             "(only on a trusted network: the credential would travel in clear)")
        return self


class SpoolSection(StrictModel):
    """The durable on-disk queue (agent/spool.py)."""

    path: str = "spool.db"  # absolute once loaded (written relative to the config's folder)
    max_size: ByteSize = 100_000_000


class ScheduleSection(StrictModel):
    """How the long-running agent spreads its probe runs (agent/scheduler.py)."""

    jitter: float = Field(default=0.1, ge=0, le=0.5)  # each run moves by up to ±jitter × interval / 2
    concurrency: int = Field(default=8, ge=1, le=256)
    confirm_count: int = Field(default=3, ge=0, le=10)  # re-checks after a failure...
    confirm_interval: Duration = 5.0  # ...this far apart
    host_interval: Duration = 30.0
    commune_agents: int = Field(default=1, ge=1, le=1000)  # agents of this commune sharing central targets
    peers: list[Slug] = Field(default_factory=list)  # or their ids (this agent's included): exact turns
    probers: int = Field(default=2, ge=1, le=10)  # probes per interval per line the commune sends a shared target


class _TopLevel(StrictModel):
    """The file's shape; targets are validated one by one against their probe's Config."""

    agent: AgentSection
    collector: CollectorSection | None = None
    spool: SpoolSection = Field(default_factory=SpoolSection)
    schedule: ScheduleSection = Field(default_factory=ScheduleSection)
    lines: dict[Slug, LineConfig] = Field(default_factory=dict)
    resolvers: list[IPAddress] = Field(default_factory=list)
    defaults: dict[str, Any] = Field(default_factory=dict)
    services: dict[Slug, list[dict[str, Any]]]


TOP_LEVEL_KEYS = frozenset(field_keys(_TopLevel))  # how `cmon check-config` tells an agent config from others


@dataclass(frozen=True, slots=True)
class BoundTarget:
    """A validated target with its service and the probe module that runs it."""

    service: str
    config: TargetConfig
    module: ModuleType
    shared: bool | None = None  # the target's `shared:` key; None: by service (SHARED_SERVICES)

    @property
    def name(self) -> str:
        """The target's unique name."""
        return self.config.name

    @property
    def is_shared(self) -> bool:
        """Whether the commune's agents probe this central target in turns rather than each one every interval."""
        return self.service in SHARED_SERVICES if self.shared is None else self.shared


@dataclass(frozen=True, slots=True)
class AgentConfig:
    """A validated agent configuration; every path in it is absolute (resolved at load)."""

    path: Path  # the config file, absolute (as named, not through its symlinks: a reload reads the same name)
    agent: AgentSection
    lines: Mapping[str, LineConfig]
    resolvers: tuple[str, ...]
    targets: tuple[BoundTarget, ...]
    defaults: Mapping[str, Any] = field(default_factory=dict)
    collector: CollectorSection | None = None
    spool: SpoolSection = field(default_factory=SpoolSection)
    schedule: ScheduleSection = field(default_factory=ScheduleSection)
    folder: Path = Path("/")  # the config file's folder, resolved at load: what relative paths were relative to

    def relative(self, value: str) -> Path:
        """Return a path relative to the config file's folder unless absolute (the config's own already are)."""
        path = Path(value).expanduser()
        return path if path.is_absolute() else self.folder / path

    @property
    def credential_path(self) -> Path:
        """Return the credential file: `collector.credential_file`, else `credential.json` beside the config."""
        return Path(self.collector.credential_file) if self.collector else self.folder / "credential.json"

    @property
    def services(self) -> dict[str, list[BoundTarget]]:
        """Targets grouped by service, in file order."""
        grouped: dict[str, list[BoundTarget]] = {}
        for target in self.targets:
            grouped.setdefault(target.service, []).append(target)
        return grouped

    def line_objects(self) -> dict[str, Line]:
        """Return the configured lines as probes see them, by name."""
        return {name: Line(name, cfg) for name, cfg in self.lines.items()}

    def lines_for(self, target: BoundTarget) -> list[Line | None]:
        """Return the lines a target runs on: its own list, else every line, else one unpinned run (None)."""
        lines = self.line_objects()
        if not lines:
            return [None]
        return [lines[name] for name in (target.config.lines or lines)]


def load_config(path: str | Path) -> AgentConfig:
    """Read and validate an agent config; raise ConfigError listing every problem. Its paths come out absolute."""
    return from_yaml(read_yaml(path), Path(path))


def from_yaml(located: LocatedYaml, path: Path) -> AgentConfig:
    """Validate an agent config already loaded from `path` (`read_yaml`); raise ConfigError listing every problem."""
    return _Validator(located.file, path.resolve().parent, located).run()


class _Validator:
    """Collects every problem of one file, then builds the AgentConfig if there were none."""

    def __init__(self, file: str, base_dir: Path, located: LocatedYaml) -> None:
        self.file = file
        self.base_dir = base_dir
        self.located = located
        self.issues: list[ConfigIssue] = list(located.issues)
        self.modules, self.broken = registry.loadable(_probes_named(located.data))

    def add(self, path: Path_, message: str, *, at: Path_ | None = None) -> None:
        """Record a problem shown with key path `path`, on the line of `at` (default: `path`)."""
        self.issues.append(self.located.issue(path, message, at=at))

    def run(self) -> AgentConfig:
        data = self.located.data
        if not isinstance(data, dict):
            what = "empty" if data is None else "not a mapping"
            self.add((), f"the file is {what}: it needs at least the keys agent: and services:")
            raise ConfigError(self.issues)
        if "lines" in data:
            data = {**data, "lines": _none_as_empty(data["lines"])}
        top = self._validate_model(_TopLevel, data, ())
        defaults = self._check_defaults(data.get("defaults"))
        checked = self._check_targets(data.get("services"), defaults)
        lines = data.get("lines")
        self._check_cross(lines if isinstance(lines, dict) else {}, checked)
        if top is not None:
            top = self._resolve_paths(top)
        if self.issues or top is None:
            raise ConfigError(self.issues)
        return AgentConfig(
            path=Path(self.file).absolute(),
            agent=top.agent,
            lines=dict(top.lines),
            resolvers=tuple(str(r) for r in top.resolvers),
            targets=tuple(c.target for c in checked if c.target is not None),
            defaults=top.defaults,
            collector=top.collector,
            spool=top.spool,
            schedule=top.schedule,
            folder=self.base_dir,
        )

    def _resolve_paths(self, top: _TopLevel) -> _TopLevel:
        """Return the sections with `spool.path` and the collector's files absolute; report unusable ones."""
        collector = top.collector
        if collector is not None:
            update = {"credential_file": self._absolute(("collector", "credential_file"), collector.credential_file)}
            if collector.ca_file:
                update["ca_file"], problem = find_file(collector.ca_file, self.base_dir)
                if problem:
                    self.add(("collector", "ca_file"), problem)
            collector = collector.model_copy(update=update)
        spool = top.spool.model_copy(update={"path": self._absolute(("spool", "path"), top.spool.path)})
        return top.model_copy(update={"spool": spool, "collector": collector})

    def _absolute(self, path: Path_, value: str) -> str:
        """Return `value` made absolute (relative to the config's folder); report it when it cannot be used."""
        absolute, problem = absolute_path(value, self.base_dir)
        if problem:
            self.add(path, problem)
        return absolute

    # -- pydantic errors -> issues -----------------------------------------------------------------------

    def _validate_model(
        self, model: type[BaseModel], data: Any, base: Path_, origin: Mapping[str, Path_] | None = None,
        skip: AbstractSet[Path_] = frozenset(),
    ) -> Any:
        """Validate `data` at `base`; on failure record each error (mapped to defaults when merged from there)."""
        instance, issues = validate_model(model, data, self.located, base, origin, self.located.refused | skip)
        self.issues += issues
        return instance

    # -- defaults ------------------------------------------------------------------------------------------

    def _check_defaults(self, defaults: Any) -> dict[str, Any]:
        """Check the keys of `defaults:`; return the usable part (unknown keys already reported)."""
        if not isinstance(defaults, dict):
            return {}  # absent, or the shape error is reported by _TopLevel
        general = set(TargetConfig.model_fields) - _NOT_DEFAULTABLE
        usable: dict[str, Any] = {}
        for key, value in defaults.items():
            if key in self.modules:
                usable[key] = self._check_probe_defaults(key, value)
            elif key in general:
                usable[key] = value
            elif key in registry.PROBE_MODULES:
                self.add(("defaults", key), self._bad_probe(key))
            else:
                self.add(("defaults",), unknown_key(key, general | set(registry.PROBE_MODULES)), at=("defaults", key))
        return usable

    def _check_probe_defaults(self, probe: str, values: Any) -> dict[str, Any]:
        if not isinstance(values, dict):
            self.add(("defaults", probe), f"should be a mapping of {probe} keys to default values")
            return {}
        known = field_keys(self.modules[probe].Config) - _NOT_DEFAULTABLE
        usable = {}
        for key, value in values.items():
            if key in known:
                usable[key] = value
            else:
                self.add(("defaults", probe), unknown_key(key, known), at=("defaults", probe, key))
        return usable

    # -- targets -------------------------------------------------------------------------------------------

    def _check_targets(self, services: Any, defaults: dict[str, Any]) -> list[_Checked]:
        """Validate every target; return each with its path, merged keys and (when valid) the bound target."""
        if not isinstance(services, dict):
            return []
        if not services:
            self.add(("services",), "no services: add at least one service with its targets")
        targets = []
        for service, items in services.items():
            if not isinstance(items, list):
                continue  # reported by _TopLevel
            if not items:
                self.add(("services", service), "this service has no targets")
            for index, item in enumerate(items):
                path = ("services", service, index)
                if isinstance(item, dict):
                    targets.append(self._check_target(service, item, path, defaults))
        return targets

    def _check_target(self, service: str, item: dict, path: Path_, defaults: dict) -> _Checked:
        shared = item.get("shared")
        if "shared" in item:  # a scheduling key, not the probe's: keep it out of the probe's Config
            item = {k: v for k, v in item.items() if k != "shared"}
            if not isinstance(shared, bool):
                self.add((*path, "shared"), "should be true or false")
        probe = item.get("probe")
        if not isinstance(probe, str) or probe not in self.modules:  # a list or mapping is unhashable
            self.add(path, self._bad_probe(probe), at=(*path, "probe"))
            return _Checked(path, item, None)
        module = self.modules[probe]
        merged, origin = _merge_defaults(item, defaults, probe, field_keys(module.Config))
        file_errors = self._resolve_files(merged, (), origin, path)
        config = self._validate_model(module.Config, merged, path, origin, file_errors)
        if config is None or file_errors:
            return _Checked(path, merged, None)
        return _Checked(path, merged, BoundTarget(service, config, module, shared))

    def _bad_probe(self, probe: Any) -> str:
        available = ", ".join(registry.PROBE_MODULES)
        if probe is None:
            return f"missing required key 'probe' (one of: {available})"
        if not isinstance(probe, str):
            return f"probe should be the name of a probe (one of: {available}), not {kind_of(probe)}"
        if probe in self.broken:
            return f"probe '{probe}' cannot be used here: {self.broken[probe]}"
        hint = suggest(str(probe), registry.PROBE_MODULES) or f" (available: {available})"
        return f"unknown probe {probe!r}{hint}"

    def _resolve_files(self, data: dict, at: Path_, origin: Mapping[str, Path_], target: Path_) -> set[Path_]:
        """Make `*_file` paths absolute (relative to the config's folder); report missing files. Returns their paths."""
        bad: set[Path_] = set()
        for key, value in list(data.items()):
            here = (*at, key)
            where = (*origin[here[0]], *here[1:]) if here[0] in origin else (*target, *here)
            if isinstance(value, dict):
                bad |= self._resolve_files(value, here, origin, target)
            elif key.endswith("_file") and isinstance(value, str) and value:
                data[key], problem = find_file(value, self.base_dir)
                if problem:
                    self.add(where, problem)
                    bad.add(where)
        return bad

    # -- checks across sections ----------------------------------------------------------------------------

    def _check_cross(self, lines: Mapping[str, Any], checked: list[_Checked]) -> None:
        """Check what one target cannot: unique names, and `lines:` naming configured lines."""
        seen: dict[str, Path_] = {}
        for target in checked:
            path, name, wanted = target.path, target.merged.get("name"), target.merged.get("lines")
            first = seen.setdefault(name, path) if isinstance(name, str) else path
            if first is not path:
                self.add((*path, "name"), f"target name '{name}' is already used at line "
                         f"{self.located.line_of(first)}: names must be unique across services")
            for index, line in enumerate(wanted if isinstance(wanted, list) else []):
                if isinstance(line, str) and line not in lines:
                    self.add(self._origin_of_lines(path, index), self._bad_line(line, lines))

    def _origin_of_lines(self, path: Path_, index: int) -> Path_:
        """Return where a target's `lines` entry was written: the target itself or `defaults:`."""
        if (*path, "lines") in self.located.lines:
            return (*path, "lines", index)
        probe = self.located.data["services"][path[1]][path[2]].get("probe")
        if isinstance(probe, str) and ("defaults", probe, "lines") in self.located.lines:
            return ("defaults", probe, "lines", index)
        return ("defaults", "lines", index)

    @staticmethod
    def _bad_line(line: str, lines: Mapping[str, Any]) -> str:
        if not lines:
            return f"line '{line}' is not configured: there is no lines: section"
        hint = suggest(line, lines) or f" (configured lines: {', '.join(lines)})"
        return f"line '{line}' is not configured{hint}"


@dataclass(frozen=True, slots=True)
class _Checked:
    """One target as checked: where it is, its keys with defaults merged, the bound target when valid."""

    path: Path_
    merged: dict[str, Any]
    target: BoundTarget | None


def _probes_named(data: Any) -> set[str]:
    """Return the probe names the file mentions (targets' `probe:`, per-probe `defaults:`): the modules to load."""
    if not isinstance(data, dict):
        return set()
    defaults = data.get("defaults")
    names = {k for k in defaults if isinstance(k, str)} if isinstance(defaults, dict) else set()
    services = data.get("services")
    for items in services.values() if isinstance(services, dict) else ():
        for item in items if isinstance(items, list) else ():
            if isinstance(item, dict) and isinstance(item.get("probe"), str):
                names.add(item["probe"])
    return names


def _none_as_empty(lines: Any) -> Any:
    """Let `backup:` with nothing under it mean a line with no settings."""
    if isinstance(lines, dict):
        return {k: ({} if v is None else v) for k, v in lines.items()}
    return lines


def _merge_defaults(
    item: dict, defaults: dict, probe: str, known: set[str]
) -> tuple[dict[str, Any], dict[str, Path_]]:
    """Return the target with defaults merged in (general, then per-probe, then its own keys) and the origins."""
    merged: dict[str, Any] = {}
    origin: dict[str, Path_] = {}
    for key, value in defaults.items():
        if key in known and key not in registry.PROBE_MODULES:
            merged[key], origin[key] = value, ("defaults", key)
    for key, value in defaults.get(probe, {}).items():
        merged[key], origin[key] = value, ("defaults", probe, key)
    for key, value in item.items():
        merged[key] = value
        origin.pop(key, None)
    return _deep_copy(merged), origin


def _deep_copy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deep_copy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deep_copy(v) for v in value]
    return value


__all__ = ["AgentConfig", "AgentSection", "BoundTarget", "CollectorSection", "ScheduleSection", "SpoolSection",
           "ConfigError", "ConfigIssue", "TOP_LEVEL_KEYS", "from_yaml", "load_config"]
